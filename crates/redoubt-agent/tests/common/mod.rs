//! Helpers shared by the integration tests: running the real binary, preparing an
//! enrolled state directory without a server, signed bundles with secured zones and
//! checkpoint codes signed by their checkpoint keys.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use redoubt_agent::hardware::sim::SimHardware;
use redoubt_agent::state::{Identity, StateDir};
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::{
    Assignments, Bssid, CheckpointCode, CheckpointKey, DeviceId, Direction, Fingerprint,
    HardwareKind, PolicyBundle, SignedEnvelope, Timestamp, ZonePolicy,
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_redoubt-agent");

/// Runs the agent with `args` and waits for it.
pub fn agent(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("REDOUBT_AGENT_STATE")
        .env_remove("REDOUBT_AGENT_RECHECK_MS")
        .output()
        .expect("the agent binary runs")
}

/// Stdout of a run that must succeed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of a run that must fail.
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The organization key of prepared directories.
pub fn org() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The device of prepared directories.
pub fn device() -> DeviceId {
    DeviceId::from_random([1; 12])
}

/// A bundle for `device` signed by [`org`].
pub fn signed_bundle(
    device: &DeviceId,
    version: u64,
    mode: &str,
    check_in_secs: u32,
) -> SignedEnvelope {
    let now = Timestamp::now();
    let b = PolicyBundle {
        device_id: device.clone(),
        version,
        issued_at: now,
        expires_at: now.plus_secs(3600),
        modes: redoubt_policy::presets(),
        assignments: Assignments {
            base_mode: mode.parse().expect("mode name"),
            group_modes: Vec::new(),
        },
        check_in_interval_secs: check_in_secs,
        organization_endpoints: vec!["127.0.0.1".into()],
        servers: Vec::new(),
        zones: Vec::new(),
    };
    SignedEnvelope::sign(PolicyBundle::KIND, &b, &org())
}

/// The key of a checkpoint, by seed: 11 is lab's north gate, 13 vault's door; any
/// other seed is a key no bundle lists.
pub fn checkpoint_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The access point listed for zone lab.
pub const LAB_AP: &str = "02:00:00:00:00:01";

/// A zone with one checkpoint whose key is `checkpoint_key(seed)`.
pub fn zone(name: &str, mode: &str, checkpoint: &str, seed: u8, bssids: &[&str]) -> ZonePolicy {
    ZonePolicy {
        name: name.parse().expect("zone name"),
        mode: mode.parse().expect("mode name"),
        checkpoints: vec![CheckpointKey {
            name: checkpoint.parse().expect("checkpoint name"),
            public_key: encode_public_key(&checkpoint_key(seed).verifying_key()),
        }],
        wifi_bssids: bssids
            .iter()
            .map(|b| b.parse::<Bssid>().expect("bssid"))
            .collect(),
    }
}

/// The zones of [`zoned_bundle`]: lab (`secure-site`, checkpoint north-gate, access
/// point [`LAB_AP`]) and vault (`lockdown`, checkpoint door, codes only).
pub fn zones() -> Vec<ZonePolicy> {
    vec![
        zone("lab", "secure-site", "north-gate", 11, &[LAB_AP]),
        zone("vault", "lockdown", "door", 13, &[]),
    ]
}

/// A bundle for `device` signed by [`org`], in `mode`, listing [`zones`].
pub fn zoned_bundle(
    device: &DeviceId,
    version: u64,
    mode: &str,
    check_in_secs: u32,
) -> SignedEnvelope {
    let b: PolicyBundle = signed_bundle(device, version, mode, check_in_secs)
        .verify(PolicyBundle::KIND, &org().verifying_key())
        .expect("own bundle");
    let b = PolicyBundle {
        zones: zones(),
        ..b
    };
    SignedEnvelope::sign(PolicyBundle::KIND, &b, &org())
}

/// A checkpoint code signed with `checkpoint_key(signer)`, valid from `from` to `until`
/// seconds relative to now.
pub fn code(
    zone: &str,
    checkpoint: &str,
    direction: Direction,
    (from, until): (i64, i64),
    nonce: &str,
    signer: u8,
) -> String {
    let now = Timestamp::now();
    CheckpointCode {
        zone: zone.parse().expect("zone name"),
        checkpoint: checkpoint.parse().expect("checkpoint name"),
        direction,
        not_before: now.plus_secs(from),
        not_after: now.plus_secs(until),
        nonce: nonce.into(),
    }
    .encode(&checkpoint_key(signer))
}

/// An enrolled state directory (as `enroll` leaves it) for [`device`] in `secure-site`.
pub fn prepare_enrolled(root: &Path) -> StateDir {
    prepare_with(root, &signed_bundle(&device(), 1, "secure-site", 60))
}

/// An enrolled state directory for [`device`] in `standard` with the zones of [`zones`].
pub fn prepare_zoned(root: &Path) -> StateDir {
    prepare_with(root, &zoned_bundle(&device(), 1, "standard", 60))
}

/// An enrolled state directory for [`device`] holding `bundle`; its server
/// (127.0.0.1:9) is unreachable, so a running agent works offline.
pub fn prepare_with(root: &Path, bundle: &SignedEnvelope) -> StateDir {
    let dir = StateDir::new(root);
    dir.create().expect("create");
    dir.store_key(&SigningKey::from_bytes(&[9; 32]))
        .expect("key");
    dir.store_bundle(bundle).expect("bundle");
    SimHardware::new(root).reset().expect("sim");
    dir.store_identity(&Identity {
        device_id: device(),
        user: "alice".parse().expect("user"),
        server: url::Url::parse("https://127.0.0.1:9").expect("url"),
        ca_fingerprint: Fingerprint::of_der(b"ca"),
        organization_key: org().verifying_key(),
        hardware: HardwareKind::Sim,
        enrolled_at: Timestamp::now(),
    })
    .expect("identity");
    dir
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
