//! Bad input of every kind gets a clear 4xx and changes nothing; the server never
//! answers 5xx, never crashes, and never writes a secret into its log.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Agent, Http, Server, wait_for};
use futures_util::{SinkExt, StreamExt};
use redoubt_proto::ws::{AgentFrame, ServerFrame};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn check(http: &Http, method: &str, path: &str, token: Option<&str>, body: &str, expect: u16) {
    let (status, text) = http.send(method, path, token, Some(body.as_bytes().to_vec()));
    assert_eq!(
        status, expect,
        "{method} {path} {body:.80} -> {status} {text}"
    );
    if path.starts_with("/api/") && status != 405 {
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an API error: {text}"));
        assert!(v["code"].is_string() && v["message"].is_string(), "{text}");
    }
}

#[test]
fn malformed_requests_get_4xx_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[("REDOUBT_MAX_BODY_BYTES", "4096")],
    );
    let phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    let http = Http::new(&server);
    let t = Some(server.owner_token.as_str());
    let auditor = server.admin_token("aud", "auditor");

    // Enrollment endpoint.
    for body in [
        "",
        "{",
        "[]",
        "null",
        "{\"token\":1}",
        "{\"token\":\"x\",\"device_public_key\":\"!!\",\"hardware\":\"sim\",\"proof\":\"x\"}",
    ] {
        let (status, text) = http.send(
            "POST",
            "/api/v1/enroll",
            None,
            Some(body.as_bytes().to_vec()),
        );
        assert!((400..500).contains(&status), "{body} -> {status} {text}");
    }
    let key = base64_key();
    check(
        &http,
        "POST",
        "/api/v1/enroll",
        None,
        &json!({"token": "nope", "device_public_key": key, "hardware": "sim", "proof": "AAAA"})
            .to_string(),
        400,
    );
    check(
        &http,
        "POST",
        "/api/v1/enroll",
        None,
        &"x".repeat(10_000),
        413,
    );

    // Admin endpoints: authentication, body, path and domain errors.
    check(&http, "GET", "/api/v1/devices", None, "", 401);
    check(&http, "GET", "/api/v1/devices", Some("rdt_wrong"), "", 401);
    check(&http, "GET", "/api/v1/devices/not-an-id", t, "", 400);
    check(
        &http,
        "GET",
        "/api/v1/devices/dev_000000000000000000000000",
        t,
        "",
        404,
    );
    check(
        &http,
        "PUT",
        &format!("/api/v1/devices/{id}/mode"),
        t,
        "{\"mode\":\"Bad Name\"}",
        422,
    );
    check(
        &http,
        "PUT",
        &format!("/api/v1/devices/{id}/mode"),
        t,
        "{\"mode\":\"no-such-mode\"}",
        404,
    );
    check(
        &http,
        "PUT",
        &format!("/api/v1/devices/{id}/mode"),
        t,
        "{\"mode\":",
        400,
    );
    check(
        &http,
        "PUT",
        &format!("/api/v1/devices/{id}/mode"),
        Some(&auditor),
        "{\"mode\":\"lockdown\"}",
        403,
    );
    check(
        &http,
        "PUT",
        "/api/v1/modes/standard",
        t,
        &mode_json("standard"),
        409,
    );
    check(
        &http,
        "PUT",
        "/api/v1/modes/other",
        t,
        &mode_json("mine"),
        400,
    );
    check(
        &http,
        "PUT",
        "/api/v1/modes/mine",
        t,
        "{\"name\":\"mine\"}",
        422,
    );
    check(
        &http,
        "POST",
        "/api/v1/enrollments",
        t,
        "{\"user\":\"has space\"}",
        422,
    );
    check(
        &http,
        "POST",
        "/api/v1/enrollments",
        t,
        "{\"user\":\"x\",\"mode\":\"nope\"}",
        404,
    );
    check(
        &http,
        "POST",
        "/api/v1/enrollments",
        t,
        "{\"user\":\"x\",\"ttl_secs\":0}",
        400,
    );
    check(
        &http,
        "POST",
        "/api/v1/enrollments",
        t,
        "{\"user\":\"x\",\"extra\":1}",
        422,
    );
    check(&http, "GET", "/api/v1/nothing-here", t, "", 404);
    check(&http, "DELETE", "/api/v1/devices", t, "", 405);

    // Nothing changed.
    let d = server.device(&id);
    assert_eq!(d["assigned_mode"], "standard");
    assert_eq!(d["bundle_version"], 1);
    let modes = server.cli_json(&["modes", "list"]);
    assert_eq!(modes.as_array().unwrap().len(), 3);

    // The device WebSocket: garbage, forged and unknown devices are refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redoubt_client::ServerClient::new(
        server.url.parse().unwrap(),
        server.fingerprint.parse().unwrap(),
        None,
    )
    .unwrap();
    rt.block_on(async {
        for hello in [
            "garbage".to_owned(),
            serde_json::to_string(&AgentFrame::Hello {
                device_id: id.parse().unwrap(),
                signature: base64_sig(),
            })
            .unwrap(),
            serde_json::to_string(&AgentFrame::Hello {
                device_id: "dev_000000000000000000000000".parse().unwrap(),
                signature: base64_sig(),
            })
            .unwrap(),
        ] {
            let mut ws = client.websocket("/api/v1/device/ws").await.unwrap();
            let first = ws.next().await.unwrap().unwrap();
            let challenge: ServerFrame = serde_json::from_str(first.to_text().unwrap()).unwrap();
            assert!(matches!(challenge, ServerFrame::Challenge { .. }));
            ws.send(Message::Text(hello.into())).await.unwrap();
            let answer = ws.next().await.unwrap().unwrap();
            let frame: ServerFrame = serde_json::from_str(answer.to_text().unwrap()).unwrap();
            assert!(
                matches!(frame, ServerFrame::Error { fatal: true, .. }),
                "{frame:?}"
            );
        }
    });

    // Still healthy, and no request was answered with a 5xx.
    let (status, _) = http.send("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    let (_, metrics) = http.send("GET", "/metrics", t, None);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("redoubt_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}

