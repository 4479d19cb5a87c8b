//! Files and KeyPackages against a curious outsider, a removed member and a hostile
//! member, through the real server and phones: a file belongs to its conversation
//! (only current members fetch it; anyone else gets the answer for a file that does
//! not exist), each device has a storage quota refused before anything is written and
//! freed by expiry, and a claim can neither name a person twice nor drain their
//! one-time KeyPackages.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Agent, Server, answer, chat, metric, random_text, texts, wait_for};
use redoubt_messenger::Messenger;
use redoubt_proto::messaging::{BlobStored, ClaimKeyPackages, ClaimedKeyPackages};
use redoubt_proto::{BlobId, GroupId, UserName};
use serde_json::Value;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A server with small file limits and phones for `users`, each messenger opened once.
fn world(tmp: &Path, env: &[(&str, &str)], users: &[&str]) -> (Server, Vec<Agent>) {
    let mut all = vec![
        ("REDOUBT_MAX_FILE_BYTES", "4096"),
        ("REDOUBT_MAX_BLOB_BYTES_PER_DEVICE", "10000"),
    ];
    all.extend_from_slice(env);
    let server = Server::start(&tmp.join("server"), &all);
    let phones = users
        .iter()
        .map(|u| {
            let a = Agent::new(tmp.join(u));
            a.enroll(&server.enrollment_url(u));
            chat(&a.state, &["list"]);
            a
        })
        .collect();
    (server, phones)
}

fn create(owner: &Agent, members: &str) -> String {
    let created = chat(&owner.state, &["create", "Files", "--members", members]);
    created["conversation"].as_str().unwrap().to_owned()
}

async fn upload(m: &Messenger, gid: &str, bytes: Vec<u8>) -> (u16, Value) {
    answer(
        m.net()
            .post_bytes::<BlobStored>(&format!("/groups/{gid}/blobs"), bytes)
            .await,
    )
}

async fn download(m: &Messenger, gid: &str, blob: &str) -> (u16, Value) {
    answer(
        m.net()
            .get_bytes(&format!("/groups/{gid}/blobs/{blob}"))
            .await,
    )
}

