//! No ghost devices: a person's additional device takes no part in conversations until
//! an owner (not the one who created its enrollment code) approves it, audited; a
//! first device and the replacement of a revoked one are approved at once; members see,
//! in each conversation, when a person gains or loses a device. The real binaries.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Agent, Http, Server, chat, chat_cmd, stderr};
use redoubt_proto::messaging::{B64, CertificateRequest, UploadKeyPackages};
use serde_json::{Value, json};

/// An enrollment URL for `user` from a code `token` created.
fn url_from(server: &Server, token: &str, user: &str) -> String {
    let out = server.cli_as(token, &["--json", "enroll", "create", "--user", user]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["url"].as_str().unwrap().to_owned()
}

/// The texts of the device notices `chat read` shows for a conversation.
fn notices(read: &Value) -> Vec<String> {
    read["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["notice"], true, "{n}");
            n["text"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn approve(http: &Http, token: &str, device: &str) -> (u16, Value) {
    http.send_auth(
        "POST",
        &format!("/api/v1/devices/{device}/approve"),
        &format!("Bearer {token}"),
        &json!({}),
    )
}

#[test]
fn an_additional_device_waits_for_an_owners_approval_and_members_see_it_come_and_go() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let operator = server.admin_token("op", "operator");
    let boss = server.admin_token("boss", "owner");
    let officer = server.admin_token("officer", "officer");
    let auditor = server.admin_token("auditor", "auditor");

    let alice = Agent::new(tmp.path().join("alice"));
    alice.enroll(&server.enrollment_url("alice"));
    // Bob's first device: nobody needs to approve it.
    let bob1 = Agent::new(tmp.path().join("bob1"));
    let bob1_id = bob1.enroll(&url_from(&server, &operator, "bob"));
    let view = server.device(&bob1_id);
    assert_eq!(view["approval"], "approved", "{view}");
    assert_eq!(view["approved_by"], "first-device", "{view}");
    assert_eq!(view["enrolled_by"], "admin:op", "{view}");
    chat(&bob1.state, &["list"]);

    // An operator enrolls a second device for Bob: it waits.
    let bob2 = Agent::new(tmp.path().join("bob2"));
    let bob2_id = bob2.enroll(&url_from(&server, &operator, "bob"));
    let view = server.device(&bob2_id);
    assert_eq!(view["approval"], "pending", "{view}");
    assert_eq!(view["approved_by"], Value::Null, "{view}");
    let list = server.cli_as(&server.owner_token, &["devices", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.contains(&bob2_id) && l.contains("PENDING")),
        "{list}"
    );
    let show = server.cli_as(&server.owner_token, &["devices", "show", &bob2_id]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("awaiting an owner's approval"),
        "{}",
        String::from_utf8_lossy(&show.stdout)
    );

    // Its messenger cannot start, and says why.
    let refused = chat_cmd(&bob2.state, &["list"]).output().unwrap();
    assert!(!refused.status.success());
    let why = stderr(&refused);
    assert!(
        why.contains("awaiting an owner's approval") && why.contains("awaiting_approval"),
        "{why}"
    );
    // With a real session of the device, every door to conversations is shut.
    let session = http.device_session(&bob2.state, &bob2_id);
    let certify = serde_json::to_value(CertificateRequest {
        mls_key: B64(vec![7; 32]),
        proof: B64(vec![7; 64]),
    })
    .unwrap();
    let upload = serde_json::to_value(UploadKeyPackages {
        key_packages: vec![B64(vec![1; 64])],
        last_resort: Some(B64(vec![2; 64])),
    })
    .unwrap();
    for (path, body) in [
        ("/api/v1/messenger/certificate", certify),
        ("/api/v1/messenger/key-packages", upload),
        (
            "/api/v1/messenger/key-packages/claim",
            json!({"users": ["alice"]}),
        ),
    ] {
        let (status, answer) = http.send_auth("POST", path, &session, &body);
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["code"], "awaiting_approval", "{path}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(&bob2_id),
            "{answer}"
        );
    }
    // A conversation made now includes only Bob's approved device, and says why not
    // the other.
    let before = chat(&alice.state, &["create", "Before", "--members", "bob"]);
    assert_eq!(before["added"], json!([bob1_id]), "{before}");
    let skipped = before["skipped"].to_string();
    assert!(
        skipped.contains("awaiting an owner's approval"),
        "{skipped}"
    );

    // Who may not approve: the operator who created the code, officers, auditors.
    for token in [&operator, &officer, &auditor] {
        let (status, answer) = approve(&http, token, &bob2_id);
        assert_eq!(status, 403, "{answer}");
    }
    // An owner who created a code may not approve the device it enrolled.
    let bob3 = Agent::new(tmp.path().join("bob3"));
    let bob3_id = bob3.enroll(&url_from(&server, &boss, "bob"));
    let (status, answer) = approve(&http, &boss, &bob3_id);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("created the enrollment code"),
        "{answer}"
    );
    assert_eq!(server.device(&bob3_id)["approval"], "pending");
    // A revoked device cannot be approved.
    let out = server.cli_as(&server.owner_token, &["devices", "revoke", &bob3_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, answer) = approve(&http, &server.owner_token, &bob3_id);
    assert_eq!(status, 409, "{answer}");
    assert_eq!(server.device(&bob2_id)["approval"], "pending");

    // Another owner approves; the approval is audited; approving again is a conflict.
    let out = server.cli_as(&boss, &["--json", "devices", "approve", &bob2_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["approval"], "approved", "{view}");
    assert_eq!(view["approved_by"], "admin:boss", "{view}");
    let (status, answer) = approve(&http, &server.owner_token, &bob2_id);
    assert_eq!(status, 409, "{answer}");
    let (status, audit) = http.send_auth(
        "GET",
        &format!("/api/v1/audit?device={bob2_id}"),
        &format!("Bearer {auditor}"),
        &json!({}),
    );
    assert_eq!(status, 200, "{audit}");
    let approvals: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.approve")
        .collect();
    assert_eq!(approvals.len(), 1, "{audit}");
    assert_eq!(approvals[0]["actor"], "admin:boss");
    assert_eq!(approvals[0]["detail"]["enrolled_by"], "admin:op");

    // Now Bob's second device takes part, and the members see it.
    chat(&bob2.state, &["list"]);
    let after = chat(&alice.state, &["create", "After", "--members", "bob"]);
    let gid = after["conversation"].as_str().unwrap().to_owned();
    assert_eq!(after["added"].as_array().unwrap().len(), 2, "{after}");
    let read = chat(&alice.state, &["read", &gid]);
    let shown = notices(&read);
    assert!(
        shown
            .iter()
            .any(|n| n.starts_with("bob: 2 devices in this conversation")
                && n.contains(&bob1_id)
                && n.contains(&bob2_id)),
        "{shown:?}"
    );
    assert!(
        read["messages"].as_array().unwrap().is_empty(),
        "notices are not messages people wrote: {read}"
    );
    let bob_read = chat(&bob1.state, &["read", &gid]);
    assert!(
        notices(&bob_read)
            .iter()
            .any(|n| n.starts_with("bob: 2 devices")),
        "{bob_read}"
    );
    // The text view marks notices apart from what people wrote.
    let plain = std::process::Command::new(common::bin("redoubt"))
        .args(["chat", "--state"])
        .arg(&alice.state)
        .args(["read", &gid])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout).into_owned();
    assert!(
        plain.lines().any(|l| l.contains("* bob: 2 devices")),
        "{plain}"
    );

    // Bob's second device is revoked: Alice's conversation shows it left.
    let out = server.cli_as(&server.owner_token, &["devices", "revoke", &bob2_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = chat(&alice.state, &["read", &gid]);
    let shown = notices(&read);
    assert!(
        shown
            .iter()
            .any(|n| n == &format!("bob's device {bob2_id} left this conversation: now 1 device")),
        "{shown:?}"
    );
    let bob_read = chat(&bob1.state, &["read", &gid]);
    assert!(
        notices(&bob_read)
            .iter()
            .any(|n| n.contains(&format!("bob's device {bob2_id} left"))),
        "{bob_read}"
    );
}

#[test]
fn a_first_device_and_the_replacement_of_a_revoked_one_are_approved_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let lost = Agent::new(tmp.path().join("carol-lost"));
    let lost_id = lost.enroll(&server.enrollment_url("carol"));
    assert_eq!(server.device(&lost_id)["approval"], "approved");
    chat(&lost.state, &["list"]);
    // The phone is lost: revoked. Its replacement is Carol's only live device.
    let out = server.cli_as(&server.owner_token, &["devices", "revoke", &lost_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = Agent::new(tmp.path().join("carol-new"));
    let new_id = new.enroll(&server.enrollment_url("carol"));
    let view = server.device(&new_id);
    assert_eq!(view["approval"], "approved", "{view}");
    assert_eq!(view["approved_by"], "first-device", "{view}");
    chat(&new.state, &["list"]);
    // A second live device of hers would wait.
    let extra = Agent::new(tmp.path().join("carol-extra"));
    let extra_id = extra.enroll(&server.enrollment_url("carol"));
    assert_eq!(server.device(&extra_id)["approval"], "pending");
}
