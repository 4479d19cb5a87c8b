//! Fleet lists on both backends: pages in a stable order that a cursor resumes
//! exactly (nothing twice, nothing missed, even while devices enroll), filters that
//! narrow by verdict (stale included), mode, owner, group and last report, and counts
//! that agree with the lists.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, enrolled, open, sign};
use redoubt_proto::{Compliance, DeviceGroupName, DeviceId, Timestamp};
use redoubt_store::{DeviceFilter, RowCursor, Store};

async fn all_pages(store: &Store, filter: &DeviceFilter, limit: u32) -> (Vec<DeviceId>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut after: Option<RowCursor> = None;
    loop {
        let (page, next) = store
            .list_devices_page(filter, NOW, after.as_ref(), limit)
            .await
            .unwrap();
        pages += 1;
        assert!(page.len() <= limit as usize);
        ids.extend(page.into_iter().map(|d| d.id));
        match next {
            Some(c) => {
                // The cursor survives its trip through the API.
                after = Some(RowCursor::decode(&c.encode()).unwrap());
                assert_eq!(after, Some(c));
            }
            None => return (ids, pages),
        }
    }
}

contract! {
    async fn pages_resume_exactly_and_filters_agree_with_counts(db) {
        let store = open(&db).await;
        let mut devices = Vec::new();
        for n in 1..=7 {
            devices.push(enrolled(&store, n).await);
        }
        let everything = DeviceFilter::default();
        let (ids, pages) = all_pages(&store, &everything, 3).await;
        assert_eq!(pages, 3);
        assert_eq!(ids, devices, "in the order they enrolled");
        let mut sorted = devices.clone();
        sorted.sort();
        let mut got = ids.clone();
        got.sort();
        assert_eq!(got, sorted, "every device once");
        assert_eq!(store.count_devices(&everything, NOW).await.unwrap(), 7);

        // A device enrolled while paging appears on a later page, none twice.
        let (first, next) = store
            .list_devices_page(&everything, NOW, None, 4)
            .await
            .unwrap();
        devices.push(enrolled(&store, 8).await);
        let (rest, _) = store
            .list_devices_page(&everything, NOW, next.as_ref(), 100)
            .await
            .unwrap();
        let mut seen: Vec<DeviceId> = first.iter().chain(&rest).map(|d| d.id.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8);

        // Group and owner filters.
        let g: DeviceGroupName = "unit-1".parse().unwrap();
        store
            .create_device_group(&g, "", None, "admin:a", NOW, |_| vec![], &sign)
            .await
            .unwrap();
        store
            .add_to_device_group(&g, &devices[..3], NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        let in_group = DeviceFilter { group: Some(g.clone()), ..Default::default() };
        let (ids, _) = all_pages(&store, &in_group, 2).await;
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|i| devices[..3].contains(i)));
        assert_eq!(store.count_devices(&in_group, NOW).await.unwrap(), 3);
        let b = store.device_breakdown().await.unwrap();
        assert_eq!(b.by_group, vec![("unit-1".to_string(), 3)]);
        assert_eq!(b.by_mode, vec![("standard".to_string(), 8)]);
        assert_eq!(b.by_hardware, vec![("sim".to_string(), 8)]);
        let by_user = DeviceFilter { user: Some("carol".parse().unwrap()), ..Default::default() };
        assert_eq!(store.count_devices(&by_user, NOW).await.unwrap(), 8);
        let nobody = DeviceFilter { user: Some("zed".parse().unwrap()), ..Default::default() };
        assert_eq!(all_pages(&store, &nobody, 5).await, (vec![], 1));

        // Verdicts: never reported is pending; stale is computed from `stale_before`.
        let pending = DeviceFilter { compliance: Some(Compliance::Pending), ..Default::default() };
        assert_eq!(store.count_devices(&pending, NOW).await.unwrap(), 8);
        let stale = DeviceFilter { compliance: Some(Compliance::Stale), ..Default::default() };
        assert_eq!(store.count_devices(&stale, NOW).await.unwrap(), 0);
        let never_seen = DeviceFilter { seen_before: Some(NOW), ..Default::default() };
        assert_eq!(store.count_devices(&never_seen, NOW).await.unwrap(), 8);
        let seen_lately = DeviceFilter { seen_after: Some(Timestamp(0)), ..Default::default() };
        assert_eq!(store.count_devices(&seen_lately, NOW).await.unwrap(), 0);

        // A revoked device leaves the default list.
        store
            .revoke_device(&devices[0], NOW, NOW.plus_secs(60), |_| vec![], |_| vec![], &sign)
            .await
            .unwrap();
        assert_eq!(store.count_devices(&everything, NOW).await.unwrap(), 7);
        let with_revoked = DeviceFilter { include_revoked: true, ..Default::default() };
        assert_eq!(store.count_devices(&with_revoked, NOW).await.unwrap(), 8);

        // Bad page sizes and foreign cursors are refused.
        assert!(store.list_devices_page(&everything, NOW, None, 0).await.is_err());
        assert!(store.list_devices_page(&everything, NOW, None, 5_001).await.is_err());
        assert!(RowCursor::decode("12").is_none());
        assert!(RowCursor::decode("r-1").is_none());
        assert!(RowCursor::decode("rx").is_none());
        assert!(RowCursor::decode("").is_none());
    }
}

