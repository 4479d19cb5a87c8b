//! Messaging under races and crashes, through the real binaries: two members commit at
//! the same epoch, clients are killed between send and acknowledgement, the server is
//! killed during a burst. The messenger's test pause points
//! (`redoubt_messenger::testpoint`) stop a client at an exact step.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Agent, Server, chat, chat_cmd, random_text, texts, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts `redoubt chat` that pauses at `point` (see `redoubt_messenger::testpoint`).
fn paused_chat(state: &Path, pause_dir: &Path, point: &str, args: &[&str]) -> Child {
    std::fs::create_dir_all(pause_dir).unwrap();
    chat_cmd(state, args)
        .env("REDOUBT_TEST_PAUSE", pause_dir)
        .env("REDOUBT_TEST_PAUSE_AT", point)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_reached(pause_dir: &Path, point: &str, n: u32) {
    let marker = pause_dir.join(format!("{point}.{n}.reached"));
    wait_for(&format!("{point} #{n}"), DEADLINE, || {
        marker.exists().then_some(())
    });
}

fn release(pause_dir: &Path, point: &str, n: u32) {
    std::fs::write(pause_dir.join(format!("{point}.{n}.go")), b"").unwrap();
}

/// Enrolls one phone per user and opens each messenger once.
fn phones(server: &Server, dir: &Path, users: &[&str]) -> Vec<Agent> {
    users
        .iter()
        .map(|u| {
            let a = Agent::new(dir.join(u));
            a.enroll(&server.enrollment_url(u));
            chat(&a.state, &["list"]);
            a
        })
        .collect()
}

/// Alice creates a conversation with Bob, and Bob joins it; returns its id.
fn alice_and_bob_talk(alice: &Agent, bob: &Agent) -> String {
    let gid = chat(&alice.state, &["create", "Ops", "--members", "bob"])["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    chat(&bob.state, &["read", &gid]);
    gid
}

fn count(list: &[String], text: &str) -> usize {
    list.iter().filter(|t| *t == text).count()
}

#[test]
fn two_members_commit_at_the_same_epoch_one_wins_and_the_group_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let p = phones(&server, tmp.path(), &["alice", "bob", "dave", "erin"]);
    let (alice, bob, dave, erin) = (&p[0], &p[1], &p[2], &p[3]);
    let gid = alice_and_bob_talk(alice, bob);

    // Bob stages "add dave" at the current epoch and stops before sending it.
    let pause = tmp.path().join("pause-bob");
    let point = "commit-before-post";
    let bob_add = paused_chat(&bob.state, &pause, point, &["add", &gid, "dave"]);
    wait_reached(&pause, point, 1);
    // Alice commits "add erin" at that same epoch, and wins.
    let added = chat(&alice.state, &["add", &gid, "erin"]);
    assert_eq!(added["added"].as_array().unwrap().len(), 1, "{added}");

    // Bob's commit loses (409); his client catches up and stages it again.
    release(&pause, point, 1);
    wait_reached(&pause, point, 2);
    // The losing commit's Welcome never reached Dave.
    let dave_list = chat(&dave.state, &["list"]);
    assert!(
        !dave_list
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == gid.as_str()),
        "Dave got a Welcome for a commit the server refused: {dave_list}"
    );
    release(&pause, point, 2);
    let out = bob_add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Bob's add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["added"].as_array().unwrap().len(), 1, "{v}");

    // Everyone converges: same epoch, same members, everyone reads everyone.
    let mut said = Vec::new();
    for (who, phone) in [
        ("alice", alice),
        ("bob", bob),
        ("dave", dave),
        ("erin", erin),
    ] {
        let t = random_text(who);
        chat(&phone.state, &["send", &gid, &t]);
        said.push(t);
    }
    let mut epochs = Vec::new();
    for phone in [alice, bob, dave, erin] {
        let read = chat(&phone.state, &["read", &gid]);
        let t = texts(&read);
        for s in &said {
            assert_eq!(count(&t, s), 1, "{s} in {t:?}");
        }
        assert_eq!(
            read["conversation"]["members"],
            serde_json::json!(["alice", "bob", "dave", "erin"])
        );
        epochs.push(read["conversation"]["epoch"].as_u64().unwrap());
    }
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
    assert_eq!(epochs[0], 3, "create, add erin, add dave");
    server.stop();
}

