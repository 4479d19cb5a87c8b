//! Device groups end to end: a real server, the admin CLI and simulated phones (real
//! agent binaries). A group's mode reaches its phones (the strictest of the phone's own
//! and its groups' modes applies), enrollment codes put phones into groups, every
//! change is audited, and bad requests change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Agent, Server, stderr, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn wait_compliant(server: &Server, id: &str, mode: &str) -> Value {
    wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
        let d = server.device(id);
        (d["compliance"] == "compliant" && d["mode"] == mode).then_some(d)
    })
}

fn actions(server: &Server) -> Vec<String> {
    server
        .cli_json(&["audit", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_groups_mode_reaches_its_phones_and_the_strictest_mode_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);

    let created = server.cli_json(&[
        "groups",
        "create",
        "unit-7",
        "--description",
        "Seventh unit",
        "--mode",
        "secure-site",
    ]);
    assert_eq!(created["mode"], "secure-site");
    assert_eq!(created["devices"], 0);

    // A phone enrolled with a code naming the group joins it and gets its mode at once.
    let code = server.cli_json(&["enroll", "create", "--user", "alice", "--group", "unit-7"]);
    let mut alice = Agent::new(tmp.path().join("alice"));
    let a = alice.enroll(code["url"].as_str().unwrap());
    alice.start();
    let view = wait_compliant(&server, &a, "secure-site");
    assert_eq!(view["assigned_mode"], "standard");
    assert_eq!(view["groups"], serde_json::json!(["unit-7"]));

    // A second phone, outside the group, stays in its own mode until it is added.
    let mut bob = Agent::new(tmp.path().join("bob"));
    let b = bob.enroll(&server.enrollment_url("bob"));
    bob.start();
    wait_compliant(&server, &b, "standard");
    let added = server.cli_json(&["groups", "add", "unit-7", &b]);
    assert_eq!(
        (added["changed"].as_u64(), added["reissued"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(added["group"]["devices"], 2);
    wait_compliant(&server, &b, "secure-site");
    // Adding it again changes nothing.
    let again = server.cli_json(&["groups", "add", "unit-7", &b]);
    assert_eq!(again["changed"], 0);

    // The group's mode changes for both at once (pushed: both are connected).
    let changed = server.cli_json(&["groups", "set-mode", "unit-7", "lockdown"]);
    assert_eq!(changed["reissued"], 2);
    wait_compliant(&server, &a, "lockdown");
    wait_compliant(&server, &b, "lockdown");

    // A device's own stricter mode wins over a laxer group mode.
    server.cli_json(&["groups", "set-mode", "unit-7", "standard"]);
    server.cli_json(&["devices", "set-mode", &a, "secure-site"]);
    wait_compliant(&server, &a, "secure-site");
    wait_compliant(&server, &b, "standard");

    // Removed from the group, a phone keeps only its own mode; without a mode the
    // group assigns nothing.
    server.cli_json(&["groups", "set-mode", "unit-7", "lockdown"]);
    wait_compliant(&server, &b, "lockdown");
    let removed = server.cli_json(&["groups", "remove", "unit-7", &b]);
    assert_eq!(removed["changed"], 1);
    wait_compliant(&server, &b, "standard");
    server.cli_json(&["groups", "set-mode", "unit-7", "none"]);
    wait_compliant(&server, &a, "secure-site");

    // The counts see both phones, their modes and the group.
    let counts = server.cli_json(&["devices", "counts"]);
    assert_eq!(counts["total"], 2);
    assert_eq!(counts["connected"], 2);
    assert_eq!(counts["by_compliance"]["compliant"], 2);
    assert_eq!(counts["by_mode"]["secure-site"], 1);
    assert_eq!(counts["by_mode"]["standard"], 1);
    assert_eq!(counts["by_assigned_mode"]["secure-site"], 1);
    assert_eq!(counts["by_group"]["unit-7"], 1);
    assert_eq!(counts["by_hardware"]["sim"], 2);

    let list = server.cli_json(&["groups", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["devices"], 1);
    assert_eq!(list[0]["mode"], Value::Null);

    // Every change is in the audit log, and the log verifies.
    let log = actions(&server);
    for a in ["group.create", "group.add", "group.mode", "group.remove"] {
        assert!(log.iter().any(|x| x == a), "{a} missing from {log:?}");
    }
    let out = server.cli_as(&server.owner_token, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    alice.stop();
    bob.stop();
}

#[test]
fn bad_group_requests_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    server.cli_json(&["groups", "create", "site.north"]);
    let phone = Agent::new(tmp.path().join("p"));
    let id = phone.enroll(&server.enrollment_url("carol"));
    let before = actions(&server).len();

    let refused = |args: &[&str], needle: &str| {
        let out = server.cli_as(&server.owner_token, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    };
    refused(&["groups", "create", "site.north"], "exists already");
    refused(
        &["groups", "create", "Site North"],
        "invalid device group name",
    );
    refused(
        &["groups", "create", "night", "--mode", "no-such-mode"],
        "no mode no-such-mode",
    );
    refused(&["groups", "show", "nowhere"], "nowhere");
    refused(&["groups", "add", "nowhere", &id], "nowhere");
    refused(
        &[
            "groups",
            "add",
            "site.north",
            "dev_000000000000000000000000",
        ],
        "no device dev_000000000000000000000000",
    );
    refused(
        &["groups", "set-mode", "site.north", "no-such-mode"],
        "no-such-mode",
    );
    refused(
        &["enroll", "create", "--user", "dan", "--group", "nowhere"],
        "nowhere",
    );
    // A device that does not exist in a list with one that does: nothing is added.
    refused(
        &[
            "groups",
            "add",
            "site.north",
            &id,
            "dev_000000000000000000000000",
        ],
        "no device dev_000000000000000000000000",
    );
    assert_eq!(
        server.cli_json(&["groups", "show", "site.north"])["devices"],
        0
    );

    // An auditor reads groups but cannot change them.
    let auditor = server.admin_token("aud", "auditor");
    let out = server.cli_as(&auditor, &["--json", "groups", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli_as(&auditor, &["groups", "add", "site.north", &id]);
    assert!(!out.status.success());

    // A revoked device cannot join.
    server.cli_json(&["devices", "revoke", &id]);
    refused(&["groups", "add", "site.north", &id], "revoked");

    // Refusals wrote nothing: the new entries are the auditor's credential and the
    // revocation (with its command).
    let after = actions(&server);
    assert!(
        after[before..]
            .iter()
            .all(|a| ["admin_token.", "device.", "command."]
                .iter()
                .any(|p| a.starts_with(p))),
        "{:?}",
        &after[before..]
    );
}