/// Files in the server's blob folder (temporary ones included).
fn stored_files(server: &Server) -> Vec<String> {
    match std::fs::read_dir(server.data.join("blobs")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A 404's message with the ids it names replaced, to compare answers.
fn neutral(v: &Value, ids: &[&str]) -> String {
    let mut m = v["message"].as_str().unwrap().to_owned();
    for id in ids {
        m = m.replace(id, "ID");
    }
    m
}

#[test]
fn a_file_is_fetched_only_by_the_current_members_of_its_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, p) = world(tmp.path(), &[], &["alice", "bob", "carol", "eve"]);
    let (alice, bob, carol, eve) = (&p[0], &p[1], &p[2], &p[3]);
    let gid = create(alice, "bob,carol");
    chat(&bob.state, &["sync"]);
    chat(&carol.state, &["sync"]);
    // Eve has a conversation of her own (with Bob), just not this one.
    let eve_gid = create(eve, "bob");
    let nowhere = GroupId::from_random([7; 16]).to_string();
    let no_blob = BlobId::from_random([9; 16]).to_string();

    // Through the messenger: a file sent into the conversation is saved by a member.
    let doc = tmp.path().join("doc.txt");
    let content = random_text("doc").into_bytes();
    std::fs::write(&doc, &content).unwrap();
    let sent = chat(&alice.state, &["send-file", &gid, doc.to_str().unwrap()]);
    let saved = tmp.path().join("bob-doc.txt");
    chat(&bob.state, &["sync"]);
    chat(
        &bob.state,
        &[
            "save-file",
            &gid,
            sent["id"].as_str().unwrap(),
            saved.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&saved).unwrap(), content);

    let rt = rt();
    let blob = rt.block_on(async {
        let a = Messenger::open(&alice.messenger()).await.unwrap();
        let b = Messenger::open(&bob.messenger()).await.unwrap();
        let c = Messenger::open(&carol.messenger()).await.unwrap();
        let e = Messenger::open(&eve.messenger()).await.unwrap();
        let bytes = b"ciphertext of a file".to_vec();
        let (status, stored) = upload(&a, &gid, bytes.clone()).await;
        assert_eq!(status, 200, "{stored}");
        let blob = stored["blob_id"].as_str().unwrap().to_owned();

        // Members get it.
        for m in [&b, &c] {
            let got = m
                .net()
                .get_bytes(&format!("/groups/{gid}/blobs/{blob}"))
                .await
                .unwrap();
            assert_eq!(got, bytes);
        }
        // Eve, outside, gets the answer for a conversation that does not exist, whether
        // she names this one or one that does not exist; under her own conversation,
        // the answer for a file that does not exist.
        let (s, missing) = download(&b, &gid, &no_blob).await;
        assert_eq!(s, 404, "{missing}");
        let expected = neutral(&missing, &[&gid, &no_blob]);
        let (s, none) = download(&e, &nowhere, &blob).await;
        assert_eq!(s, 404, "{none}");
        let no_group = neutral(&none, &[&nowhere, &blob]);
        let (s, v) = download(&e, &gid, &blob).await;
        assert_eq!(s, 404, "Eve fetched a file of another conversation: {v}");
        assert_eq!(v["code"], "not_found");
        assert_eq!(neutral(&v, &[&gid, &blob]), no_group);
        let (s, v) = download(&e, &eve_gid, &blob).await;
        assert_eq!(
            (s, neutral(&v, &[&eve_gid, &blob])),
            (404, expected.clone())
        );
        // A member of both conversations cannot fetch it under the other one.
        let (s, v) = download(&b, &eve_gid, &blob).await;
        assert_eq!(
            (s, neutral(&v, &[&eve_gid, &blob])),
            (404, expected.clone())
        );

        // Uploading into a conversation one is not a member of: the 404 of one that
        // does not exist, and nothing is stored.
        let before = stored_files(&server);
        let (s, v) = upload(&e, &gid, b"x".to_vec()).await;
        let (n, nv) = upload(&e, &nowhere, b"x".to_vec()).await;
        assert_eq!((s, n), (404, 404), "{v} {nv}");
        assert_eq!(neutral(&v, &[&gid]), neutral(&nv, &[&nowhere]));
        assert_eq!(stored_files(&server).len(), before.len());
        blob
    });

    // Carol, once removed, is an outsider too.
    chat(&alice.state, &["remove", &gid, "carol"]);
    rt.block_on(async {
        let a = Messenger::open(&alice.messenger()).await.unwrap();
        let c = Messenger::open(&carol.messenger()).await.unwrap();
        let (s, stored) = upload(&a, &gid, b"after carol".to_vec()).await;
        assert_eq!(s, 200, "{stored}");
        let after = stored["blob_id"].as_str().unwrap().to_owned();
        let (s, none) = download(&c, &nowhere, &after).await;
        assert_eq!(s, 404);
        let no_group = neutral(&none, &[&nowhere, &after]);
        // Neither the file sent while she was a member nor the one sent after: the
        // conversation does not exist for her any more.
        for blob in [&blob, &after] {
            let (s, v) = download(&c, &gid, blob).await;
            assert_eq!(s, 404, "a removed member fetched a file: {v}");
            assert_eq!(neutral(&v, &[&gid, blob]), no_group);
        }
        let (s, v) = upload(&c, &gid, b"x".to_vec()).await;
        assert_eq!(
            s, 404,
            "a removed member uploaded into the conversation: {v}"
        );
    });
    server.stop();
}

