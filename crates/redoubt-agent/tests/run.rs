//! The real binary against a small fake server speaking the Redoubt protocol over
//! TLS pinned to a test CA: enrollment, the authenticated session, reports and
//! acknowledgements, pushed bundles, drift, offline queueing, revocation, shutdown;
//! device commands (lock, unlock, refusals) and a remote wipe.

// A test's helpers panic on purpose: the panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, fails, ok, org, signed_bundle};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use redoubt_proto::api::{EnrollRequest, EnrollResponse, enroll_proof_message};
use redoubt_proto::envelope::{decode_public_key, decode_signature, encode_public_key};
use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
use redoubt_proto::{
    Capability, CapabilityState, CommandId, ComplianceReport, DeviceAction, DeviceCommand,
    DeviceId, Fingerprint, HardwareKind, SignedEnvelope, Timestamp,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const LIMIT: Duration = Duration::from_secs(20);

/// What the test can make the fake server do to the live session.
enum Push {
    Frame(ServerFrame),
    Hangup,
}

#[derive(Default)]
struct Shared {
    device: Option<(DeviceId, VerifyingKey)>,
    /// The bundle sent after `Welcome`.
    current_bundle: Option<SignedEnvelope>,
    /// When false, connections are closed before TLS.
    accepting: bool,
    /// When true, the device's hello is answered with `unauthorized`.
    revoked: bool,
    push: Option<mpsc::UnboundedSender<Push>>,
    stored_seq: u64,
    sessions: u32,
}

/// A command acknowledgement as the fake server received it.
type Ack = (CommandId, bool, Option<String>);

struct FakeServer {
    url: String,
    shared: Arc<Mutex<Shared>>,
    reports: mpsc::UnboundedReceiver<ComplianceReport>,
    acks: mpsc::UnboundedReceiver<Ack>,
}

async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Option<(String, String, HashMap<String, String>)> {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        buf.push(b[0]);
        if buf.len() > 16 * 1024 {
            return None;
        }
    }
    let text = String::from_utf8(buf).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((method, path, headers))
}

