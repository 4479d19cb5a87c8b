//! The store's contract, run against the embedded SQLite backend: atomic single-use
//! enrollment, growing bundle versions, report replay detection, presets protected,
//! and durability across reopening.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, mode, open};
use redoubt_proto::api::Role;
use redoubt_proto::{
    Capability, CapabilityState, Compliance, ComplianceReport, DeviceId, HardwareKind, ModeName,
    NetworkState, Rule, SignedEnvelope, UserName,
};
use redoubt_store::{
    BundleRequest, EnrollRefusal, IssuedBundle, NewDevice, ReportOutcome, Store, StoreError,
};

fn issue(req: &BundleRequest) -> IssuedBundle {
    IssuedBundle {
        version: req.version,
        envelope: SignedEnvelope {
            kind: "test".into(),
            payload: format!("{}:{}", req.device_id, req.version),
            signature: String::new(),
        },
        payload_json: "{}".into(),
        issued_at: NOW,
        expires_at: NOW.plus_secs(3600),
        effective_mode: req.base_mode.name.to_string(),
        compliance: if req.last_report.is_some() {
            Compliance::NonCompliant
        } else {
            Compliance::Pending
        },
        reasons: vec![],
    }
}

fn device(n: u8) -> NewDevice {
    NewDevice {
        id: DeviceId::from_random([n; 12]),
        public_key: [n; 32],
        hardware: HardwareKind::Sim,
    }
}

async fn token(store: &Store, n: u8, expires: i64) -> [u8; 32] {
    let hash = [n; 32];
    let user: UserName = "alice".parse().unwrap();
    let standard: ModeName = "standard".parse().unwrap();
    store
        .create_enrollment_token(
            &hash,
            &user,
            &standard,
            &[],
            "test",
            NOW,
            NOW.plus_secs(expires),
            &[],
            &sign_head,
        )
        .await
        .unwrap();
    hash
}

fn report(id: &DeviceId, seq: u64) -> ComplianceReport {
    ComplianceReport {
        device_id: id.clone(),
        seq,
        bundle_version: 1,
        effective_mode: "standard".into(),
        capabilities: Capability::ALL
            .into_iter()
            .map(|c| (c, CapabilityState::On))
            .collect(),
        network: NetworkState::Open,
        hardware: HardwareKind::Sim,
        observed_at: NOW,
        fallback_reason: None,
        zones: Vec::new(),
        locked_by: None,
        commands_done: Vec::new(),
        events: Vec::new(),
        trusted_floor: None,
        clock_tampered: false,
        inventory: None,
    }
}

fn refusal(e: StoreError) -> EnrollRefusal {
    match e {
        StoreError::Enroll(r) => r,
        other => panic!("expected an enrollment refusal, got {other}"),
    }
}

contract! {
    async fn a_token_enrolls_exactly_one_device_even_under_a_race(tmp) {
        let store = open(&tmp).await;
        let hash = token(&store, 1, 60).await;
        let (a, b) = tokio::join!(
            store.enroll_device(&hash, device(1), NOW, issue, |_| vec![], &sign_head),
            store.enroll_device(&hash, device(2), NOW, issue, |_| vec![], &sign_head)
        );
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
        let loser = if a.is_ok() { b } else { a };
        assert_eq!(refusal(loser.unwrap_err()), EnrollRefusal::Used);
        assert_eq!(store.list_devices().await.unwrap().len(), 1);
    }
}

contract! {
    async fn unknown_and_expired_tokens_are_refused(tmp) {
        let store = open(&tmp).await;
        let unknown = store
            .enroll_device(&[9; 32], device(1), NOW, issue, |_| vec![], &sign_head)
            .await;
        assert_eq!(refusal(unknown.unwrap_err()), EnrollRefusal::Invalid);
        let hash = token(&store, 2, 10).await;
        let late = store
            .enroll_device(
                &hash,
                device(1),
                NOW.plus_secs(10),
                issue,
                |_| vec![],
                &sign_head,
            )
            .await;
        assert_eq!(refusal(late.unwrap_err()), EnrollRefusal::Expired);
        assert!(store.list_devices().await.unwrap().is_empty());
    }
}

