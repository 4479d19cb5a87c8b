//! The delivery service's contract on the embedded SQLite backend: KeyPackages are
//! handed out exactly once (the last-resort one kept), one commit per epoch wins, a
//! Welcome is queued only with its accepted commit, queues are ordered and survive
//! reopening, acknowledged items leave, sends are deduplicated; a claim hands out one
//! KeyPackage per device and a device at most its hourly share of one-time ones; files
//! belong to a conversation and count against their uploader's quota until they expire.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, issue, open, sign, tamper};
use redoubt_proto::messaging::ItemKind;
use redoubt_proto::{BlobId, DeviceId, GroupId, HardwareKind, ModeName, UserName};
use redoubt_store::{
    CommitInput, CommitOutcome, HANDOUT_WINDOW_SECS, NewDevice, Store, StoreError,
};

/// `(one-time KeyPackages left, has a last-resort one)`.
async fn stock(store: &Store, device: &DeviceId) -> (u64, bool) {
    let s = store.queue_status(device).await.unwrap();
    (s.one_time, s.last_resort)
}

/// Alice, Bob and Carol enrolled, and a group Alice started (alone in it, epoch 0).
async fn three_and_a_group(store: &Store) -> (DeviceId, DeviceId, DeviceId, GroupId) {
    let a = enroll(store, 1, "alice").await;
    let b = enroll(store, 2, "bob").await;
    let c = enroll(store, 3, "carol").await;
    let g = GroupId::from_random([7; 16]);
    store
        .create_group(&g, None, &a, b"state-0", b"info-0", NOW)
        .await
        .unwrap();
    (a, b, c, g)
}

