//! Secured zones, the gate terminal, device commands and the audit trail, through the
//! real binaries: `redoubt-server`, `redoubt-agent` (SIMULATED hardware) and `redoubt`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, Http, Server, chat, random_text, stderr, texts, wait_for};
use serde_json::Value;

const BSSID: &str = "02:00:00:00:01:00";

fn write_zone(dir: &Path, name: &str, mode: &str, checkpoints: &[&str], bssids: &[&str]) -> String {
    let quote = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\ndescription = \"test zone\"\nmode = \"{mode}\"\ncheckpoints = [{}]\nwifi_bssids = [{}]\n",
            quote(checkpoints),
            quote(bssids)
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn code(server: &Server, zone: &str, direction: &str) -> String {
    server.cli_json(&["zones", "code", zone, "--direction", direction])["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `redoubt-agent checkpoint CODE`: Ok(stdout) or Err(stderr).
fn checkpoint(agent: &Agent, code: &str) -> Result<String, String> {
    let out = agent.cmd(&["checkpoint", code]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(stderr(&out))
    }
}

fn camera(agent: &Agent) -> String {
    agent.sim()["capabilities"]["camera"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn wait_device(server: &Server, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(60), || {
        let d = server.device(id);
        f(&d).then_some(d)
    })
}

fn wait_command(server: &Server, device: &str, command: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = server.cli_json(&["devices", "commands", device]);
        let this = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == command)
            .cloned();
        if let Some(c) = this.as_ref().filter(|c| c["state"] == state) {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "command {command} not {state} after 60 s: {this:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent on `state` logs that the server refused it as revoked.
fn wait_refused_as_revoked(state: &Path, what: &str) {
    let log = state.with_extension("log");
    wait_for(what, Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("revoked or unknown device")
            .then_some(())
    });
}

fn audit_actions(server: &Server, device: &str) -> Vec<String> {
    server
        .cli_json(&["audit", "list", "--device", device])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn offline_check_in_switches_at_once_and_reaches_the_server_later() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    let file = write_zone(tmp.path(), "lab", "secure-site", &["north-gate"], &[BSSID]);
    let zone = server.cli_json(&["zones", "apply", &file]);
    assert_eq!(zone["checkpoint_keys"].as_array().unwrap().len(), 1);
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    bob.start();
    wait_device(&server, &id, "bob compliant in standard", |d| {
        d["compliance"] == "compliant" && d["reported_mode"] == "standard"
    });
    assert_eq!(camera(&bob), "on");

    // The server goes away; the gate's code still works, offline.
    let check_in = code(&server, "lab", "in");
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    server.stop();
    let said = checkpoint(&bob, &check_in).unwrap();
    assert!(said.contains("lab"), "{said}");
    assert_eq!(camera(&bob), "off", "camera off at once");
    let status = bob.status();
    assert_eq!(status["effective_mode"], "secure-site", "{status}");

    // The same code again is a replay: refused, nothing changes.
    let replay = checkpoint(&bob, &check_in).unwrap_err();
    assert!(replay.contains("already used"), "{replay}");
    // A tampered code is refused.
    let mut forged = check_in.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let e = checkpoint(&bob, &forged).unwrap_err();
    assert!(e.contains("forged") || e.contains("signature"), "{e}");
    assert_eq!(bob.status()["effective_mode"], "secure-site");

    // The server comes back: the transition and the report arrive and are audited.
    let server = Server::start(&data, &[("REDOUBT_LISTEN", &format!("127.0.0.1:{port}"))]);
    let d = wait_device(&server, &id, "bob reported inside lab", |d| {
        d["zones"] == serde_json::json!(["lab"])
            && d["reported_mode"] == "secure-site"
            && d["compliance"] == "compliant"
    });
    assert_eq!(d["capabilities"]["camera"], "off");
    let actions = audit_actions(&server, &id);
    for a in ["zone.in", "mode.changed", "zone.code_refused"] {
        assert!(
            actions.contains(&a.to_owned()),
            "{a} missing in {actions:?}"
        );
    }

    // A zone created after the phone went offline is not in its bundle yet… but the
    // agent is online now and gets it; a check-out from a zone it is not in is refused.
    let held = bob.status()["bundle_version"].as_u64().unwrap();
    let annex = write_zone(tmp.path(), "annex", "lockdown", &["door"], &[]);
    server.cli_json(&["zones", "apply", &annex]);
    wait_for("annex in bob's bundle", Duration::from_secs(30), || {
        let s = bob.status();
        (s["bundle_version"].as_u64().unwrap() > held).then_some(())
    });
    let e = checkpoint(&bob, &code(&server, "annex", "out")).unwrap_err();
    assert!(e.contains("not inside zone annex"), "{e}");

    // Check-out with a fresh signed code: back to standard.
    checkpoint(&bob, &code(&server, "lab", "out")).unwrap();
    assert_eq!(camera(&bob), "on");
    wait_device(&server, &id, "bob reported outside", |d| {
        d["zones"] == serde_json::json!([]) && d["reported_mode"] == "standard"
    });
    assert!(audit_actions(&server, &id).contains(&"zone.out".to_owned()));
    let verified = server.cli_as(&server.owner_token, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", stderr(&verified));
}

#[test]
fn wifi_presence_enters_but_absence_never_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let file = write_zone(tmp.path(), "lab", "secure-site", &["north-gate"], &[BSSID]);
    server.cli_json(&["zones", "apply", &file]);
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    bob.start();
    wait_device(&server, &id, "bob compliant", |d| {
        d["compliance"] == "compliant"
    });

    let out = bob.cmd(&["sim", "wifi", "02:00:00:00:09:09"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bob.cmd(&["sim", "wifi", BSSID]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("bob inside lab by Wi-Fi", Duration::from_secs(30), || {
        (bob.status()["effective_mode"] == "secure-site").then_some(())
    });
    assert_eq!(camera(&bob), "off");
    let out = bob.cmd(&["sim", "wifi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The agent re-checks every 200 ms; wait for the server to have a report made after
    // the access point vanished, then check the phone is still inside.
    let seq = server.device(&id)["last_report_seq"].as_u64().unwrap();
    bob.sim_set("camera", "on");
    wait_device(&server, &id, "a report after the AP vanished", |d| {
        d["last_report_seq"].as_u64().unwrap() > seq + 1
    });
    assert_eq!(bob.status()["effective_mode"], "secure-site");
    assert_eq!(camera(&bob), "off", "the drift was corrected, still inside");
    let d = server.device(&id);
    assert_eq!(d["zones"], serde_json::json!(["lab"]));
}

#[test]
fn the_gate_page_shows_codes_the_phone_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let file = write_zone(
        tmp.path(),
        "lab",
        "secure-site",
        &["north-gate", "south-gate"],
        &[],
    );
    server.cli_json(&["zones", "apply", &file]);
    let bob = Agent::new(tmp.path().join("bob"));
    bob.enroll(&server.enrollment_url("bob"));

    let http = Http::new(&server);
    let (status, _, body) = http.get_with("/gate/lab/north-gate", &[]);
    assert_eq!(status, 401);
    assert!(body.contains("no valid credential"));
    let gate = server.cli_json(&["zones", "gate", "lab", "north-gate"]);
    let url = gate["url"].as_str().unwrap();
    let path = &url[url.find("/gate/").unwrap()..];
    let key = &path[path.find("key=").unwrap() + 4..];
    // The credential of one checkpoint does not open another.
    let (status, _, _) = http.get_with(&format!("/gate/lab/south-gate?key={key}"), &[]);
    assert_eq!(status, 401);
    let (status, _, _) = http.get_with("/gate/lab/north-gate?key=rgt_forged", &[]);
    assert_eq!(status, 401);
    let (status, headers, _) = http.get_with(path, &[]);
    assert_eq!(status, 303);
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.contains("HttpOnly")),
        "{headers:?}"
    );
    let (status, headers, page) = http.get_with("/gate/lab/north-gate", &[("cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "cache-control" && v == "no-store")
    );
    // Without a direction: a choice, and no code at all.
    assert_eq!(
        page.matches("<svg").count(),
        0,
        "no code before a direction: {page}"
    );
    assert!(page.contains("?direction=in") && page.contains("?direction=out"));
    assert!(!page.contains("RDZ1."));
    let (status, _, _) = http.get_with(
        "/gate/lab/north-gate?direction=sideways",
        &[("cookie", &cookie)],
    );
    assert_eq!(status, 400);
    // One direction: only its code; the other is not on the page.
    let (status, _, page) =
        http.get_with("/gate/lab/north-gate?direction=in", &[("cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(page.contains("http-equiv=\"refresh\""));
    assert_eq!(page.matches("<svg").count(), 1, "one QR code");
    assert_eq!(page.matches("RDZ1.").count(), 1, "one code");
    assert!(!page.contains("data-direction=\"out\""));
    let code_of = |page: &str, dir: &str| {
        let fig = &page[page.find(&format!("data-direction=\"{dir}\"")).unwrap()..];
        let text = &fig[fig.find("class=\"text\">").unwrap() + 13..];
        text[..text.find('<').unwrap()].to_owned()
    };
    let check_in = code_of(&page, "in");
    assert!(check_in.starts_with("RDZ1."));
    checkpoint(&bob, &check_in).unwrap();
    assert_eq!(bob.status()["effective_mode"], "secure-site");
    // The JSON endpoint for scripted terminals, with the Gate header: one direction too.
    let gate_auth = format!("Gate {key}");
    let (status, _, json) = http.get_with(
        "/gate/lab/north-gate/codes",
        &[("authorization", &gate_auth)],
    );
    assert_eq!(status, 400, "{json}");
    assert!(json.contains("direction"), "{json}");
    let (status, _, json) = http.get_with(
        "/gate/lab/north-gate/codes?direction=out",
        &[("authorization", &gate_auth)],
    );
    assert_eq!(status, 200);
    let codes: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(codes["direction"], "out");
    assert!(codes.get("in").is_none(), "{codes}");
    checkpoint(&bob, codes["code"]["code"].as_str().unwrap()).unwrap();
    assert_eq!(bob.status()["effective_mode"], "standard");
    let shown = server.cli_json(&["zones", "show", "lab"]);
    assert_eq!(shown["gate_credentials"]["north-gate"], 1);
}

#[test]
fn lock_is_verified_and_unlock_lifts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    bob.start();
    wait_device(&server, &id, "bob compliant", |d| {
        d["compliance"] == "compliant"
    });

    let lock = server.cli_json(&["devices", "lock", &id]);
    let cmd = lock["id"].as_str().unwrap().to_owned();
    assert_eq!(lock["existing"], false);
    let done = wait_command(&server, &id, &cmd, "verified");
    for t in ["delivered_at", "acknowledged_at", "verified_at"] {
        assert!(done[t].is_string(), "{t} missing: {done}");
    }
    let d = server.device(&id);
    assert_eq!(d["reported_mode"], "lockdown");
    assert_eq!(d["locked_by"], cmd.as_str());
    assert_eq!(camera(&bob), "off");
    // Idempotent: locking again gives the same command.
    let again = server.cli_json(&["devices", "lock", &id]);
    assert_eq!(
        (again["id"].as_str().unwrap(), &again["existing"]),
        (cmd.as_str(), &Value::Bool(true))
    );
    // A restart of the agent keeps the lock.
    bob.stop();
    bob.start();
    wait_for("agent back", Duration::from_secs(30), || {
        (bob.status()["connection"] == "connected").then_some(())
    });
    assert_eq!(bob.status()["effective_mode"], "lockdown");

    let unlock = server.cli_json(&["devices", "unlock", &id]);
    let ucmd = unlock["id"].as_str().unwrap().to_owned();
    // Issue times are strictly increasing per device, even within one second: the
    // phone orders a lock and its unlock by them.
    assert!(
        unlock["created_at"].as_str().unwrap() > lock["created_at"].as_str().unwrap(),
        "{lock} vs {unlock}"
    );
    wait_command(&server, &id, &ucmd, "verified");
    let d = server.device(&id);
    assert_eq!(d["reported_mode"], "standard");
    assert!(d["locked_by"].is_null());
    let actions = audit_actions(&server, &id);
    for a in [
        "device.lock",
        "command.delivered",
        "command.acknowledged",
        "command.verified",
        "device.unlock",
    ] {
        assert!(
            actions.contains(&a.to_owned()),
            "{a} missing in {actions:?}"
        );
    }
    let text = server.cli_as(&server.owner_token, &["devices", "commands", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("verified") && text.contains("lock"), "{text}");
}

#[test]
fn wipe_destroys_the_keys_and_the_phone_reads_nothing_after() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice = Agent::new(tmp.path().join("alice"));
    alice.enroll(&server.enrollment_url("alice"));
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    chat(&bob.state, &["list"]);
    let gid = chat(&alice.state, &["create", "Ops", "--members", "bob"])["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = random_text("before");
    chat(&alice.state, &["send", &gid, &before]);
    assert_eq!(
        texts(&chat(&bob.state, &["read", &gid])),
        vec![before.clone()]
    );
    // What a thief would keep: a copy of the whole state directory before the wipe.
    let kept = tmp.path().join("kept");
    copy_dir(&bob.state, &kept);
    bob.start();
    wait_device(&server, &id, "bob compliant", |d| {
        d["compliance"] == "compliant"
    });

    let refused = server.cli_as(&server.owner_token, &["devices", "wipe", &id]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"));
    let wipe = server.cli_json(&["devices", "wipe", &id, "--yes"]);
    let cmd = wipe["id"].as_str().unwrap().to_owned();
    wait_command(&server, &id, &cmd, "verified");
    // The agent exits by itself after the wipe.
    let mut child = bob.run.take().unwrap();
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "agent after wipe: {status}");
    let left: Vec<String> = std::fs::read_dir(&bob.state)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for f in &left {
        assert!(
            !f.contains("key") && !f.starts_with("messenger") && f != "identity.json",
            "key material left after the wipe: {left:?}"
        );
    }
    let d = wait_device(&server, &id, "bob revoked", |d| d["revoked_at"].is_string());
    assert!(
        d["compliance_reasons"][0]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    // Alice's next send removes Bob's device first; what she writes after is
    // unreadable with anything Bob's phone kept: its old credentials are refused.
    let after = random_text("after-wipe");
    chat(&alice.state, &["send", &gid, &after]);
    let out = common::chat_cmd(&kept, &["read", &gid]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains(&after),
        "the kept copy read a message sent after the wipe"
    );
    assert!(!out.status.success() || !shown.contains(&after));
    let mut thief = Agent::new(kept.clone());
    thief.start();
    wait_refused_as_revoked(&kept, "the kept identity refused");
    let actions = audit_actions(&server, &id);
    for a in ["device.wipe", "command.verified", "device.revoked"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing in {actions:?}");
    }
}

#[test]
fn revoke_works_when_the_phone_never_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut carol = Agent::new(tmp.path().join("carol"));
    let id = carol.enroll(&server.enrollment_url("carol"));
    let v = server.cli_json(&["devices", "revoke", &id]);
    assert_eq!(v["state"], "verified", "{v}");
    let again = server.cli_json(&["devices", "revoke", &id]);
    assert_eq!(again["existing"], true);
    let lock = server.cli_as(&server.owner_token, &["devices", "lock", &id]);
    assert!(!lock.status.success());
    assert!(stderr(&lock).contains("revoked"), "{}", stderr(&lock));
    carol.start();
    wait_refused_as_revoked(&carol.state, "carol refused");
}

#[test]
fn a_command_the_phone_never_fetched_expires_and_is_never_carried_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut dave = Agent::new(tmp.path().join("dave"));
    let id = dave.enroll(&server.enrollment_url("dave"));
    // Out of range lifetimes are refused with the range.
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "lock", &id, "--expires-in", "2s"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("between 10"), "{}", stderr(&out));
    // The phone is off while its lock is valid; another phone never comes back for
    // its wipe.
    let mut erin = Agent::new(tmp.path().join("erin"));
    let lost = erin.enroll(&server.enrollment_url("erin"));
    let lock = server.cli_json(&["devices", "lock", &id, "--expires-in", "10s"]);
    let wipe = server.cli_json(&["devices", "wipe", &lost, "--yes", "--expires-in", "10s"]);
    let cmd = lock["id"].as_str().unwrap().to_owned();
    assert_eq!(lock["state"], "queued");
    let expired = wait_command(&server, &id, &cmd, "expired");
    assert!(expired["delivered_at"].is_null(), "{expired}");
    // The wipe that expired unacknowledged leaves the server's part done: revoked.
    wait_command(&server, &lost, wipe["id"].as_str().unwrap(), "expired");
    assert!(server.device(&lost)["revoked_at"].is_string());
    assert!(audit_actions(&server, &lost).contains(&"device.revoked".to_owned()));
    erin.start();
    wait_refused_as_revoked(&erin.state, "erin refused");
    // It comes back: the expired lock is not sent, the phone stays in its mode.
    dave.start();
    let d = wait_device(&server, &id, "dave reports", |d| {
        d["compliance"] == "compliant"
    });
    assert_eq!(d["reported_mode"], "standard");
    assert!(d["locked_by"].is_null());
    assert_eq!(dave.status()["effective_mode"], "standard");
    assert!(audit_actions(&server, &id).contains(&"command.expired".to_owned()));
    // A new lock after the expired one is a new command, not the expired one.
    let again = server.cli_json(&["devices", "lock", &id]);
    assert_ne!(again["id"], cmd.as_str());
    wait_command(&server, &id, again["id"].as_str().unwrap(), "verified");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_name() != "agent.lock" {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Starts `redoubt-agent run` for `agent` with its clocks shifted through the agent's
/// test seam (`wall=±SECS,...`).
fn start_with_clock(agent: &mut Agent, clock: &str) {
    let child = std::process::Command::new(common::bin("redoubt-agent"))
        .args(["run", "--recheck-ms", "200", "--state"])
        .arg(&agent.state)
        .env("REDOUBT_LOG", "debug")
        .env("REDOUBT_AGENT_TEST_CLOCK", clock)
        .stdout(std::process::Stdio::null())
        .stderr(common::log_file(&agent.state.with_extension("log")))
        .spawn()
        .unwrap();
    agent.run = Some(child);
}

#[test]
fn lock_and_wipe_are_carried_out_with_the_phone_clock_set_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    // The holder set the phone's clock thirty days forward: every command looks
    // expired by it. The phone must still obey.
    start_with_clock(&mut bob, "wall=+2592000");
    wait_device(&server, &id, "bob reporting", |d| {
        d["last_report_seq"].is_u64()
    });
    let lock = server.cli_json(&["devices", "lock", &id, "--expires-in", "60s"]);
    let cmd = lock["id"].as_str().unwrap().to_owned();
    // Carried out, not refused. (Not `verified`: by its own clock the phone's bundle
    // has expired too, so it is in lockdown with a fallback, which is not compliant.)
    wait_command(&server, &id, &cmd, "acknowledged");
    wait_device(&server, &id, "the lock in force", |d| {
        d["locked_by"] == cmd.as_str()
    });
    assert_eq!(server.device(&id)["reported_mode"], "lockdown");
    let wipe = server.cli_json(&["devices", "wipe", &id, "--yes", "--expires-in", "60s"]);
    let cmd = wipe["id"].as_str().unwrap().to_owned();
    wait_command(&server, &id, &cmd, "verified");
    let mut child = bob.run.take().unwrap();
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "agent after wipe: {status}");
    assert!(!bob.state.join("device-key.pem").exists());
    wait_device(&server, &id, "bob revoked", |d| d["revoked_at"].is_string());
}

#[test]
fn a_wipe_the_phone_refuses_revokes_the_device() {
    use ed25519_dalek::Signer;
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use futures_util::{SinkExt, StreamExt};
    use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
    use tokio_tungstenite::tungstenite::Message;

    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    let wipe = server.cli_json(&["devices", "wipe", &id, "--yes"]);
    let cmd = wipe["id"].as_str().unwrap().to_owned();
    // A phone that lies: it takes the wipe and refuses it (as the old agent did when
    // its clock said the command had expired).
    let pem = std::fs::read_to_string(bob.state.join("device-key.pem")).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let device: redoubt_proto::DeviceId = id.parse().unwrap();
    let client = redoubt_client::ServerClient::new(
        server.url.parse().unwrap(),
        server.fingerprint.parse().unwrap(),
        None,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ws = client.websocket("/api/v1/device/ws").await.unwrap();
        let first = loop {
            let m = ws.next().await.unwrap().unwrap();
            if let Ok(t) = m.to_text()
                && !t.is_empty()
            {
                break serde_json::from_str::<ServerFrame>(t).unwrap();
            }
        };
        let ServerFrame::Challenge { nonce } = first else {
            panic!("no challenge: {first:?}")
        };
        let sig = key.sign(&hello_message(&nonce, &device));
        let hello = AgentFrame::Hello {
            device_id: device.clone(),
            signature: redoubt_proto::envelope::encode_signature(&sig),
        };
        ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into()))
            .await
            .unwrap();
        let command_id = loop {
            let m = ws.next().await.unwrap().unwrap();
            let Ok(t) = m.to_text() else { continue };
            if t.is_empty() {
                continue;
            }
            match serde_json::from_str::<ServerFrame>(t).unwrap() {
                ServerFrame::Command { command } => {
                    let c: redoubt_proto::DeviceCommand = serde_json::from_slice(
                        &base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            &command.payload,
                        )
                        .unwrap(),
                    )
                    .unwrap();
                    break c.id;
                }
                ServerFrame::Error { message, .. } => panic!("server error: {message}"),
                _ => continue,
            }
        };
        let ack = AgentFrame::CommandAck {
            id: command_id,
            accepted: false,
            reason: Some("command expired (by the phone's clock)".into()),
        };
        ws.send(Message::Text(serde_json::to_string(&ack).unwrap().into()))
            .await
            .unwrap();
        // The server ends the session of the now revoked device (waited for with a
        // deadline; the checks below say what went wrong if it does not).
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(m)) => {
                        if let Ok(t) = m.to_text()
                            && let Ok(ServerFrame::Error { code, .. }) = serde_json::from_str(t)
                        {
                            return Some(code);
                        }
                    }
                }
            }
        })
        .await;
        assert!(
            matches!(&closed, Ok(None) | Ok(Some(_))),
            "the session of the device stayed open after its refused wipe"
        );
        if let Ok(Some(code)) = closed {
            assert_eq!(code, "unauthorized");
        }
    });
    wait_command(&server, &id, &cmd, "failed");
    let d = wait_device(&server, &id, "bob revoked", |d| d["revoked_at"].is_string());
    assert!(
        d["compliance_reasons"][0]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    let actions = audit_actions(&server, &id);
    assert!(actions.iter().any(|a| a == "device.revoked"), "{actions:?}");
}

#[test]
fn a_phone_clock_set_back_shows_on_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut bob = Agent::new(tmp.path().join("bob"));
    let id = bob.enroll(&server.enrollment_url("bob"));
    // Ten minutes behind the server's time, which the phone sees at every connection.
    start_with_clock(&mut bob, "wall=-600");
    let d = wait_device(&server, &id, "the set-back clock reported", |d| {
        d["compliance"] == "non_compliant"
    });
    let reasons = d["compliance_reasons"].to_string();
    assert!(reasons.contains("set back"), "{reasons}");
    let out = server.cli_as(&server.owner_token, &["devices", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("set back"), "{text}");
    // The clock is right again: compliant.
    bob.stop();
    bob.start();
    wait_device(&server, &id, "bob compliant again", |d| {
        d["compliance"] == "compliant"
    });
}
