//! Two server nodes on one PostgreSQL database and one NATS server, with real phones:
//! a set-mode made through node B reaches the phone connected to node A; a message sent
//! through node B reaches, by push, the messenger listening on node A; node A is killed
//! and the phone and the messenger carry on through node B with nothing lost. A node
//! with keys of its own is refused by the shared database.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Agent, Server, bin, chat, chat_cmd, random_text, stderr, wait_for};
use redoubt_store::test_support::TempPostgres;

const DEADLINE: Duration = Duration::from_secs(40);

/// The NATS server the tests use: `REDOUBT_TEST_NATS`, or the loopback default that
/// `cargo xtask test` starts.
fn nats_url() -> String {
    let url = std::env::var("REDOUBT_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://").to_owned();
    assert!(
        std::net::TcpStream::connect(&addr).is_ok(),
        "this test needs a NATS server at {url} (start nats-server, run `cargo xtask test` as \
         root, or set REDOUBT_TEST_NATS)"
    );
    url
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies the organization's keys from the first node's data directory.
fn copy_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.crt", "ca.key", "org-signing.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn two_nodes_share_the_fleet_and_the_phones_fail_over() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(TempPostgres::create());
    let nats = nats_url();
    let tmp = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let (url_a, url_b) = (
        format!("https://127.0.0.1:{port_a}"),
        format!("https://127.0.0.1:{port_b}"),
    );
    let servers = format!("[\"{url_a}\", \"{url_b}\"]");
    let node_env = |port: u16, url: &str| -> Vec<(String, String)> {
        vec![
            ("REDOUBT_DATABASE_URL".into(), pg.url().to_owned()),
            ("REDOUBT_NATS_URL".into(), nats.clone()),
            ("REDOUBT_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("REDOUBT_PUBLIC_URL".into(), url.to_owned()),
            ("REDOUBT_SERVERS".into(), servers.clone()),
            // Long enough that only a push (never a check-in) can explain what the
            // phone does within the deadlines below.
            ("REDOUBT_CHECK_IN_INTERVAL_SECS".into(), "600".into()),
        ]
    };
    let env_a = node_env(port_a, &url_a);
    let env_b = node_env(port_b, &url_b);
    let data_a = tmp.path().join("node-a");
    let node_a = Server::start(&data_a, &borrow(&env_a));
    let data_b = tmp.path().join("node-b");

    // A node with keys of its own would sign what the phones refuse: refused at start.
    let stranger = Command::new(bin("redoubt-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("stranger"))
        .envs(
            borrow(&env_b)
                .into_iter()
                .filter(|(k, _)| *k != "REDOUBT_LISTEN"),
        )
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(
        stderr(&stranger).contains("belongs to the organization whose CA is"),
        "{}",
        stderr(&stranger)
    );

    copy_keys(&data_a, &data_b);
    let node_b = Server::start(&data_b, &borrow(&env_b));
    assert_eq!(node_a.fingerprint, node_b.fingerprint);
    let mut printed = Vec::new();
    wait_for("node B to name its cluster link", DEADLINE, || {
        printed.extend(node_b.printed());
        printed
            .iter()
            .any(|l| l.starts_with("Cluster: node ") && l.contains(" through NATS at nats://"))
            .then_some(())
    });

    // Alice's phone enrolls through node A (its code names A) and holds its session there.
    let code = node_a.cli_json(&["enroll", "create", "--user", "alice"]);
    assert!(code["url"].as_str().unwrap().contains(&format!("{port_a}")));
    let mut alice = Agent::new(tmp.path().join("alice"));
    let id = alice.enroll(code["url"].as_str().unwrap());
    alice.start();
    let compliant_in = |server: &Server, mode: &str| {
        wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
            let d = server.device(&id);
            (d["compliance"] == "compliant" && d["reported_mode"] == mode).then_some(d)
        })
    };
    compliant_in(&node_a, "standard");
    // Its bundle lists both nodes, signed.
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alice.state.join("bundle.json")).unwrap()).unwrap();
    let payload = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(bundle["payload"].as_str().unwrap())
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    assert!(payload.contains(&url_b), "{payload}");

    // A set-mode through node B reaches the phone connected to node A.
    node_b.cli_json(&["devices", "set-mode", &id, "secure-site"]);
    compliant_in(&node_b, "secure-site");
    let counts = node_b.cli_json(&["devices", "counts"]);
    wait_for(
        "node B to count the phone on node A as connected",
        DEADLINE,
        || (node_b.cli_json(&["devices", "counts"])["connected"] == 1).then_some(()),
    );
    assert_eq!(counts["total"], 1);

    // Bob enrolls through node B; Alice's messenger listens on node A.
    let bob = Agent::new(tmp.path().join("bob"));
    bob.enroll(&node_b.enrollment_url("bob"));
    chat(&alice.state, &["list"]);
    let mut listen = chat_cmd(&alice.state, &["listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, heard) = mpsc::channel::<String>();
    let out = listen.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let created = chat(&bob.state, &["create", "Ops", "--members", "alice"]);
    let gid = created["conversation"].as_str().unwrap().to_owned();
    let hear = |text: &str| {
        let mut seen = Vec::new();
        wait_for(
            &format!("Alice's listener to print {text}"),
            DEADLINE,
            || {
                seen.extend(heard.try_iter());
                seen.iter().any(|l| l.contains(text)).then_some(())
            },
        )
    };
    let first = random_text("via-b");
    chat(&bob.state, &["send", &gid, &first]);
    hear(&first);
    // A file uploaded through node B is downloaded through node A: its bytes live in
    // the shared database, not on B's disk.
    let content = random_text("file").repeat(500).into_bytes();
    let path = tmp.path().join("orders.txt");
    std::fs::write(&path, &content).unwrap();
    let sent = chat(&bob.state, &["send-file", &gid, path.to_str().unwrap()]);
    let file_id = sent["id"].as_str().unwrap().to_owned();
    hear(&file_id);
    let saved = tmp.path().join("alice-orders.txt");
    chat(
        &alice.state,
        &["save-file", &gid, &file_id, saved.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&saved).unwrap(), content);
    assert!(
        !data_b.join("blobs").exists(),
        "on PostgreSQL no node keeps file bytes on its disk"
    );

    // Whoever can publish on the NATS server can claim a revocation; node A believes
    // the database, not the claim: the phone keeps its session there.
    let fp = node_a.fingerprint.trim_start_matches("sha256:");
    publish_raw(
        &nats,
        &format!("redoubt.{}.signals", &fp[..16]),
        &serde_json::json!({
            "from": "forger",
            "signals": [{"s": "push", "d": id, "p": "revoked"}, {"s": "revoked", "d": id}],
        })
        .to_string(),
    );
    node_b.cli_json(&["devices", "set-mode", &id, "standard"]);
    compliant_in(&node_b, "standard");
    let third = random_text("after-forgery");
    chat(&bob.state, &["send", &gid, &third]);
    hear(&third);

    // Node A dies. The phone goes on through node B: a new mode reaches it there.
    node_a.kill();
    node_b.cli_json(&["devices", "set-mode", &id, "lockdown"]);
    compliant_in(&node_b, "lockdown");
    // The messenger too: what Bob sends now reaches Alice's listener through node B.
    let second = random_text("after-a");
    chat(&bob.state, &["send", &gid, &second]);
    hear(&second);
    // Nothing lost: Alice has both messages, in order, and the log verifies.
    let read = chat(&alice.state, &["read", &gid]);
    let texts: Vec<String> = common::texts(&read)
        .into_iter()
        .filter(|t| t.starts_with("via-b") || t.starts_with("after-"))
        .collect();
    assert_eq!(texts, vec![first, third, second]);
    let out = node_b.cli_as(&node_b.owner_token, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));

    listen.kill().ok();
    listen.wait().ok();
    alice.stop();
    node_b.stop();
    drop(pg);
}