#[test]
fn a_client_killed_between_send_and_ack_neither_loses_nor_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let p = phones(&server, tmp.path(), &["alice", "bob"]);
    let (alice, bob) = (&p[0], &p[1]);
    let gid = alice_and_bob_talk(alice, bob);

    // The sender dies after the server accepted the message, before it recorded that.
    let pause = tmp.path().join("pause-alice");
    let first = random_text("first");
    let mut send = paused_chat(
        &alice.state,
        &pause,
        "message-after-post",
        &["send", &gid, &first],
    );
    wait_reached(&pause, "message-after-post", 1);
    send.kill().unwrap(); // SIGKILL
    send.wait().unwrap();
    assert_eq!(
        texts(&chat(&bob.state, &["read", &gid])),
        vec![first.clone()]
    );
    // On reload the outbox sends it again; the server drops the repeat.
    let mine = chat(&alice.state, &["read", &gid]);
    assert_eq!(texts(&mine), vec![first.clone()]);
    assert_eq!(mine["messages"][0]["status"], "sent");
    let second = random_text("second");
    chat(&alice.state, &["send", &gid, &second]);

    // The receiver dies after applying, before acknowledging: the server delivers
    // again, the client recognises what it already applied.
    let pause = tmp.path().join("pause-bob");
    let mut read = paused_chat(&bob.state, &pause, "sync-before-ack", &["read", &gid]);
    wait_reached(&pause, "sync-before-ack", 1);
    read.kill().unwrap();
    read.wait().unwrap();
    let t = texts(&chat(&bob.state, &["read", &gid]));
    assert_eq!(t, vec![first, second], "Bob's view after the crash");
    server.stop();
}

#[test]
fn killing_the_server_during_a_burst_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data, &[]);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let p = phones(&server, tmp.path(), &["alice", "bob"]);
    let (alice, bob) = (&p[0], &p[1]);
    let gid = alice_and_bob_talk(alice, bob);

    // Alice sends a burst from another thread; each send that exits 0 was acknowledged.
    const BURST: usize = 30;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let all: Vec<String> = (0..BURST)
        .map(|i| random_text(&format!("m{i:02}")))
        .collect();
    let sender = {
        let (state, gid, acked, all) =
            (alice.state.clone(), gid.clone(), acked.clone(), all.clone());
        std::thread::spawn(move || {
            let mut failed = 0;
            for text in &all {
                let out = chat_cmd(&state, &["send", &gid, text]).output().unwrap();
                if out.status.success() {
                    acked.lock().unwrap().push(text.clone());
                } else {
                    failed += 1;
                }
            }
            failed
        })
    };
    wait_for("a third of the burst acknowledged", DEADLINE * 2, || {
        (acked.lock().unwrap().len() >= BURST / 3).then_some(())
    });
    server.kill();
    let acked_at_kill = acked.lock().unwrap().len();
    assert!(
        acked_at_kill < BURST,
        "the burst ended before the server was killed"
    );
    // Restart on the same address and data dir while the burst goes on.
    let server = Server::start(&data, &[("REDOUBT_LISTEN", &format!("127.0.0.1:{port}"))]);
    let failed = sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= acked_at_kill);
    eprintln!(
        "burst: {} acknowledged, {failed} failed while the server was down",
        acked.len()
    );

    // Every acknowledged message is there once, in the order sent.
    let got = texts(&chat(&bob.state, &["read", &gid]));
    let acked_got: Vec<&String> = got.iter().filter(|t| acked.contains(t)).collect();
    assert_eq!(
        acked_got,
        acked.iter().collect::<Vec<_>>(),
        "Bob's view: {got:?}"
    );
    // The ones that failed wait in Alice's outbox and go out on her next sync.
    chat(&alice.state, &["sync"]);
    let got = texts(&chat(&bob.state, &["read", &gid]));
    assert_eq!(got, all, "after Alice's outbox drained");
    server.stop();
}
