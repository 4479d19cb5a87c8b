//! The audit log's contract on the embedded SQLite backend: appends chain, the signed
//! head follows the newest entry, filters select, concurrent appends leave a gapless
//! chain that verifies, audited changes write their entries in their own transaction
//! (and none when they fail), and a tampered tail is not signed over.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use redoubt_policy::{AuditError, GENESIS, recompute_hash};
use redoubt_proto::{AuditEntry, AuditHead, DeviceId, HardwareKind, ModeName, Rule};
use redoubt_store::{AuditFilter, NewDevice, StoreError};
use serde_json::json;

use common::*;

fn seqs(entries: &[AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

contract! {
    async fn appends_chain_and_the_signed_head_follows(tmp) {
        let store = open(&tmp).await;
        assert!(store.audit_head().await.unwrap().is_none());
        // Nothing to append: nothing written, nothing signed.
        store.audit_append(&[], NOW, &sign).await.unwrap();
        assert!(store.audit_head().await.unwrap().is_none());
        assert!(all(&store).await.is_empty());

        store
            .audit_append(
                &[
                    draft(
                        "enrollment.create",
                        None,
                        json!({"user": "bob", "mode": "standard"}),
                    ),
                    draft(
                        "device.mode",
                        Some(1),
                        json!({"from": "standard", "to": "lockdown"}),
                    ),
                ],
                NOW,
                &sign,
            )
            .await
            .unwrap();
        store
            .audit_append(
                &[draft("mode.put", None, json!({"mode": "night"}))],
                NOW.plus_secs(5),
                &sign,
            )
            .await
            .unwrap();

        let entries = all(&store).await;
        assert_eq!(seqs(&entries), vec![1, 2, 3]);
        assert_eq!(entries[0].prev_hash, GENESIS);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(entries[2].prev_hash, entries[1].hash);
        for e in &entries {
            assert_eq!(recompute_hash(e), e.hash, "entry #{}", e.seq);
        }
        assert_eq!(entries[1].device_id, Some(dev_id(1)));
        assert_eq!(entries[1].actor, "admin:alice");
        assert_eq!(entries[1].source, "192.0.2.7");
        assert_eq!(
            entries[1].detail,
            json!({"from": "standard", "to": "lockdown"})
        );
        assert_eq!(entries[2].at, NOW.plus_secs(5));

        let head: AuditHead = store
            .audit_head()
            .await
            .unwrap()
            .unwrap()
            .verify(AuditHead::KIND, &org_key().verifying_key())
            .unwrap();
        assert_eq!(
            (head.seq, head.hash.as_str()),
            (3, entries[2].hash.as_str())
        );
        assert_eq!(head.signed_at, NOW.plus_secs(5));
        assert_eq!(verify(&store).await.unwrap().entries, 3);

        let (snap, snap_head) = store.audit_snapshot().await.unwrap();
        assert_eq!(snap, entries);
        assert_eq!(snap_head, store.audit_head().await.unwrap());

        // Durable across reopening.
        store.close().await;
        let store = open(&tmp).await;
        assert_eq!(all(&store).await, entries);
        assert_eq!(verify(&store).await.unwrap().entries, 3);
    }
}

contract! {
    async fn filters_select_by_device_time_and_position(tmp) {
        let store = open(&tmp).await;
        for i in 0..10u8 {
            let device = if i % 3 == 0 { Some(7) } else { None };
            store
                .audit_append(
                    &[draft("x", device, json!({ "i": i }))],
                    NOW.plus_secs(i64::from(i) * 60),
                    &sign,
                )
                .await
                .unwrap();
        }
        let by_device = store
            .audit_list(&AuditFilter {
                device: Some(dev_id(7)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(seqs(&by_device), vec![1, 4, 7, 10]);
        let since = store
            .audit_list(&AuditFilter {
                since: Some(NOW.plus_secs(6 * 60)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(seqs(&since), vec![7, 8, 9, 10]);
        let page = store
            .audit_list(&AuditFilter {
                after_seq: Some(3),
                limit: Some(4),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(seqs(&page), vec![4, 5, 6, 7]);
        let combined = store
            .audit_list(&AuditFilter {
                device: Some(dev_id(7)),
                since: Some(NOW.plus_secs(60)),
                after_seq: Some(4),
                limit: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(seqs(&combined), vec![7]);
        let none = store
            .audit_list(&AuditFilter {
                device: Some(dev_id(8)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(
            store
                .audit_list(&AuditFilter {
                    after_seq: Some(10),
                    ..Default::default()
                })
                .await
                .unwrap()
                .is_empty()
        );
    }
}

contract! {
    async fn concurrent_appends_from_many_tasks_form_a_gapless_chain_that_verifies(tmp) {
        let store = Arc::new(open(&tmp).await);
        const TASKS: u8 = 8;
        const EACH: u8 = 12;
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        // Some appends carry two entries, which must stay adjacent.
                        let mut drafts = vec![draft(
                            "task",
                            Some(t),
                            json!({"task": t, "i": i, "part": 0}),
                        )];
                        if i % 4 == 0 {
                            drafts.push(draft(
                                "task",
                                Some(t),
                                json!({"task": t, "i": i, "part": 1}),
                            ));
                        }
                        store.audit_append(&drafts, NOW, &sign).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let entries = all(&store).await;
        let expected = u64::from(TASKS) * (u64::from(EACH) + u64::from(EACH).div_ceil(4));
        assert_eq!(seqs(&entries), (1..=expected).collect::<Vec<_>>());
        for pair in entries.windows(2) {
            if pair[1].detail["part"] == 1 {
                assert_eq!(pair[0].detail["task"], pair[1].detail["task"]);
                assert_eq!(pair[0].detail["i"], pair[1].detail["i"]);
            }
        }
        let v = verify(&store).await.unwrap();
        assert_eq!(v.entries, expected);
        assert_eq!(v.head.seq, expected);
    }
}

contract! {
    async fn audited_changes_write_their_entries_with_the_change_and_none_when_they_fail(tmp) {
        let store = open(&tmp).await;
        let id = enrolled(&store, 1).await;
        let entries = all(&store).await;
        assert_eq!(seqs(&entries), vec![1, 2]);
        assert_eq!(entries[1].action, "device.enroll");
        assert_eq!(entries[1].actor, format!("device:{id}"));
        assert_eq!(
            entries[1].detail,
            json!({"user": "carol", "mode": "standard"})
        );

        // A refused enrollment (token used) and a token for a missing mode leave no entry.
        let again = store
            .enroll_device(
                &[1; 32],
                NewDevice {
                    id: dev_id(2),
                    public_key: [2; 32],
                    hardware: HardwareKind::Sim,
                },
                NOW,
                issue,
                |_| vec![draft("device.enroll", Some(2), json!({}))],
                &sign,
            )
            .await;
        assert!(matches!(again, Err(StoreError::Enroll(_))));
        let missing = store
            .create_enrollment_token(
                &[3; 32],
                &"dan".parse().unwrap(),
                &"nope".parse().unwrap(),
                &[],
                "alice",
                NOW,
                NOW.plus_secs(60),
                &[draft("enrollment.create", None, json!({}))],
                &sign,
            )
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
        assert_eq!(all(&store).await.len(), 2);

        // The mode change sees the device before and after.
        let lockdown: ModeName = "lockdown".parse().unwrap();
        store
            .set_device_mode(
                &id,
                &lockdown,
                NOW,
                issue,
                |before, after| {
                    vec![draft(
                        "device.mode",
                        Some(1),
                        json!({"from": before.assigned_mode, "to": after.assigned_mode}),
                    )]
                },
                &sign,
            )
            .await
            .unwrap();
        let missing_mode: ModeName = "missing".parse().unwrap();
        assert!(
            store
                .set_device_mode(
                    &id,
                    &missing_mode,
                    NOW,
                    issue,
                    |_, _| vec![draft("device.mode", Some(1), json!({}))],
                    &sign
                )
                .await
                .is_err()
        );
        // A custom mode: created, then updated (re-issuing the bundle of its device).
        let night = mode("night", Rule::Deny);
        let saved = |created: bool, devices: &[DeviceId]| {
            vec![draft(
                "mode.put",
                None,
                json!({"mode": "night", "created": created, "devices": devices.len()}),
            )]
        };
        store
            .put_custom_mode(&night, NOW, issue, saved, &sign)
            .await
            .unwrap();
        let night_name: ModeName = "night".parse().unwrap();
        store
            .set_device_mode(&id, &night_name, NOW, issue, |_, _| vec![], &sign)
            .await
            .unwrap();
        store
            .put_custom_mode(&night, NOW, issue, saved, &sign)
            .await
            .unwrap();
        // A preset cannot be replaced: no entry.
        assert!(
            store
                .put_custom_mode(&mode("standard", Rule::Deny), NOW, issue, saved, &sign)
                .await
                .is_err()
        );
        // Revocation and admin credentials.
        store
            .revoke_device(
                &id,
                NOW,
                NOW.plus_secs(60),
                |_| Vec::new(),
                |groups| {
                    vec![draft(
                        "device.revoke",
                        Some(1),
                        json!({"groups": groups.len()}),
                    )]
                },
                &sign,
            )
            .await
            .unwrap();
        store
            .create_admin_token(
                "erin",
                redoubt_proto::api::Role::Auditor,
                &[9; 32],
                NOW,
                NOW.plus_secs(86400),
                &[draft("admin_token.create", None, json!({"name": "erin"}))],
                &sign,
            )
            .await
            .unwrap();

        let entries = all(&store).await;
        let summary: Vec<(&str, &serde_json::Value)> = entries
            .iter()
            .map(|e| (e.action.as_str(), &e.detail))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("enrollment.create", &json!({"user": "carol"})),
                (
                    "device.enroll",
                    &json!({"user": "carol", "mode": "standard"})
                ),
                (
                    "device.mode",
                    &json!({"from": "standard", "to": "lockdown"})
                ),
                (
                    "mode.put",
                    &json!({"mode": "night", "created": true, "devices": 0})
                ),
                (
                    "mode.put",
                    &json!({"mode": "night", "created": false, "devices": 1})
                ),
                ("device.revoke", &json!({"groups": 0})),
                ("admin_token.create", &json!({"name": "erin"})),
            ]
        );
        assert_eq!(verify(&store).await.unwrap().entries, 7);
    }
}

contract! {
    async fn the_log_is_append_only_for_sql_too(tmp) {
        let store = open(&tmp).await;
        store
            .audit_append(&[draft("x", None, json!({}))], NOW, &sign)
            .await
            .unwrap();
        for sql in [
            "UPDATE audit_log SET detail = '{}' WHERE seq = 1",
            "DELETE FROM audit_log WHERE seq = 1",
        ] {
            let err = common::execute_raw(&tmp, sql).await.unwrap_err();
            assert!(err.contains("append-only"), "{err}");
        }
        assert_eq!(verify(&store).await.unwrap().entries, 1);
    }
}

contract! {
    async fn deleted_newest_entries_stay_visible_after_the_next_append(tmp) {
        let store = open(&tmp).await;
        for i in 0..4 {
            store
                .audit_append(&[draft("x", None, json!({ "i": i }))], NOW, &sign)
                .await
                .unwrap();
        }
        tamper(&tmp, &["DELETE FROM audit_log WHERE seq = 4"]).await;
        assert!(matches!(
            verify(&store).await,
            Err(AuditError::HeadMismatch { seq: 4, .. })
        ));
        // The next entry chains to the signed head, not to what is left: the gap stays.
        store
            .audit_append(&[draft("y", None, json!({}))], NOW, &sign)
            .await
            .unwrap();
        assert_eq!(seqs(&all(&store).await), vec![1, 2, 3, 5]);
        assert!(matches!(
            verify(&store).await,
            Err(AuditError::Missing { seq: 4, .. })
        ));
    }
}

contract! {
    async fn entries_added_behind_the_heads_back_are_not_signed_over(tmp) {
        let store = open(&tmp).await;
        store
            .audit_append(&[draft("x", None, json!({}))], NOW, &sign)
            .await
            .unwrap();
        let first = all(&store).await.remove(0);
        let forged_hash = redoubt_policy::entry_hash(
            &first.hash,
            2,
            NOW,
            "admin:mallory",
            "",
            "device.mode",
            None,
            &json!({}),
        );
        tamper(&tmp,
            &[&format!(
                "INSERT INTO audit_log (seq, at, actor, source, action, device_id, detail, prev_hash, hash)
                 VALUES (2, {}, 'admin:mallory', '', 'device.mode', NULL, '{{}}', '{}', '{}')",
                NOW.unix(),
                first.hash,
                forged_hash
            )],
        )
        .await;
        assert!(matches!(
            verify(&store).await,
            Err(AuditError::HeadMismatch { seq: 2, .. })
        ));
        let err = store
            .audit_append(&[draft("y", None, json!({}))], NOW, &sign)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(all(&store).await.len(), 2);
    }
}
