//! Helpers shared by the integration tests: running the real binary and preparing
//! an enrolled state directory without a server.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use redoubt_agent::hardware::sim::SimHardware;
use redoubt_agent::state::{Identity, StateDir};
use redoubt_proto::{
    Assignments, DeviceId, Fingerprint, HardwareKind, PolicyBundle, SignedEnvelope, Timestamp,
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
        },
        check_in_interval_secs: check_in_secs,
        organization_endpoints: vec!["127.0.0.1".into()],
        zones: Vec::new(),
    };
    SignedEnvelope::sign(PolicyBundle::KIND, &b, &org())
}

/// An enrolled state directory (as `enroll` leaves it) for [`device`] in `secure-site`.
pub fn prepare_enrolled(root: &Path) -> StateDir {
    let dir = StateDir::new(root);
    dir.create().expect("create");
    dir.store_key(&SigningKey::from_bytes(&[9; 32]))
        .expect("key");
    dir.store_bundle(&signed_bundle(&device(), 1, "secure-site", 60))
        .expect("bundle");
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
