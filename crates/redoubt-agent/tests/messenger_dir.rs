//! The messenger directory through the real binary: where enrollment may put it (never
//! where the chat's user could not reach it, never over the state directory), and the
//! credential an agent enrolled before it existed makes at its next start.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{BIN, agent, fails, prepare_enrolled, wait_for};
use ed25519_dalek::SigningKey;
use redoubt_agent::state::MessengerDir;
use redoubt_proto::messaging::MessengerDelegation;

/// An enrollment URL nothing answers: had the agent tried, the error would say so.
const URL: &str = "redoubt://enroll?server=https%3A%2F%2F127.0.0.1%3A9&token=abc&ca=sha256%3A0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn a_messenger_directory_the_chat_cannot_use_is_refused_before_the_code_is_spent() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    let s = state.to_str().unwrap();
    // Handed to another user inside the agent's state directory (0700): unreachable.
    let err = fails(&agent(&[
        "enroll",
        URL,
        "--state",
        s,
        "--messenger-owner",
        "4242:4242",
    ]));
    assert!(
        err.contains("enrollment not attempted")
            && err.contains("inside the agent's state directory"),
        "{err}"
    );
    // The state directory itself, or one that contains it: the messenger would see
    // the device key, and a wipe of the messenger directory would take the state.
    let dotted = format!("{s}/../s");
    let linked = tmp.path().join("link");
    std::os::unix::fs::symlink(&state, &linked).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    for bad in [s, tmp.path().to_str().unwrap(), linked.to_str().unwrap()] {
        let err = fails(&agent(&[
            "enroll",
            URL,
            "--state",
            s,
            "--messenger-dir",
            bad,
        ]));
        assert!(
            err.contains("must not be the agent's state directory nor contain it"),
            "{bad}: {err}"
        );
    }
    let err = fails(&agent(&[
        "enroll",
        URL,
        "--state",
        s,
        "--messenger-dir",
        &dotted,
    ]));
    assert!(err.contains("without `..`"), "{err}");
    // A directory with someone's files: a wipe would delete them.
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), b"mine").unwrap();
    let err = fails(&agent(&[
        "enroll",
        URL,
        "--state",
        s,
        "--messenger-dir",
        home.to_str().unwrap(),
    ]));
    assert!(err.contains("not the messenger's (notes.txt)"), "{err}");
    assert!(!state.join("identity.json").exists());
    assert!(
        !err.contains("127.0.0.1:9"),
        "the server was contacted: {err}"
    );
}

#[test]
fn an_agent_enrolled_before_makes_the_messenger_credential_at_its_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let dir = prepare_enrolled(&root);
    // An older agent's messenger kept its database in the state directory.
    for name in ["messenger.db", "messenger.db-wal"] {
        std::fs::write(root.join(name), format!("conversations in {name}")).unwrap();
    }
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--recheck-ms", "100", "--state"])
        .arg(&root)
        .env_remove("REDOUBT_AGENT_STATE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = MessengerDir::new(root.join("messenger"));
    let credential = wait_for("the messenger credential", Duration::from_secs(20), || {
        m.load_credential().ok()
    });
    wait_for("the database moved", Duration::from_secs(20), || {
        (!root.join("messenger.db").exists()).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read_to_string(m.db_path()).unwrap(),
        "conversations in messenger.db"
    );
    assert!(m.path("messenger.db-wal").exists());
    // Delegated by this device's key (the one `prepare_enrolled` wrote), for it.
    let device_key = SigningKey::from_bytes(&[9; 32]);
    let d: MessengerDelegation = credential
        .delegation
        .verify(MessengerDelegation::KIND, &device_key.verifying_key())
        .unwrap();
    assert_eq!(d.device_id, dir.load_identity().unwrap().device_id);
    assert_ne!(credential.key.to_bytes(), device_key.to_bytes());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(m.root()), 0o700);
    assert_eq!(mode(&m.path("messenger-key.pem")), 0o600);
}
