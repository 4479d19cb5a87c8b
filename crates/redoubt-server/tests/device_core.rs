//! End-to-end: a real server, the admin CLI and simulated phones (real agent binaries)
//! on loopback. Enrollment, modes, compliance, restarts, roles.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Server, stderr, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn compliance(v: &Value) -> &str {
    v["compliance"].as_str().unwrap_or("")
}

/// Waits until the server shows the device compliant in `mode` and returns the view.
fn wait_compliant(server: &Server, id: &str, mode: &str) -> Value {
    wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
        let d = server.device(id);
        (compliance(&d) == "compliant" && d["mode"] == mode).then_some(d)
    })
}

#[test]
fn enrollment_tokens_are_single_use_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);

    let url = server.enrollment_url("alice");
    let phone1 = Agent::new(tmp.path().join("phone1"));
    let id1 = phone1.enroll(&url);

    // The same code on another phone is refused.
    let phone2 = Agent::new(tmp.path().join("phone2"));
    let out = phone2.cmd(&["enroll", &url]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already been used"),
        "{}",
        stderr(&out)
    );

    // A second phone with its own code works.
    let id2 = phone2.enroll(&server.enrollment_url("bob"));
    assert_ne!(id1, id2);

    // An expired code is refused.
    let created = server.cli_json(&["enroll", "create", "--user", "carol", "--ttl", "1s"]);
    let expires = created["expires_at"].as_str().unwrap().to_owned();
    wait_for("the code to expire", DEADLINE, || {
        let now = server.cli_json(&["devices", "list"]); // any round trip; the clock is what matters
        drop(now);
        (std::time::SystemTime::now() > parse_rfc3339(&expires) + Duration::from_secs(1))
            .then_some(())
    });
    let phone3 = Agent::new(tmp.path().join("phone3"));
    let out = phone3.cmd(&["enroll", created["url"].as_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // A malformed code is refused before any network use.
    let out = phone3.cmd(&["enroll", "redoubt://enroll?token=x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("malformed"),
        "{}",
        stderr(&out)
    );

    let list = server.cli_json(&["devices", "list"]);
    let users: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob"]);
    for d in list.as_array().unwrap() {
        assert_eq!(compliance(d), "pending");
        assert_eq!(d["assigned_mode"], "standard");
    }
}

fn parse_rfc3339(s: &str) -> std::time::SystemTime {
    // YYYY-MM-DDTHH:MM:SSZ → seconds since the epoch (days-from-civil).
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    assert_eq!(b[b.len() - 1], b'Z', "{s}");
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    std::time::UNIX_EPOCH + Duration::from_secs((days * 86400 + hh * 3600 + mm * 60 + ss) as u64)
}

#[test]
fn set_mode_reaches_the_phone_and_comes_back_compliant() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut phone = Agent::new(tmp.path().join("phone"));
    // Enrolled by name: the name is what the phone's resolver (the holder's DNS) answers,
    // so it must never be what the reach table lets through.
    let url = server
        .enrollment_url("alice")
        .replace("127.0.0.1", "localhost");
    assert!(url.contains("localhost"), "{url}");
    let id = phone.enroll(&url);
    phone.start();
    let d = wait_compliant(&server, &id, "standard");
    assert_eq!(d["capabilities"]["camera"], "on");
    wait_for("agent connected", DEADLINE, || {
        (server.device(&id)["connected"] == true).then_some(())
    });

    let started = Instant::now();
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "secure-site"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let d = wait_compliant(&server, &id, "secure-site");
    let elapsed = started.elapsed();
    eprintln!("set-mode secure-site -> compliant: {elapsed:?} (including CLI process start-ups)");
    assert_eq!(d["assigned_mode"], "secure-site");
    for cap in [
        "camera",
        "microphone",
        "bluetooth",
        "location",
        "usb_data",
        "screenshots",
    ] {
        assert_eq!(d["capabilities"][cap], "off", "{cap}: {d}");
    }
    assert_eq!(d["network"], "organization-only");
    // The measurement is the simulated hardware's real state.
    let hw = phone.sim();
    assert_eq!(hw["capabilities"]["camera"], "off");
    assert_eq!(hw["simulated"], true);
    // Only the signed bundle's addresses stay reachable, never the enrollment host name.
    assert_eq!(
        hw["allowed_endpoints"],
        serde_json::json!(["127.0.0.1"]),
        "{hw}"
    );
    let status = phone.status();
    assert_eq!(status["effective_mode"], "secure-site");
    assert_eq!(status["simulated"], true);
    assert_eq!(status["connection"], "connected");

    // Back to standard: restrictions lift only with the newer signed bundle.
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "standard"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let d = wait_compliant(&server, &id, "standard");
    assert_eq!(d["capabilities"]["camera"], "on");
}

#[test]
fn drift_behind_the_agents_back_is_noticed_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "secure-site"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    phone.start();
    let before = wait_compliant(&server, &id, "secure-site");
    let seq_before = before["last_report_seq"].as_u64().unwrap();

    // A user (or a malicious app) switches the camera back on.
    phone.sim_set("camera", "on");
    // The agent notices, reports, re-applies, and reports the repaired state.
    let after = wait_for("a newer compliant report", DEADLINE, || {
        let d = server.device(&id);
        (compliance(&d) == "compliant" && d["last_report_seq"].as_u64().unwrap() > seq_before)
            .then_some(d)
    });
    assert_eq!(after["capabilities"]["camera"], "off");
    assert_eq!(phone.sim()["capabilities"]["camera"], "off");

    // A camera whose driver ignores the agent: the server must see it on, never off.
    let out = phone.cmd(&["sim", "set", "camera", "on", "--stuck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = wait_for("non-compliance to be reported", DEADLINE, || {
        let d = server.device(&id);
        (compliance(&d) == "non_compliant").then_some(d)
    });
    assert_eq!(d["capabilities"]["camera"], "on", "{d}");
    assert!(
        d["compliance_reasons"]
            .to_string()
            .contains("camera must be off"),
        "{d}"
    );
    assert_eq!(phone.sim()["capabilities"]["camera"], "on");
}

