//! Secured zones through the real binary, offline (the identity's server is
//! unreachable): checkpoint codes with and without a running agent, refusals that
//! change nothing, Wi-Fi sightings from the SIMULATED scanner, restarts and a corrupt
//! zone state.

// A test's helpers panic on purpose: the panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, LAB_AP, agent, code, fails, ok, prepare_zoned, wait_for};
use ed25519_dalek::SigningKey;
use redoubt_agent::hardware::sim::{SimHardware, Switch};
use redoubt_agent::outbox::Outbox;
use redoubt_agent::state::{OUTBOX_DIR, StateDir, ZONES_FILE};
use redoubt_policy::ZoneState;
use redoubt_proto::{
    Capability, ComplianceReport, DeviceEventKind, Direction, NetworkReach, ZoneName,
};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

fn status(state: &str) -> Value {
    serde_json::from_str(&ok(&agent(&["status", "--state", state, "--json"]))).unwrap()
}

fn wait_status(state: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, LIMIT, || Some(status(state)).filter(|s| pred(s)))
}

fn camera(root: &Path) -> Switch {
    SimHardware::new(root).read().unwrap().capabilities[&Capability::Camera]
}

fn zones(root: &Path) -> ZoneState {
    StateDir::new(root)
        .load_zones()
        .unwrap()
        .unwrap_or_default()
}