/// A token for `user` created by `by` (the `created_by` of the code).
async fn token_for(store: &Store, n: u8, user: &str, by: &str) -> [u8; 32] {
    let hash = [n; 32];
    store
        .create_enrollment_token(
            &hash,
            &user.parse().unwrap(),
            &"standard".parse().unwrap(),
            &[],
            by,
            NOW,
            NOW.plus_secs(600),
            &[],
            &sign_head,
        )
        .await
        .unwrap();
    hash
}

async fn enroll_as(store: &Store, n: u8, user: &str, by: &str) -> redoubt_store::DeviceRecord {
    let hash = token_for(store, n, user, by).await;
    store
        .enroll_device(&hash, device(n), NOW, issue, |_| vec![], &sign_head)
        .await
        .unwrap()
}

async fn claim_for(
    store: &Store,
    claimer: u8,
    user: &str,
) -> redoubt_proto::messaging::ClaimedKeyPackages {
    let (claimed, missing) = store
        .claim_key_packages(&device(claimer).id, &[user.parse().unwrap()], 50, NOW)
        .await
        .unwrap();
    redoubt_proto::messaging::ClaimedKeyPackages {
        key_packages: claimed
            .into_iter()
            .map(|c| redoubt_proto::messaging::ClaimedKeyPackage {
                device_id: c.device_id,
                user: c.user,
                key_package: redoubt_proto::messaging::B64(c.data),
                last_resort: c.last_resort,
            })
            .collect(),
        missing,
    }
}

contract! {
    async fn a_persons_additional_device_awaits_an_approval_its_enroller_cannot_give(tmp) {
        let store = open(&tmp).await;
        let first = enroll_as(&store, 1, "bob", "admin:op").await;
        assert!(first.is_approved(), "a person's first device needs nobody");
        assert_eq!(
            first.approved_by.as_deref(),
            Some(redoubt_store::APPROVED_AS_FIRST_DEVICE)
        );
        assert_eq!(first.enrolled_by.as_deref(), Some("admin:op"));
        // Another person's first device is not affected by Bob's.
        assert!(
            enroll_as(&store, 3, "carol", "admin:op")
                .await
                .is_approved()
        );

        let second = enroll_as(&store, 2, "bob", "admin:op").await;
        assert!(!second.is_approved(), "{second:?}");
        assert_eq!(second.approved_at, None);
        for d in [2u8, 1] {
            store
                .upload_key_packages(&device(d).id, &[vec![d; 8]], Some(&[d; 9]), 100, NOW)
                .await
                .unwrap();
        }
        // A claim for Bob hands out his approved device only, and says why not the other.
        let claim = claim_for(&store, 3, "bob").await;
        let got: Vec<_> = claim
            .key_packages
            .iter()
            .map(|k| k.device_id.clone())
            .collect();
        assert_eq!(got, vec![first.id.clone()]);
        assert_eq!(claim.missing.len(), 1, "{claim:?}");
        assert_eq!(claim.missing[0].device_id, Some(second.id.clone()));
        assert!(claim.missing[0].reason.contains("approval"), "{claim:?}");

        // Whoever created the code may not approve; the refusal changes nothing.
        let own = store
            .approve_device(&second.id, "admin:op", NOW, |_| vec![], &sign_head)
            .await;
        assert!(matches!(own, Err(StoreError::Forbidden(_))), "{own:?}");
        assert!(
            !store
                .get_device(&second.id)
                .await
                .unwrap()
                .unwrap()
                .is_approved()
        );

        let audited = std::cell::Cell::new(false);
        let approved = store
            .approve_device(
                &second.id,
                "admin:boss",
                NOW.plus_secs(5),
                |rec| {
                    audited.set(rec.approved_by.as_deref() == Some("admin:boss"));
                    vec![]
                },
                &sign_head,
            )
            .await
            .unwrap();
        assert!(
            audited.get(),
            "the audit entry is made from the approved device"
        );
        assert_eq!(approved.approved_by.as_deref(), Some("admin:boss"));
        assert_eq!(approved.approved_at, Some(NOW.plus_secs(5)));
        let again = store
            .approve_device(&second.id, "admin:other", NOW, |_| vec![], &sign_head)
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let claim = claim_for(&store, 3, "bob").await;
        assert_eq!(claim.key_packages.len(), 2, "{claim:?}");
        assert!(claim.missing.is_empty(), "{claim:?}");

        // Revoked, both of Bob's devices: his replacement phone is his only live device and
        // is approved at once. A revoked device cannot be approved.
        for d in [&first.id, &second.id] {
            store
                .revoke_device(
                    d,
                    NOW,
                    NOW.plus_secs(60),
                    |_| vec![],
                    |_| vec![],
                    &sign_head,
                )
                .await
                .unwrap();
        }
        let replacement = enroll_as(&store, 4, "bob", "admin:op").await;
        assert!(replacement.is_approved(), "{replacement:?}");
        let pending = enroll_as(&store, 5, "bob", "admin:op").await;
        store
            .revoke_device(
                &pending.id,
                NOW,
                NOW.plus_secs(60),
                |_| vec![],
                |_| vec![],
                &sign_head,
            )
            .await
            .unwrap();
        let revoked = store
            .approve_device(&pending.id, "admin:boss", NOW, |_| vec![], &sign_head)
            .await;
        assert!(
            matches!(revoked, Err(StoreError::Conflict(_))),
            "{revoked:?}"
        );

        // The state survives reopening.
        drop(store);
        let store = open(&tmp).await;
        let back = store.get_device(&second.id).await.unwrap().unwrap();
        assert_eq!(back.approved_by.as_deref(), Some("admin:boss"));
    }
}

