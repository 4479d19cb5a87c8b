//! A hostile member and a curious outsider against the delivery service: the real
//! server and phones, and hand-made inputs posted with a real device session (garbage
//! commits, declared member lists, an add without its Welcome, commits of a group the
//! poster is not in). The server must verify every commit against its public view of
//! the group, derive the members from it, and tell non-members nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Agent, Server, chat, random_text, texts};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use redoubt_client::ClientError;
use redoubt_messenger::Messenger;
use redoubt_messenger::db::Db;
use redoubt_messenger::mls_store::Provider;
use redoubt_proto::messaging::{B64, ClaimKeyPackages, ClaimedKeyPackages, GroupState, QueueBatch};
use redoubt_proto::{GroupId, UserName};
use serde_json::{Value, json};
use tls_codec::{Deserialize as _, Serialize as _};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Posts `body` with the device's session; `(status, answer)`.
async fn post(m: &Messenger, path: &str, body: &Value) -> (u16, Value) {
    match m.net().post::<Value, Value>(path, body).await {
        Ok(v) => (200, v),
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => (status, json!({"code": code, "message": message})),
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn get(m: &Messenger, path: &str) -> (u16, Value) {
    match m.net().get::<Value>(path).await {
        Ok(v) => (200, v),
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => (status, json!({"code": code, "message": message})),
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn group(m: &Messenger, gid: &str) -> GroupState {
    let (status, v) = get(m, &format!("/groups/{gid}")).await;
    assert_eq!(status, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

/// A commit made with the device's own MLS state (as its messenger would, but not
/// merged): it adds every device of `user`; returns `(commit, welcome, group_info)`.
async fn craft_add(state: &Path, m: &Messenger, gid: &str, user: &str) -> (B64, B64, B64) {
    let claimed: ClaimedKeyPackages = m
        .net()
        .post(
            "/key-packages/claim",
            &ClaimKeyPackages {
                users: vec![user.parse::<UserName>().unwrap()],
            },
        )
        .await
        .unwrap();
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let kps: Vec<KeyPackage> = claimed
        .key_packages
        .iter()
        .map(|c| {
            KeyPackageIn::tls_deserialize_exact(&c.key_package.0)
                .unwrap()
                .validate(&crypto, ProtocolVersion::Mls10)
                .unwrap()
        })
        .collect();
    assert!(!kps.is_empty(), "{claimed:?}");
    craft_add_of(state, gid, |_| kps).await
}

/// A commit adding the KeyPackages `make` builds (with the device's MLS provider), made
/// with the device's own MLS state and not merged; returns `(commit, welcome,
/// group_info)`.
async fn craft_add_of(
    state: &Path,
    gid: &str,
    make: impl FnOnce(&Provider<'_>) -> Vec<KeyPackage>,
) -> (B64, B64, B64) {
    let db = Db::open(&state.join("messenger").join("messenger.db"))
        .await
        .unwrap();
    let pk: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'mls_public_key'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let provider = Provider::new(tx.state());
    let signer = SignatureKeyPair::read(
        tx.state(),
        &hex::decode(pk).unwrap(),
        SignatureScheme::ED25519,
    )
    .unwrap();
    let mut g = MlsGroup::load(
        tx.state(),
        &openmls::group::GroupId::from_slice(gid.as_bytes()),
    )
    .unwrap()
    .unwrap();
    let kps = make(&provider);
    let (commit, welcome, gi) = g.add_members(&provider, &signer, &kps).unwrap();
    // Dropped without commit: the device's own state does not move.
    drop(tx);
    (
        B64(commit.tls_serialize_detached().unwrap()),
        B64(welcome.tls_serialize_detached().unwrap()),
        B64(MlsMessageOut::from(gi.unwrap())
            .tls_serialize_detached()
            .unwrap()),
    )
}

struct World {
    _tmp: tempfile::TempDir,
    server: Server,
    alice: Agent,
    bob: Agent,
    mallory: Agent,
    eve: Agent,
    gid: String,
}

/// Alice, Bob and Mallory in one conversation; Eve enrolled but outside.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let phone = |u: &str| {
        let a = Agent::new(tmp.path().join(u));
        a.enroll(&server.enrollment_url(u));
        chat(&a.state, &["list"]);
        a
    };
    let (alice, bob, mallory, eve) = (phone("alice"), phone("bob"), phone("mallory"), phone("eve"));
    let created = chat(&alice.state, &["create", "Ops", "--members", "bob,mallory"]);
    let gid = created["conversation"].as_str().unwrap().to_owned();
    chat(&bob.state, &["sync"]);
    chat(&mallory.state, &["sync"]);
    World {
        _tmp: tmp,
        server,
        alice,
        bob,
        mallory,
        eve,
        gid,
    }
}

#[test]
fn a_member_cannot_rewrite_the_group_with_what_it_declares() {
    let w = world();
    let rt = rt();
    let gid = w.gid.clone();
    rt.block_on(async {
        let m = Messenger::open(&w.mallory.messenger()).await.unwrap();
        let before = group(&m, &gid).await;
        assert_eq!(before.members.len(), 3, "{before:?}");
        let path = format!("/groups/{gid}/commit");

        // Garbage as a commit.
        let (status, v) = post(&m, &path, &json!({"commit": B64(b"not a commit".to_vec())})).await;
        assert_eq!(status, 400, "garbage accepted as a commit: {v}");
        // The old shape: an epoch and a member list that drops everyone else (and
        // would push the epoch). Not even accepted any more.
        let (status, v) = post(
            &m,
            &path,
            &json!({"epoch": before.epoch, "commit": B64(b"x".to_vec()), "members": [m.device_id()]}),
        )
        .await;
        assert!(
            (400..500).contains(&status),
            "a declared member list was accepted: {v}"
        );
        // An outsider declared as added, without any Welcome (old shape) ...
        let (status, v) = post(
            &m,
            &path,
            &json!({"epoch": before.epoch, "commit": B64(b"x".to_vec()),
                    "members": before.members.iter().map(|d| d.as_str()).chain([w.eve_device().as_str()]).collect::<Vec<_>>()}),
        )
        .await;
        assert!((400..500).contains(&status), "an outsider was declared in: {v}");
        // ... and a real, signed commit adding Eve, without her Welcome.
        let (commit, welcome, gi) = craft_add(&w.mallory.state, &m, &gid, "eve").await;
        let (status, v) =
            post(&m, &path, &json!({"commit": commit, "group_info": gi})).await;
        assert_eq!(status, 400, "an add without its Welcome was accepted: {v}");
        assert!(v["message"].as_str().unwrap().contains("Welcome"), "{v}");
        // A Welcome with a commit that adds nobody is refused too (a Welcome for
        // someone else's add does not fit this commit's KeyPackages either).
        let (commit2, _, gi2) = craft_add(&w.mallory.state, &m, &gid, "eve").await;
        let (status, v) =
            post(&m, &path, &json!({"commit": commit2, "welcome": welcome, "group_info": gi2})).await;
        assert_eq!(status, 400, "a Welcome for other KeyPackages was accepted: {v}");
        drop(commit);
        // A correct add with its Welcome, carrying the GroupInfo of another commit
        // (signed by Mallory, of the same epoch number, another tree): the stored
        // GroupInfo would no longer describe the group.
        let (commit3, welcome3, gi3) = craft_add(&w.mallory.state, &m, &gid, "eve").await;
        let (status, v) = post(
            &m,
            &path,
            &json!({"commit": commit3, "welcome": welcome3, "group_info": gi2}),
        )
        .await;
        assert_eq!(status, 400, "another commit's GroupInfo was accepted: {v}");
        assert!(v["message"].as_str().unwrap().contains("GroupInfo"), "{v}");
        // A correct add with its Welcome, of a device revoked meanwhile, is refused.
        let revoked = w
            .server
            .cli_json(&["devices", "revoke", w.eve_device().as_str()]);
        assert_eq!(revoked["state"], "verified", "{revoked}");
        let (status, v) = post(
            &m,
            &path,
            &json!({"commit": commit3, "welcome": welcome3, "group_info": gi3}),
        )
        .await;
        assert_eq!(status, 409, "the add of a revoked device was accepted: {v}");
        assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");

        let after = group(&m, &gid).await;
        assert_eq!(after.members, before.members, "the member list changed");
        assert_eq!(after.epoch, before.epoch, "the epoch moved");
        assert_eq!(after.group_info, before.group_info, "the GroupInfo was replaced");
        assert!(before.group_info.is_some());
        drop(m);
    });

    // The group keeps working: an honest commit is accepted and everyone follows.
    chat(&w.alice.state, &["remove", &gid, "mallory"]);
    let text = random_text("after");
    chat(&w.alice.state, &["send", &gid, &text]);
    chat(&w.bob.state, &["sync"]);
    let read = chat(&w.bob.state, &["read", &gid]);
    assert!(texts(&read).contains(&text), "{read}");
    rt.block_on(async {
        let a = Messenger::open(&w.alice.messenger()).await.unwrap();
        let g = group(&a, &gid).await;
        assert_eq!(g.members.len(), 2, "{g:?}");
        assert!(!g.members.contains(&w.mallory_device()), "{g:?}");
    });
    w.server.stop();
}

#[test]
fn a_member_cannot_add_a_device_awaiting_approval_with_a_key_package_it_made() {
    let w = world();
    let rt = rt();
    let gid = w.gid.clone();
    // An operator enrolls a second device for Bob; nobody approves it.
    let ghost = Agent::new(w._tmp.path().join("bob-ghost"));
    let ghost_id: redoubt_proto::DeviceId = ghost
        .enroll(&w.server.enrollment_url("bob"))
        .parse()
        .unwrap();
    assert_eq!(w.server.device(ghost_id.as_str())["approval"], "pending");
    rt.block_on(async {
        let m = Messenger::open(&w.mallory.messenger()).await.unwrap();
        let before = group(&m, &gid).await;
        // The organization will not certify the ghost's key, so Mallory makes the
        // KeyPackage herself, with a certificate she signed, naming the ghost device.
        let (commit, welcome, gi) = craft_add_of(&w.mallory.state, &gid, |provider| {
            let ghost_key = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
            let cert = redoubt_proto::messaging::MemberCertificate {
                device_id: ghost_id.clone(),
                user: "bob".parse().unwrap(),
                mls_key: B64(ghost_key.to_public_vec()),
                issued_at: redoubt_proto::Timestamp::now(),
            };
            let forged = redoubt_proto::SignedEnvelope::sign(
                redoubt_proto::messaging::MemberCertificate::KIND,
                &cert,
                &ed25519_dalek::SigningKey::from_bytes(&[13; 32]),
            );
            let credential = CredentialWithKey {
                credential: redoubt_messenger::identity::credential_for(&forged),
                signature_key: ghost_key.to_public_vec().into(),
            };
            let kp = KeyPackage::builder()
                .build(
                    redoubt_messenger::messenger::CIPHERSUITE,
                    provider,
                    &ghost_key,
                    credential,
                )
                .unwrap();
            vec![kp.key_package().clone()]
        })
        .await;
        let (status, v) = post(
            &m,
            &format!("/groups/{gid}/commit"),
            &json!({"commit": commit, "welcome": welcome, "group_info": gi}),
        )
        .await;
        assert_eq!(status, 400, "a self-certified ghost device was added: {v}");
        let after = group(&m, &gid).await;
        assert_eq!(after.members, before.members, "the member list changed");
        assert!(!after.members.contains(&ghost_id));
        assert_eq!(after.epoch, before.epoch, "the epoch moved");
    });
    w.server.stop();
}

#[test]
fn a_member_cannot_smuggle_a_commit_or_junk_as_a_message() {
    let w = world();
    let rt = rt();
    let gid = w.gid.clone();
    rt.block_on(async {
        let m = Messenger::open(&w.mallory.messenger()).await.unwrap();
        let before = group(&m, &gid).await;
        let path = format!("/groups/{gid}/messages");
        // Junk would be queued to every member.
        let (status, v) = post(
            &m,
            &path,
            &json!({"epoch": before.epoch, "message": B64(b"not mls".to_vec()), "client_id": "junk-1"}),
        )
        .await;
        assert_eq!(status, 400, "junk accepted as a message: {v}");
        // A signed commit (public framing) sent as a message would reach the members
        // without the server's commit check: an add of Eve nobody verified.
        let (commit, _, _) = craft_add(&w.mallory.state, &m, &gid, "eve").await;
        let (status, v) = post(
            &m,
            &path,
            &json!({"epoch": before.epoch, "message": commit, "client_id": "smuggle-1"}),
        )
        .await;
        assert_eq!(status, 400, "a commit was accepted as a message: {v}");
        assert!(v["message"].as_str().unwrap().contains("PrivateMessage"), "{v}");
        let after = group(&m, &gid).await;
        assert_eq!((after.epoch, after.members), (before.epoch, before.members));
    });
    // Nothing reached the others: Bob syncs cleanly and reads Alice's next message.
    let text = random_text("clean");
    chat(&w.alice.state, &["send", &gid, &text]);
    chat(&w.bob.state, &["sync"]);
    let read = chat(&w.bob.state, &["read", &gid]);
    assert_eq!(texts(&read), vec![text], "{read}");
    w.server.stop();
}

#[test]
fn a_non_member_learns_nothing_about_a_group() {
    let w = world();
    let rt = rt();
    let gid = w.gid.clone();
    let nowhere = GroupId::from_random([7; 16]).to_string();
    // Alice removes Mallory; the removal commit is in Mallory's queue.
    chat(&w.alice.state, &["remove", &gid, "mallory"]);
    rt.block_on(async {
        let m = Messenger::open(&w.mallory.messenger()).await.unwrap();
        let batch: QueueBatch = m.net().get("/queue?limit=100").await.unwrap();
        let removal = batch
            .items
            .iter()
            .rev()
            .find(|i| i.kind == redoubt_proto::messaging::ItemKind::Commit)
            .expect("the removal commit is queued for the removed member")
            .payload
            .clone();
        let e = Messenger::open(&w.eve.messenger()).await.unwrap();
        for who in [&m, &e] {
            // Reading, committing (old and new shape), sending, and the retry path
            // with the last accepted commit: every answer is the one for a group
            // that does not exist.
            let bodies = [
                json!({"commit": removal}),
                json!({"commit": B64(b"junk".to_vec())}),
                json!({"epoch": 0, "commit": B64(b"junk".to_vec()), "members": [who.device_id()]}),
            ];
            let (s_get, v_get) = get(who, &format!("/groups/{gid}")).await;
            let (n_get, nv_get) = get(who, &format!("/groups/{nowhere}")).await;
            assert_eq!((s_get, n_get), (404, 404), "{v_get} {nv_get}");
            assert_eq!(
                v_get["message"].as_str().unwrap().replace(&gid, "ID"),
                nv_get["message"].as_str().unwrap().replace(&nowhere, "ID")
            );
            for body in &bodies {
                let (s, v) = post(who, &format!("/groups/{gid}/commit"), body).await;
                let (n, nv) = post(who, &format!("/groups/{nowhere}/commit"), body).await;
                assert_eq!(s, n, "{v} vs {nv}");
                assert_eq!(v, json!({"code": nv["code"], "message": nv["message"].as_str().unwrap().replace(&nowhere, &gid)}));
                assert!(
                    !v.to_string().contains("moved on") && v["code"] != "epoch_conflict",
                    "{v}"
                );
            }
            let msg = json!({"epoch": 0, "message": B64(b"m".to_vec()), "client_id": "x1"});
            let (s, v) = post(who, &format!("/groups/{gid}/messages"), &msg).await;
            let (n, nv) = post(who, &format!("/groups/{nowhere}/messages"), &msg).await;
            assert_eq!((s, n), (404, 404), "{v} {nv}");
            assert_eq!(
                v["message"].as_str().unwrap().replace(&gid, "ID"),
                nv["message"].as_str().unwrap().replace(&nowhere, "ID")
            );
        }
    });
    w.server.stop();
}

impl World {
    fn device_of(a: &Agent) -> redoubt_proto::DeviceId {
        let id: Value =
            serde_json::from_slice(&std::fs::read(a.state.join("identity.json")).unwrap()).unwrap();
        id["device_id"].as_str().unwrap().parse().unwrap()
    }
    fn eve_device(&self) -> redoubt_proto::DeviceId {
        Self::device_of(&self.eve)
    }
    fn mallory_device(&self) -> redoubt_proto::DeviceId {
        Self::device_of(&self.mallory)
    }
}
