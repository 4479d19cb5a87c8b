//! Fleet lists over HTTP and the CLI: `GET /devices` pages with a cursor and filters
//! (group, zone, verdict, owner, hardware, last report), the CLI follows the pages,
//! counts agree with lists, and bad queries are refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Agent, Http, Server, stderr, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn ids(list: &Value) -> Vec<String> {
    ids_of(list, "id")
}

fn ids_of(list: &Value, field: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[field].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn lists_page_with_a_cursor_and_filter_by_group_zone_and_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let zone_file = tmp.path().join("lab.toml");
    std::fs::write(
        &zone_file,
        "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"gate\"]\n",
    )
    .unwrap();
    server.cli_json(&["zones", "apply", zone_file.to_str().unwrap()]);
    server.cli_json(&["groups", "create", "unit-7"]);

    let mut phones = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut a = Agent::new(tmp.path().join(user));
        let id = a.enroll(&server.enrollment_url(user));
        a.start();
        phones.push((id, a));
    }
    let all: Vec<String> = {
        let mut v: Vec<String> = phones.iter().map(|(i, _)| i.clone()).collect();
        v.sort();
        v
    };
    for (id, _) in &phones {
        wait_for(&format!("{id} compliant"), DEADLINE, || {
            (server.device(id)["compliance"] == "compliant").then_some(())
        });
    }
    server.cli_json(&["groups", "add", "unit-7", &phones[0].0, &phones[1].0]);
    server.cli_json(&["devices", "enter-zone", &phones[2].0, "lab"]);
    wait_for("carol inside lab", DEADLINE, || {
        (server.device(&phones[2].0)["zones"] == serde_json::json!(["lab"])).then_some(())
    });

    // One device a page: three pages, each device once, in enrollment order.
    let mut seen = Vec::new();
    let mut path = "/api/v1/devices?limit=1".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = http.send("GET", &path, Some(&server.owner_token), None);
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        pages += 1;
        assert_eq!(page["devices"].as_array().unwrap().len(), 1);
        seen.push(page["devices"][0]["id"].as_str().unwrap().to_owned());
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/devices?limit=1&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        phones.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
        "each device once, in the order they enrolled"
    );

    // The CLI follows the pages; filters narrow.
    assert_eq!(ids(&server.cli_json(&["devices", "list"])), all);
    let in_group = ids(&server.cli_json(&["devices", "list", "--group", "unit-7"]));
    let mut expect = vec![phones[0].0.clone(), phones[1].0.clone()];
    expect.sort();
    assert_eq!(in_group, expect);
    assert_eq!(
        ids(&server.cli_json(&["devices", "list", "--zone", "lab"])),
        vec![phones[2].0.clone()]
    );
    // The mode filter is the bundle's (a zone's mode is the phone's to apply).
    assert_eq!(
        ids(&server.cli_json(&["devices", "list", "--mode", "standard"])),
        all
    );
    assert!(ids(&server.cli_json(&["devices", "list", "--assigned-mode", "lockdown"])).is_empty());
    assert_eq!(
        ids(&server.cli_json(&["devices", "list", "--user", "bob"])),
        vec![phones[1].0.clone()]
    );
    assert_eq!(
        ids(&server.cli_json(&["devices", "list", "--hardware", "sim", "--seen-after", "1h"])),
        all
    );
    assert!(ids(&server.cli_json(&["devices", "list", "--compliance", "stale"])).is_empty());
    assert!(ids(&server.cli_json(&["devices", "list", "--seen-before", "1h"])).is_empty());
    assert_eq!(
        server
            .cli_json(&["devices", "list", "--limit", "2"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let counts = server.cli_json(&["devices", "counts"]);
    assert_eq!(counts["total"], 3);
    assert_eq!(counts["by_zone"]["lab"], 1);
    assert_eq!(counts["by_group"]["unit-7"], 2);

    // Leaving the zone takes the phone out of the zone's list.
    server.cli_json(&["devices", "exit-zone", &phones[2].0, "lab"]);
    wait_for("carol out of lab", DEADLINE, || {
        ids(&server.cli_json(&["devices", "list", "--zone", "lab"]))
            .is_empty()
            .then_some(())
    });

    // Bad queries are refused with the reason, not answered with everything.
    for (query, needle) in [
        ("groop=unit-7", "unknown field"),
        ("limit=0", "limit must be between"),
        ("limit=5001", "limit must be between"),
        ("after=nonsense", "cursor"),
        ("compliance=perfect", "bad query"),
        ("group=Unit%207", "bad query"),
        ("seen_before=yesterday", "bad query"),
    ] {
        let (status, body) = http.send(
            "GET",
            &format!("/api/v1/devices?{query}"),
            Some(&server.owner_token),
            None,
        );
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
    // The enrollment codes: each phone's is used, naming the phone; a new one is open;
    // the codes themselves are never listed.
    let spare = server.cli_json(&["enroll", "create", "--user", "dave"]);
    let codes = server.cli_json(&["enroll", "list"]);
    assert_eq!(codes.as_array().unwrap().len(), 4, "{codes}");
    assert_eq!(ids_of(&codes, "id").len(), 4);
    let used = server.cli_json(&["enroll", "list", "--state", "used"]);
    assert_eq!(ids_of(&used, "device_id"), all);
    let open = server.cli_json(&["enroll", "list", "--state", "open", "--user", "dave"]);
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["id"], spare["id"]);
    assert_eq!(open[0]["state"], "open");
    let token = spare["url"]
        .as_str()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap();
    let token = token.split('&').next().unwrap();
    assert!(!codes.to_string().contains(token), "a code listed: {codes}");
    let (status, body) = http.send(
        "GET",
        "/api/v1/enrollments?limit=1",
        Some(&server.owner_token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["enrollments"].as_array().unwrap().len(), 1);
    assert!(first["next"].is_string(), "{first}");
    for (query, needle) in [
        ("state=lost", "bad query"),
        ("after=r-1", "cursor"),
        ("token=x", "unknown field"),
    ] {
        let (status, body) = http.send(
            "GET",
            &format!("/api/v1/enrollments?{query}"),
            Some(&server.owner_token),
            None,
        );
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }

    let out = server.cli_as(
        &server.owner_token,
        &["devices", "list", "--compliance", "perfect"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("compliant, non_compliant"),
        "{}",
        stderr(&out)
    );
    for (_, mut a) in phones {
        a.stop();
    }
}

#[test]
fn bulk_actions_confirm_the_count_and_give_each_phone_its_own_bundle_or_command() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    server.cli_json(&["groups", "create", "unit-7"]);
    let mut phones = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut a = Agent::new(tmp.path().join(user));
        let id = a.enroll(&server.enrollment_url(user));
        a.start();
        phones.push((id, a));
    }
    server.cli_json(&["groups", "add", "unit-7", &phones[0].0, &phones[1].0]);
    let unit: Vec<String> = phones[..2].iter().map(|(i, _)| i.clone()).collect();
    let wait_mode = |id: &str, mode: &str| {
        wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
            let d = server.device(id);
            (d["compliance"] == "compliant" && d["reported_mode"] == mode).then_some(d)
        })
    };
    let bulk_entries = |action: &str| -> Vec<Value> {
        server
            .cli_json(&["audit", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect()
    };
    let fails = |token: &str, args: &[&str], needle: &str| {
        let out = server.cli_as(token, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    };
    let owner = server.owner_token.clone();

    // Without --count the CLI only says how many devices the filter covers.
    let set = [
        "devices",
        "bulk",
        "set-mode",
        "secure-site",
        "--group",
        "unit-7",
    ];
    fails(&owner, &set, "covers 2 device(s)");
    // A count that is not the current one does nothing.
    fails(
        &owner,
        &[&set[..], &["--count", "3"]].concat(),
        "covers 2 devices, not the 3 confirmed",
    );
    assert!(bulk_entries("bulk.set_mode").is_empty());
    // Confirmed: both phones of the unit switch; the third does not.
    let done = server.cli_json(&[&set[..], &["--count", "2"]].concat());
    assert_eq!(
        (done["action"].as_str(), done["devices"].as_u64()),
        (Some("set_mode"), Some(2))
    );
    for id in &unit {
        wait_mode(id, "secure-site");
        assert_eq!(server.device(id)["assigned_mode"], "secure-site");
    }
    assert_eq!(server.device(&phones[2].0)["assigned_mode"], "standard");
    let entries = bulk_entries("bulk.set_mode");
    assert_eq!(entries.len(), 1, "one audit entry for the request");
    assert_eq!(entries[0]["detail"]["count"], 2);
    assert_eq!(entries[0]["detail"]["filter"]["group"], "unit-7");

    // Bulk lock: a signed command per phone, each carried out; then unlock.
    let lock = [
        "devices", "bulk", "lock", "--group", "unit-7", "--count", "2",
    ];
    let done = server.cli_json(&lock);
    assert_eq!(done["devices"], 2);
    for id in &unit {
        let d = wait_mode(id, "lockdown");
        assert!(d["locked_by"].is_string(), "{d}");
        let cmds = server.cli_json(&["devices", "commands", id]);
        assert_eq!(cmds[0]["action"], "lock", "{cmds}");
        assert_eq!(cmds[0]["created_by"], "admin:test-owner", "{cmds}");
    }
    assert_eq!(server.device(&phones[2].0)["reported_mode"], "standard");
    // The fleet's commands, page by page: the two locks, both verified.
    let locks = server.cli_json(&["commands", "list", "--action", "lock"]);
    let mut sorted_unit = unit.clone();
    sorted_unit.sort();
    assert_eq!(ids_of(&locks, "device_id"), sorted_unit);
    assert!(
        locks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "verified"),
        "{locks}"
    );
    let (status, body) = http.send(
        "GET",
        "/api/v1/commands?action=lock&limit=1",
        Some(&owner),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let next = page["next"].as_str().unwrap();
    let (_, body) = http.send(
        "GET",
        &format!("/api/v1/commands?action=lock&limit=1&after={next}"),
        Some(&owner),
        None,
    );
    let page2: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(page["commands"][0]["id"], page2["commands"][0]["id"]);
    assert!(page2["next"].is_null());
    for bad in ["after=x", "limit=0", "state=done", "colour=red"] {
        let (status, body) = http.send(
            "GET",
            &format!("/api/v1/commands?{bad}"),
            Some(&owner),
            None,
        );
        assert_eq!(status, 400, "{bad}: {body}");
    }
    server.cli_json(&[
        "devices", "bulk", "unlock", "--group", "unit-7", "--count", "2",
    ]);
    for id in &unit {
        wait_mode(id, "secure-site");
    }

    // Wipe in bulk: owners only, and only with --yes.
    let operator = server.admin_token("op", "operator");
    let wipe = ["devices", "bulk", "wipe", "--user", "carol", "--count", "1"];
    fails(
        &operator,
        &[&wipe[..], &["--yes"]].concat(),
        "may not wipe devices in bulk",
    );
    fails(&owner, &wipe, "--yes");
    server.cli_json(&[&wipe[..], &["--yes"]].concat());
    wait_for("carol wiped and revoked", DEADLINE, || {
        server.device(&phones[2].0)["revoked_at"]
            .is_string()
            .then_some(())
    });

    // Bad requests change nothing.
    for (body, status, needle) in [
        (
            r#"{"filter":{},"action":"set_mode","expected_count":2}"#,
            400,
            "needs a mode",
        ),
        (
            r#"{"filter":{},"action":"lock","mode":"standard","expected_count":2}"#,
            400,
            "takes no mode",
        ),
        (
            r#"{"filter":{"limit":1},"action":"lock","expected_count":2}"#,
            400,
            "no after, limit",
        ),
        (
            r#"{"filter":{"groop":"x"},"action":"lock","expected_count":2}"#,
            422,
            "unknown field",
        ),
        (
            r#"{"filter":{},"action":"set_mode","mode":"nope","expected_count":2}"#,
            404,
            "no mode nope",
        ),
        (
            r#"{"filter":{},"action":"explode","expected_count":2}"#,
            422,
            "unknown variant",
        ),
        (
            r#"{"filter":{},"action":"lock","expected_count":2,"expires_in_secs":1}"#,
            400,
            "expires_in_secs",
        ),
    ] {
        let (s, b) = http.send(
            "POST",
            "/api/v1/devices/bulk",
            Some(&owner),
            Some(body.as_bytes().to_vec()),
        );
        assert_eq!(s, status, "{body}: {b}");
        assert!(b.contains(needle), "{body}: {b}");
    }
    assert_eq!(bulk_entries("bulk.lock").len(), 1);
    let out = server.cli_as(&owner, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (_, mut a) in phones {
        a.stop();
    }
}
