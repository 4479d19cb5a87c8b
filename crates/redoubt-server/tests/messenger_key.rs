//! The messenger's own credential: a messenger key delegated by the device key at
//! enrollment (`messenger-delegation/v1`). The messenger works from its directory alone,
//! without the agent's state or the device key; the server opens a messenger session
//! only for a delegation signed by the device's registered key, for that device, and a
//! challenge signed by the delegated key; that key never opens the agent's WebSocket.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Agent, Http, Server, chat, chat_cmd, random_text, texts};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use redoubt_proto::envelope::encode_signature;
use redoubt_proto::messaging::{B64, MessengerDelegation, session_message};
use redoubt_proto::{DeviceId, SignedEnvelope, Timestamp};
use serde_json::{Value, json};

fn key(path: &Path) -> SigningKey {
    SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn delegation(signer: &SigningKey, device: &DeviceId, messenger: &VerifyingKey) -> SignedEnvelope {
    SignedEnvelope::sign(
        MessengerDelegation::KIND,
        &MessengerDelegation {
            device_id: device.clone(),
            messenger_key: B64(messenger.as_bytes().to_vec()),
            issued_at: Timestamp::now(),
        },
        signer,
    )
}

/// One phone's keys and delegation as enrollment wrote them.
struct Phone {
    id: DeviceId,
    device_key: SigningKey,
    messenger_key: SigningKey,
    delegation: SignedEnvelope,
}

impl Phone {
    fn read(agent: &Agent, id: &str) -> Phone {
        let m = agent.messenger();
        Phone {
            id: id.parse().unwrap(),
            device_key: key(&agent.state.join("device-key.pem")),
            messenger_key: key(&m.join("messenger-key.pem")),
            delegation: serde_json::from_slice(
                &std::fs::read(m.join("messenger-delegation.json")).unwrap(),
            )
            .unwrap(),
        }
    }
}

/// Asks for a challenge and posts a session request for `device`, the nonce signed by
/// `signer`, with `delegation`; returns status and answer.
fn session(
    http: &Http,
    device: &DeviceId,
    signer: &SigningKey,
    delegation: &SignedEnvelope,
) -> (u16, Value) {
    let (status, body) = http.send(
        "POST",
        "/api/v1/device/challenge",
        None,
        Some(b"{}".to_vec()),
    );
    assert_eq!(status, 200, "{body}");
    let nonce = serde_json::from_str::<Value>(&body).unwrap()["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let req = json!({
        "device_id": device,
        "nonce": nonce,
        "signature": encode_signature(&signer.sign(&session_message(&nonce, device))),
        "delegation": delegation,
    });
    let (status, body) = http.send(
        "POST",
        "/api/v1/device/session",
        None,
        Some(serde_json::to_vec(&req).unwrap()),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn refused(answer: (u16, Value), why: &str) {
    assert_eq!(answer.0, 401, "{why}: {}", answer.1);
    assert_eq!(answer.1["code"], "unauthorized", "{}", answer.1);
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains(why), "expected {why:?}, got {message:?}");
}

#[test]
fn enrollment_writes_a_private_messenger_directory_without_the_device_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice = Agent::new(tmp.path().join("alice"));
    let id = alice.enroll(&server.enrollment_url("alice"));
    let m = alice.messenger();
    assert_eq!(mode(&m), 0o700);
    assert_eq!(mode(&m.join("messenger-key.pem")), 0o600);
    let device_pem = std::fs::read_to_string(alice.state.join("device-key.pem")).unwrap();
    let device_body: String = device_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&m).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains(&device_body),
            "{} holds the device key",
            p.display()
        );
        names.push(p.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "identity.json",
            "messenger-delegation.json",
            "messenger-key.pem"
        ]
    );
    // The delegation is the device key's, for this device, naming the messenger key.
    let phone = Phone::read(&alice, &id);
    let d: MessengerDelegation = phone
        .delegation
        .verify(MessengerDelegation::KIND, &phone.device_key.verifying_key())
        .unwrap();
    assert_eq!(d.device_id, phone.id);
    assert_eq!(
        d.messenger_key.0,
        phone.messenger_key.verifying_key().as_bytes()
    );
    assert_ne!(phone.messenger_key.to_bytes(), phone.device_key.to_bytes());
}

