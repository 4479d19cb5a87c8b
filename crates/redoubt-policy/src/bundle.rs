//! Verification of signed policy bundles and the fail-closed decision of what holds.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use redoubt_proto::envelope::decode_public_key;
use redoubt_proto::{
    CommandId, DeviceId, EnvelopeError, Mode, ModeName, PolicyBundle, SignedEnvelope, Timestamp,
    ZoneName,
};

use crate::modes::Effective;
use crate::zones::{PhoneTime, ZoneState, decide_with};

/// Why a bundle was refused. The agent keeps what it had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not signed by the organization key, or altered after signing.
    #[error("bundle refused: the signature is not the organization's")]
    BadSignature,
    /// Signed, but for another device.
    #[error("bundle refused: it is addressed to device {found}, not {expected}")]
    WrongDevice {
        /// This device.
        expected: DeviceId,
        /// The device named in the bundle.
        found: DeviceId,
    },
    /// Older than the bundle already held (a replay or a rollback).
    #[error("bundle refused: version {offered} is older than the version {held} already held")]
    Rollback {
        /// Version held.
        held: u64,
        /// Version offered.
        offered: u64,
    },
    /// Past its expiry.
    #[error("bundle refused: it expired at {0}")]
    Expired(Timestamp),
    /// Signed but not a usable bundle.
    #[error("bundle refused: {0}")]
    Malformed(String),
}

/// Checks a signed bundle for this device: the organization's signature, the device
/// id, a version not lower than `held_version`, the expiry, that every assigned mode
/// is present, and that every zone is usable: listed once, its mode present, each
/// checkpoint key a valid Ed25519 public key.
///
/// A bundle whose version equals `held_version` is accepted (a re-delivery); the
/// server never signs two different bundles with one version.
pub fn verify_bundle(
    envelope: &SignedEnvelope,
    organization_key: &VerifyingKey,
    device: &DeviceId,
    held_version: Option<u64>,
    now: Timestamp,
) -> Result<PolicyBundle, BundleError> {
    let bundle: PolicyBundle = envelope
        .verify(PolicyBundle::KIND, organization_key)
        .map_err(|e| match e {
            EnvelopeError::Malformed(m) => BundleError::Malformed(m),
            EnvelopeError::WrongKind { found, .. } => {
                BundleError::Malformed(format!("not a policy bundle but {found:?}"))
            }
            EnvelopeError::BadSignature => BundleError::BadSignature,
        })?;
    if &bundle.device_id != device {
        return Err(BundleError::WrongDevice {
            expected: device.clone(),
            found: bundle.device_id,
        });
    }
    if let Some(held) = held_version
        && bundle.version < held
    {
        return Err(BundleError::Rollback {
            held,
            offered: bundle.version,
        });
    }
    if bundle.expires_at <= now {
        return Err(BundleError::Expired(bundle.expires_at));
    }
    if let Err(missing) = assigned_modes(&bundle) {
        return Err(BundleError::Malformed(format!(
            "assigned mode {missing} is not in the bundle"
        )));
    }
    check_zones(&bundle)?;
    Ok(bundle)
}

fn check_zones(bundle: &PolicyBundle) -> Result<(), BundleError> {
    let mut seen: BTreeSet<&ZoneName> = BTreeSet::new();
    for zone in &bundle.zones {
        if !seen.insert(&zone.name) {
            return Err(BundleError::Malformed(format!(
                "zone {} is listed twice",
                zone.name
            )));
        }
        if !bundle.modes.iter().any(|m| m.name == zone.mode) {
            return Err(BundleError::Malformed(format!(
                "zone {} names mode {}, which is not in the bundle",
                zone.name, zone.mode
            )));
        }
        for checkpoint in &zone.checkpoints {
            if decode_public_key(&checkpoint.public_key).is_none() {
                return Err(BundleError::Malformed(format!(
                    "the key of checkpoint {} in zone {} is not an Ed25519 public key",
                    checkpoint.name, zone.name
                )));
            }
        }
    }
    Ok(())
}