mod bulk {
    use super::*;
    use redoubt_proto::{CommandId, DeviceAction, SignedEnvelope};
    use redoubt_store::{BulkPending, NewBulk, NewCommand, StoreError};

    fn make(item: &BulkPending, at: redoubt_proto::Timestamp) -> NewCommand {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NewCommand {
            id: CommandId::from_random([n; 12]),
            device_id: item.device.clone(),
            action: item.action.clone(),
            envelope: SignedEnvelope {
                kind: "test".into(),
                payload: format!("{}@{}", item.device, at.unix()),
                signature: String::new(),
            },
            created_by: item.created_by.clone(),
            source: item.source.clone(),
            expires_at: item.expires_at,
        }
    }

    contract! {
        async fn a_bulk_command_fixes_its_devices_and_resumes_after_a_stop(db) {
            let store = open(&db).await;
            let mut devices = Vec::new();
            for n in 1..=4 {
                devices.push(enrolled(&store, n).await);
            }
            let g: DeviceGroupName = "unit-2".parse().unwrap();
            store
                .create_device_group(&g, "", None, "admin:a", NOW, |_| vec![], &sign)
                .await
                .unwrap();
            store
                .add_to_device_group(&g, &devices[..3], NOW, |_, _| vec![], &sign)
                .await
                .unwrap();
            let filter = DeviceFilter { group: Some(g.clone()), ..Default::default() };
            let bulk = NewBulk {
                id: "bulk_0001",
                action: &DeviceAction::Lock,
                filter_json: r#"{"group":"unit-2"}"#,
                created_by: "admin:a",
                source: "192.0.2.1",
                expires_at: NOW.plus_secs(3600),
            };
            // The wrong count does nothing.
            let err = store
                .start_bulk_command(&bulk, &filter, NOW, 4, NOW, |_| vec![], &sign)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::CountMismatch { expected: 4, actual: 3 }), "{err}");
            assert!(store.pending_bulk(100).await.unwrap().is_empty());

            let n = store
                .start_bulk_command(&bulk, &filter, NOW, 3, NOW, |_| vec![], &sign)
                .await
                .unwrap();
            assert_eq!(n, 3);
            // A device that joins the group afterwards is not swept in.
            store
                .add_to_device_group(&g, &devices[3..], NOW, |_, _| vec![], &sign)
                .await
                .unwrap();
            // One device is revoked before its command is made: it is skipped.
            store
                .revoke_device(&devices[2], NOW, NOW.plus_secs(60), |_| vec![], |_| vec![], &sign)
                .await
                .unwrap();
            let first = store.pending_bulk(1).await.unwrap();
            assert_eq!(first.len(), 1);
            let made = store.carry_out_bulk(&first, NOW, make).await.unwrap();
            assert_eq!(made.len(), 1);

            // The server stops here; the next one finds the rest waiting.
            store.close().await;
            let store = open(&db).await;
            let rest = store.pending_bulk(100).await.unwrap();
            assert_eq!(rest.len(), 2);
            assert!(rest.iter().all(|p| p.action == DeviceAction::Lock && p.created_by == "admin:a"));
            let made = store.carry_out_bulk(&rest, NOW, make).await.unwrap();
            assert_eq!(made.len(), 1, "the revoked device got no command");
            assert!(store.pending_bulk(100).await.unwrap().is_empty());
            for d in &devices[..2] {
                let cmds = store.list_commands(d).await.unwrap();
                assert_eq!(cmds.len(), 1);
                assert_eq!(cmds[0].action, DeviceAction::Lock);
            }
            assert!(store.list_commands(&devices[3]).await.unwrap().is_empty());
        }

        async fn a_bulk_mode_change_confirms_its_count(db) {
            let store = open(&db).await;
            for n in 1..=3 {
                enrolled(&store, n).await;
            }
            let everything = DeviceFilter::default();
            let lockdown: redoubt_proto::ModeName = "lockdown".parse().unwrap();
            let err = store
                .bulk_set_mode(&everything, NOW, 2, &lockdown, NOW, |_| vec![], &sign)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::CountMismatch { expected: 2, actual: 3 }));
            assert_eq!(store.stale_bundle_count().await.unwrap(), 0);
            let n = store
                .bulk_set_mode(&everything, NOW, 3, &lockdown, NOW, |_| vec![], &sign)
                .await
                .unwrap();
            assert_eq!((n, store.stale_bundle_count().await.unwrap()), (3, 3));
            let assigned = DeviceFilter { assigned_mode: Some(lockdown), ..Default::default() };
            assert_eq!(store.count_devices(&assigned, NOW).await.unwrap(), 3);
        }
    }
}