#[test]
fn the_messenger_works_from_its_directory_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice = Agent::new(tmp.path().join("alice"));
    let bob = Agent::new(tmp.path().join("bob"));
    alice.enroll(&server.enrollment_url("alice"));
    bob.enroll(&server.enrollment_url("bob"));
    // What the phone's user gets: a copy of the messenger directory only. The agent's
    // state directory (device key, bundle, everything root keeps) is gone.
    let phone_user = tmp.path().join("alice-chat");
    std::fs::create_dir(&phone_user).unwrap();
    std::fs::set_permissions(&phone_user, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(alice.messenger()).unwrap() {
        let p = e.unwrap().path();
        let to = phone_user.join(p.file_name().unwrap());
        std::fs::copy(&p, &to).unwrap();
    }
    std::fs::remove_dir_all(&alice.state).unwrap();

    chat(&bob.state, &["list"]);
    let created = chat(&phone_user, &["create", "Pair", "--members", "bob"]);
    let gid = created["conversation"].as_str().unwrap().to_owned();
    let text = random_text("from-the-messenger-dir");
    chat(&phone_user, &["send", &gid, &text]);
    assert_eq!(
        texts(&chat(&bob.state, &["read", &gid])),
        vec![text.clone()]
    );
    // Bob's own messenger directory, named directly, works the same.
    let reply = random_text("reply");
    chat(&bob.messenger(), &["send", &gid, &reply]);
    assert_eq!(
        texts(&chat(&phone_user, &["read", &gid])),
        vec![text, reply]
    );
    assert!(phone_user.join("messenger.db").exists());

    // A directory that is neither is refused clearly.
    let out = chat_cmd(tmp.path(), &["list"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a messenger directory"), "{err}");
}

#[test]
fn forged_tampered_and_foreign_delegations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let alice_agent = Agent::new(tmp.path().join("alice"));
    let bob_agent = Agent::new(tmp.path().join("bob"));
    let alice_id = alice_agent.enroll(&server.enrollment_url("alice"));
    let bob_id = bob_agent.enroll(&server.enrollment_url("bob"));
    let alice = Phone::read(&alice_agent, &alice_id);
    let bob = Phone::read(&bob_agent, &bob_id);
    let http = Http::new(&server);
    let mallory = SigningKey::from_bytes(&[0x4d; 32]);

    // The real credential opens a session (the requests below differ in one thing).
    let (status, granted) = session(&http, &alice.id, &alice.messenger_key, &alice.delegation);
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["user"], "alice");

    // The device key alone: the nonce signed by it, with or without the delegation.
    refused(
        session(&http, &alice.id, &alice.device_key, &alice.delegation),
        "not signed by the delegated messenger key",
    );
    let (status, body) = http.send(
        "POST",
        "/api/v1/device/challenge",
        None,
        Some(b"{}".to_vec()),
    );
    assert_eq!(status, 200);
    let nonce = serde_json::from_str::<Value>(&body).unwrap()["nonce"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_style = json!({
        "device_id": alice.id,
        "nonce": nonce,
        "signature": encode_signature(&alice.device_key.sign(&session_message(&nonce, &alice.id))),
    });
    let (status, body) = http.send(
        "POST",
        "/api/v1/device/session",
        None,
        Some(serde_json::to_vec(&old_style).unwrap()),
    );
    assert!(
        (400..500).contains(&status) && body.contains("delegation"),
        "{status} {body}"
    );
    // A delegation naming the device key itself.
    refused(
        session(
            &http,
            &alice.id,
            &alice.device_key,
            &delegation(
                &alice.device_key,
                &alice.id,
                &alice.device_key.verifying_key(),
            ),
        ),
        "other than the device key",
    );

    // Tampered: Alice's delegation with Mallory's key swapped in.
    let mut tampered = alice.delegation.clone();
    let mut payload: Value =
        serde_json::from_slice(&STANDARD.decode(&tampered.payload).unwrap()).unwrap();
    payload["messenger_key"] = json!(STANDARD.encode(mallory.verifying_key().as_bytes()));
    tampered.payload = STANDARD.encode(serde_json::to_vec(&payload).unwrap());
    refused(
        session(&http, &alice.id, &mallory, &tampered),
        "not signed by this device's key",
    );
    // Forged: Mallory signs a delegation of her key for Alice's device.
    refused(
        session(
            &http,
            &alice.id,
            &mallory,
            &delegation(&mallory, &alice.id, &mallory.verifying_key()),
        ),
        "not signed by this device's key",
    );
    // Signed by another device's key: Bob's device delegates Mallory's key as Alice's.
    refused(
        session(
            &http,
            &alice.id,
            &mallory,
            &delegation(&bob.device_key, &alice.id, &mallory.verifying_key()),
        ),
        "not signed by this device's key",
    );
    // Bob's real credential presented as Alice.
    refused(
        session(&http, &alice.id, &bob.messenger_key, &bob.delegation),
        "not signed by this device's key",
    );
    // For another device: Alice's device key delegates a key to Bob's device, used as
    // Alice's credential.
    refused(
        session(
            &http,
            &alice.id,
            &mallory,
            &delegation(&alice.device_key, &bob.id, &mallory.verifying_key()),
        ),
        "for another device",
    );
    // Another kind of document signed by the device key.
    let other_kind = SignedEnvelope::sign(
        "compliance-report/v1",
        &json!({"device_id": alice.id, "messenger_key": STANDARD.encode(mallory.verifying_key().as_bytes())}),
        &alice.device_key,
    );
    refused(
        session(&http, &alice.id, &mallory, &other_kind),
        "not signed by this device's key",
    );
    // The real credential still works: nothing above changed anything.
    assert_eq!(
        session(&http, &bob.id, &bob.messenger_key, &bob.delegation).0,
        200
    );
}

/// The next text frame from the server.
async fn next_frame(ws: &mut redoubt_client::DeviceSocket) -> redoubt_proto::ws::ServerFrame {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(t) = m.to_text()
            && !t.is_empty()
        {
            return serde_json::from_str(t).unwrap();
        }
    }
}