#[test]
fn a_device_past_its_storage_quota_is_refused_before_anything_is_written_until_files_expire() {
    let tmp = tempfile::tempdir().unwrap();
    // Files live a minute; the sweeper runs every second.
    let (server, p) = world(
        tmp.path(),
        &[
            ("REDOUBT_MESSAGE_TTL_SECS", "60"),
            ("REDOUBT_REFUSAL_AUDIT_WINDOW_SECS", "1"),
        ],
        &["alice", "bob"],
    );
    let (alice, bob) = (&p[0], &p[1]);
    let gid = create(alice, "bob");
    let rt = rt();
    let first = rt.block_on(async {
        let a = Messenger::open(&alice.messenger()).await.unwrap();
        let b = Messenger::open(&bob.messenger()).await.unwrap();
        let mut first = Vec::new();
        for _ in 0..2 {
            let (s, v) = upload(&a, &gid, vec![7; 4096]).await;
            assert_eq!(s, 200, "{v}");
            first.push(v["blob_id"].as_str().unwrap().to_owned());
        }
        let files = stored_files(&server);
        assert_eq!(files.len(), 2, "{files:?}");
        // 8192 of 10000 bytes used: 4096 more are refused, with the figures, and
        // nothing reaches the disk.
        let (s, v) = upload(&a, &gid, vec![7; 4096]).await;
        assert_eq!(s, 413, "{v}");
        assert_eq!(v["code"], "quota_exceeded");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("8192") && msg.contains("10000") && msg.contains("4096"),
            "{msg}"
        );
        assert_eq!(
            stored_files(&server),
            files,
            "a refused file left bytes behind"
        );
        // What still fits is taken; Bob's quota is his own.
        let (s, v) = upload(&a, &gid, vec![7; 1808]).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = upload(&b, &gid, vec![7; 4096]).await;
        assert_eq!(s, 200, "{v}");
        first
    });
    assert_eq!(metric(&server, "redoubt_blob_quota_refusals_total"), 1.0);
    rt.block_on(async {
        let a = Messenger::open(&alice.messenger()).await.unwrap();
        let b = Messenger::open(&bob.messenger()).await.unwrap();

        // Once they expire, the sweeper deletes the files and the quota is free again.
        wait_for(
            "the sweeper to delete expired files",
            Duration::from_secs(150),
            || stored_files(&server).is_empty().then_some(()),
        );
        for blob in &first {
            let (s, _) = download(&b, &gid, blob).await;
            assert_eq!(s, 404);
        }
        for _ in 0..2 {
            let (s, v) = upload(&a, &gid, vec![7; 4096]).await;
            assert_eq!(s, 200, "{v}");
        }
    });
    server.stop();
}

#[test]
fn a_claim_names_each_person_once_and_cannot_drain_a_persons_key_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, p) = world(
        tmp.path(),
        &[("REDOUBT_KEY_PACKAGE_HANDOUTS_PER_HOUR", "3")],
        &["alice", "bob", "mallory"],
    );
    let (alice, bob, mallory) = (&p[0], &p[1], &p[2]);
    let rt = rt();
    let claim = |users: &[&str]| ClaimKeyPackages {
        users: users
            .iter()
            .map(|u| u.parse::<UserName>().unwrap())
            .collect(),
    };
    rt.block_on(async {
        let m = Messenger::open(&mallory.messenger()).await.unwrap();
        // Naming Bob twice is refused, and hands out nothing.
        let (s, v) = answer(
            m.net()
                .post::<_, ClaimedKeyPackages>(
                    "/key-packages/claim",
                    &claim(&["bob", "alice", "bob"]),
                )
                .await,
        );
        assert_eq!(s, 400, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("bob") && msg.contains("more than once"),
            "{msg}"
        );
        // Mallory claims Bob again and again: three one-time KeyPackages in the hour,
        // then only his last-resort one.
        let mut kinds = Vec::new();
        for _ in 0..6 {
            let got: ClaimedKeyPackages = m
                .net()
                .post("/key-packages/claim", &claim(&["bob"]))
                .await
                .unwrap();
            assert_eq!(got.key_packages.len(), 1, "{got:?}");
            kinds.push(got.key_packages[0].last_resort);
        }
        assert_eq!(kinds, [false, false, false, true, true, true]);
    });
    assert_eq!(
        metric(&server, "redoubt_key_package_handouts_limited_total"),
        3.0
    );
    // Alice's conversation with Bob is built on his last-resort KeyPackage and works.
    let gid = create(alice, "bob");
    let text = random_text("hello");
    chat(&alice.state, &["send", &gid, &text]);
    let read = chat(&bob.state, &["read", &gid]);
    assert_eq!(texts(&read), vec![text]);
    server.stop();
}
