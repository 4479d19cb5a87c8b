//! What several server nodes need of the store, on both backends: the organization a
//! database belongs to is claimed once and other keys are refused (also after a
//! reopen); revocations are read back for a set of devices.
#![allow(clippy::unwrap_used)]

mod common;

use common::{NOW, enrolled, open, sign};
use redoubt_proto::DeviceId;
use redoubt_store::StoreError;

contract! {
    async fn the_first_node_claims_the_database_and_other_keys_are_refused(db) {
        let store = open(&db).await;
        store.claim_organization("sha256:aa", "key-a", NOW).await.unwrap();
        // The same keys again (a restart, a second node with copied keys): accepted.
        store.claim_organization("sha256:aa", "key-a", NOW).await.unwrap();
        for (ca, key) in [("sha256:bb", "key-b"), ("sha256:aa", "key-b"), ("sha256:bb", "key-a")] {
            let refused = store.claim_organization(ca, key, NOW).await;
            match refused {
                Err(StoreError::Conflict(m)) => {
                    assert!(m.contains("sha256:aa") && m.contains("org-signing.key"), "{m}")
                }
                other => panic!("{ca}/{key}: {other:?}"),
            }
        }
        store.close().await;
        let store = open(&db).await;
        assert!(store.claim_organization("sha256:bb", "key-b", NOW).await.is_err());
        store.claim_organization("sha256:aa", "key-a", NOW).await.unwrap();
    }

    async fn revocations_are_read_for_a_set_of_devices(db) {
        let store = open(&db).await;
        let a = enrolled(&store, 1).await;
        let b = enrolled(&store, 2).await;
        let ghost: DeviceId = "dev_000000000000000000000000".parse().unwrap();
        assert_eq!(
            store.revoked_among(&[a.clone(), b.clone(), ghost.clone()]).await.unwrap(),
            vec![ghost.clone()],
            "a device that does not exist counts as revoked"
        );
        store
            .revoke_device(&b, NOW, NOW.plus_secs(60), |_| vec![], |_| vec![], &sign)
            .await
            .unwrap();
        assert_eq!(
            store.revoked_among(&[a.clone(), b.clone()]).await.unwrap(),
            vec![b.clone()]
        );
        assert!(store.revoked_among(&[]).await.unwrap().is_empty());
    }
}
