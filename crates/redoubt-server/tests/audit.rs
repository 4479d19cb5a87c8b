//! The tamper-evident audit log through the real binaries: admin actions and device
//! enrollment are recorded (who, from where, what), `redoubt audit verify` passes
//! online and offline on an export, and fails naming the first bad entry when the
//! database or an export is tampered with, or the organization key is wrong.
//!
//! Needs the `redoubt` CLI built (`cargo build -p redoubt-cli`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Http, Server, bin, stderr};
use ed25519_dalek::{Signer, SigningKey};
use redoubt_proto::api::{EnrollRequest, enroll_proof_message};
use redoubt_proto::envelope::{encode_public_key, encode_signature};
use redoubt_proto::{EnrollmentUrl, HardwareKind};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .unwrap();
    SigningKey::from_bytes(&seed)
}

/// Enrolls a phone the way the agent does (its own key, proof of possession), over
/// HTTPS; returns the status and body.
fn try_enroll(server: &Server, url: &str) -> (u16, String) {
    let url: EnrollmentUrl = url.parse().unwrap();
    let key = random_key();
    let public = encode_public_key(&key.verifying_key());
    let req = EnrollRequest {
        proof: encode_signature(&key.sign(&enroll_proof_message(&url.token, &public))),
        token: url.token,
        device_public_key: public,
        hardware: HardwareKind::Sim,
    };
    Http::new(server).send(
        "POST",
        "/api/v1/enroll",
        None,
        Some(serde_json::to_vec(&req).unwrap()),
    )
}

/// An enrollment request with a valid proof for `token`.
fn enroll_body(token: &str) -> Vec<u8> {
    let key = random_key();
    let public = encode_public_key(&key.verifying_key());
    serde_json::to_vec(&EnrollRequest {
        proof: encode_signature(&key.sign(&enroll_proof_message(token, &public))),
        token: token.to_owned(),
        device_public_key: public,
        hardware: HardwareKind::Sim,
    })
    .unwrap()
}

/// Enrolls a phone; returns the device id.
fn enroll(server: &Server, url: &str) -> String {
    let (status, body) = try_enroll(server, url);
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["device_id"].as_str().unwrap().to_owned()
}

/// `redoubt ARGS` without any server settings (offline commands).
fn offline(args: &[&str]) -> Output {
    Command::new(bin("redoubt"))
        .args(args)
        .env_remove("REDOUBT_SERVER")
        .env_remove("REDOUBT_TOKEN")
        .env_remove("REDOUBT_CA_FINGERPRINT")
        .output()
        .unwrap()
}

/// Asserts `out` is a failed verification naming `entry` with `words`.
fn assert_tampered(out: &Output, entry: u64, words: &str) {
    let text = stdout(out);
    assert!(
        !out.status.success(),
        "verification passed: {text}{}",
        stderr(out)
    );
    let expected = format!("audit log TAMPERED: entry #{entry} {words}");
    assert!(
        text.contains(&expected),
        "expected `{expected}` in: {text}{}",
        stderr(out)
    );
    assert!(
        stderr(out).contains("failed verification"),
        "{}",
        stderr(out)
    );
}

fn actions(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn entry<'a>(list: &'a Value, action: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} entry in {list}"))
}

const MODE_FILE: &str = r#"name = "night-shift"
network = "organization-only"