async fn enroll(store: &Store, n: u8, user: &str) -> DeviceId {
    let hash = [n; 32];
    let user: UserName = user.parse().unwrap();
    let standard: ModeName = "standard".parse().unwrap();
    store
        .create_enrollment_token(
            &hash,
            &user,
            &standard,
            &[],
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

contract! {
    async fn key_packages_are_handed_out_once_and_the_last_resort_is_kept(dir) {
        let store = open(&dir).await;
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
            let (claimed, missing) = store
                .claim_key_packages(&alice, &users, 50, NOW)
                .await
                .unwrap();
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
            .claim_key_packages(&bob, &["alice".parse().unwrap()], 50, NOW)
            .await
            .unwrap();
        assert!(claimed.is_empty());
        assert_eq!(missing[0].device_id.as_ref(), Some(&alice));
    }
}

/// `(data, last_resort, throttled)` of what `claimer` gets for `users` at `now`, with a
/// limit of three one-time KeyPackages per device per window.
async fn claim(
    store: &Store,
    claimer: &DeviceId,
    users: &[&str],
    now: redoubt_proto::Timestamp,
) -> Vec<(Vec<u8>, bool, bool)> {
    let users: Vec<UserName> = users.iter().map(|u| u.parse().unwrap()).collect();
    let (claimed, missing) = store
        .claim_key_packages(claimer, &users, 3, now)
        .await
        .unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    claimed
        .into_iter()
        .map(|c| (c.data, c.last_resort, c.throttled))
        .collect()
}

contract! {
    async fn a_device_hands_out_its_hourly_share_of_one_time_key_packages_then_its_last_resort(dir) {
        let store = open(&dir).await;
        let alice = enroll(&store, 1, "alice").await;
        let bob = enroll(&store, 2, "bob").await;
        let mallory = enroll(&store, 3, "mallory").await;
        let kps: Vec<Vec<u8>> = (0..10).map(|i| format!("kp{i}").into_bytes()).collect();
        store
            .upload_key_packages(&bob, &kps, Some(b"last"), 100, NOW)
            .await
            .unwrap();
        let one_time = |i: usize| (format!("kp{i}").into_bytes(), false, false);
        let last = (b"last".to_vec(), true, true);
        // Mallory claims Bob over and over: three one-time KeyPackages, then the last-resort
        // one; the limit counts every claimer together, so Alice gets the last-resort too.
        let mut got = Vec::new();
        for _ in 0..5 {
            got.extend(claim(&store, &mallory, &["bob"], NOW.plus_secs(10)).await);
        }
        assert_eq!(
            got,
            vec![
                one_time(0),
                one_time(1),
                one_time(2),
                last.clone(),
                last.clone()
            ]
        );
        assert_eq!(
            claim(&store, &alice, &["bob"], NOW.plus_secs(20)).await,
            vec![last.clone()]
        );
        // Bob keeps his stock.
        assert_eq!(stock(&store, &bob).await, (7, true));
        // Until the hour since the first handout has passed.
        let hour = NOW.plus_secs(10 + HANDOUT_WINDOW_SECS);
        assert_eq!(
            claim(&store, &alice, &["bob"], hour.plus_secs(-1)).await,
            vec![last]
        );
        assert_eq!(
            claim(&store, &alice, &["bob"], hour).await,
            vec![one_time(3)]
        );

        // Without a last-resort KeyPackage, a device past its share is reported missing
        // (with the reason), not drained.
        store
            .upload_key_packages(&alice, &kps, None, 100, NOW)
            .await
            .unwrap();
        for _ in 0..3 {
            claim(&store, &mallory, &["alice"], NOW).await;
        }
        let (claimed, missing) = store
            .claim_key_packages(&mallory, &["alice".parse().unwrap()], 3, NOW)
            .await
            .unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        assert!(missing[0].reason.contains("hourly share"), "{missing:?}");
        assert_eq!(stock(&store, &alice).await, (7, false));
    }
}

contract! {
    async fn a_claim_hands_out_one_key_package_per_device_however_often_a_person_is_named(dir) {
        let store = open(&dir).await;
        let alice = enroll(&store, 1, "alice").await;
        let bob = enroll(&store, 2, "bob").await;
        let kps: Vec<Vec<u8>> = (0..10).map(|i| format!("kp{i}").into_bytes()).collect();
        store
            .upload_key_packages(&bob, &kps, Some(b"last"), 100, NOW)
            .await
            .unwrap();
        let got = claim(&store, &alice, &["bob", "bob", "bob"], NOW).await;
        assert_eq!(got, vec![(b"kp0".to_vec(), false, false)]);
        assert_eq!(stock(&store, &bob).await, (9, true));
    }
}

contract! {
    async fn files_belong_to_a_conversation_and_count_against_a_quota_until_they_expire(dir) {
        let store = open(&dir).await;
        let a = enroll(&store, 1, "alice").await;
        let b = enroll(&store, 2, "bob").await;
        let e = enroll(&store, 3, "eve").await;
        let g = GroupId::from_random([7; 16]);
        let other = GroupId::from_random([8; 16]);
        store
            .create_group(&g, None, &a, b"state-0", b"info-0", NOW)
            .await
            .unwrap();
        store
            .create_group(&other, None, &e, b"state-0", b"info-0", NOW)
            .await
            .unwrap();
        let ab = [a.clone(), b.clone()];
        store
            .accept_commit(commit(&g, &a, 0, b"c0", &ab, std::slice::from_ref(&b)))
            .await
            .unwrap();
        let blob = |n: u8| BlobId::from_random([n; 16]);
        let expires = NOW.plus_secs(100);
        // Eve is not a member: refused as if the conversation did not exist.
        let err = store
            .reserve_blob(&blob(1), &g, &e, 10, 1000, NOW, expires)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        store
            .reserve_blob(&blob(2), &g, &a, 600, 1000, NOW, expires)
            .await
            .unwrap();
        // Members get it; Eve, a member of another conversation, does not, by either id.
        let got = store.member_blob(&blob(2), &g, &b, NOW).await.unwrap();
        assert_eq!(got.map(|r| (r.size, r.group_id)), Some((600, g.clone())));
        assert!(
            store
                .member_blob(&blob(2), &g, &e, NOW)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .member_blob(&blob(2), &other, &e, NOW)
                .await
                .unwrap()
                .is_none()
        );
        // Alice's quota: 600 of 1000 bytes used, so 500 more are refused with the figures.
        let err = store
            .reserve_blob(&blob(3), &g, &a, 500, 1000, NOW, expires)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::QuotaExceeded {
                    used: 600,
                    size: 500,
                    limit: 1000
                }
            ),
            "{err}"
        );
        // Bob's quota is his own.
        store
            .reserve_blob(&blob(4), &g, &b, 1000, 1000, NOW, expires)
            .await
            .unwrap();
        // A file whose bytes could not be written frees its space at once.
        store
            .reserve_blob(&blob(5), &g, &a, 400, 1000, NOW, expires)
            .await
            .unwrap();
        store.drop_blob(&blob(5)).await.unwrap();
        store
            .reserve_blob(&blob(5), &g, &a, 400, 1000, NOW, expires)
            .await
            .unwrap();
        store.drop_blob(&blob(5)).await.unwrap();
        // Bob, once removed from the conversation, gets nothing.
        store
            .accept_commit(commit(&g, &a, 1, b"c1", std::slice::from_ref(&a), &[]))
            .await
            .unwrap();
        assert!(
            store
                .member_blob(&blob(2), &g, &b, NOW)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .member_blob(&blob(2), &g, &a, NOW)
                .await
                .unwrap()
                .is_some()
        );
        // Expired files no longer count, before and after the sweeper deletes them.
        store
            .reserve_blob(
                &blob(6),
                &g,
                &a,
                1000,
                1000,
                expires,
                expires.plus_secs(100),
            )
            .await
            .unwrap();
        assert!(
            store
                .member_blob(&blob(2), &g, &a, expires)
                .await
                .unwrap()
                .is_none()
        );
        let mut swept = store.expire_blobs(expires).await.unwrap();
        swept.sort();
        assert_eq!(swept, vec![blob(2), blob(4)]);
    }
}