#[tokio::test]
async fn devices_enrolled_before_approvals_existed_are_approved_by_the_upgrade() {
    let tmp = common::TestDb::sqlite();
    let store = open(&tmp).await;
    enroll_as(&store, 1, "bob", "admin:op").await;
    let second = enroll_as(&store, 2, "bob", "admin:op").await;
    assert!(!second.is_approved());
    store.close().await;
    // The database as it was before migration 0008.
    common::tamper(
        &tmp,
        &[
            "ALTER TABLE devices DROP COLUMN enrolled_by",
            "ALTER TABLE devices DROP COLUMN approved_by",
            "ALTER TABLE devices DROP COLUMN approved_at",
            "DELETE FROM _sqlx_migrations WHERE version = 8",
        ],
    )
    .await;
    let store = open(&tmp).await;
    for d in store.list_devices().await.unwrap() {
        assert!(d.is_approved(), "{d:?}");
        assert_eq!(d.approved_by.as_deref(), Some("migration"));
        assert_eq!(d.enrolled_by.as_deref(), Some("admin:op"));
    }
}

contract! {
    async fn bundle_versions_grow_and_presets_are_protected(tmp) {
        let store = open(&tmp).await;
        let hash = token(&store, 1, 60).await;
        let dev = store
            .enroll_device(&hash, device(1), NOW, issue, |_| vec![], &sign_head)
            .await
            .unwrap();
        assert_eq!(dev.bundle_version, 1);
        let lockdown: ModeName = "lockdown".parse().unwrap();
        let dev = store
            .set_device_mode(&dev.id, &lockdown, NOW, issue, |_, _| vec![], &sign_head)
            .await
            .unwrap();
        assert_eq!(
            (dev.bundle_version, dev.assigned_mode.as_str()),
            (2, "lockdown")
        );
        let missing: ModeName = "missing".parse().unwrap();
        assert!(matches!(
            store
                .set_device_mode(&dev.id, &missing, NOW, issue, |_, _| vec![], &sign_head)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store
                .get_device(&dev.id)
                .await
                .unwrap()
                .unwrap()
                .bundle_version,
            2
        );

        assert!(matches!(
            store
                .put_custom_mode(
                    &mode("standard", Rule::Deny),
                    NOW,
                    issue,
                    |_, _| vec![],
                    &sign_head
                )
                .await,
            Err(StoreError::Conflict(_))
        ));
        let custom = mode("night", Rule::Deny);
        assert!(
            store
                .put_custom_mode(&custom, NOW, issue, |_, _| vec![], &sign_head)
                .await
                .unwrap()
                .is_empty()
        );
        let night: ModeName = "night".parse().unwrap();
        store
            .set_device_mode(&dev.id, &night, NOW, issue, |_, _| vec![], &sign_head)
            .await
            .unwrap();
        // Changing the mode re-issues the bundle of every device assigned to it.
        let touched = store
            .put_custom_mode(
                &mode("night", Rule::Allow),
                NOW,
                issue,
                |_, _| vec![],
                &sign_head,
            )
            .await
            .unwrap();
        assert_eq!(touched, vec![dev.id.clone()]);
        assert_eq!(
            store
                .get_device(&dev.id)
                .await
                .unwrap()
                .unwrap()
                .bundle_version,
            4
        );
    }
}

contract! {
    async fn reports_are_kept_once_in_order_and_survive_reopening(tmp) {
        let id = {
            let store = open(&tmp).await;
            let hash = token(&store, 1, 60).await;
            let dev = store
                .enroll_device(&hash, device(1), NOW, issue, |_| vec![], &sign_head)
                .await
                .unwrap();
            let env = SignedEnvelope {
                kind: "r".into(),
                payload: String::new(),
                signature: String::new(),
            };
            let ok = |_: &redoubt_store::DeviceRecord| (Compliance::Compliant, vec![]);
            assert_eq!(
                store
                    .record_report(&report(&dev.id, 1), &env, NOW, ok, no_judge, &sign_head)
                    .await
                    .unwrap()
                    .0,
                ReportOutcome::Stored(Compliance::Compliant)
            );
            assert_eq!(
                store
                    .record_report(&report(&dev.id, 1), &env, NOW, ok, no_judge, &sign_head)
                    .await
                    .unwrap()
                    .0,
                ReportOutcome::Duplicate
            );
            assert_eq!(
                store
                    .record_report(&report(&dev.id, 3), &env, NOW, ok, no_judge, &sign_head)
                    .await
                    .unwrap()
                    .0,
                ReportOutcome::Stored(Compliance::Compliant)
            );
            assert_eq!(
                store
                    .record_report(&report(&dev.id, 2), &env, NOW, ok, no_judge, &sign_head)
                    .await
                    .unwrap()
                    .0,
                ReportOutcome::Duplicate
            );
            store
                .create_admin_token(
                    "root",
                    Role::Owner,
                    &[5; 32],
                    NOW,
                    NOW.plus_secs(86400),
                    &[],
                    &sign_head,
                )
                .await
                .unwrap();
            store.close().await;
            dev.id
        };
        let store = open(&tmp).await;
        let dev = store.get_device(&id).await.unwrap().unwrap();
        assert_eq!(
            (dev.last_report_seq, dev.compliance),
            (Some(3), Compliance::Compliant)
        );
        assert_eq!(store.count_reports(&id).await.unwrap(), 2);
        assert_eq!(
            store
                .admin_by_token_hash(&[5; 32], NOW)
                .await
                .unwrap()
                .unwrap()
                .role,
            Role::Owner
        );
        assert!(
            store
                .admin_by_token_hash(&[6; 32], NOW)
                .await
                .unwrap()
                .is_none()
        );
        // Expired at its expiry; revoked at once, once.
        let later = NOW.plus_secs(86400);
        assert!(
            store
                .admin_by_token_hash(&[5; 32], later)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.count_admin_tokens(later).await.unwrap(), 0);
        let id = redoubt_proto::api::CredentialId::from_hash(&[5; 32]);
        let listed = store.list_admin_tokens().await.unwrap();
        assert_eq!((listed.len(), &listed[0].id), (1, &id));
        let revoked = store
            .revoke_admin_token(&id, "admin:test", NOW, |_| Vec::new(), &sign_head)
            .await
            .unwrap();
        assert_eq!(revoked.revoked_by.as_deref(), Some("admin:test"));
        assert!(
            store
                .admin_by_token_hash(&[5; 32], NOW)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            store
                .revoke_admin_token(&id, "admin:test", NOW, |_| Vec::new(), &sign_head)
                .await,
            Err(StoreError::Conflict(_))
        ));
        let counts = store.compliance_counts(NOW.plus_secs(1)).await.unwrap();
        assert!(counts.contains(&(Compliance::Stale, 1)), "{counts:?}");
        let counts = store.compliance_counts(NOW).await.unwrap();
        assert!(counts.contains(&(Compliance::Compliant, 1)), "{counts:?}");
    }
}