fn zone_names(s: &Value) -> Vec<String> {
    s["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["zone"].as_str().unwrap().to_owned())
        .collect()
}

/// Every report waiting in the outbox, verified with the device key.
fn queued_reports(root: &Path) -> Vec<ComplianceReport> {
    let device_key = SigningKey::from_bytes(&[9; 32]).verifying_key();
    Outbox::peek(&root.join(OUTBOX_DIR))
        .pending()
        .unwrap()
        .iter()
        .map(|p| {
            p.report
                .verify(ComplianceReport::KIND, &device_key)
                .unwrap()
        })
        .collect()
}

struct Running(Child);

impl Running {
    fn start(state: &str) -> Running {
        let child = Command::new(BIN)
            .args(["run", "--state", state, "--recheck-ms", "100"])
            .env_remove("REDOUBT_AGENT_STATE")
            .env_remove("REDOUBT_AGENT_RECHECK_MS")
            .env("REDOUBT_LOG", "redoubt_agent=debug,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_status(state, "the agent runs", |s| {
            s["connection"] != "not_running"
        });
        Running(child)
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let exit = wait_for("the agent to exit", LIMIT, || self.0.try_wait().unwrap());
        assert!(exit.success(), "{exit:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn checkpoint_codes_without_a_running_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    assert_eq!(camera(root), Switch::On);

    let check_in = code("lab", "north-gate", Direction::In, (-5, 60), "in-1", 11);
    let out = ok(&agent(&["checkpoint", "--state", state, &check_in]));
    assert_eq!(
        out.trim(),
        "entered zone lab at checkpoint north-gate: mode secure-site"
    );
    // Enforced at once and measured.
    assert_eq!(camera(root), Switch::Off);
    let sim = SimHardware::new(root).read().unwrap();
    assert_eq!(sim.network, NetworkReach::OrganizationOnly);
    let s = status(state);
    assert_eq!(s["effective_mode"], "secure-site");
    assert_eq!(zone_names(&s), ["lab"]);
    assert_eq!(s["zones"][0]["evidence"]["via"], "code");
    assert_eq!(s["zones"][0]["evidence"]["checkpoint"], "north-gate");
    assert_eq!(s["pending_events"], 0);
    let text = ok(&agent(&["status", "--state", state]));
    assert!(
        text.contains("lab (since") && text.contains("checkpoint north-gate"),
        "{text}"
    );
    let inside = zones(root).inside().clone();

    // Refusals: an error line, a non-zero exit, and the zone state unchanged.
    let refusals = [
        (check_in.clone(), "this code was already used"),
        (
            code("lab", "north-gate", Direction::Out, (-600, -300), "old", 11),
            "expired at",
        ),
        (
            code("lab", "north-gate", Direction::In, (300, 600), "early", 11),
            "not valid before",
        ),
        (
            code("ghost", "gate", Direction::In, (-5, 60), "g", 14),
            "the code is for zone ghost, which this device's policy does not list",
        ),
        (
            code("vault", "door", Direction::Out, (-5, 60), "v", 13),
            "not inside zone vault: nothing to check out of",
        ),
        (
            code("lab", "door", Direction::Out, (-5, 60), "x", 13),
            "not a checkpoint of zone lab",
        ),
        (
            code("lab", "north-gate", Direction::Out, (-5, 60), "f", 99),
            "forged",
        ),
        ("RDZ1.nonsense".to_owned(), "not a checkpoint code"),
    ];
    for (bad, says) in &refusals {
        let err = fails(&agent(&["checkpoint", "--state", state, bad]));
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{says}: {err}"
        );
        assert_eq!(zones(root).inside(), &inside, "{says}");
        assert_eq!(camera(root), Switch::Off, "{says}");
    }
    // The refusals are reported for the server, each as a code-refused event.
    let refused = queued_reports(root)
        .iter()
        .flat_map(|r| r.events.clone())
        .filter(|e| matches!(e.kind, DeviceEventKind::CodeRefused { .. }))
        .count();
    assert_eq!(refused, refusals.len());
    let entered = queued_reports(root)
        .iter()
        .any(|r| r.zones == [zone_name("lab")] && r.effective_mode == "secure-site");
    assert!(entered);

    // Check out, the code read from stdin, JSON output.
    let check_out = code("lab", "north-gate", Direction::Out, (-1, 60), "out-1", 11);
    let mut child = Command::new(BIN)
        .args(["checkpoint", "--state", state, "-", "--json"])
        .env_remove("REDOUBT_AGENT_STATE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{check_out}").unwrap();
    let json: Value = serde_json::from_str(&ok(&child.wait_with_output().unwrap())).unwrap();
    assert_eq!(json["change"], "left");
    assert_eq!(json["effective_mode"], "standard");
    assert_eq!(json["message"], "left zone lab: mode standard");
    assert_eq!(camera(root), Switch::On);
    assert!(zone_names(&status(state)).is_empty());
}

fn zone_name(s: &str) -> ZoneName {
    s.parse().unwrap()
}

#[test]
fn wifi_and_codes_reach_a_running_agent_and_a_restart_keeps_the_zone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    let agent_run = Running::start(state);
    wait_status(state, "standard enforced", |s| {
        s["effective_mode"] == "standard" && s["violations"] == serde_json::json!([])
    });

    // The lab's access point comes into sight: the agent enters the zone.
    let out = ok(&agent(&["sim", "wifi", "--state", state, LAB_AP]));
    assert!(out.contains("SIMULATED") && out.contains(LAB_AP), "{out}");
    let s = wait_status(state, "inside lab", |s| zone_names(s) == ["lab"]);
    assert_eq!(s["zones"][0]["evidence"]["via"], "wifi");
    wait_for("camera off", LIMIT, || {
        (camera(root) == Switch::Off).then_some(())
    });

    // Out of sight: still inside (absence never exits).
    ok(&agent(&["sim", "wifi", "--state", state]));
    wait_for("the empty scan taken in", LIMIT, || {
        zones(root).last_visible().is_empty().then_some(())
    });
    assert_eq!(zone_names(&status(state)), ["lab"]);
    assert_eq!(camera(root), Switch::Off);

    // Back at the gate, a check-out code handed to the running agent over its socket.
    ok(&agent(&["sim", "wifi", "--state", state, LAB_AP]));
    wait_for("the gate scan taken in", LIMIT, || {
        (!zones(root).last_visible().is_empty()).then_some(())
    });
    let out = ok(&agent(&[
        "checkpoint",
        "--state",
        state,
        &code("lab", "north-gate", Direction::Out, (-5, 60), "out-1", 11),
    ]));
    assert_eq!(out.trim(), "left zone lab: mode standard");
    // Enforced before the answer came back.
    assert_eq!(camera(root), Switch::On);
    // The gate's own access point does not pull the phone back in: a later scan that
    // still shows it (and another one) leaves it outside.
    ok(&agent(&[
        "sim",
        "wifi",
        "--state",
        state,
        LAB_AP,
        "02:00:00:00:00:09",
    ]));
    wait_for("the second gate scan taken in", LIMIT, || {
        (zones(root).last_visible().len() == 2).then_some(())
    });
    assert!(zone_names(&status(state)).is_empty());
    // Once it was out of sight, seeing it again enters.
    ok(&agent(&["sim", "wifi", "--state", state]));
    wait_for("out of sight", LIMIT, || {
        zones(root).last_visible().is_empty().then_some(())
    });
    ok(&agent(&["sim", "wifi", "--state", state, LAB_AP]));
    wait_status(state, "inside lab again", |s| zone_names(s) == ["lab"]);

    // A refusal through the socket: an error, exit non-zero, nothing changed.
    let err = fails(&agent(&[
        "checkpoint",
        "--state",
        state,
        &code("lab", "north-gate", Direction::Out, (-5, 60), "forged", 42),
    ]));
    assert!(err.contains("forged"), "{err}");
    assert_eq!(zone_names(&status(state)), ["lab"]);

    // Restart with the access point out of sight: the zone is kept and enforced.
    ok(&agent(&["sim", "wifi", "--state", state]));
    wait_for("out of sight", LIMIT, || {
        zones(root).last_visible().is_empty().then_some(())
    });
    agent_run.stop();
    ok(&agent(&["sim", "set", "--state", state, "camera", "on"]));
    assert_eq!(zone_names(&status(state)), ["lab"]);
    let agent_run = Running::start(state);
    wait_for("camera off after the restart", LIMIT, || {
        (camera(root) == Switch::Off).then_some(())
    });
    let s = status(state);
    assert_eq!(
        (s["effective_mode"].as_str(), zone_names(&s)),
        (Some("secure-site"), vec!["lab".to_owned()])
    );
    agent_run.stop();
    assert!(!root.join("control.sock").exists());
}