#[tokio::test]
async fn files_from_before_conversations_expire_at_the_upgrade() {
    let dir = common::TestDb::sqlite();
    let store = open(&dir).await;
    let a = enroll(&store, 1, "alice").await;
    let g = GroupId::from_random([7; 16]);
    store
        .create_group(&g, None, &a, b"state-0", b"info-0", NOW)
        .await
        .unwrap();
    store.close().await;
    drop(store);
    // The database as migration 0006 left it, holding a file that names no group.
    let old = BlobId::from_random([1; 16]);
    tamper(&dir,
        &[
            "DROP INDEX blobs_uploader",
            "DROP TABLE key_package_handouts",
            "ALTER TABLE blobs DROP COLUMN group_id",
            "DELETE FROM _sqlx_migrations WHERE version = 7",
            &format!(
                "INSERT INTO blobs (id, uploader, size, created_at, expires_at) VALUES ('{old}', '{a}', 1000, {}, {})",
                NOW.unix(),
                NOW.plus_secs(3600).unix()
            ),
        ],
    )
    .await;
    let store = Store::open(&dir.location()).await.unwrap();
    // Nobody can fetch it, it no longer counts against the quota, and the sweeper
    // deletes it.
    assert!(
        store
            .member_blob(&old, &g, &a, NOW)
            .await
            .unwrap()
            .is_none()
    );
    store
        .reserve_blob(
            &BlobId::from_random([2; 16]),
            &g,
            &a,
            1000,
            1000,
            NOW,
            NOW.plus_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(store.expire_blobs(NOW).await.unwrap(), vec![old]);
}

contract! {
    async fn one_commit_per_epoch_and_welcomes_only_with_their_commit(dir) {
        let store = open(&dir).await;
        let (a, b, c, g) = three_and_a_group(&store).await;

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
}

contract! {
    async fn queues_are_ordered_durable_deduplicated_and_acked(dir) {
        let (a, b, g) = {
            let store = open(&dir).await;
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
        let store = open(&dir).await;
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
        assert_eq!(store.queue_status(&b).await.unwrap().expired, 3);
        let _ = a;
    }
}

contract! {
    async fn a_large_acknowledgement_removes_exactly_the_owners_items_and_their_payloads(dir) {
        let store = open(&dir).await;
        let (a, b, c, g) = three_and_a_group(&store).await;
        let abc = [a.clone(), b.clone(), c.clone()];
        store
            .accept_commit(commit(&g, &a, 0, b"c0", &abc, &[b.clone(), c.clone()]))
            .await
            .unwrap();
        // More items than one statement names (1000), for Bob and Carol alike.
        const N: usize = 1100;
        for i in 0..N {
            store
                .enqueue_message(&g, &a, 1, format!("m{i}").as_bytes(), &format!("id{i}"), NOW, NOW.plus_secs(60))
                .await
                .unwrap();
        }
        let (bobs, more) = store.fetch_queue(&b, &[], 5000).await.unwrap();
        assert!(!more);
        let (carols, _) = store.fetch_queue(&c, &[], 5000).await.unwrap();
        // Bob acknowledges his items, Carol's numbers, and some twice: only his go.
        let mut seqs: Vec<u64> = bobs.iter().map(|i| i.seq).collect();
        seqs.extend(carols.iter().take(50).map(|i| i.seq));
        seqs.extend(bobs.iter().take(20).map(|i| i.seq));
        assert_eq!(store.ack_queue(&b, &seqs).await.unwrap(), bobs.len() as u64);
        assert!(store.fetch_queue(&b, &[], 10).await.unwrap().0.is_empty());
        // Carol's are all there, payloads included (they are shared with Bob's).
        let (left, _) = store.fetch_queue(&c, &[], 5000).await.unwrap();
        assert_eq!(left, carols);
        let carol_seqs: Vec<u64> = left.iter().map(|i| i.seq).collect();
        assert_eq!(store.ack_queue(&c, &carol_seqs).await.unwrap(), left.len() as u64);
        // The last acknowledgement leaves no payload behind (Welcomes' and messages').
        assert_eq!(common::query_count(&dir, "SELECT count(*) FROM payloads").await, 0);
    }
}
