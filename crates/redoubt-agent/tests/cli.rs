//! The command line without a server: argument errors, refusals and the simulated
//! hardware, through the real binary.

mod common;

use common::{agent, fails, ok, prepare_enrolled};
use serde_json::Value;

#[test]
fn a_malformed_enrollment_url_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    let state = state.to_str().unwrap();
    for (url, says) in [
        (
            "https://example.com/enroll",
            "must start with redoubt://enroll?",
        ),
        (
            "redoubt://enroll?server=https%3A%2F%2Fx&token=abc",
            "ca is missing",
        ),
        (
            "redoubt://enroll?server=http%3A%2F%2Fx&token=abc&ca=sha256%3A00",
            "https://",
        ),
        ("not a url", "not a URL"),
    ] {
        let err = fails(&agent(&["enroll", url, "--state", state]));
        assert!(
            err.contains("malformed enrollment URL") && err.contains(says),
            "{url}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert!(
        !tmp.path().join("s").exists(),
        "nothing is created for a bad URL"
    );
}

#[test]
fn enrolling_an_enrolled_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    prepare_enrolled(tmp.path());
    let before = std::fs::read(tmp.path().join("identity.json")).unwrap();
    let url = format!(
        "redoubt://enroll?server=https%3A%2F%2F127.0.0.1%3A9&token=abc&ca=sha256%3A{}",
        "00".repeat(32)
    );
    let err = fails(&agent(&[
        "enroll",
        &url,
        "--state",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(
        err.contains("already enrolled") && err.contains("dev_"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("identity.json")).unwrap(),
        before
    );
}

#[test]
fn sim_set_and_show_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    prepare_enrolled(tmp.path());
    let state = tmp.path().to_str().unwrap();

    let out = ok(&agent(&["sim", "set", "--state", state, "camera", "off"]));
    assert!(out.contains("SIMULATED"), "{out}");
    ok(&agent(&[
        "sim",
        "set",
        "--state",
        state,
        "network",
        "organization-only",
    ]));
    ok(&agent(&[
        "sim",
        "set",
        "--state",
        state,
        "bluetooth",
        "on",
        "--stuck",
    ]));

    let text = ok(&agent(&["sim", "show", "--state", state]));
    assert!(text.contains("SIMULATED"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["camera", "off"]),
        "{text}"
    );

    let json: Value =
        serde_json::from_str(&ok(&agent(&["sim", "show", "--state", state, "--json"]))).unwrap();
    assert_eq!(json["simulated"], true);
    assert_eq!(json["capabilities"]["camera"], "off");
    assert_eq!(json["capabilities"]["microphone"], "on");
    assert_eq!(json["network"], "organization-only");
    assert_eq!(json["stuck"], serde_json::json!(["bluetooth"]));

    let err = fails(&agent(&["sim", "set", "--state", state, "camera", "maybe"]));
    assert!(err.contains("on") && err.contains("off"), "{err}");
    let err = fails(&agent(&["sim", "set", "--state", state, "toaster", "on"]));
    assert!(err.contains("capability"), "{err}");

    ok(&agent(&["sim", "reset", "--state", state]));
    let json: Value =
        serde_json::from_str(&ok(&agent(&["sim", "show", "--state", state, "--json"]))).unwrap();
    assert_eq!(json["capabilities"]["camera"], "on");
}

#[test]
fn a_corrupt_simulated_phone_shows_unknown_never_off() {
    let tmp = tempfile::tempdir().unwrap();
    prepare_enrolled(tmp.path());
    std::fs::write(tmp.path().join("sim-hardware.json"), b"{").unwrap();
    let state = tmp.path().to_str().unwrap();
    let json: Value =
        serde_json::from_str(&ok(&agent(&["sim", "show", "--state", state, "--json"]))).unwrap();
    assert_eq!(json["capabilities"]["camera"], "unknown");
    assert_eq!(json["network"], "unknown");
    let err = fails(&agent(&["sim", "set", "--state", state, "camera", "on"]));
    assert!(err.contains("sim reset"), "{err}");
}

#[test]
fn status_of_a_directory_that_is_not_enrolled_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&agent(&["status", "--state", tmp.path().to_str().unwrap()]));
    assert!(
        err.contains("not an enrolled") && err.contains("enroll"),
        "{err}"
    );
    let missing = tmp.path().join("nope");
    let err = fails(&agent(&[
        "status",
        "--state",
        missing.to_str().unwrap(),
        "--json",
    ]));
    assert!(err.contains("does not exist"), "{err}");
    let err = fails(&agent(&[
        "sim",
        "show",
        "--state",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(err.contains("not an enrolled"), "{err}");
}

#[test]
fn status_measures_now_and_says_not_running() {
    let tmp = tempfile::tempdir().unwrap();
    prepare_enrolled(tmp.path());
    let state = tmp.path().to_str().unwrap();
    let json: Value =
        serde_json::from_str(&ok(&agent(&["status", "--state", state, "--json"]))).unwrap();
    assert_eq!(json["connection"], "not_running");
    assert_eq!(json["hardware"], "sim");
    assert_eq!(json["simulated"], true);
    assert_eq!(json["user"], "alice");
    assert_eq!(json["effective_mode"], "secure-site");
    assert_eq!(json["bundle_version"], 1);
    assert_eq!(json["pending_reports"], 0);
    // Nothing enforced yet: a fresh phone violates secure-site, and status says so.
    assert_eq!(json["capabilities"]["camera"], "on");
    assert_eq!(json["network"], "open");
    assert!(json["violations"].as_array().unwrap().len() >= 6);

    let text = ok(&agent(&["status", "--state", state]));
    assert!(
        text.contains("sim (SIMULATED)") && text.contains("not_running"),
        "{text}"
    );
}

#[test]
fn run_refuses_a_directory_that_is_not_enrolled() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&agent(&[
        "run",
        "--state",
        tmp.path().to_str().unwrap(),
        "--recheck-ms",
        "100",
    ]));
    assert!(err.contains("not an enrolled"), "{err}");
}

