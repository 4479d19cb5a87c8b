//! Fixed keys, ids and a policy bundle shared by the fuzz targets and by the seed
//! generator in `cargo xtask fuzz` (which includes this file by path), so that seeds
//! signed by the generator verify inside the targets.

use ed25519_dalek::SigningKey;
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::zones::{CheckpointKey, ZonePolicy};
use redoubt_proto::{Assignments, DeviceId, PolicyBundle, Timestamp};

/// "Now" for every target: a fixed time, so runs are reproducible.
pub const NOW: Timestamp = Timestamp(1_800_000_000);

/// The organization's signing key (bundles, commands).
pub fn org_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The device key (compliance reports).
pub fn device_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// The key of checkpoint `north-gate` of zone `lab`.
pub fn checkpoint_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

/// The device every bundle and report is for.
pub fn device() -> DeviceId {
    DeviceId::from_random([1; 12])
}

/// A bundle for [`device`]: the presets, base mode `standard`, zone `lab` (mode
/// `secure-site`, checkpoint `north-gate` with [`checkpoint_key`]), valid for a day
/// after [`NOW`].
pub fn bundle() -> PolicyBundle {
    PolicyBundle {
        device_id: device(),
        version: 3,
        issued_at: NOW.plus_secs(-60),
        expires_at: NOW.plus_secs(86_400),
        modes: redoubt_policy::presets(),
        assignments: Assignments {
            base_mode: redoubt_policy::STANDARD.parse().expect("a valid name"),
        },
        check_in_interval_secs: 60,
        organization_endpoints: vec!["redoubt.example.org".into()],
        zones: vec![ZonePolicy {
            name: "lab".parse().expect("a valid name"),
            mode: redoubt_policy::SECURE_SITE.parse().expect("a valid name"),
            checkpoints: vec![CheckpointKey {
                name: "north-gate".parse().expect("a valid name"),
                public_key: encode_public_key(&checkpoint_key().verifying_key()),
            }],
            wifi_bssids: vec!["aa:bb:cc:dd:ee:ff".parse().expect("a valid name")],
        }],
    }
}
