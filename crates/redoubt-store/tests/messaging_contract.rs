//! The delivery service's contract on the embedded SQLite backend: KeyPackages are
//! handed out exactly once (the last-resort one kept), one commit per epoch wins, a
//! Welcome is queued only with its accepted commit, queues are ordered and survive
//! reopening, acknowledged items leave, sends are deduplicated.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, issue, open, sign};
use redoubt_proto::messaging::ItemKind;
use redoubt_proto::{DeviceId, GroupId, HardwareKind, ModeName, UserName};
use redoubt_store::{CommitInput, CommitOutcome, NewDevice, Store};

async fn enroll(store: &Store, n: u8, user: &str) -> DeviceId {
    let hash = [n; 32];
    let user: UserName = user.parse().unwrap();
    let standard: ModeName = "standard".parse().unwrap();
    store
        .create_enrollment_token(
            &hash,
            &user,
            &standard,
            "test",
            NOW,
            NOW.plus_secs(60),
            &[],
            &sign,
        )
        .await
        .unwrap();
    let dev = NewDevice {
        id: DeviceId::from_random([n; 12]),
        public_key: [n; 32],
        hardware: HardwareKind::Sim,
    };
    store
        .enroll_device(&hash, dev, NOW, issue, |_| vec![], &sign)
        .await
        .unwrap()
        .id
}

fn commit<'a>(
    group: &'a GroupId,
    sender: &'a DeviceId,
    epoch: u64,
    bytes: &'a [u8],
    members: &'a [DeviceId],
    welcome_to: &'a [DeviceId],
) -> CommitInput<'a> {
    CommitInput {
        group_id: group,
        sender,
        epoch,
        public_state: bytes,
        commit: bytes,
        commit_hash: {
            let mut h = [0u8; 32];
            for (i, b) in bytes.iter().enumerate() {
                h[i % 32] ^= *b;
            }
            h
        },
        welcome: (!welcome_to.is_empty()).then_some(b"welcome".as_slice()),
        welcome_to,
        group_info: None,
        members,
        now: NOW,
        expires_at: NOW.plus_secs(3600),
    }
}

#[tokio::test]
async fn key_packages_are_handed_out_once_and_the_last_resort_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let alice = enroll(&store, 1, "alice").await;
    let bob = enroll(&store, 2, "bob").await;
    let (n, lr) = store
        .upload_key_packages(
            &bob,
            &[b"kp1".to_vec(), b"kp2".to_vec()],
            Some(b"last"),
            10,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!((n, lr), (2, true));
    let users = ["bob".parse().unwrap()];
    let mut got = Vec::new();
    for _ in 0..4 {
        let (claimed, missing) = store.claim_key_packages(&alice, &users).await.unwrap();
        assert!(missing.is_empty());
        got.push((claimed[0].data.clone(), claimed[0].last_resort));
    }
    assert_eq!(
        got,
        vec![
            (b"kp1".to_vec(), false),
            (b"kp2".to_vec(), false),
            (b"last".to_vec(), true),
            (b"last".to_vec(), true)
        ]
    );
    // Over the stock limit is refused.
    assert!(
        store
            .upload_key_packages(&bob, &vec![b"x".to_vec(); 11], None, 10, NOW)
            .await
            .is_err()
    );
    // A person without KeyPackages is reported, not silently skipped.
    let (claimed, missing) = store
        .claim_key_packages(&bob, &["alice".parse().unwrap()])
        .await
        .unwrap();
    assert!(claimed.is_empty());
    assert_eq!(missing[0].device_id.as_ref(), Some(&alice));
}