contract! {
    async fn concurrent_reports_from_many_devices_all_land(tmp) {
        let store = open(&tmp).await;
        let mut ids = Vec::new();
        for n in 1..=8u8 {
            let hash = token(&store, n, 60).await;
            ids.push(
                store
                    .enroll_device(&hash, device(n), NOW, issue, |_| vec![], &sign_head)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let env = SignedEnvelope {
            kind: "r".into(),
            payload: String::new(),
            signature: String::new(),
        };
        let tasks = ids
            .iter()
            .flat_map(|id| (1..=5u64).map(move |seq| (id.clone(), seq)))
            .map(|(id, seq)| {
                let store = store.clone();
                let env = env.clone();
                tokio::spawn(async move {
                    store
                        .record_report(
                            &report(&id, seq),
                            &env,
                            NOW,
                            |_| (Compliance::Compliant, vec![]),
                            no_judge,
                            &sign_head,
                        )
                        .await
                        .map(|(o, _)| o)
                })
            });
        let results: Vec<_> = futures_join(tasks.collect()).await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        for id in &ids {
            assert_eq!(
                store.get_device(id).await.unwrap().unwrap().last_report_seq,
                Some(5)
            );
        }
    }
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn no_judge(_: &redoubt_store::CommandRecord, _: Compliance) -> Option<String> {
    None
}

fn sign_head(head: &redoubt_proto::AuditHead) -> SignedEnvelope {
    SignedEnvelope {
        kind: redoubt_proto::AuditHead::KIND.into(),
        payload: format!("{}:{}", head.seq, head.hash),
        signature: String::new(),
    }
}

contract! {
    async fn a_batch_of_reports_is_one_commit_with_an_outcome_each(tmp) {
        let store = open(&tmp).await;
        let mut ids = Vec::new();
        for n in 1..=3 {
            let hash = token(&store, n, 60).await;
            let dev = store
                .enroll_device(&hash, device(n), NOW, issue, |_| vec![], &sign_head)
                .await
                .unwrap();
            ids.push(dev.id);
        }
        let env = SignedEnvelope {
            kind: "r".into(),
            payload: String::new(),
            signature: String::new(),
        };
        let unknown = DeviceId::from_random([99; 12]);
        store
            .put_zone(
                &redoubt_proto::api::ZoneDefinition {
                    name: "lab".parse().unwrap(),
                    description: String::new(),
                    mode: "lockdown".parse().unwrap(),
                    checkpoints: vec!["gate".parse().unwrap()],
                    wifi_bssids: Vec::new(),
                },
                NOW,
                &[],
                &sign_head,
                issue,
            )
            .await
            .unwrap();
        // The phone's holder writes the report: a zone the organization never defined
        // is not believed into the lists.
        let mut zoned = report(&ids[2], 1);
        zoned.zones = vec!["lab".parse().unwrap(), "ghost".parse().unwrap()];
        let reports = [
            report(&ids[0], 1),
            report(&ids[0], 2),
            report(&ids[0], 2),
            report(&unknown, 1),
            report(&ids[1], 5),
            zoned,
        ];
        let inputs: Vec<_> = reports.iter().map(|r| (r, &env)).collect();
        let mut evaluated = Vec::new();
        let out = store
            .record_reports(
                &inputs,
                NOW,
                |dev, r| {
                    evaluated.push((dev.id.clone(), r.seq));
                    (Compliance::Compliant, vec![])
                },
                |_, _, _| None,
                &sign_head,
            )
            .await
            .unwrap();
        assert_eq!(out.len(), 6);
        let stored = ReportOutcome::Stored(Compliance::Compliant);
        assert_eq!(out[0].as_ref().unwrap().outcome, stored);
        assert_eq!(out[1].as_ref().unwrap().outcome, stored, "a later report of the same device, in order");
        assert_eq!(out[2].as_ref().unwrap().outcome, ReportOutcome::Duplicate);
        assert!(matches!(out[3], Err(StoreError::NotFound(_))), "an unknown device fails alone");
        assert_eq!(out[4].as_ref().unwrap().outcome, stored);
        assert_eq!(out[5].as_ref().unwrap().outcome, stored);
        assert_eq!(evaluated.len(), 4, "duplicates and unknown devices are not judged");
        assert_eq!(store.count_reports(&ids[0]).await.unwrap(), 2);
        let d = store.get_device(&ids[0]).await.unwrap().unwrap();
        assert_eq!((d.last_report_seq, d.compliance), (Some(2), Compliance::Compliant));
        // The zone it reported is what the zone filter sees.
        let in_lab = redoubt_store::DeviceFilter {
            zone: Some("lab".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(store.count_devices(&in_lab, NOW).await.unwrap(), 1);
        let in_ghost = redoubt_store::DeviceFilter {
            zone: Some("ghost".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(store.count_devices(&in_ghost, NOW).await.unwrap(), 0);
        assert_eq!(
            store.device_breakdown().await.unwrap().by_zone,
            vec![("lab".to_string(), 1)]
        );
    }
}

/// An inventory whose model is `model`.
fn inventory(model: &str) -> redoubt_proto::Inventory {
    redoubt_proto::Inventory {
        model: Some(model.into()),
        os_name: Some("Sailfish OS".into()),
        os_version: Some("4.6.0.13".into()),
        kernel: Some("4.19.157".into()),
        agent_version: "0.1.0".into(),
        hardware_backend: "sailfish".into(),
        storage_total_bytes: Some(100),
        storage_free_bytes: Some(40),
        battery_percent: Some(55),
        battery_charging: None,
    }
}

/// The stored inventory's model, and when it was received.
async fn shown(store: &Store, id: &DeviceId) -> (Option<String>, Option<redoubt_proto::Timestamp>) {
    let d = store.get_device(id).await.unwrap().unwrap();
    (d.inventory.and_then(|i| i.model), d.inventory_at)
}

contract! {
    async fn the_newest_inventory_is_kept_until_a_report_brings_another(tmp) {
        let store = open(&tmp).await;
        let mut ids = Vec::new();
        for n in 1..=2 {
            let hash = token(&store, n, 60).await;
            let dev = store
                .enroll_device(&hash, device(n), NOW, issue, |_| vec![], &sign_head)
                .await
                .unwrap();
            assert_eq!((dev.inventory, dev.inventory_at), (None, None));
            ids.push(dev.id);
        }
        let env = SignedEnvelope {
            kind: "r".into(),
            payload: String::new(),
            signature: String::new(),
        };
        let ok = |_: &redoubt_store::DeviceRecord, _: &ComplianceReport| {
            (Compliance::Compliant, vec![])
        };
        let with = |id: &DeviceId, seq, model: &str| {
            let mut r = report(id, seq);
            r.inventory = Some(inventory(model));
            r
        };

        // An older agent's report: nothing to show.
        let batch = [report(&ids[0], 1)];
        let inputs: Vec<_> = batch.iter().map(|r| (r, &env)).collect();
        store.record_reports(&inputs, NOW, ok, |_, _, _| None, &sign_head).await.unwrap();
        assert_eq!(shown(&store, &ids[0]).await, (None, None));

        // One batch: the first device's inventory comes with its first report and stays
        // through the next one, which carries none; the second device's with its own.
        let t1 = NOW.plus_secs(10);
        let batch = [
            with(&ids[0], 2, "Xperia 10 III"),
            report(&ids[0], 3),
            with(&ids[1], 1, "Xperia 10 II"),
        ];
        let inputs: Vec<_> = batch.iter().map(|r| (r, &env)).collect();
        let out = store.record_reports(&inputs, t1, ok, |_, _, _| None, &sign_head).await.unwrap();
        let first = &out[1].as_ref().unwrap().device;
        assert_eq!(first.inventory, Some(inventory("Xperia 10 III")), "as the batch left it");
        assert_eq!(first.inventory_at, Some(t1));
        assert_eq!(shown(&store, &ids[0]).await, (Some("Xperia 10 III".into()), Some(t1)));
        assert_eq!(shown(&store, &ids[1]).await, (Some("Xperia 10 II".into()), Some(t1)));

        // A later report without one leaves it; a duplicate brings nothing.
        let t2 = NOW.plus_secs(20);
        let ok1 = |_: &redoubt_store::DeviceRecord| (Compliance::Compliant, vec![]);
        store
            .record_report(&report(&ids[0], 4), &env, t2, ok1, no_judge, &sign_head)
            .await
            .unwrap();
        store
            .record_report(&with(&ids[0], 4, "ignored"), &env, t2, ok1, no_judge, &sign_head)
            .await
            .unwrap();
        assert_eq!(shown(&store, &ids[0]).await, (Some("Xperia 10 III".into()), Some(t1)));

        // A newer one replaces it, and lists show it too.
        let t3 = NOW.plus_secs(30);
        store
            .record_report(&with(&ids[0], 5, "Xperia 10 V"), &env, t3, ok1, no_judge, &sign_head)
            .await
            .unwrap();
        assert_eq!(shown(&store, &ids[0]).await, (Some("Xperia 10 V".into()), Some(t3)));
        let (page, _) = store
            .list_devices_page(&Default::default(), NOW, None, 10)
            .await
            .unwrap();
        let models: Vec<_> = page
            .iter()
            .map(|d| (d.inventory.as_ref().and_then(|i| i.model.clone()), d.inventory_at))
            .collect();
        assert_eq!(
            models,
            [(Some("Xperia 10 V".into()), Some(t3)), (Some("Xperia 10 II".into()), Some(t1))]
        );
        assert_eq!(
            store.get_device(&ids[1]).await.unwrap().unwrap().inventory,
            Some(inventory("Xperia 10 II")),
            "every field read back"
        );
    }
}

contract! {
    async fn enrollment_codes_list_in_pages_by_state_person_and_creator(tmp) {
        use redoubt_proto::api::EnrollmentState;
        use redoubt_store::{EnrollmentFilter, RowCursor};
        let store = open(&tmp).await;
        // 1..=5: open codes (two by another admin); 6: used; 7: expires 10 s after NOW.
        for n in 1..=5u8 {
            let by = if n <= 3 { "admin:op" } else { "admin:other" };
            token_for(&store, n, if n == 2 { "bob" } else { "alice" }, by).await;
        }
        enroll_as(&store, 6, "carol", "admin:op").await;
        token(&store, 7, 10).await;
        let later = NOW.plus_secs(60);
        let all = |state| EnrollmentFilter {
            state,
            ..Default::default()
        };
        let page = |f: EnrollmentFilter, after: Option<RowCursor>, limit| {
            let store = &store;
            async move {
                store
                    .list_enrollments_page(&f, later, after.as_ref(), limit)
                    .await
                    .unwrap()
            }
        };
        // Every code once, oldest first, across pages of two.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (codes, next) = page(all(None), after, 2).await;
            assert!(codes.len() <= 2);
            seen.extend(codes);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let ids: Vec<_> = seen.iter().map(|c| c.id.clone()).collect();
        let want: Vec<_> = (1..=7u8)
            .map(|n| redoubt_proto::api::CredentialId::from_hash(&[n; 32]))
            .collect();
        assert_eq!(ids, want);
        let used = &seen[5];
        assert_eq!(used.state(later), EnrollmentState::Used);
        assert_eq!(used.device_id, Some(device(6).id));
        assert_eq!(used.user.as_str(), "carol");
        assert_eq!(seen[6].state(later), EnrollmentState::Expired);
        assert_eq!(seen[6].state(NOW), EnrollmentState::Open);
        // Each state, judged at the list's time.
        let count = |f| async move { page(f, None, 100).await.0.len() };
        assert_eq!(count(all(Some(EnrollmentState::Open))).await, 5);
        assert_eq!(count(all(Some(EnrollmentState::Used))).await, 1);
        assert_eq!(count(all(Some(EnrollmentState::Expired))).await, 1);
        let at_now = store
            .list_enrollments_page(&all(Some(EnrollmentState::Open)), NOW, None, 100)
            .await
            .unwrap();
        assert_eq!(at_now.0.len(), 6, "at NOW the short code is still open");
        // By person and by creator, combined with a state.
        let bob = EnrollmentFilter {
            user: Some("bob".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(page(bob, None, 100).await.0[0].id, want[1]);
        let other_open = EnrollmentFilter {
            state: Some(EnrollmentState::Open),
            created_by: Some("admin:other".into()),
            ..Default::default()
        };
        let (codes, next) = page(other_open, None, 100).await;
        assert_eq!(codes.len(), 2);
        assert!(next.is_none());
        // A page that ends exactly at the last code says no more follow.
        let (codes, next) = page(all(None), Some(RowCursor { row: 0 }), 7).await;
        assert_eq!((codes.len(), next), (7, None));
    }
}