#[test]
fn a_corrupt_zone_state_means_lockdown_never_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    std::fs::write(root.join(ZONES_FILE), b"{\"inside\": {\"lab\"").unwrap();
    let s = status(state);
    assert_eq!(s["effective_mode"], "lockdown");
    let reason = s["fallback_reason"].as_str().unwrap();
    assert!(
        reason.contains("zones.json") && reason.contains("corrupt"),
        "{reason}"
    );
    assert!(s["zone_state_error"].is_string());

    let err = fails(&agent(&[
        "checkpoint",
        "--state",
        state,
        &code("lab", "north-gate", Direction::Out, (-5, 60), "o", 11),
    ]));
    assert!(err.contains("unreadable"), "{err}");

    let agent_run = Running::start(state);
    wait_for("lockdown enforced", LIMIT, || {
        let sim = SimHardware::new(root).read().unwrap();
        (sim.capabilities[&Capability::Nfc] == Switch::Off
            && sim.capabilities[&Capability::Camera] == Switch::Off)
            .then_some(())
    });
    agent_run.stop();
    // Kept as it was, for repair.
    assert_eq!(
        std::fs::read(root.join(ZONES_FILE)).unwrap(),
        b"{\"inside\": {\"lab\""
    );
    let queued = queued_reports(root);
    assert!(queued.iter().all(|r| r.effective_mode == "lockdown"));
    assert!(queued.iter().any(|r| {
        r.fallback_reason
            .as_deref()
            .is_some_and(|f| f.contains("zones.json"))
    }));
}