[capabilities]
camera = "deny"
microphone = "allow"
bluetooth = "deny"
wifi = "allow"
cellular_data = "allow"
location = "deny"
nfc = "allow"
usb_data = "deny"
screenshots = "deny"
"#;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Edits the stopped server's database directly, as someone with access to the file
/// would (dropping the append-only triggers first).
fn tamper(data: &Path, statements: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(data.join("redoubt.db"));
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let all = [
            "DROP TRIGGER IF EXISTS audit_log_no_update",
            "DROP TRIGGER IF EXISTS audit_log_no_delete",
        ];
        for sql in all.iter().chain(statements) {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

#[test]
fn admin_actions_are_audited_and_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    let auditor = server.admin_token("audrey", "auditor");

    // Admin actions and a device.
    let alice_url = server.enrollment_url("alice");
    let token = alice_url.parse::<EnrollmentUrl>().unwrap().token;
    let _bob_url = server.enrollment_url("bob");
    let id = enroll(&server, &alice_url);
    server.cli_json(&["devices", "set-mode", &id, "secure-site"]);
    let mode_file = tmp.path().join("night.toml");
    std::fs::write(&mode_file, MODE_FILE).unwrap();
    server.cli_json(&["modes", "apply", mode_file.to_str().unwrap()]);
    let (status, body) = Http::new(&server).send(
        "POST",
        &format!("/api/v1/devices/{id}/commands"),
        Some(&server.owner_token),
        Some(br#"{"action":"revoke"}"#.to_vec()),
    );
    assert_eq!(status, 201, "{body}");
    // A used code is refused, and the attempt is recorded too.
    let (status, body) = try_enroll(&server, &alice_url);
    assert_eq!(status, 409, "{body}");

    // The auditor reads the log: who, from where, what.
    let out = server.cli_as(&auditor, &["--json", "audit", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let device_actor = format!("device:{id}");
    assert_eq!(
        actions(&list),
        [
            ("admin_token.create", "server-cli"),
            ("admin_token.create", "server-cli"),
            ("enrollment.create", "admin:test-owner"),
            ("enrollment.create", "admin:test-owner"),
            ("device.enroll", device_actor.as_str()),
            ("device.mode", "admin:test-owner"),
            ("mode.create", "admin:test-owner"),
            ("device.revoke", "admin:test-owner"),
            ("device.revoked", "admin:test-owner"),
            ("command.verified", "server"),
            ("device.enroll_refused", "anonymous"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert_eq!(list[1]["detail"]["name"], "audrey");
    assert_eq!(list[1]["detail"]["role"], "auditor");
    assert!(list[1]["detail"]["expires_at"].is_string());
    let created = entry(&list, "enrollment.create");
    assert_eq!(created["source"], "127.0.0.1");
    assert_eq!(created["detail"]["user"], "alice");
    assert_eq!(created["detail"]["mode"], "standard");
    let enrolled = entry(&list, "device.enroll");
    assert_eq!(enrolled["source"], "127.0.0.1");
    assert_eq!(enrolled["device_id"], id.as_str());
    assert_eq!(enrolled["detail"]["user"], "alice");
    let mode = entry(&list, "device.mode");
    assert_eq!(mode["device_id"], id.as_str());
    assert_eq!(mode["source"], "127.0.0.1");
    assert_eq!(mode["detail"]["from"], "standard");
    assert_eq!(mode["detail"]["to"], "secure-site");
    let defined = entry(&list, "mode.create");
    assert_eq!(defined["detail"]["mode"], "night-shift");
    assert_eq!(defined["detail"]["created"], true);
    assert_eq!(entry(&list, "device.revoke")["device_id"], id.as_str());
    let revoked = entry(&list, "device.revoked");
    assert_eq!(revoked["device_id"], id.as_str());
    assert_eq!(revoked["source"], "127.0.0.1");
    let refused = entry(&list, "device.enroll_refused");
    assert_eq!(refused["source"], "127.0.0.1");
    assert_eq!(refused["detail"]["reason"], "used");
    let text = list.to_string();
    assert!(
        !text.contains(&token),
        "an enrollment token is in the audit log"
    );

    // Filters and the table.
    let by_device = server.cli_json(&["audit", "list", "--device", &id]);
    assert_eq!(
        actions(&by_device)
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>(),
        [
            "device.enroll",
            "device.mode",
            "device.revoke",
            "device.revoked",
            "command.verified"
        ]
    );
    let page = server.cli_json(&["audit", "list", "--after", "2", "--limit", "2"]);
    assert_eq!(page[0]["seq"], 3);
    assert_eq!(page.as_array().unwrap().len(), 2);
    let out = server.cli_as(&auditor, &["audit", "list", "--since", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("admin:test-owner") && l.contains("device.mode")),
        "{table}"
    );

    // Online verification, by the auditor.
    let out = server.cli_as(&auditor, &["audit", "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let last_hash = list[10]["hash"].as_str().unwrap();
    assert_eq!(
        stdout(&out).trim(),
        format!("audit log verified: 11 entries, head seq 11 hash {last_hash}")
    );

    // Export, then offline verification with the key obtained separately.
    let key_out = server.cli_as(&auditor, &["audit", "org-key"]);
    assert!(key_out.status.success(), "{}", stderr(&key_out));
    let org_key = stdout(&key_out).trim().to_owned();
    let export = tmp.path().join("audit.json");
    let out = server.cli_as(&auditor, &["audit", "export", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("organization key: {org_key}")),
        "{}",
        stdout(&out)
    );
    let again = server.cli_as(&auditor, &["audit", "export", export.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let again = server.cli_as(
        &auditor,
        &["audit", "export", export.to_str().unwrap(), "--force"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let exported = std::fs::read_to_string(&export).unwrap();
    assert!(!exported.contains(&token));

    let file = export.to_str().unwrap();
    let out = offline(&["audit", "verify", "--file", file, "--org-key", &org_key]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).starts_with("audit log verified: 11 entries, head seq 11 hash "),
        "{}",
        stdout(&out)
    );
    // No key: refused, saying what is needed.
    let out = offline(&["audit", "verify", "--file", file]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--org-key"), "{}", stderr(&out));
    // Another organization's key.
    let wrong = encode_public_key(&random_key().verifying_key());
    let out = offline(&["audit", "verify", "--file", file, "--org-key", &wrong]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("audit log TAMPERED: the signed head is not valid"),
        "{}",
        stdout(&out)
    );

    // Tampered export files.
    let original: Value = serde_json::from_str(&exported).unwrap();
    let check_file = |name: &str, edit: &dyn Fn(&mut Vec<Value>), entry: u64, words: &str| {
        let mut doc = original.clone();
        edit(doc["entries"].as_array_mut().unwrap());
        let path = tmp.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let out = offline(&[
            "audit",
            "verify",
            "--file",
            path.to_str().unwrap(),
            "--org-key",
            &org_key,
        ]);
        assert_tampered(&out, entry, words);
    };
    check_file(
        "edited.json",
        &|e| e[2]["detail"]["user"] = "mallory".into(),
        3,
        "was edited",
    );
    check_file("deleted.json", &|e| drop(e.remove(4)), 5, "is missing");
    check_file("swapped.json", &|e| e.swap(2, 3), 3, "is out of order");
    check_file("truncated.json", &|e| drop(e.pop()), 11, "is missing");
    let owner = server.owner_token.clone();
    server.stop();

    // Tampered database: one copy of the stopped server's data per case.
    let pristine = tmp.path().join("pristine");
    copy_dir(&data, &pristine);
    // Restarting the copy as it is changes nothing.
    let s = Server::restart(&pristine, &owner);
    let out = s.cli_as(&owner, &["audit", "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    s.stop();
    let case = |name: &str, sql: &[&str]| -> Server {
        let dir = tmp.path().join(name);
        copy_dir(&pristine, &dir);
        tamper(&dir, sql);
        Server::restart(&dir, &owner)
    };

    // An edited row.
    let s = case(
        "edited",
        &[
            r#"UPDATE audit_log SET detail = '{"user":"mallory","mode":"standard","expires_at":"2030-01-01T00:00:00Z"}' WHERE seq = 3"#,
        ],
    );
    assert_tampered(&s.cli_as(&owner, &["audit", "verify"]), 3, "was edited");
    s.stop();

    // A deleted row in the middle.
    let s = case("deleted", &["DELETE FROM audit_log WHERE seq = 5"]);
    assert_tampered(&s.cli_as(&owner, &["audit", "verify"]), 5, "is missing");
    s.stop();

    // Two rows swapped.
    let s = case(
        "swapped",
        &[
            "UPDATE audit_log SET seq = -1 WHERE seq = 6",
            "UPDATE audit_log SET seq = 6 WHERE seq = 7",
            "UPDATE audit_log SET seq = 7 WHERE seq = -1",
        ],
    );
    assert_tampered(
        &s.cli_as(&owner, &["audit", "verify"]),
        6,
        "is out of order",
    );
    s.stop();

    // The newest row deleted: the signed head still names it.
    let s = case("newest", &["DELETE FROM audit_log WHERE seq = 11"]);
    let out = s.cli_as(&auditor, &["audit", "verify"]);
    assert_tampered(&out, 11, "is missing: the signed head names entry #11");
    // The --json verdict names the entry too.
    let out = s.cli_as(&auditor, &["--json", "audit", "verify"]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["entry"], 11);
    s.stop();
}

#[test]
fn a_deleted_newest_entry_stays_visible_after_further_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    server.enrollment_url("alice");
    server.enrollment_url("bob");
    let owner = server.owner_token.clone();
    server.stop();
    tamper(&data, &["DELETE FROM audit_log WHERE seq = 3"]);
    let s = Server::restart(&data, &owner);
    assert_tampered(&s.cli_as(&owner, &["audit", "verify"]), 3, "is missing");
    let out = s.cli_as(&owner, &["--json", "enroll", "create", "--user", "carol"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.cli_as(&owner, &["--json", "audit", "list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 4]);
    assert_tampered(
        &s.cli_as(&owner, &["audit", "verify"]),
        3,
        "is missing (deleted): the log goes from #2 to #4",
    );
    s.stop();
}

#[test]
fn refused_enrollments_are_counted_and_aggregated_not_logged_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let window = 3;
    let server = Server::start(
        &tmp.path().join("server"),
        &[
            ("REDOUBT_ENROLL_ATTEMPTS_PER_MINUTE", "1000"),
            ("REDOUBT_REFUSAL_AUDIT_WINDOW_SECS", "3"),
        ],
    );
    let used = server.enrollment_url("alice");
    enroll(&server, &used);
    let used = used.parse::<EnrollmentUrl>().unwrap().token;
    let http = Http::new(&server);
    let refused_entries = || {
        let list = server.cli_json(&["audit", "list", "--limit", "1000"]);
        list.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "device.enroll_refused")
            .cloned()
            .collect::<Vec<Value>>()
    };

    let start = std::time::Instant::now();
    let (status, body) = http.send("POST", "/api/v1/enroll", None, Some(enroll_body("bogus-0")));
    assert_eq!(status, 401, "{body}");
    // The first refusal is visible at once.
    let first = refused_entries();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["detail"]["count"], 1);
    assert_eq!(first[0]["source"], "127.0.0.1");
    for i in 1..200 {
        let token = if i % 4 == 0 {
            used.clone()
        } else {
            format!("bogus-{i}")
        };
        let (status, body) = http.send("POST", "/api/v1/enroll", None, Some(enroll_body(&token)));
        assert!(status == 401 || status == 409, "{status} {body}");
    }
    let elapsed = start.elapsed().as_secs();

    // Counted in the metrics, by reason (every fourth reused a used code).
    let (_, metrics) = http.send("GET", "/metrics", Some(&server.owner_token), None);
    assert!(
        metrics.contains(r#"redoubt_enroll_refused_total{reason="invalid"} 151"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"redoubt_enroll_refused_total{reason="used"} 49"#),
        "{metrics}"
    );
    // In the audit log, once the window ends: a few entries whose counts add up.
    let entries = common::wait_for(
        "the refusals to be flushed",
        std::time::Duration::from_secs(60),
        || {
            let e = refused_entries();
            let total: u64 = e
                .iter()
                .map(|e| e["detail"]["count"].as_u64().unwrap())
                .sum();
            (total == 200).then_some(e)
        },
    );
    let bound = 2 * (elapsed / window + 2) as usize;
    assert!(
        entries.len() <= bound,
        "{} entries for 200 refusals in {elapsed} s: {entries:?}",
        entries.len()
    );
    let aggregated = entries
        .iter()
        .find(|e| e["detail"]["count"].as_u64().unwrap() > 1)
        .unwrap();
    assert_eq!(aggregated["actor"], "anonymous");
    assert!(aggregated["detail"]["reasons"]["invalid"].as_u64().unwrap() > 0);
}