#[test]
fn enrollment_attempts_are_rate_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[("REDOUBT_ENROLL_ATTEMPTS_PER_MINUTE", "3")],
    );
    let http = Http::new(&server);
    let key = base64_key();
    let body =
        json!({"token": "guess", "device_public_key": key, "hardware": "sim", "proof": "AAAA"})
            .to_string();
    let statuses: Vec<u16> = (0..8)
        .map(|_| {
            http.send(
                "POST",
                "/api/v1/enroll",
                None,
                Some(body.as_bytes().to_vec()),
            )
            .0
        })
        .collect();
    // The window is one clock minute: however a boundary splits 8 attempts, one side holds 4 > 3.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 429),
        "{statuses:?}"
    );
}

#[test]
fn logs_hold_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    let url = server.enrollment_url("alice");
    let token = url
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&url);
    phone.start();
    let out = server.cli_as(
        &server.owner_token,
        &["devices", "set-mode", &id, "secure-site"],
    );
    assert!(out.status.success());
    wait_for("compliance", Duration::from_secs(30), || {
        (server.device(&id)["compliance"] == "compliant").then_some(())
    });
    let owner = server.owner_token.clone();
    let sigs: Vec<String> = std::fs::read_dir(phone.state.join("outbox"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
                .filter_map(|v| v["signature"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(phone.state.join("bundle.json")).unwrap()).unwrap();
    let bundle_sig = bundle["signature"].as_str().unwrap().to_owned();
    let device_key = std::fs::read_to_string(phone.state.join("device-key.pem")).unwrap();
    let key_body: String = device_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let messenger_key =
        std::fs::read_to_string(phone.messenger().join("messenger-key.pem")).unwrap();
    let messenger_key_body: String = messenger_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    drop(phone);
    server.stop();
    let logs = std::fs::read_to_string(data.with_extension("log")).unwrap()
        + &std::fs::read_to_string(tmp.path().join("phone.log")).unwrap();
    assert!(
        logs.contains("report stored"),
        "debug logs were not captured"
    );
    for (what, secret) in [
        ("admin token", owner.as_str()),
        ("enrollment token", token.as_str()),
        ("bundle signature", bundle_sig.as_str()),
        ("device key", key_body.as_str()),
        ("messenger key", messenger_key_body.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in a log");
    }
    for s in sigs {
        assert!(!logs.contains(&s), "a report signature appears in a log");
    }
    // The key material on disk is private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "org-signing.key", "tls.key"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

fn base64_sig() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([1u8; 64])
}

fn mode_json(name: &str) -> String {
    json!({
        "name": name,
        "network": "open",
        "capabilities": {
            "camera": "allow", "microphone": "allow", "bluetooth": "allow", "wifi": "allow",
            "cellular_data": "allow", "location": "allow", "nfc": "allow", "usb_data": "allow",
            "screenshots": "allow"
        }
    })
    .to_string()
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let _server = Server::start(&data, &[]);
    let out = std::process::Command::new(common::bin("redoubt-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("already serving"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn clients_that_never_answer_the_challenge_do_not_keep_phones_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redoubt_client::ServerClient::new(
        server.url.parse().unwrap(),
        server.fingerprint.parse().unwrap(),
        None,
    )
    .unwrap();
    // More silent sessions than there are turns to start (half the database pool):
    // each gets its challenge and says nothing (the server waits 10 s for an answer).
    let silent = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..12 {
            let mut ws = client.websocket("/api/v1/device/ws").await.unwrap();
            let first = ws.next().await.unwrap().unwrap();
            let frame: ServerFrame = serde_json::from_str(first.to_text().unwrap()).unwrap();
            assert!(matches!(frame, ServerFrame::Challenge { .. }));
            held.push(ws);
        }
        held
    });
    // A real phone starts meanwhile, well before the silent ones time out.
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    phone.start();
    wait_for("the phone compliant", Duration::from_secs(8), || {
        (server.device(&id)["compliance"] == "compliant").then_some(())
    });
    drop(silent);
    phone.stop();
}

/// The phone's holder writes its reports: one whose inventory holds a text longer than
/// `MAX_INVENTORY_TEXT` characters, or a control character (terminal escapes for the
/// CLI), or a battery above 100 %, is refused as a whole with a clear error, stores
/// nothing, and the session goes on: the phone's next well-formed report is taken.
#[test]
fn a_report_with_an_oversized_inventory_is_refused_and_stores_nothing() {
    use ed25519_dalek::Signer as _;
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use redoubt_proto::{ComplianceReport, DeviceId, SignedEnvelope};

    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    // The phone's own key: the agent is not started, this test speaks for it.
    let pem = std::fs::read_to_string(phone.state.join("device-key.pem")).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let device: DeviceId = id.parse().unwrap();
    let report = |seq: u64, inventory: Value| {
        let payload = json!({
            "device_id": id,
            "seq": seq,
            "bundle_version": 1,
            "effective_mode": "standard",
            "capabilities": {"camera": "on"},
            "network": "open",
            "hardware": "sim",
            "observed_at": "2026-09-21T14:13:20Z",
            "inventory": inventory,
        });
        let frame = AgentFrame::Report {
            report: SignedEnvelope::sign(ComplianceReport::KIND, &payload, &key),
        };
        Message::Text(serde_json::to_string(&frame).unwrap().into())
    };
    let inventory = |field: &str, value: Value| {
        let mut inv = json!({
            "model": "Simulated phone (SIMULATED)",
            "agent_version": "0.1.0",
            "hardware_backend": "simulated",
        });
        inv[field] = value;
        inv
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redoubt_client::ServerClient::new(
        server.url.parse().unwrap(),
        server.fingerprint.parse().unwrap(),
        None,
    )
    .unwrap();
    rt.block_on(async {
        let mut ws = client.websocket("/api/v1/device/ws").await.unwrap();
        let ServerFrame::Challenge { nonce } = next_frame(&mut ws).await else {
            panic!("no challenge");
        };
        let signature = redoubt_proto::envelope::encode_signature(
            &key.sign(&redoubt_proto::ws::hello_message(&nonce, &device)),
        );
        let hello = AgentFrame::Hello {
            device_id: device.clone(),
            signature,
        };
        ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into()))
            .await
            .unwrap();

        for (field, value, why) in [
            (
                "model",
                json!("M".repeat(129)),
                "129 characters (at most 128)",
            ),
            ("os_name", json!("x".repeat(20_000)), "at most 128"),
            ("agent_version", json!("9".repeat(200)), "at most 128"),
            (
                "model",
                json!("\u{1b}[2J\u{1b}]0;pwned\u{7}"),
                "control character",
            ),
            ("battery_percent", json!(250), "at most 100"),
        ] {
            ws.send(report(1, inventory(field, value))).await.unwrap();
            let (code, message, fatal) = answer(&mut ws).await.unwrap_err();
            assert_eq!(code, "bad_request", "{field}: {message}");
            assert!(message.contains(why), "{field}: {message}");
            assert!(!fatal, "{field}: the session goes on");
        }
        // Nothing of them was stored: the same sequence number is taken now.
        let fine = inventory("model", json!("M".repeat(128)));
        ws.send(report(1, fine)).await.unwrap();
        assert_eq!(answer(&mut ws).await, Ok(1));
    });

    let d = server.device(&id);
    assert_eq!(d["last_report_seq"], 1, "{d}");
    assert_eq!(d["inventory"]["model"], "M".repeat(128), "{d}");
    assert!(d["inventory_at"].is_string(), "{d}");
    let (_, metrics) =
        Http::new(&server).send("GET", "/metrics", Some(server.owner_token.as_str()), None);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("redoubt_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}

/// The next frame the server sends on a device session.
async fn next_frame<S>(ws: &mut S) -> ServerFrame
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a frame within 20 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

/// The server's answer to a report: its acknowledgement or its error (code, message,
/// fatal); the bundles, commands and welcome on the way are skipped.
async fn answer<S>(ws: &mut S) -> Result<u64, (String, String, bool)>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match next_frame(ws).await {
            ServerFrame::ReportAck { seq } => return Ok(seq),
            ServerFrame::Error {
                code,
                message,
                fatal,
            } => return Err((code, message, fatal)),
            _ => continue,
        }
    }
}
