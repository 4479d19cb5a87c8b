//! Device groups in the store, on both backends: a group's mode reaches the bundle
//! requests of its members; a change marks its devices stale in its own transaction
//! and `reissue_stale` issues their bundles in batches; what is stale survives a
//! reopen; refused changes leave nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, enrolled, open, sign};
use redoubt_proto::{DeviceGroupName, DeviceId, ModeName, SignedEnvelope};
use redoubt_store::{BundleRequest, IssuedBundle, Store, StoreError};

/// A bundle whose "effective mode" lists every assigned mode, so tests can see them.
fn issue(req: &BundleRequest) -> IssuedBundle {
    let mut modes: Vec<String> = std::iter::once(&req.base_mode)
        .chain(&req.group_modes)
        .map(|m| m.name.to_string())
        .collect();
    modes.sort();
    let mut b = common::issue(req);
    b.effective_mode = modes.join("+");
    b.envelope = SignedEnvelope {
        kind: "test".into(),
        payload: format!("{}:{}", req.device_id, req.version),
        signature: String::new(),
    };
    b
}

fn name(s: &str) -> DeviceGroupName {
    s.parse().unwrap()
}

fn mode(s: &str) -> ModeName {
    s.parse().unwrap()
}

async fn effective(store: &Store, d: &DeviceId) -> (String, u64) {
    let r = store.get_device(d).await.unwrap().unwrap();
    (r.effective_mode, r.bundle_version)
}

async fn drain(store: &Store, batch: u32) -> Vec<usize> {
    let mut sizes = Vec::new();
    loop {
        let done = store.reissue_stale(batch, issue).await.unwrap();
        if done.is_empty() {
            return sizes;
        }
        sizes.push(done.len());
    }
}

contract! {
    async fn a_groups_mode_reaches_its_members_in_batches(db) {
        let store = open(&db).await;
        let devices: Vec<DeviceId> = enroll_many(&store, 1..=5).await;
        let g = name("unit-7");
        store
            .create_device_group(&g, "Seventh", None, "admin:a", NOW, |_| vec![], &sign)
            .await
            .unwrap();
        let change = store
            .add_to_device_group(&g, &devices[..4], NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        // Without a mode, joining changes no bundle.
        assert_eq!((change.changed.len(), change.reissued), (4, 0));
        assert_eq!(store.stale_bundle_count().await.unwrap(), 0);

        let (group, waiting) = store
            .set_device_group_mode(&g, Some(&mode("lockdown")), NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        assert_eq!((group.devices, waiting), (4, 4));
        assert_eq!(store.stale_bundle_count().await.unwrap(), 4);
        // Nothing is issued until the reissuer runs; then in batches of the size asked.
        assert_eq!(effective(&store, &devices[0]).await, ("standard".into(), 1));
        assert_eq!(drain(&store, 3).await, vec![3, 1]);
        for d in &devices[..4] {
            assert_eq!(effective(&store, d).await, ("lockdown+standard".into(), 2));
        }
        assert_eq!(effective(&store, &devices[4]).await, ("standard".into(), 1));

        // Removal gives the device a bundle without the group's mode.
        let change = store
            .remove_from_device_group(&g, &devices[..1], NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        assert_eq!((change.changed.len(), change.reissued), (1, 1));
        assert_eq!(drain(&store, 100).await, vec![1]);
        assert_eq!(effective(&store, &devices[0]).await, ("standard".into(), 3));
        assert_eq!(store.groups_of_device(&devices[1]).await.unwrap(), vec![g.clone()]);
        assert!(store.groups_of_device(&devices[0]).await.unwrap().is_empty());

        // The same mode again marks nothing; a revoked member is skipped.
        let (_, waiting) = store
            .set_device_group_mode(&g, Some(&mode("lockdown")), NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        assert_eq!(waiting, 0);
    }

    async fn what_waits_for_a_bundle_survives_a_reopen(db) {
        let store = open(&db).await;
        let devices: Vec<DeviceId> = enroll_many(&store, 1..=3).await;
        let g = name("site.north");
        store
            .create_device_group(&g, "", Some(&mode("lockdown")), "admin:a", NOW, |_| vec![], &sign)
            .await
            .unwrap();
        store
            .add_to_device_group(&g, &devices, NOW, |_, _| vec![], &sign)
            .await
            .unwrap();
        // The server stops before issuing: the next one finds the devices waiting.
        store.close().await;
        let store = open(&db).await;
        assert_eq!(store.stale_bundle_count().await.unwrap(), 3);
        assert_eq!(drain(&store, 2).await, vec![2, 1]);
        assert_eq!(store.stale_bundle_count().await.unwrap(), 0);
        for d in &devices {
            assert_eq!(effective(&store, d).await.0, "lockdown+standard");
        }
    }

    async fn refused_group_changes_leave_nothing(db) {
        let store = open(&db).await;
        let devices: Vec<DeviceId> = enroll_many(&store, 1..=2).await;
        let g = name("unit-1");
        store
            .create_device_group(&g, "", None, "admin:a", NOW, |_| vec![], &sign)
            .await
            .unwrap();
        assert!(matches!(
            store.create_device_group(&g, "", None, "admin:a", NOW, |_| vec![], &sign).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .create_device_group(&name("x"), "", Some(&mode("nope")), "admin:a", NOW, |_| vec![], &sign)
                .await,
            Err(StoreError::NotFound(_))
        ));
        // One unknown device in the list: none is added.
        let unknown = DeviceId::from_random([99; 12]);
        assert!(matches!(
            store
                .add_to_device_group(&g, &[devices[0].clone(), unknown], NOW, |_, _| vec![], &sign)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.get_device_group(&g).await.unwrap().unwrap().devices, 0);
        assert!(matches!(
            store
                .set_device_group_mode(&name("nowhere"), None, NOW, |_, _| vec![], &sign)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.list_device_groups().await.unwrap().len() == 1);
        assert!(store.get_device_group(&name("x")).await.unwrap().is_none());
    }
}

/// Enrolls devices `range` (one each for its own person).
async fn enroll_many(store: &Store, range: std::ops::RangeInclusive<u8>) -> Vec<DeviceId> {
    let mut out = Vec::new();
    for n in range {
        out.push(enrolled(store, n).await);
    }
    out
}
