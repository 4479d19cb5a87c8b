//! The phone's clock through the real binary, offline: the trusted time floor in
//! `time-floor.json` survives restarts and reboots and only moves forward, a wall clock
//! set back never lets a kept check-out code through, a wall clock far ahead does not
//! lock an honest phone out once it is right, and a check-out code older than a Wi-Fi
//! entry is refused. The clocks are moved through the agent's test seam
//! (`REDOUBT_AGENT_TEST_CLOCK`).

// A test's helpers panic on purpose: the panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{BIN, LAB_AP, code, fails, ok, prepare_zoned, wait_for};
use ed25519_dalek::SigningKey;
use redoubt_agent::clock::{TEST_CLOCK_ENV, TIME_FLOOR_FILE};
use redoubt_agent::outbox::Outbox;
use redoubt_agent::state::OUTBOX_DIR;
use redoubt_proto::{ComplianceReport, Direction, Timestamp};
use serde::Deserialize;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

/// Runs the agent with `args`, its clocks shifted as `clock` says
/// (`wall=±SECS,boot=±SECS,boot-id=TEXT`).
fn agent_at(clock: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("REDOUBT_AGENT_STATE")
        .env_remove("REDOUBT_AGENT_RECHECK_MS")
        .env(TEST_CLOCK_ENV, clock)
        .output()
        .unwrap()
}

fn checkpoint_at(clock: &str, state: &str, code: &str) -> Output {
    agent_at(clock, &["checkpoint", "--state", state, code])
}

fn status_at(clock: &str, state: &str) -> Value {
    serde_json::from_str(&ok(&agent_at(
        clock,
        &["status", "--state", state, "--json"],
    )))
    .unwrap()
}

fn zone_names(s: &Value) -> Vec<String> {
    s["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["zone"].as_str().unwrap().to_owned())
        .collect()
}

#[derive(Deserialize)]
struct FloorFile {
    floor: Timestamp,
}

fn floor(root: &Path) -> Timestamp {
    let bytes = std::fs::read(root.join(TIME_FLOOR_FILE)).unwrap();
    serde_json::from_slice::<FloorFile>(&bytes).unwrap().floor
}

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

/// Lets `secs` pass for the phone: both its clocks move on, and a check-in code of
/// that moment is scanned (any command would do; this one also stores the floor).
fn time_passes(state: &str, secs: i64, nonce: &str) {
    let clock = format!("wall=+{secs},boot=+{secs}");
    let again = code(
        "lab",
        "north-gate",
        Direction::In,
        (secs - 2, secs + 30),
        nonce,
        11,
    );
    ok(&checkpoint_at(&clock, state, &again));
}

#[test]
fn a_kept_check_out_code_replayed_with_the_clock_set_back_is_refused_after_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    let check_in = code("lab", "north-gate", Direction::In, (-2, 30), "in-1", 11);
    ok(&checkpoint_at("", state, &check_in));
    // The holder keeps a check-out code instead of using it.
    let kept = code("lab", "north-gate", Direction::Out, (-1, 30), "kept", 11);

    // Half an hour passes (the phone runs; every process is a restart).
    time_passes(state, 1800, "in-2");
    assert!(floor(root).unix() >= Timestamp::now().unix() + 1790);

    // The wall clock set back half an hour, into the kept code's window: refused.
    let err = fails(&checkpoint_at("wall=+0,boot=+1800", state, &kept));
    assert!(err.contains("expired"), "{err}");
    // After a reboot too (the boot clock restarts, the floor stays).
    let err = fails(&checkpoint_at(
        "wall=+0,boot=+0,boot-id=another-boot",
        state,
        &kept,
    ));
    assert!(err.contains("expired"), "{err}");
    let s = status_at("wall=+0,boot=+0,boot-id=another-boot", state);
    assert_eq!(zone_names(&s), ["lab"]);
    assert_eq!(s["effective_mode"], "secure-site");
}

#[test]
fn a_wall_clock_behind_the_floor_refuses_check_out_honours_check_in_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    ok(&checkpoint_at(
        "",
        state,
        &code("lab", "north-gate", Direction::In, (-2, 30), "in-1", 11),
    ));
    time_passes(state, 600, "in-2");

    // The wall clock ten minutes behind what the phone knows has passed. A check-out
    // code valid now (by the floor) is refused; the zone stays.
    let behind = "wall=+0,boot=+600";
    let out_code = code("lab", "north-gate", Direction::Out, (598, 630), "out-1", 11);
    let err = fails(&checkpoint_at(behind, state, &out_code));
    assert!(err.contains("set back"), "{err}");
    let s = status_at(behind, state);
    assert_eq!(zone_names(&s), ["lab"]);
    assert_eq!(s["clock_behind"], true, "{s}");
    // A check-in code (it only restricts) still counts.
    let vault_in = code("vault", "door", Direction::In, (598, 630), "vault-in", 13);
    let out = ok(&checkpoint_at(behind, state, &vault_in));
    assert!(out.contains("entered zone vault"), "{out}");
    // The signed report says so, with the floor.
    let last = queued_reports(root).pop().unwrap();
    assert!(last.clock_tampered, "{last:?}");
    let floor_seen = last.trusted_floor.unwrap();
    assert!(
        floor_seen.unix() >= last.observed_at.unix() + 590,
        "{last:?}"
    );
    // Once the wall clock is right, the same kind of check-out works.
    let right = "wall=+600,boot=+600";
    let out_code = code("lab", "north-gate", Direction::Out, (598, 630), "out-2", 11);
    let out = ok(&checkpoint_at(right, state, &out_code));
    assert!(out.contains("left zone lab"), "{out}");
    assert!(!queued_reports(root).pop().unwrap().clock_tampered);
}