/// What the agent must enforce now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The effective mode.
    pub mode: Effective,
    /// The version of the bundle it comes from (0 without one).
    pub bundle_version: u64,
    /// Why this is the fail-closed fallback rather than the bundle's mode.
    pub fallback_reason: Option<String>,
    /// The zones the phone is inside (their modes are part of `mode`).
    pub zones: Vec<ZoneName>,
    /// The lock command in force (then `mode` includes `lockdown`).
    pub locked_by: Option<CommandId>,
}

/// The definitions of every mode the bundle assigns: the base mode and each device
/// group's mode, or the name of the first one the bundle does not carry.
pub fn assigned_modes(bundle: &PolicyBundle) -> Result<Vec<Mode>, ModeName> {
    std::iter::once(&bundle.assignments.base_mode)
        .chain(&bundle.assignments.group_modes)
        .map(|name| {
            bundle
                .modes
                .iter()
                .find(|m| &m.name == name)
                .cloned()
                .ok_or_else(|| name.clone())
        })
        .collect()
}

/// Decides the effective mode from the bundle held (already verified when it was
/// accepted), outside every zone and unlocked. Without a bundle, or once it has
/// expired, the answer is `lockdown`. The agent uses [`decide_with`] and its zone state.
pub fn decide(bundle: Option<&PolicyBundle>, now: Timestamp) -> Decision {
    decide_with(bundle, &ZoneState::default(), PhoneTime::trusted(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::{effective, preset, presets};
    use ed25519_dalek::SigningKey;
    use redoubt_proto::envelope::encode_public_key;
    use redoubt_proto::{Assignments, CheckpointKey, ZonePolicy};

    const NOW: Timestamp = Timestamp(1_800_000_000);

    fn device(n: u8) -> DeviceId {
        DeviceId::from_random([n; 12])
    }

    fn bundle(dev: u8, version: u64, expires: i64) -> PolicyBundle {
        PolicyBundle {
            device_id: device(dev),
            version,
            issued_at: NOW,
            expires_at: NOW.plus_secs(expires),
            modes: presets(),
            assignments: Assignments {
                base_mode: "secure-site".parse().unwrap(),
                group_modes: Vec::new(),
            },
            check_in_interval_secs: 60,
            organization_endpoints: vec![],
            servers: Vec::new(),
            zones: Vec::new(),
        }
    }

    fn org() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn check(b: &PolicyBundle, signer: &SigningKey, held: Option<u64>) -> Result<u64, BundleError> {
        let env = SignedEnvelope::sign(PolicyBundle::KIND, b, signer);
        verify_bundle(&env, &org().verifying_key(), &device(1), held, NOW).map(|b| b.version)
    }

    #[test]
    fn accepts_a_good_bundle_and_redelivery() {
        assert_eq!(check(&bundle(1, 5, 60), &org(), None), Ok(5));
        assert_eq!(check(&bundle(1, 5, 60), &org(), Some(5)), Ok(5));
        assert_eq!(check(&bundle(1, 6, 60), &org(), Some(5)), Ok(6));
    }

    #[test]
    fn refuses_forged_foreign_old_and_expired_bundles() {
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            check(&bundle(1, 5, 60), &other, None),
            Err(BundleError::BadSignature)
        );
        assert!(matches!(
            check(&bundle(2, 5, 60), &org(), None),
            Err(BundleError::WrongDevice { .. })
        ));
        assert_eq!(
            check(&bundle(1, 4, 60), &org(), Some(5)),
            Err(BundleError::Rollback {
                held: 5,
                offered: 4
            })
        );
        assert!(matches!(
            check(&bundle(1, 6, -1), &org(), Some(5)),
            Err(BundleError::Expired(_))
        ));
        let mut missing = bundle(1, 6, 60);
        missing.modes.retain(|m| m.name.as_str() != "secure-site");
        assert!(matches!(
            check(&missing, &org(), None),
            Err(BundleError::Malformed(_))
        ));
    }

    fn zone(name: &str, mode: &str, key: String) -> ZonePolicy {
        ZonePolicy {
            name: name.parse().unwrap(),
            mode: mode.parse().unwrap(),
            checkpoints: vec![CheckpointKey {
                name: "gate".parse().unwrap(),
                public_key: key,
            }],
            wifi_bssids: vec![],
        }
    }

    #[test]
    fn refuses_unusable_zones() {
        let good_key = encode_public_key(&SigningKey::from_bytes(&[5; 32]).verifying_key());
        let mut b = bundle(1, 5, 60);
        b.zones = vec![zone("lab", "lockdown", good_key.clone())];
        assert_eq!(check(&b, &org(), None), Ok(5));

        b.zones = vec![zone("lab", "night-shift", good_key.clone())];
        let err = check(&b, &org(), None).unwrap_err().to_string();
        assert!(
            err.contains("zone lab") && err.contains("night-shift"),
            "{err}"
        );

        b.zones = vec![zone("lab", "lockdown", "bm90IGEga2V5".into())];
        let err = check(&b, &org(), None).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint gate") && err.contains("zone lab"),
            "{err}"
        );

        b.zones = vec![
            zone("lab", "lockdown", good_key.clone()),
            zone("lab", "secure-site", good_key),
        ];
        let err = check(&b, &org(), None).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn refuses_a_tampered_payload() {
        let mut env = SignedEnvelope::sign(PolicyBundle::KIND, &bundle(1, 5, 60), &org());
        let mut b = bundle(1, 5, 60);
        b.assignments.base_mode = "standard".parse().unwrap();
        env.payload = SignedEnvelope::sign(PolicyBundle::KIND, &b, &org()).payload;
        assert_eq!(
            verify_bundle(&env, &org().verifying_key(), &device(1), None, NOW),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn the_strictest_of_the_base_and_the_group_modes_applies() {
        let mut b = bundle(1, 5, 60);
        b.assignments.base_mode = "standard".parse().unwrap();
        // A group's stricter mode wins over the base mode, in either order.
        b.assignments.group_modes = vec!["lockdown".parse().unwrap()];
        assert_eq!(check(&b, &org(), None), Ok(5));
        assert_eq!(decide(Some(&b), NOW).mode.name, "lockdown");
        b.assignments.base_mode = "lockdown".parse().unwrap();
        b.assignments.group_modes = vec!["standard".parse().unwrap()];
        assert_eq!(decide(Some(&b), NOW).mode.name, "lockdown");
        // A group mode the bundle does not carry: refused, and fail-closed if held.
        b.assignments.base_mode = "standard".parse().unwrap();
        b.assignments.group_modes = vec!["night-shift".parse().unwrap()];
        let err = check(&b, &org(), None).unwrap_err().to_string();
        assert!(err.contains("night-shift"), "{err}");
        let d = decide(Some(&b), NOW);
        assert_eq!(d.mode.name, "lockdown");
        assert!(d.fallback_reason.is_some());
    }

    #[test]
    fn a_bundle_without_groups_reads_as_before_groups_existed() {
        let json = serde_json::to_value(bundle(1, 5, 60)).unwrap();
        assert_eq!(
            json["assignments"],
            serde_json::json!({"base_mode": "secure-site"})
        );
    }

    #[test]
    fn decides_fail_closed() {
        assert_eq!(decide(None, NOW).mode.name, "lockdown");
        let b = bundle(1, 5, 60);
        let d = decide(Some(&b), NOW);
        assert_eq!(
            (d.mode.name.as_str(), d.fallback_reason),
            ("secure-site", None)
        );
        let d = decide(Some(&b), NOW.plus_secs(61));
        assert_eq!(d.mode.name, "lockdown");
        assert!(d.fallback_reason.unwrap().contains("expired"));
        assert_eq!(d.mode, effective(&[preset("lockdown").unwrap()]));
        assert_eq!((d.zones, d.locked_by), (vec![], None));
    }
}
