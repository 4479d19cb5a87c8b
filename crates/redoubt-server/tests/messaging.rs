//! End-to-end encrypted messaging through the real binaries: the server as delivery
//! service, phones enrolled with `redoubt-agent`, conversations through `redoubt chat`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Agent, Server, chat, files_containing, random_text, texts};
use redoubt_proto::messaging::{B64, MemberCertificate};

#[test]
fn a_group_talks_end_to_end_and_the_server_never_sees_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[("REDOUBT_MAX_FILE_BYTES", "300000")],
    );
    let phones: Vec<(String, Agent)> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| {
            let a = Agent::new(tmp.path().join(u));
            a.enroll(&server.enrollment_url(u));
            (u.to_string(), a)
        })
        .collect();
    let [alice, bob, carol] = [&phones[0].1, &phones[1].1, &phones[2].1];
    // Bob and Carol open their messengers once: certificate and KeyPackages.
    chat(&bob.state, &["list"]);
    chat(&carol.state, &["list"]);

    let created = chat(&alice.state, &["create", "Ops", "--members", "bob,carol"]);
    let gid = created["conversation"].as_str().unwrap().to_owned();
    assert_eq!(created["added"].as_array().unwrap().len(), 2, "{created}");

    // Bob is offline (never reads) while the others talk.
    let from_alice = random_text("alice");
    let from_carol = random_text("carol");
    chat(&alice.state, &["send", &gid, &from_alice]);
    chat(&carol.state, &["send", &gid, &from_carol]);
    let from_alice2 = random_text("alice2");
    chat(&alice.state, &["send", &gid, &from_alice2]);
    let bob_read = chat(&bob.state, &["read", &gid]);
    assert_eq!(
        texts(&bob_read),
        vec![from_alice.clone(), from_carol.clone(), from_alice2.clone()],
        "Bob gets everything, in order"
    );
    assert_eq!(bob_read["conversation"]["name"], "Ops");
    let from_bob = random_text("bob");
    chat(&bob.state, &["send", &gid, &from_bob]);
    for (who, phone) in [("alice", alice), ("carol", carol)] {
        let t = texts(&chat(&phone.state, &["read", &gid]));
        for expected in [&from_alice, &from_carol, &from_alice2, &from_bob] {
            assert!(t.contains(expected), "{who} misses {expected}: {t:?}");
        }
    }
    let first = &chat(&alice.state, &["read", &gid])["messages"][0];
    assert_eq!(first["from_user"], "alice");
    assert!(first["from_device"].as_str().unwrap().starts_with("dev_"));
    assert!(first["sent_at"].as_str().is_some());

    // Carol is removed and cannot read what is sent after.
    let removed = chat(&alice.state, &["remove", &gid, "carol"]);
    assert_eq!(removed["removed"].as_array().unwrap().len(), 1);
    let after = random_text("after-carol");
    chat(&alice.state, &["send", &gid, &after]);
    let carol_read = chat(&carol.state, &["read", &gid]);
    assert!(!texts(&carol_read).contains(&after));
    assert_eq!(carol_read["conversation"]["status"], "removed");
    assert!(texts(&chat(&bob.state, &["read", &gid])).contains(&after));

    // A file: encrypted on Alice's phone, opaque on the server, checked on Bob's.
    let file_marker = random_text("file-content");
    let mut content = Vec::new();
    while content.len() < 200_000 {
        content.extend_from_slice(file_marker.as_bytes());
        content.extend_from_slice(b"\n");
    }
    let report = tmp.path().join("report.txt");
    std::fs::write(&report, &content).unwrap();
    let sent = chat(&alice.state, &["send-file", &gid, report.to_str().unwrap()]);
    let file_id = sent["id"].as_str().unwrap().to_owned();
    let bob_read = chat(&bob.state, &["read", &gid]);
    let file_msg = bob_read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == file_id.as_str())
        .unwrap_or_else(|| panic!("Bob has no file message: {bob_read}"));
    assert_eq!(file_msg["file"]["name"], "report.txt");
    assert_eq!(file_msg["file"]["size"], content.len() as u64);
    let saved = tmp.path().join("bob-report.txt");
    let out = chat(
        &bob.state,
        &["save-file", &gid, &file_id, saved.to_str().unwrap()],
    );
    assert_eq!(out["size"], content.len() as u64);
    assert_eq!(std::fs::read(&saved).unwrap(), content);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a received file is for its owner only");
    }
    // Saving never overwrites; a text message is not a file; big files are refused
    // on the phone with the limit named.
    let again = common::chat_cmd(
        &bob.state,
        &["save-file", &gid, &file_id, saved.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(!again.status.success());
    assert!(
        common::stderr(&again).contains("bob-report.txt"),
        "{}",
        common::stderr(&again)
    );
    let text_id = bob_read["messages"][0]["id"].as_str().unwrap().to_owned();
    let not_file = common::chat_cmd(
        &bob.state,
        &[
            "save-file",
            &gid,
            &text_id,
            tmp.path().join("x").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        common::stderr(&not_file).contains("not a file"),
        "{}",
        common::stderr(&not_file)
    );
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 400_000]).unwrap();
    let refused = common::chat_cmd(&alice.state, &["send-file", &gid, big.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("up to 299984 bytes"),
        "{}",
        common::stderr(&refused)
    );

    // The server's data dir (database, WAL, files) never holds a message text.
    for t in [
        &from_alice,
        &from_carol,
        &from_alice2,
        &from_bob,
        &after,
        &file_marker,
    ] {
        assert_eq!(
            files_containing(&server.data, t),
            Vec::<String>::new(),
            "plaintext {t} found on the server"
        );
    }
    server.stop();
}

/// The console's view of a device once it reports compliant in `mode`.
fn wait_compliant(server: &Server, id: &str, mode: &str) {
    common::wait_for(
        &format!("{id} compliant in {mode}"),
        Duration::from_secs(30),
        || {
            let d = server.device(id);
            (d["compliance"] == "compliant" && d["mode"] == mode).then_some(())
        },
    );
}

#[test]
fn a_secure_site_conversation_is_held_for_a_phone_in_standard_until_it_complies() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice = Agent::new(tmp.path().join("alice"));
    alice.enroll(&server.enrollment_url("alice"));
    let mut bob = Agent::new(tmp.path().join("bob"));
    let bob_id = bob.enroll(&server.enrollment_url("bob"));
    // Bob's agent runs on the same state dir as his messenger, compliant in standard.
    bob.start();
    wait_compliant(&server, &bob_id, "standard");
    chat(&bob.state, &["list"]);

    let created = chat(
        &alice.state,
        &[
            "create",
            "Briefing",
            "--members",
            "bob",
            "--clearance",
            "secure-site",
        ],
    );
    let gid = created["conversation"].as_str().unwrap().to_owned();
    let secret = random_text("briefing");
    chat(&alice.state, &["send", &gid, &secret]);

    // Held, and Bob's messenger says so and why.
    let listed = chat(&bob.state, &["list"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == gid.as_str())
        .unwrap_or_else(|| panic!("Bob does not see the held conversation: {listed}"));
    assert_eq!(entry["status"], "held", "{entry}");
    assert_eq!(entry["clearance"], "secure-site");
    assert!(entry["held"].as_u64().unwrap() >= 2, "{entry}");
    let reason = entry["held_reason"].as_str().unwrap();
    assert!(
        reason.contains("standard") && reason.contains("secure-site"),
        "{reason}"
    );
    let read = chat(&bob.state, &["read", &gid]);
    assert!(texts(&read).is_empty());
    let human = common::chat_cmd(&bob.state, &["list"]);
    let human = Command::new(human.get_program())
        .args(human.get_args().filter(|a| *a != "--json"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("held by the server"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    // The operator moves Bob into secure-site; once his phone reports compliance
    // the held items are released, in order.
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &bob_id, "secure-site"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    wait_compliant(&server, &bob_id, "secure-site");
    let read = chat(&bob.state, &["read", &gid]);
    assert_eq!(texts(&read), vec![secret.clone()]);
    assert_eq!(read["conversation"]["status"], "active");
    assert_eq!(read["conversation"]["held"], 0);
    assert_eq!(read["conversation"]["name"], "Briefing");
    bob.stop();
    server.stop();
}

#[test]
fn a_member_whose_key_the_organization_never_certified_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice = Agent::new(tmp.path().join("alice"));
    alice.enroll(&server.enrollment_url("alice"));
    let mallory = Agent::new(tmp.path().join("mallory"));
    let mallory_id = mallory.enroll(&server.enrollment_url("mallory"));
    chat(&alice.state, &["list"]);
    chat(&mallory.state, &["list"]);

    // Mallory replaces her organization certificate with one she signed herself for
    // the same device and MLS key.
    let db = mallory.messenger().join("messenger.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions as _;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .unwrap();
        let key: String =
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'mls_public_key'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let own_ca = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
        let forged = redoubt_proto::SignedEnvelope::sign(
            MemberCertificate::KIND,
            &MemberCertificate {
                device_id: mallory_id.parse().unwrap(),
                user: "mallory".parse().unwrap(),
                mls_key: B64(hex::decode(key).unwrap()),
                issued_at: redoubt_proto::Timestamp::now(),
            },
            &own_ca,
        );
        sqlx::query("UPDATE settings SET value = ? WHERE name = 'certificate'")
            .bind(serde_json::to_string(&forged).unwrap())
            .execute(&mut conn)
            .await
            .unwrap();
    });

    // The server refuses to register a group whose only leaf carries a certificate
    // the organization never issued; Alice is never invited.
    let out = common::chat_cmd(&mallory.state, &["create", "Trap", "--members", "alice"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the server registered a forged member"
    );
    assert!(err.contains("not issued by this organization"), "{err}");
    let synced = chat(&alice.state, &["sync"]);
    assert_eq!(synced["processed"], 0, "{synced}");
    let listed = chat(&alice.state, &["list"]);
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    server.stop();
}

#[test]
fn a_revoked_device_is_removed_from_its_conversations_by_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let mut ids = Vec::new();
    let phones: Vec<Agent> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| {
            let a = Agent::new(tmp.path().join(u));
            ids.push(a.enroll(&server.enrollment_url(u)));
            chat(&a.state, &["list"]);
            a
        })
        .collect();
    let (alice, bob, carol) = (&phones[0], &phones[1], &phones[2]);
    let gid = chat(&alice.state, &["create", "Ops", "--members", "bob,carol"])["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = random_text("before");
    chat(&alice.state, &["send", &gid, &before]);
    assert_eq!(
        texts(&chat(&carol.state, &["read", &gid])),
        vec![before.clone()]
    );

    // Carol's phone is lost: the operator revokes it. The server asks the remaining
    // members (in a request signed by the organization) to remove it; the first of them
    // to sync commits the removal.
    let revoked = server.cli_json(&["devices", "revoke", &ids[2]]);
    assert_eq!(
        (&revoked["device_id"], &revoked["state"]),
        (&serde_json::json!(ids[2]), &serde_json::json!("verified")),
        "{revoked}"
    );
    // Bob was offline since he was invited: his Welcome still lists Carol. He joins,
    // and removes her.
    let synced = chat(&bob.state, &["sync"]);
    assert_eq!(synced["refused"], serde_json::json!([]), "{synced}");
    let after = random_text("after-revocation");
    chat(&alice.state, &["send", &gid, &after]);
    for phone in [alice, bob] {
        let read = chat(&phone.state, &["read", &gid]);
        assert_eq!(
            read["conversation"]["members"],
            serde_json::json!(["alice", "bob"]),
            "{read}"
        );
        assert_eq!(texts(&read), vec![before.clone(), after.clone()]);
    }
    // The revoked phone can no longer even open a session.
    let out = common::chat_cmd(&carol.state, &["read", &gid])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("revoked"),
        "{}",
        common::stderr(&out)
    );
    server.stop();
}