#[test]
fn a_wall_clock_far_ahead_does_not_move_the_floor_and_the_phone_works_once_it_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    let now = Timestamp::now();
    // A GNSS glitch: the wall clock a day ahead. Stricter: the bundle counts as
    // expired (lockdown), and a code of the real moment counts as expired.
    let ahead = "wall=+86400";
    let s = status_at(ahead, state);
    assert_eq!(s["effective_mode"], "lockdown");
    let err = fails(&checkpoint_at(
        ahead,
        state,
        &code("lab", "north-gate", Direction::In, (-2, 30), "in-1", 11),
    ));
    assert!(err.contains("expired"), "{err}");
    // The floor did not follow the wall clock.
    assert!(floor(root).unix() < now.unix() + 60, "{:?}", floor(root));
    // The clock is right again: the bundle holds and codes work.
    let s = status_at("", state);
    assert_eq!(s["effective_mode"], "standard");
    let out = ok(&checkpoint_at(
        "",
        state,
        &code("lab", "north-gate", Direction::In, (-2, 30), "in-2", 11),
    ));
    assert!(out.contains("entered zone lab"), "{out}");
    let out = ok(&checkpoint_at(
        "",
        state,
        &code("lab", "north-gate", Direction::Out, (-1, 30), "out-1", 11),
    ));
    assert!(out.contains("left zone lab"), "{out}");
    assert!(!queued_reports(root).pop().unwrap().clock_tampered);
}

#[test]
fn the_floor_survives_restarts_and_reboots_and_only_moves_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    let now = Timestamp::now();
    let refused = code("ghost", "gate", Direction::In, (-2, 30), "g", 14);
    // Any command reads the time and stores the floor (the held bundle's issue time).
    fails(&checkpoint_at("", state, &refused));
    let first = floor(root);
    assert!(
        (first.unix() - now.unix()).abs() <= 5,
        "{first:?} vs {now:?}"
    );
    // The wall clock far ahead does not move it.
    fails(&checkpoint_at("wall=+100000", state, &refused));
    assert!(floor(root).unix() < first.unix() + 60);
    // The boot clock does (a restart in the same boot).
    fails(&checkpoint_at("boot=+300", state, &refused));
    let later = floor(root);
    assert!(later.unix() >= first.unix() + 300, "{later:?}");
    // A boot clock behind the stored reading adds nothing and takes nothing.
    fails(&checkpoint_at("boot=+100", state, &refused));
    assert!(floor(root) >= later);
    // A reboot: the floor stays, then runs with the new boot's clock.
    fails(&checkpoint_at("boot-id=next-boot", state, &refused));
    assert!(floor(root) >= later);
    fails(&checkpoint_at(
        "boot=+400,boot-id=next-boot",
        state,
        &refused,
    ));
    assert!(floor(root).unix() >= later.unix() + 400);
    // The seam refuses nonsense rather than running on a made-up clock.
    let err = fails(&checkpoint_at("floor=+1", state, &refused));
    assert!(err.contains(TEST_CLOCK_ENV), "{err}");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_check_out_code_older_than_a_wifi_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    prepare_zoned(root);
    let state = root.to_str().unwrap();
    // The floor is stored now; a code of this moment is kept.
    fails(&checkpoint_at(
        "",
        state,
        &code("ghost", "gate", Direction::In, (-2, 30), "g", 14),
    ));
    let kept = code("lab", "north-gate", Direction::Out, (-1, 60), "kept", 11);
    // Twenty seconds later (by the boot clock) the phone walks in: Wi-Fi entry.
    let _run = Running(
        Command::new(BIN)
            .args(["run", "--state", state, "--recheck-ms", "100"])
            .env_remove("REDOUBT_AGENT_STATE")
            .env_remove("REDOUBT_AGENT_RECHECK_MS")
            .env(TEST_CLOCK_ENV, "wall=+20,boot=+20")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent runs", LIMIT, || {
        (status_at("", state)["connection"] != "not_running").then_some(())
    });
    ok(&agent_at("", &["sim", "wifi", "--state", state, LAB_AP]));
    wait_for("inside lab by Wi-Fi", LIMIT, || {
        (zone_names(&status_at("", state)) == ["lab"]).then_some(())
    });
    // The kept code is older than that entry: refused (through the running agent).
    let err = fails(&checkpoint_at("", state, &kept));
    assert!(err.contains("older than the phone's entry"), "{err}");
    assert_eq!(zone_names(&status_at("", state)), ["lab"]);
    // A code of the moment after the entry works.
    let fresh = code("lab", "north-gate", Direction::Out, (19, 60), "fresh", 11);
    let out = ok(&checkpoint_at("", state, &fresh));
    assert!(out.contains("left zone lab"), "{out}");
}