fn http(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl FakeServer {
    async fn start() -> FakeServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fingerprint = Fingerprint::of_der(ca_cert.der());
        let mut url = url::Url::parse("redoubt://enroll").unwrap();
        url.query_pairs_mut()
            .append_pair("server", &format!("https://127.0.0.1:{port}"))
            .append_pair("token", "good-token")
            .append_pair("ca", &fingerprint.to_string());

        let shared = Arc::new(Mutex::new(Shared {
            accepting: true,
            ..Shared::default()
        }));
        let (report_tx, reports) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if !s.lock().unwrap().accepting {
                    drop(tcp);
                    continue;
                }
                let (acceptor, s, report_tx, ack_tx) = (
                    acceptor.clone(),
                    s.clone(),
                    report_tx.clone(),
                    ack_tx.clone(),
                );
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((method, path, headers)) = read_head(&mut tls).await else {
                        return;
                    };
                    if method == "POST" && path == "/api/v1/enroll" {
                        let len: usize = headers
                            .get("content-length")
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        tls.read_exact(&mut body).await.unwrap();
                        let answer = enroll(&s, &body);
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    } else if path == "/api/v1/device/ws" {
                        let accept = derive_accept_key(headers["sec-websocket-key"].as_bytes());
                        let head = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        );
                        tls.write_all(head.as_bytes()).await.unwrap();
                        let ws = WebSocketStream::from_raw_socket(tls, Role::Server, None).await;
                        device_session(ws, s, report_tx, ack_tx).await;
                    }
                });
            }
        });
        FakeServer {
            url: url.to_string(),
            shared,
            reports,
            acks,
        }
    }

    /// Waits for the next command acknowledgement.
    async fn ack(&mut self, what: &str) -> Ack {
        tokio::time::timeout(LIMIT, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for a command ack: {what}"))
            .expect("server alive")
    }

    /// Waits for a report matching `pred`, skipping others.
    async fn report(
        &mut self,
        what: &str,
        pred: impl Fn(&ComplianceReport) -> bool,
    ) -> ComplianceReport {
        tokio::time::timeout(LIMIT, async {
            loop {
                let r = self.reports.recv().await.expect("server alive");
                if pred(&r) {
                    return r;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for a report: {what}"))
    }

    fn push(&self, p: Push) {
        let tx = self
            .shared
            .lock()
            .unwrap()
            .push
            .clone()
            .expect("a session is open");
        tx.send(p).ok();
    }
}

fn enroll(s: &Mutex<Shared>, body: &[u8]) -> String {
    let req: EnrollRequest = serde_json::from_slice(body).unwrap();
    if req.token == "used-token" {
        return http(
            "409 Conflict",
            r#"{"code":"token_used","message":"token already used"}"#,
        );
    }
    let vk = decode_public_key(&req.device_public_key).unwrap();
    let proof = decode_signature(&req.proof).unwrap();
    vk.verify_strict(
        &enroll_proof_message(&req.token, &req.device_public_key),
        &proof,
    )
    .expect("the proof is signed by the enrolled key");
    assert_eq!(req.hardware, HardwareKind::Sim);
    let device = DeviceId::from_random([0xab; 12]);
    let bundle = signed_bundle(&device, 1, "secure-site", 2);
    let mut g = s.lock().unwrap();
    g.device = Some((device.clone(), vk));
    g.current_bundle = Some(bundle.clone());
    let resp = EnrollResponse {
        device_id: device,
        user: "alice".parse().unwrap(),
        organization_key: encode_public_key(&org().verifying_key()),
        bundle,
    };
    http("200 OK", &serde_json::to_string(&resp).unwrap())
}

async fn device_session<S>(
    mut ws: WebSocketStream<S>,
    s: Arc<Mutex<Shared>>,
    reports: mpsc::UnboundedSender<ComplianceReport>,
    acks: mpsc::UnboundedSender<Ack>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let send = |f: &ServerFrame| Message::text(serde_json::to_string(f).unwrap());
    let nonce = "bm9uY2U".to_owned();
    ws.send(send(&ServerFrame::Challenge {
        nonce: nonce.clone(),
    }))
    .await
    .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        return;
    };
    let AgentFrame::Hello {
        device_id,
        signature,
    } = serde_json::from_str(t.as_str()).unwrap()
    else {
        panic!("expected hello")
    };
    let (known, vk) = s.lock().unwrap().device.clone().expect("enrolled");
    let sig = decode_signature(&signature).unwrap();
    let good = device_id == known
        && vk
            .verify_strict(&hello_message(&nonce, &device_id), &sig)
            .is_ok();
    assert!(good, "the hello is signed by the device key");
    if s.lock().unwrap().revoked {
        let err = ServerFrame::Error {
            code: "unauthorized".into(),
            message: "device revoked".into(),
            fatal: true,
        };
        let _ = ws.send(send(&err)).await;
        let _ = ws.close(None).await;
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bundle = {
        let mut g = s.lock().unwrap();
        g.push = Some(tx);
        g.sessions += 1;
        g.current_bundle.clone().unwrap()
    };
    ws.send(send(&ServerFrame::Welcome {
        server_time: Timestamp::now(),
    }))
    .await
    .unwrap();
    ws.send(send(&ServerFrame::Bundle { bundle }))
        .await
        .unwrap();
    loop {
        tokio::select! {
            p = rx.recv() => match p {
                Some(Push::Frame(f)) => { if ws.send(send(&f)).await.is_err() { return } }
                Some(Push::Hangup) | None => { let _ = ws.close(None).await; return }
            },
            m = ws.next() => {
                let Some(Ok(m)) = m else { return };
                let Message::Text(t) = m else { continue };
                let report = match serde_json::from_str(t.as_str()).unwrap() {
                    AgentFrame::Report { report } => report,
                    AgentFrame::CommandAck { id, accepted, reason } => {
                        acks.send((id, accepted, reason)).ok();
                        continue;
                    }
                    AgentFrame::Hello { .. } => panic!("unexpected hello"),
                };
                let r: ComplianceReport = report.verify(ComplianceReport::KIND, &vk).expect("reports are signed by the device key");
                let ack = {
                    let mut g = s.lock().unwrap();
                    if r.seq > g.stored_seq {
                        assert_eq!(r.seq, g.stored_seq + 1, "reports arrive in order without gaps");
                        g.stored_seq = r.seq;
                        reports.send(r).ok();
                    }
                    g.stored_seq
                };
                if ws.send(send(&ServerFrame::ReportAck { seq: ack })).await.is_err() { return }
            }
        }
    }
}

async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("REDOUBT_AGENT_STATE")
        .env_remove("REDOUBT_AGENT_RECHECK_MS")
        .output()
        .await
        .unwrap()
}

async fn status(state: &str) -> Value {
    serde_json::from_str(&ok(&cli(&["status", "--state", state, "--json"]).await)).unwrap()
}

async fn wait_status(state: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = status(state).await;
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for status: {what}; last: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cap(r: &ComplianceReport, c: Capability) -> CapabilityState {
    r.capabilities[&c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_run_report_follow_bundles_survive_outages() {
    let mut server = FakeServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let state_path = tmp.path().join("state");
    let state = state_path.to_str().unwrap();

    // A used token gets one clear line and no enrollment.
    let used = server.url.replace("good-token", "used-token");
    let err = fails(&cli(&["enroll", &used, "--state", state]).await);
    assert!(err.contains("already been used"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);

    let out = ok(&cli(&["enroll", &server.url, "--state", state]).await);
    assert!(
        out.contains("dev_abab")
            && out.contains("alice")
            && out.contains("hardware: sim (SIMULATED)"),
        "{out}"
    );
    let key_mode = std::fs::metadata(state_path.join("device-key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    let err = fails(&cli(&["enroll", &server.url, "--state", state]).await);
    assert!(err.contains("already enrolled"), "{err}");

    let mut agent = tokio::process::Command::new(BIN)
        .args(["run", "--state", state, "--recheck-ms", "100"])
        .env("REDOUBT_LOG", "redoubt_agent=debug,warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The first report shows secure-site enforced and measured.
    let r = server
        .report("secure-site enforced", |r| {
            r.effective_mode == "secure-site"
        })
        .await;
    assert_eq!(
        (r.seq, r.bundle_version, r.hardware),
        (1, 1, HardwareKind::Sim)
    );
    assert_eq!(cap(&r, Capability::Camera), CapabilityState::Off);
    assert_eq!(cap(&r, Capability::Wifi), CapabilityState::On);
    let s = wait_status(state, "connected, nothing pending", |s| {
        s["connection"] == "connected" && s["pending_reports"] == 0
    })
    .await;
    assert_eq!(s["simulated"], true);
    assert_eq!(s["violations"], serde_json::json!([]));

    // A second agent on the same directory is refused.
    let err = fails(&cli(&["run", "--state", state]).await);
    assert!(err.contains("already running"), "{err}");

    // Periodic check-in (the bundle says every 2 s) even though nothing changed.
    let last = r.seq;
    let r = server.report("a check-in", |r| r.seq > last).await;
    assert_eq!(cap(&r, Capability::Camera), CapabilityState::Off);

    // The camera is switched on behind the agent's back: the truth first, then the repair.
    ok(&cli(&["sim", "set", "--state", state, "camera", "on"]).await);
    let on = server
        .report("camera on reported", |r| {
            cap(r, Capability::Camera) == CapabilityState::On
        })
        .await;
    let off = server
        .report("camera off again", |r| {
            cap(r, Capability::Camera) == CapabilityState::Off
        })
        .await;
    assert!(off.seq > on.seq);

    // A driver that lies: the agent never claims off.
    ok(&cli(&[
        "sim",
        "set",
        "--state",
        state,
        "microphone",
        "on",
        "--stuck",
    ])
    .await);
    server
        .report("microphone on", |r| {
            cap(r, Capability::Microphone) == CapabilityState::On
        })
        .await;
    let s = wait_status(state, "violation shown", |s| {
        s["violations"].as_array().is_some_and(|v| !v.is_empty())
    })
    .await;
    assert!(
        s["violations"][0].as_str().unwrap().contains("microphone"),
        "{s}"
    );
    ok(&cli(&["sim", "set", "--state", state, "microphone", "on"]).await);
    server
        .report("microphone off", |r| {
            cap(r, Capability::Microphone) == CapabilityState::Off
        })
        .await;

    // A pushed bundle is applied and reported.
    let device = DeviceId::from_random([0xab; 12]);
    let v2 = signed_bundle(&device, 2, "standard", 2);
    server.shared.lock().unwrap().current_bundle = Some(v2.clone());
    server.push(Push::Frame(ServerFrame::Bundle { bundle: v2 }));
    let r = server
        .report("standard applied", |r| r.effective_mode == "standard")
        .await;
    assert_eq!(r.bundle_version, 2);
    assert_eq!(cap(&r, Capability::Camera), CapabilityState::On);

    // An older bundle is refused and recorded; the mode stays.
    server.push(Push::Frame(ServerFrame::Bundle {
        bundle: signed_bundle(&device, 1, "lockdown", 2),
    }));
    let s = wait_status(state, "bundle refused", |s| s["bundle_refused"].is_string()).await;
    assert!(
        s["bundle_refused"].as_str().unwrap().contains("older"),
        "{s}"
    );
    assert_eq!(
        (s["effective_mode"].as_str(), s["bundle_version"].as_u64()),
        (Some("standard"), Some(2))
    );

    // Offline: changes are measured and queued, then delivered in order on reconnect.
    server.shared.lock().unwrap().accepting = false;
    server.push(Push::Hangup);
    wait_status(state, "disconnected", |s| s["connection"] == "disconnected").await;
    ok(&cli(&["sim", "set", "--state", state, "bluetooth", "off"]).await);
    wait_status(state, "a queued report", |s| {
        s["pending_reports"].as_u64() >= Some(1)
    })
    .await;
    server.shared.lock().unwrap().accepting = true;
    server
        .report("queued report delivered", |r| {
            cap(r, Capability::Bluetooth) == CapabilityState::Off
        })
        .await;
    wait_status(state, "reconnected, outbox drained", |s| {
        s["connection"] == "connected" && s["pending_reports"] == 0
    })
    .await;

    // Revoked: the agent says so and backs off.
    server.shared.lock().unwrap().revoked = true;
    server.push(Push::Hangup);
    let s = wait_status(state, "unauthorized", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unauthorized"))
    })
    .await;
    assert_eq!(s["connection"], "disconnected");

    // SIGTERM: a clean exit, and status knows nobody runs.
    let pid = agent.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(LIMIT, agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let s = status(state).await;
    assert_eq!(s["connection"], "not_running");
    assert!(server.shared.lock().unwrap().sessions >= 2);
}

/// A command for the fake server's device, signed by `key`, issued now (plus
/// `later` seconds: a lock and an unlock issued in the same second are ordered
/// lock-wins).
fn command(
    key: &SigningKey,
    device: &DeviceId,
    action: DeviceAction,
    (n, later): (u8, i64),
    expires_in: i64,
) -> (CommandId, ServerFrame) {
    let now = Timestamp::now().plus_secs(later);
    let c = DeviceCommand {
        id: CommandId::from_random([n; 12]),
        device_id: device.clone(),
        action,
        issued_at: now,
        expires_at: now.plus_secs(expires_in),
    };
    let frame = ServerFrame::Command {
        command: SignedEnvelope::sign(DeviceCommand::KIND, &c, key),
    };
    (c.id, frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_lock_unlock_refusals_and_a_wipe() {
    let mut server = FakeServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let state = root.to_str().unwrap();
    // The messenger directory outside the state directory, handed to the chat's user
    // (here the test's own: only root may give files away).
    let chat_dir = tmp.path().join("chat").join("messenger");
    let me = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(tmp.path()).unwrap();
        format!("{}:{}", m.uid(), m.gid())
    };
    ok(&cli(&[
        "enroll",
        &server.url,
        "--state",
        state,
        "--messenger-dir",
        chat_dir.to_str().unwrap(),
        "--messenger-owner",
        &me,
    ])
    .await);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&chat_dir), 0o700);
        assert_eq!(mode(&chat_dir.join("messenger-key.pem")), 0o600);
        assert!(!chat_dir.join("device-key.pem").exists());
    }
    // What the messenger would have written into its directory, and what an older
    // one wrote into the state directory.
    for name in ["messenger.db", "messenger.db-wal", "messenger.db-shm"] {
        std::fs::write(chat_dir.join(name), b"conversations").unwrap();
        std::fs::write(root.join(name), b"conversations").unwrap();
    }
    let mut agent = tokio::process::Command::new(BIN)
        .args(["run", "--state", state, "--recheck-ms", "100"])
        .env("REDOUBT_LOG", "redoubt_agent=debug,warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server
        .report("secure-site enforced", |r| {
            r.effective_mode == "secure-site"
        })
        .await;
    let device = DeviceId::from_random([0xab; 12]);

    // Lock: acknowledged, then a report that shows lockdown under this lock.
    let (lock_id, lock) = command(&org(), &device, DeviceAction::Lock, (1, 0), 600);
    server.push(Push::Frame(lock.clone()));
    assert_eq!(server.ack("lock").await, (lock_id.clone(), true, None));
    let r = server
        .report("locked", |r| r.commands_done.contains(&lock_id))
        .await;
    assert_eq!(r.locked_by.as_ref(), Some(&lock_id));
    assert_eq!(r.effective_mode, "lockdown");
    assert_eq!(cap(&r, Capability::Nfc), CapabilityState::Off);

    // Re-delivered: acknowledged again, no new effect.
    server.push(Push::Frame(lock));
    assert_eq!(
        server.ack("lock again").await,
        (lock_id.clone(), true, None)
    );
    let s = status(state).await;
    assert_eq!(s["locked_by"], lock_id.as_str());
    assert_eq!(s["effective_mode"], "lockdown");

    // Refused: forged, for another device, expired. The lock stays.
    let (forged_id, forged) = command(
        &SigningKey::from_bytes(&[8; 32]),
        &device,
        DeviceAction::Unlock,
        (2, 1),
        600,
    );
    server.push(Push::Frame(forged));
    let (id, accepted, reason) = server.ack("forged unlock").await;
    assert_eq!((id, accepted), (forged_id, false));
    assert!(reason.unwrap().contains("signature"));
    let (foreign_id, foreign) = command(
        &org(),
        &DeviceId::from_random([0xcd; 12]),
        DeviceAction::Unlock,
        (3, 1),
        600,
    );
    server.push(Push::Frame(foreign));
    let (id, accepted, reason) = server.ack("foreign unlock").await;
    assert_eq!((id, accepted), (foreign_id, false));
    assert!(reason.unwrap().contains("not for this device"));
    let (expired_id, expired) = command(&org(), &device, DeviceAction::Unlock, (4, 1), -2);
    server.push(Push::Frame(expired));
    let (id, accepted, reason) = server.ack("expired unlock").await;
    assert_eq!((id, accepted), (expired_id, false));
    assert!(reason.unwrap().contains("expired"));
    assert_eq!(status(state).await["locked_by"], lock_id.as_str());

    // Unlock: the lock is lifted and the bundle's mode holds again.
    let (unlock_id, unlock) = command(&org(), &device, DeviceAction::Unlock, (5, 1), 600);
    server.push(Push::Frame(unlock));
    assert_eq!(server.ack("unlock").await, (unlock_id.clone(), true, None));
    let r = server
        .report("unlocked", |r| r.commands_done.contains(&unlock_id))
        .await;
    assert_eq!(
        (r.locked_by, r.effective_mode.as_str()),
        (None, "secure-site")
    );

    // Wipe: acknowledged, a last signed report, then nothing left but the lock file.
    wait_status(state, "nothing pending", |s| s["pending_reports"] == 0).await;
    let (wipe_id, wipe) = command(&org(), &device, DeviceAction::Wipe, (6, 0), 600);
    server.push(Push::Frame(wipe));
    assert_eq!(server.ack("wipe").await, (wipe_id.clone(), true, None));
    let last = server
        .report("the last report", |r| r.commands_done.contains(&wipe_id))
        .await;
    assert_eq!(last.effective_mode, "lockdown");
    assert!(last.fallback_reason.unwrap().contains("wiped"));
    let exit = tokio::time::timeout(LIMIT, agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["agent.lock"], "{left:?}");
    assert!(
        !chat_dir.exists(),
        "the messenger directory survived the wipe"
    );
    assert!(tmp.path().join("chat").exists(), "its parent stays");
    let err = fails(&cli(&["status", "--state", state]).await);
    assert!(err.contains("not an enrolled"), "{err}");
}
