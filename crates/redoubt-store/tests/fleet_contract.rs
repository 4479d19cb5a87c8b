//! Fleet lists on both backends: pages in a stable order that a cursor resumes
//! exactly (nothing twice, nothing missed, even while devices enroll), filters that
//! narrow by verdict (stale included), mode, owner, group and last report, and counts
//! that agree with the lists.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, enrolled, open, sign};
use redoubt_proto::{Compliance, DeviceGroupName, DeviceId, Timestamp};
use redoubt_store::{DeviceCursor, DeviceFilter, Store};

async fn all_pages(store: &Store, filter: &DeviceFilter, limit: u32) -> (Vec<DeviceId>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut after: Option<DeviceCursor> = None;
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
                after = Some(DeviceCursor::decode(&c.encode()).unwrap());
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
        assert!(DeviceCursor::decode("12.dev_zz").is_none());
        assert!(DeviceCursor::decode("x.dev_000000000000000000000000").is_none());
        assert!(DeviceCursor::decode("").is_none());
    }
}
