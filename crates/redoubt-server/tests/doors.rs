//! Doors left open on the server: `/metrics` needs a credential and its label sets stay
//! bounded whatever clients invent; half requests and silent connections are cut off;
//! connections are capped per address.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Agent, Http, Server, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

#[test]
fn metrics_need_an_admin_credential_and_invented_requests_add_no_series() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let auditor = server.admin_token("aud", "auditor");

    let (status, body) = http.send("GET", "/metrics", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("redoubt_http"), "{body}");
    let (status, _) = http.send("GET", "/metrics", Some("rdt_not-a-token"), None);
    assert_eq!(status, 401);

    let invent = |i: usize| {
        let method = format!("X{i}Y");
        http.send(&method, &format!("/nowhere/{i}"), None, None);
        http.send(&method, "/healthz", None, None);
        http.send(&method, &format!("/api/v1/devices/d{i}"), None, None);
        http.send("GET", &format!("/api/v1/invented-{i}"), None, None);
        http.send(
            "GET",
            &format!("/api/v1/devices/d{i}"),
            Some(&auditor),
            None,
        );
    };
    for i in 0..5 {
        invent(i);
    }
    http.send("GET", "/metrics", Some(&auditor), None);
    let (status, before) = http.send("GET", "/metrics", Some(&auditor), None);
    assert_eq!(status, 200);
    for i in 5..1005 {
        invent(i);
    }
    let (_, after) = http.send("GET", "/metrics", Some(&auditor), None);
    assert_eq!(
        series(&before),
        series(&after),
        "invented methods and paths grew the exposition:\n{after}"
    );
    assert!(
        !after.contains("X7Y") && !after.contains("invented-"),
        "{after}"
    );
    assert!(
        after.contains(r#"method="other""#) && after.contains(r#"route="unmatched""#),
        "{after}"
    );
    assert!(after.contains(r#"status="4xx""#), "{after}");
}

/// A TLS client pinned to the server's CA, from `local` (an address on loopback).
struct Raw {
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
}

impl Raw {
    fn new(server: &Server) -> Raw {
        let addr = server
            .url
            .trim_start_matches("https://")
            .parse()
            .expect("the test server listens on an IP:port");
        Raw {
            tls: Arc::new(redoubt_client::pinned_tls_config(
                server.fingerprint.parse().unwrap(),
                &[b"http/1.1"],
            )),
            addr,
        }
    }

    async fn tcp_from(&self, local: &str) -> std::io::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(format!("{local}:0").parse().unwrap())?;
        sock.connect(self.addr).await
    }

    async fn tls_from(&self, local: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp_from(local).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")))
    }

    /// `GET /healthz` on a fresh connection from `local`; whether it answered 200.
    async fn healthy_from(&self, local: &str) -> bool {
        let Ok(mut s) = self.tls_from(local).await else {
            return false;
        };
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
    }
}

/// Reads until the server closes; what it sent and how long it took. Fails after 20 s.
async fn until_closed(s: &mut (impl AsyncReadExt + Unpin)) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for 20 s"),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn half_requests_and_silent_connections_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[
            ("REDOUBT_HEADER_TIMEOUT_SECS", "2"),
            ("REDOUBT_REQUEST_TIMEOUT_SECS", "2"),
        ],
    );
    let raw = Raw::new(&server);
    runtime().block_on(async {
        // No TLS handshake at all.
        let mut tcp = raw.tcp_from("127.0.0.1").await.unwrap();
        let (_, took) = until_closed(&mut tcp).await;
        assert!(took < Duration::from_secs(10), "{took:?}");

        // Half a request's headers.
        let mut s = raw.tls_from("127.0.0.1").await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let (_, took) = until_closed(&mut s).await;
        assert!(took < Duration::from_secs(10), "{took:?}");

        // Nothing after a first answer (keep-alive).
        let mut s = raw.tls_from("127.0.0.1").await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, took) = until_closed(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(took < Duration::from_secs(10), "{took:?}");

        // A body that never arrives whole: 408 within the request timeout.
        let mut s = raw.tls_from("127.0.0.1").await.unwrap();
        s.write_all(
            b"POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tok",
        )
        .await
        .unwrap();
        let (got, took) = until_closed(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(took < Duration::from_secs(10), "{took:?}");

        // The server still serves.
        assert!(raw.healthy_from("127.0.0.1").await);
    });
}

#[test]
fn connections_beyond_the_per_address_cap_are_refused_while_others_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[
            ("REDOUBT_MAX_CONNECTIONS_PER_ADDRESS", "3"),
            ("REDOUBT_HEADER_TIMEOUT_SECS", "120"),
            ("REDOUBT_IDLE_TIMEOUT_SECS", "120"),
        ],
    );
    let raw = Raw::new(&server);
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(raw.tls_from("127.0.0.1").await.unwrap());
        }
        // The fourth from the same address is closed before its handshake completes.
        assert!(!raw.healthy_from("127.0.0.1").await);
        let refused = raw.tls_from("127.0.0.1").await;
        assert!(refused.is_err(), "a fourth connection was admitted");
        // Another address is served.
        assert!(raw.healthy_from("127.0.0.2").await);
        // A freed slot is usable again.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !raw.healthy_from("127.0.0.1").await {
            assert!(Instant::now() < deadline, "the freed slot never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The HTTP client of the harness still works as well (its own address is capped too).
    wait_for("the server to answer", Duration::from_secs(10), || {
        (Http::new(&server).send("GET", "/healthz", None, None).0 == 200).then_some(())
    });
}

#[test]
fn device_websockets_outlive_the_header_and_idle_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("server"),
        &[
            ("REDOUBT_HEADER_TIMEOUT_SECS", "1"),
            ("REDOUBT_IDLE_TIMEOUT_SECS", "1"),
        ],
    );
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&server.enrollment_url("alice"));
    phone.start();
    wait_for("the phone's session", Duration::from_secs(30), || {
        (server.device(&id)["connected"] == true).then_some(())
    });
    // Several idle periods pass (each idle connection is closed after one).
    let raw = Raw::new(&server);
    let start = Instant::now();
    runtime().block_on(async {
        for _ in 0..3 {
            let mut s = raw.tls_from("127.0.0.1").await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let (got, _) = until_closed(&mut s).await;
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
    });
    assert!(start.elapsed() >= Duration::from_secs(3));
    // The device's WebSocket is the one it opened: still connected, never reopened.
    assert_eq!(server.device(&id)["connected"], true);
    let log = std::fs::read_to_string(server.data.with_extension("log")).unwrap();
    assert_eq!(
        log.matches("device connected").count(),
        1,
        "the device session was cut and reopened"
    );
    phone.stop();
}
