//! End-to-end encrypted messaging through the real binaries: the server as delivery
//! service, phones enrolled with `redoubt-agent`, conversations through `redoubt chat`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Agent, Server, bin};
use serde_json::Value;

/// Runs `redoubt --json chat --state DIR ARGS`; asserts success; parses the JSON.
fn chat(state: &Path, args: &[&str]) -> Value {
    let out = Command::new(bin("redoubt"))
        .arg("--json")
        .arg("chat")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redoubt chat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "redoubt chat {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn texts(read: &Value) -> Vec<String> {
    read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn random_text(tag: &str) -> String {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{tag}-{hex}")
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn a_group_talks_end_to_end_and_the_server_never_sees_the_text() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
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

    // The server's data dir (database, WAL, files) never holds a message text.
    for t in [&from_alice, &from_carol, &from_alice2, &from_bob, &after] {
        assert_eq!(
            files_containing(&server.data, t),
            Vec::<String>::new(),
            "plaintext {t} found on the server"
        );
    }
    server.stop();
}