/// A NATS server of the test's own, on a port it can stop and start again.
struct OwnNats {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> OwnNats {
        let mut n = OwnNats {
            port: free_port(),
            child: None,
        };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("this test needs nats-server (Debian package nats-server)");
        self.child = Some(
            Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for("nats-server to listen", DEADLINE, || {
            std::net::TcpStream::connect(&addr).ok().map(|_| ())
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_node_cut_off_from_nats_catches_up_from_the_database() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(TempPostgres::create());
    let mut nats = OwnNats::start();
    let tmp = tempfile::tempdir().unwrap();
    let env = |port: u16| -> Vec<(String, String)> {
        vec![
            ("REDOUBT_DATABASE_URL".into(), pg.url().to_owned()),
            ("REDOUBT_NATS_URL".into(), nats.url()),
            ("REDOUBT_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "REDOUBT_PUBLIC_URL".into(),
                format!("https://127.0.0.1:{port}"),
            ),
            // Only a push can explain what the phone does within the deadlines.
            ("REDOUBT_CHECK_IN_INTERVAL_SECS".into(), "600".into()),
        ]
    };
    let (env_a, env_b) = (env(free_port()), env(free_port()));
    let data_a = tmp.path().join("node-a");
    let node_a = Server::start(&data_a, &borrow(&env_a));
    let data_b = tmp.path().join("node-b");
    copy_keys(&data_a, &data_b);
    let node_b = Server::start(&data_b, &borrow(&env_b));
    let mut phone = Agent::new(tmp.path().join("phone"));
    let id = phone.enroll(&node_a.enrollment_url("alice"));
    phone.start();
    let compliant_in = |mode: &str| {
        wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
            let d = node_b.device(&id);
            (d["compliance"] == "compliant" && d["reported_mode"] == mode).then_some(())
        })
    };
    compliant_in("standard");
    // The link works: a change through B reaches the phone on A.
    node_b.cli_json(&["devices", "set-mode", &id, "secure-site"]);
    compliant_in("secure-site");
    // NATS goes away; a change made through B meanwhile cannot cross. When NATS is
    // back, the nodes catch up from the database and the phone gets it, long before its
    // next check-in.
    nats.stop();
    node_b.cli_json(&["devices", "set-mode", &id, "lockdown"]);
    nats.restart();
    compliant_in("lockdown");
    phone.stop();
    node_a.stop();
    node_b.stop();
    drop(pg);
}

fn borrow(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, x)| (k.as_str(), x.as_str())).collect()
}

/// Publishes `payload` on `subject` as any client of the NATS server could, and waits
/// until the server has routed it (PING/PONG).
fn publish_raw(url: &str, subject: &str, payload: &str) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(url.trim_start_matches("nats://")).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    c.write_all(
        format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n{payload}\r\nPING\r\n",
            payload.len()
        )
        .as_bytes(),
    )
    .unwrap();
    while !String::from_utf8_lossy(&got).contains("PONG") {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the NATS server closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&got).contains("-ERR"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