#[tokio::test]
async fn one_commit_per_epoch_and_welcomes_only_with_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = enroll(&store, 1, "alice").await;
    let b = enroll(&store, 2, "bob").await;
    let c = enroll(&store, 3, "carol").await;
    let g = GroupId::from_random([7; 16]);
    store
        .create_group(&g, None, &a, b"state-0", b"info-0", NOW)
        .await
        .unwrap();

    // Adding Bob: the Welcome is queued with the accepted commit.
    let ab = [a.clone(), b.clone()];
    let out = store
        .accept_commit(commit(&g, &a, 0, b"c0", &ab, std::slice::from_ref(&b)))
        .await
        .unwrap();
    assert!(matches!(out, CommitOutcome::Accepted { .. }));
    let (items, _) = store.fetch_queue(&b, &[], 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, ItemKind::Welcome);

    // Alice and Bob both commit at epoch 1: exactly one wins.
    let abc = [a.clone(), b.clone(), c.clone()];
    let first = store
        .accept_commit(commit(&g, &b, 1, b"bob-update", &ab, &[]))
        .await
        .unwrap();
    assert!(matches!(first, CommitOutcome::Accepted { .. }));
    let lost = store
        .accept_commit(commit(
            &g,
            &a,
            1,
            b"alice-adds-carol",
            &abc,
            std::slice::from_ref(&c),
        ))
        .await
        .unwrap();
    assert_eq!(lost, CommitOutcome::Conflict { current_epoch: 2 });
    // The loser's Welcome never reached Carol.
    assert!(store.fetch_queue(&c, &[], 10).await.unwrap().0.is_empty());
    // A retry of the winning commit is recognised, not applied twice.
    let retry = store
        .accept_commit(commit(&g, &b, 1, b"bob-update", &ab, &[]))
        .await
        .unwrap();
    assert!(matches!(retry, CommitOutcome::AlreadyAccepted(_)));
    // The same bytes from another member are no retry of theirs.
    let replayed = store
        .accept_commit(commit(&g, &a, 1, b"bob-update", &ab, &[]))
        .await
        .unwrap();
    assert_eq!(replayed, CommitOutcome::Conflict { current_epoch: 2 });
    // A non-member is refused before any epoch is compared (it learns none).
    for epoch in [1, 2] {
        let e = store
            .accept_commit(commit(&g, &c, epoch, b"bob-update", &abc, &[]))
            .await
            .unwrap_err();
        assert!(matches!(e, redoubt_store::StoreError::Forbidden(_)), "{e}");
    }
    // The public state the commit was verified into is what the next one starts from.
    let base = store.commit_base(&g).await.unwrap().unwrap();
    assert_eq!(base.public_state.as_deref(), Some(b"bob-update".as_slice()));
    assert_eq!(base.last_commit_sender.as_ref(), Some(&b));
    // Alice catches up and retries at epoch 2.
    let again = store
        .accept_commit(commit(
            &g,
            &a,
            2,
            b"alice-adds-carol",
            &abc,
            std::slice::from_ref(&c),
        ))
        .await
        .unwrap();
    assert!(matches!(again, CommitOutcome::Accepted { .. }));
    assert_eq!(store.fetch_queue(&c, &[], 10).await.unwrap().0.len(), 1);
    // Alice's queue: Bob's commit only (her own are not echoed).
    let (alice_items, _) = store.fetch_queue(&a, &[], 10).await.unwrap();
    assert_eq!(alice_items.len(), 1);
    assert_eq!(alice_items[0].payload.0, b"bob-update");
}

#[tokio::test]
async fn queues_are_ordered_durable_deduplicated_and_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, g) = {
        let store = open(dir.path()).await;
        let a = enroll(&store, 1, "alice").await;
        let b = enroll(&store, 2, "bob").await;
        let g = GroupId::from_random([9; 16]);
        store
            .create_group(&g, None, &a, b"state-0", b"info-0", NOW)
            .await
            .unwrap();
        let ab = [a.clone(), b.clone()];
        store
            .accept_commit(commit(&g, &a, 0, b"c0", &ab, std::slice::from_ref(&b)))
            .await
            .unwrap();
        for i in 0..5 {
            let out = store
                .enqueue_message(
                    &g,
                    &a,
                    1,
                    format!("m{i}").as_bytes(),
                    &format!("id{i}"),
                    NOW,
                    NOW.plus_secs(60),
                )
                .await
                .unwrap();
            assert!(!out.duplicate);
        }
        let dup = store
            .enqueue_message(&g, &a, 1, b"m0", "id0", NOW, NOW.plus_secs(60))
            .await
            .unwrap();
        assert!(dup.duplicate);
        // A non-member cannot post.
        let c = enroll(&store, 3, "carol").await;
        assert!(
            store
                .enqueue_message(&g, &c, 1, b"x", "x", NOW, NOW.plus_secs(60))
                .await
                .is_err()
        );
        store.close().await;
        (a, b, g)
    };
    let store = open(dir.path()).await;
    let (items, more) = store.fetch_queue(&b, &[], 3).await.unwrap();
    assert!(more);
    let payloads: Vec<&[u8]> = items.iter().map(|i| i.payload.0.as_slice()).collect();
    assert_eq!(payloads, vec![b"welcome".as_slice(), b"m0", b"m1"]);
    // Held groups are skipped, not lost.
    assert!(
        store
            .fetch_queue(&b, std::slice::from_ref(&g), 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
    assert_eq!(store.ack_queue(&b, &seqs).await.unwrap(), 3);
    assert_eq!(
        store.ack_queue(&a, &seqs).await.unwrap(),
        0,
        "only the owner acks"
    );
    let (rest, _) = store.fetch_queue(&b, &[], 10).await.unwrap();
    let payloads: Vec<&[u8]> = rest.iter().map(|i| i.payload.0.as_slice()).collect();
    assert_eq!(payloads, vec![b"m2".as_slice(), b"m3", b"m4"]);
    // Expiry removes undelivered items and counts them.
    let expired = store.expire_queue(NOW.plus_secs(61)).await.unwrap();
    assert_eq!(expired, vec![(b.clone(), 3)]);
    assert_eq!(store.messages_expired(&b).await.unwrap(), 3);
    let _ = a;
}
