//! A 100-member conversation end to end: the real server, 100 phones enrolled with
//! `redoubt-agent`, their messengers driven in-process through `redoubt-messenger`
//! (one `redoubt` process per member would spend the CI budget on process start-ups).
//! And a 32-member conversation whose members fill the ratchet tree by turns.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{Agent, Server, bin, random_text};
use futures_util::future::join_all;
use redoubt_messenger::Messenger;
use redoubt_proto::{GroupId, UserName};

const MEMBERS: usize = 100;
/// These users have two phones each; the rest one.
const TWO_PHONES: usize = 5;

async fn texts(m: &Messenger, gid: &GroupId) -> Vec<String> {
    m.messages(gid, None)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.text)
        .collect()
}

/// Syncs every messenger, a few at a time.
async fn sync_all(ms: &[Messenger]) {
    for chunk in ms.chunks(10) {
        for r in join_all(chunk.iter().map(|m| m.sync())).await {
            let r = r.unwrap();
            assert!(r.refused.is_empty(), "{:?}", r.refused);
        }
    }
}

/// A server a whole unit may enroll with at once (as on issue day), and a runtime for
/// the messengers.
fn server_and_runtime(dir: &std::path::Path) -> (Server, tokio::runtime::Runtime) {
    let server = Server::start(
        &dir.join("server"),
        &[("REDOUBT_ENROLL_ATTEMPTS_PER_MINUTE", "1000")],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (server, rt)
}

/// Enrolls one phone for each of `owners` (four at a time); returns their state
/// directories. Phones of a person who already has one are approved by a second owner.
fn enroll_phones(server: &Server, dir: &std::path::Path, owners: &[String]) -> Vec<PathBuf> {
    let (url, fingerprint, token) = (&server.url, &server.fingerprint, &server.owner_token);
    let enrollment_url = |user: &str| -> String {
        let out = Command::new(bin("redoubt"))
            .args(["--json", "enroll", "create", "--user", user])
            .env("REDOUBT_SERVER", url)
            .env("REDOUBT_TOKEN", token)
            .env("REDOUBT_CA_FINGERPRINT", fingerprint)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["url"].as_str().unwrap().to_owned()
    };
    std::thread::scope(|s| {
        let enrollment_url = &enrollment_url;
        let workers: Vec<_> = (0..4)
            .map(|w| {
                s.spawn(move || {
                    (w..owners.len())
                        .step_by(4)
                        .map(|i| {
                            let a = Agent::new(dir.join(format!("phone{i:03}")));
                            let id = a.enroll(&enrollment_url(&owners[i]));
                            (i, a.state.clone(), id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort();
        // A person's second phone waits for an owner other than the code's creator.
        let mut seen = BTreeSet::new();
        let mut approver = None;
        for (i, _, id) in &all {
            if !seen.insert(&owners[*i]) {
                let approver =
                    approver.get_or_insert_with(|| server.admin_token("second-owner", "owner"));
                let out = server.cli_as(approver, &["devices", "approve", id]);
                assert!(out.status.success(), "{}", common::stderr(&out));
            }
        }
        all.into_iter().map(|(_, s, _)| s).collect()
    })
}

/// Opens the messengers of these phones, ten at a time.
async fn open_messengers(states: &[PathBuf]) -> Vec<Messenger> {
    let mut ms = Vec::with_capacity(states.len());
    for chunk in states.chunks(10) {
        let dirs: Vec<_> = chunk.iter().map(|s| s.join("messenger")).collect();
        for m in join_all(dirs.iter().map(|d| Messenger::open(d))).await {
            ms.push(m.unwrap());
        }
    }
    ms
}

#[test]
fn a_hundred_member_group_works_end_to_end() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (server, rt) = server_and_runtime(tmp.path());
    // users[0] is alice; users 1..=TWO_PHONES have a second phone.
    let users: Vec<String> = std::iter::once("alice".to_owned())
        .chain((1..MEMBERS - TWO_PHONES).map(|i| format!("u{i:03}")))
        .collect();
    let mut owners: Vec<String> = users.clone();
    owners.extend(users[1..=TWO_PHONES].iter().cloned());
    assert_eq!(owners.len(), MEMBERS);

    let states = enroll_phones(&server, tmp.path(), &owners);
    eprintln!("enrolled {MEMBERS} phones in {:?}", started.elapsed());

    rt.block_on(async {
        let ms = open_messengers(&states).await;
        eprintln!("{MEMBERS} messengers open at {:?}", started.elapsed());

        let others: Vec<UserName> = users[1..].iter().map(|u| u.parse().unwrap()).collect();
        let (gid, report) = ms[0].create("Everyone", &others, None).await.unwrap();
        assert_eq!(report.added.len(), MEMBERS - 1, "{:?}", report.skipped);
        sync_all(&ms[1..]).await;
        eprintln!("group of {MEMBERS} formed at {:?}", started.elapsed());
        let epoch = ms[0].conversation(&gid).await.unwrap().epoch;
        for m in &ms {
            let c = m.conversation(&gid).await.unwrap();
            assert_eq!(c.status, "active");
            assert_eq!(c.members.len(), users.len());
            assert_eq!(c.epoch, epoch);
        }

        // Alice speaks; everyone hears. A member answers; Alice and a second phone of
        // another user hear.
        let hello = random_text("hello");
        ms[0].send_text(&gid, &hello).await.unwrap();
        sync_all(&ms[1..]).await;
        for m in &ms[1..] {
            assert_eq!(texts(m, &gid).await, vec![hello.clone()]);
        }
        let answer = random_text("answer");
        ms[50].send_text(&gid, &answer).await.unwrap();
        ms[0].sync().await.unwrap();
        ms[MEMBERS - 1].sync().await.unwrap();
        assert!(texts(&ms[0], &gid).await.contains(&answer));
        assert!(texts(&ms[MEMBERS - 1], &gid).await.contains(&answer));

        // Removing a person removes both of their phones; they read nothing after.
        let leaver: UserName = users[1].parse().unwrap();
        let removed = ms[0].remove(&gid, Some(&leaver), None).await.unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        let after = random_text("after");
        ms[0].send_text(&gid, &after).await.unwrap();
        sync_all(&ms[1..]).await;
        let leaver_phones: BTreeSet<usize> = [1, MEMBERS - TWO_PHONES].into_iter().collect();
        for (i, m) in ms.iter().enumerate().skip(1) {
            let t = texts(m, &gid).await;
            let c = m.conversation(&gid).await.unwrap();
            if leaver_phones.contains(&i) {
                assert_eq!(c.status, "removed", "phone {i}");
                assert!(!t.contains(&after), "phone {i} read after removal");
            } else {
                assert!(t.contains(&after), "phone {i} misses the last message");
                assert_eq!(c.members.len(), users.len() - 1);
            }
        }
    });
    eprintln!("100-member group end to end: {:?}", started.elapsed());
    server.stop();
}

#[test]
fn the_members_of_a_large_group_fill_its_tree_by_turns_and_commits_shrink() {
    const SIZE: usize = 32;
    let tmp = tempfile::tempdir().unwrap();
    let (server, rt) = server_and_runtime(tmp.path());
    let users: Vec<String> = (0..SIZE).map(|i| format!("m{i:02}")).collect();
    let states = enroll_phones(&server, tmp.path(), &users);
    rt.block_on(async {
        let ms = open_messengers(&states).await;
        let others: Vec<UserName> = users[1..].iter().map(|u| u.parse().unwrap()).collect();
        let (gid, report) = ms[0].create("Unit", &others, None).await.unwrap();
        assert_eq!(report.added.len(), SIZE - 1, "{:?}", report.skipped);
        sync_all(&ms[1..]).await;
        // Right after joining nobody's turn has come: the first waits a minute.
        for m in &ms {
            assert!(m.sync().await.unwrap().self_updates.is_empty());
        }
        // The turns come (each messenger's clock moved on: its turn is now due).
        for state in &states {
            let db = state.join("messenger").join("messenger.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let due = sqlx::query("UPDATE outbox SET extra = '0' WHERE kind = 'self-update'")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            // The creator committed with its path; every other member has a turn.
            assert!(due.rows_affected() <= 1, "{}", db.display());
        }
        let mut sizes = Vec::new();
        for m in &ms {
            let r = m.sync().await.unwrap();
            assert!(r.refused.is_empty(), "{:?}", r.refused);
            sizes.extend(r.self_updates);
        }
        eprintln!("self-update commits, in turn order: {sizes:?}");
        assert!(
            (SIZE / 2 - 2..=SIZE / 2 + 1).contains(&sizes.len()),
            "about one member of each pair of leaves commits: {} did",
            sizes.len()
        );
        assert!(
            sizes[sizes.len() - 1] * 2 < sizes[0],
            "the commits did not shrink: {sizes:?}"
        );
        // Each turn is taken once, and the tree is full.
        for m in &ms {
            assert!(m.sync().await.unwrap().self_updates.is_empty());
            assert_eq!(m.self_update(&gid).await.unwrap(), None);
        }
        // The conversation goes on at the newest epoch.
        let text = random_text("after the turns");
        ms[SIZE - 1].send_text(&gid, &text).await.unwrap();
        sync_all(&ms[..SIZE - 1]).await;
        let epoch = ms[0].conversation(&gid).await.unwrap().epoch;
        for m in &ms[..SIZE - 1] {
            assert!(texts(m, &gid).await.contains(&text));
            assert_eq!(m.conversation(&gid).await.unwrap().epoch, epoch);
        }
    });
    server.stop();
}