#[test]
fn probe_reads_this_machine_and_changes_nothing() {
    // No system bus (whatever this machine runs): the Sailfish services cannot answer.
    let tmp = tempfile::tempdir().unwrap();
    let probe = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", tmp.path().join("no-bus").display()),
            )
            .output()
            .unwrap()
    };
    let json: Value = serde_json::from_str(&ok(&probe(&["probe", "--json"]))).unwrap();
    // The test machine is a Linux machine with sysfs mounted.
    assert_eq!(json["choice"], "linux", "{json}");
    let caps = json["capabilities"].as_object().unwrap();
    assert_eq!(caps.len(), 9, "{json}");
    for (cap, c) in caps {
        assert!(
            c["how"].as_str().is_some_and(|h| !h.is_empty()),
            "{cap}: {c}"
        );
    }
    // USB data and screenshots have no kernel interface: never claimed.
    assert_eq!(caps["usb_data"]["verify"], false);
    assert_eq!(caps["screenshots"]["enforce"], false);
    let text = ok(&probe(&["probe"]));
    assert!(
        text.starts_with("backend (--hardware auto): linux"),
        "{text}"
    );
    assert!(text.contains("network"), "{text}");
}

#[test]
fn enrolling_with_a_backend_that_cannot_start_spends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    // Nothing listens on this port: had the agent tried, the error would say so.
    let url = "redoubt://enroll?server=https%3A%2F%2F127.0.0.1%3A9&token=abc&ca=sha256%3A0000000000000000000000000000000000000000000000000000000000000000";
    let out = std::process::Command::new(common::BIN)
        .args([
            "enroll",
            url,
            "--state",
            state.to_str().unwrap(),
            "--hardware",
            "sailfish",
        ])
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", tmp.path().join("no-bus").display()),
        )
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(
        err.contains(
            "the sailfish hardware backend cannot start on this device; enrollment not attempted"
        ),
        "{err}"
    );
    assert!(!state.join("identity.json").exists());
}