#[test]
fn the_messenger_key_cannot_open_the_agent_socket() {
    use futures_util::SinkExt;
    use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
    use tokio_tungstenite::tungstenite::Message;

    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let agent = Agent::new(tmp.path().join("alice"));
    let id = agent.enroll(&server.enrollment_url("alice"));
    let phone = Phone::read(&agent, &id);
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
    // The answer of the agent socket to a hello signed by `key`.
    let hello = |key: &SigningKey| {
        rt.block_on(async {
            let mut ws = client.websocket("/api/v1/device/ws").await.unwrap();
            let ServerFrame::Challenge { nonce } = next_frame(&mut ws).await else {
                panic!("no challenge")
            };
            let frame = AgentFrame::Hello {
                device_id: phone.id.clone(),
                signature: encode_signature(&key.sign(&hello_message(&nonce, &phone.id))),
            };
            ws.send(Message::Text(serde_json::to_string(&frame).unwrap().into()))
                .await
                .unwrap();
            next_frame(&mut ws).await
        })
    };
    // The device key opens it (so the refusal below is about the key).
    assert!(matches!(
        hello(&phone.device_key),
        ServerFrame::Welcome { .. }
    ));
    match hello(&phone.messenger_key) {
        ServerFrame::Error { code, .. } => assert_eq!(code, "unauthorized"),
        other => panic!("the messenger key opened the agent socket: {other:?}"),
    }
}

#[test]
fn a_revoked_devices_messenger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let agent = Agent::new(tmp.path().join("alice"));
    let id = agent.enroll(&server.enrollment_url("alice"));
    chat(&agent.messenger(), &["list"]);
    let revoked = server.cli_json(&["devices", "revoke", &id]);
    assert_eq!(revoked["state"], "verified", "{revoked}");
    let out = chat_cmd(&agent.messenger(), &["list"]).output().unwrap();
    assert!(
        !out.status.success(),
        "a revoked device's messenger still works"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("device authentication failed"), "{err}");
    let phone = Phone::read(&agent, &id);
    refused(
        session(
            &Http::new(&server),
            &phone.id,
            &phone.messenger_key,
            &phone.delegation,
        ),
        "unknown or revoked device",
    );
}