#[test]
fn everything_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    let fingerprint = server.fingerprint.clone();
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));

    // A custom mode, assigned.
    let mode_file = tmp.path().join("night.toml");
    std::fs::write(
        &mode_file,
        r#"name = "night-shift"
description = "Guards at night"
network = "open"
[capabilities]
camera = "deny"
microphone = "allow"
bluetooth = "deny"
wifi = "allow"
cellular_data = "allow"
location = "allow"
nfc = "allow"
usb_data = "deny"
screenshots = "allow"
"#,
    )
    .unwrap();
    let out = server.cli_as(
        &server.owner_token,
        &["modes", "apply", mode_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "night-shift"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    phone.start();
    wait_compliant(&server, &id, "night-shift");

    // Clean server restart: same CA, same devices, modes and assignments.
    let token = server.owner_token.clone();
    server.stop();
    let printed_fp = std::process::Command::new(common::bin("redoubt-server"))
        .args(["ca-fingerprint", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&printed_fp.stdout).trim(),
        fingerprint
    );
    let server = Server::start(&data, &[]);
    assert_eq!(server.fingerprint, fingerprint);
    // The old token still works.
    let out = server.cli_as(&token, &["--json", "whoami"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = server.device(&id);
    assert_eq!(d["assigned_mode"], "night-shift");
    let night = server.cli_json(&["modes", "show", "night-shift"]);
    assert_eq!(night["capabilities"]["camera"], "deny");
    // The agent reconnects on its own (new port: it cannot; so restart it with the same
    // identity) — the device id and key survive an agent restart.
    phone.stop();
    let status = phone.status();
    assert_eq!(status["device_id"], id.as_str());
    assert_eq!(status["connection"], "not_running");
    assert_eq!(status["effective_mode"], "night-shift");
}

#[test]
fn agent_reconnects_after_a_server_restart_on_the_same_address() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    // Find a free port, then pin the server to it so the phone can come back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("REDOUBT_LISTEN", listen.as_str()),
        ("REDOUBT_CHECK_IN_INTERVAL_SECS", "3"),
    ];
    let server = Server::start(&data, &env);
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    phone.start();
    let first = wait_compliant(&server, &id, "standard");
    server.stop();

    // While the server is down the agent keeps measuring; reports queue on disk.
    phone.sim_set("bluetooth", "off");
    wait_for("a queued report", DEADLINE, || {
        (phone.status()["pending_reports"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let server = Server::start(&data, &env);
    let d = wait_for("the queued report to arrive", DEADLINE, || {
        let d = server.device(&id);
        (d["capabilities"]["bluetooth"] == "off").then_some(d)
    });
    assert!(d["last_report_seq"].as_u64() > first["last_report_seq"].as_u64());
    wait_for("the outbox to drain", DEADLINE, || {
        (phone.status()["pending_reports"].as_u64() == Some(0)).then_some(())
    });
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "lockdown"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_compliant(&server, &id, "lockdown");

    // An agent restart keeps the identity: same device, same key, still compliant.
    phone.stop();
    phone.start();
    assert_eq!(phone.status()["device_id"], id.as_str());
    let seq = server.device(&id)["last_report_seq"].as_u64().unwrap();
    wait_for("a report from the restarted agent", DEADLINE, || {
        let d = server.device(&id);
        (d["last_report_seq"].as_u64().unwrap() > seq && compliance(&d) == "compliant")
            .then_some(())
    });
}

#[test]
fn roles_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    let auditor = server.admin_token("audrey", "auditor");
    let officer = server.admin_token("olga", "officer");
    let operator = server.admin_token("oscar", "operator");

    // The auditor reads but cannot change anything.
    let out = server.cli_as(&auditor, &["--json", "devices", "show", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli_as(&auditor, &["devices", "set-mode", &id, "secure-site"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("role auditor may not call PUT /devices/")
            && stderr(&out).contains("(needs owner or operator)"),
        "{}",
        stderr(&out)
    );
    let out = server.cli_as(&auditor, &["enroll", "create", "--user", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("forbidden") || stderr(&out).contains("may not"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.device(&id)["assigned_mode"], "standard");

    // Officers own modes, operators own devices.
    let mode_file = tmp.path().join("m.toml");
    std::fs::write(
        &mode_file,
        "name = \"quiet\"\nnetwork = \"open\"\n[capabilities]\ncamera = \"allow\"\nmicrophone = \"deny\"\nbluetooth = \"allow\"\nwifi = \"allow\"\ncellular_data = \"allow\"\nlocation = \"allow\"\nnfc = \"allow\"\nusb_data = \"allow\"\nscreenshots = \"allow\"\n",
    )
    .unwrap();
    let out = server.cli_as(&operator, &["modes", "apply", mode_file.to_str().unwrap()]);
    assert!(!out.status.success(), "operator applied a mode");
    let out = server.cli_as(&officer, &["modes", "apply", mode_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli_as(&officer, &["devices", "set-mode", &id, "quiet"]);
    assert!(!out.status.success(), "officer assigned a device");
    let out = server.cli_as(&operator, &["devices", "set-mode", &id, "quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A bad token is refused.
    let out = server.cli_as("rdt_not-a-token", &["devices", "list"]);
    assert!(!out.status.success());
    // Built-in presets cannot be overwritten.
    std::fs::write(
        &mode_file,
        std::fs::read_to_string(&mode_file)
            .unwrap()
            .replace("quiet", "lockdown"),
    )
    .unwrap();
    let out = server.cli_as(&officer, &["modes", "apply", mode_file.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn metrics_count_devices_by_compliance() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    let _pending = Agent::new(tmp.path().join("phone2")).enroll(&server.enrollment_url("bob"));
    phone.start();
    wait_compliant(&server, &id, "standard");
    let (_, text) =
        common::Http::new(&server).send("GET", "/metrics", Some(&server.owner_token), None);
    assert!(
        text.contains("redoubt_devices{compliance=\"compliant\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("redoubt_devices{compliance=\"pending\"} 1"),
        "{text}"
    );
    assert!(text.contains("redoubt_http_requests_total{"), "{text}");
    assert!(
        text.contains("redoubt_http_request_duration_seconds_bucket{"),
        "{text}"
    );
}

#[test]
fn the_agent_refuses_tampered_older_and_foreign_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut alice = Agent::new(tmp.path().join("alice"));
    let bob = Agent::new(tmp.path().join("bob"));
    let id = alice.enroll(&server.enrollment_url("alice"));
    bob.enroll(&server.enrollment_url("bob"));
    let old = tmp.path().join("alice-v1.json");
    std::fs::copy(alice.state.join("bundle.json"), &old).unwrap();

    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "secure-site"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    alice.start();
    wait_compliant(&server, &id, "secure-site");
    alice.stop();
    let held = alice.status();
    assert_eq!(held["effective_mode"], "secure-site");
    let version = held["bundle_version"].as_u64().unwrap();
    assert!(version >= 2);

    let import = |file: &std::path::Path| alice.cmd(&["bundle", "import", file.to_str().unwrap()]);
    let check_refused = |file: &std::path::Path, why: &str| {
        let out = import(file);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        let now = alice.status();
        assert_eq!(now["bundle_version"].as_u64(), Some(version));
        assert_eq!(now["effective_mode"], "secure-site");
    };

    // Bob's bundle, validly signed, is for another device.
    check_refused(&bob.state.join("bundle.json"), "addressed to device");
    // Alice's own first bundle is older (a replay / rollback to `standard`).
    check_refused(&old, "older");
    // Alice's current bundle with its payload edited to say `standard`.
    let mut env: Value =
        serde_json::from_slice(&std::fs::read(alice.state.join("bundle.json")).unwrap()).unwrap();
    let forged = tmp.path().join("forged.json");
    let payload = env["payload"].as_str().unwrap().to_owned();
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8(engine.decode(&payload).unwrap()).unwrap();
    assert!(text.contains("\"base_mode\":\"secure-site\""), "{text}");
    env["payload"] = Value::String(engine.encode(text.replace(
        "\"base_mode\":\"secure-site\"",
        "\"base_mode\":\"standard\"",
    )));
    std::fs::write(&forged, serde_json::to_vec(&env).unwrap()).unwrap();
    check_refused(&forged, "signature");
    // Garbage is refused with a clear message.
    std::fs::write(&forged, b"{not json").unwrap();
    check_refused(&forged, "not a signed policy bundle");
    // The held bundle itself is a no-op.
    let out = import(&alice.state.join("bundle.json"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_silent_device_turns_stale_and_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("REDOUBT_CHECK_IN_INTERVAL_SECS", "1"),
        ("REDOUBT_STALE_AFTER_INTERVALS", "2"),
    ];
    let server = Server::start(&tmp.path().join("server"), &env);
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    phone.start();
    wait_compliant(&server, &id, "standard");
    // Check-ins keep a connected phone fresh: the report sequence moves on by itself.
    let seq = server.device(&id)["last_report_seq"].as_u64().unwrap();
    wait_for("a periodic check-in", DEADLINE, || {
        (server.device(&id)["last_report_seq"].as_u64().unwrap() > seq).then_some(())
    });
    phone.stop();
    let d = wait_for("stale", DEADLINE, || {
        let d = server.device(&id);
        (compliance(&d) == "stale").then_some(d)
    });
    assert!(
        d["compliance_reasons"].to_string().contains("no report"),
        "{d}"
    );
    phone.start();
    wait_compliant(&server, &id, "standard");
}

#[test]
fn the_phone_reports_its_inventory_with_its_first_report() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    let before = server.device(&id);
    assert!(before.get("inventory").is_none(), "{before}");
    assert!(before.get("inventory_at").is_none(), "{before}");
    phone.start();
    let d = wait_compliant(&server, &id, "standard");
    let inv = &d["inventory"];
    // The simulated phone says so, whatever the machine it runs on is.
    assert_eq!(inv["hardware_backend"], "simulated", "{d}");
    assert!(inv["model"].as_str().unwrap().contains("SIMULATED"), "{d}");
    // The agent and the server are built from one workspace version.
    assert_eq!(inv["agent_version"], env!("CARGO_PKG_VERSION"), "{d}");
    assert!(inv["storage_total_bytes"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(inv["battery_percent"], Value::Null, "{d}");
    // Measured with the report that brought it.
    assert_eq!(d["inventory_at"], d["last_report_at"], "{d}");
    // People see it too.
    let out = server.cli_as(&server.owner_token, &["devices", "show", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\ninventory (reported "), "{text}");
    assert!(text.contains("  backend: simulated\n"), "{text}");
}
