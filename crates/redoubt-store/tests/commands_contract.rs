//! Device commands on the embedded SQLite backend: a standing request returns the
//! command already stored, the lifecycle moves only forward, overdue commands expire
//! and are not sent any more, a revoked device takes no new commands, and every step
//! leaves an audit entry in a chain that verifies.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use redoubt_proto::{
    CommandId, CommandState, DeviceAction, DeviceCommand, DeviceId, SignedEnvelope, Timestamp,
};
use redoubt_store::{CommandRecord, NewCommand, Store, StoreError};

fn new_command(device: &DeviceId, n: u8, action: DeviceAction, ttl: i64) -> NewCommand {
    let id = CommandId::from_random([n; 12]);
    let body = DeviceCommand {
        id: id.clone(),
        device_id: device.clone(),
        action: action.clone(),
        issued_at: NOW,
        expires_at: NOW.plus_secs(ttl),
    };
    NewCommand {
        id,
        device_id: device.clone(),
        action,
        envelope: SignedEnvelope::sign(DeviceCommand::KIND, &body, &org_key()),
        created_by: "admin:alice".into(),
        source: "192.0.2.7".into(),
        expires_at: NOW.plus_secs(ttl),
    }
}

async fn create(
    store: &Store,
    dev: &DeviceId,
    n: u8,
    action: DeviceAction,
    at: Timestamp,
) -> (CommandRecord, bool) {
    store
        .create_command(new_command(dev, n, action, 600), at, &sign)
        .await
        .unwrap()
}

fn actions(entries: &[redoubt_proto::AuditEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.action.as_str()).collect()
}

contract! {
    async fn a_standing_request_returns_the_stored_command(tmp) {
        let store = open(&tmp).await;
        let dev = enrolled(&store, 1).await;

        let (lock, existing) = create(&store, &dev, 10, DeviceAction::Lock, NOW).await;
        assert!(!existing);
        assert_eq!(lock.state, CommandState::Queued);
        let (again, existing) = create(&store, &dev, 11, DeviceAction::Lock, NOW).await;
        assert!(existing);
        assert_eq!(again.id, lock.id);
        // Lock, unlock, lock: each reverses the one before, so each is new.
        let (unlock, existing) = create(&store, &dev, 12, DeviceAction::Unlock, NOW.plus_secs(1)).await;
        assert!(!existing);
        let (relock, existing) = create(&store, &dev, 13, DeviceAction::Lock, NOW.plus_secs(2)).await;
        assert!(!existing);
        assert_ne!(relock.id, lock.id);
        assert_ne!(unlock.id, relock.id);
        assert_eq!(
            store.newest_command_at(&dev).await.unwrap(),
            Some(NOW.plus_secs(2))
        );
        // Another node issued one at the same second (or its clock is behind): refused,
        // nothing stored, so the phone never sees two locks and unlocks it cannot order.
        for at in [NOW.plus_secs(2), NOW.plus_secs(1)] {
            let raced = store
                .create_command(new_command(&dev, 22, DeviceAction::Unlock, 600), at, &sign)
                .await;
            match raced {
                Err(StoreError::Conflict(m)) => assert!(m.contains("same moment"), "{m}"),
                other => panic!("expected a conflict, got {other:?}"),
            }
        }
        assert_eq!(store.list_commands(&dev).await.unwrap().len(), 3);
        // A wipe once asked for stands; so does an exit from the same zone until final.
        let (wipe, _) = create(&store, &dev, 14, DeviceAction::Wipe, NOW).await;
        let (wipe2, existing) = create(&store, &dev, 15, DeviceAction::Wipe, NOW).await;
        assert!(existing);
        assert_eq!(wipe2.id, wipe.id);
        let lab = DeviceAction::ExitZone {
            zone: "lab".parse().unwrap(),
        };
        let (exit, _) = create(&store, &dev, 16, lab.clone(), NOW).await;
        let (exit2, existing) = create(&store, &dev, 17, lab.clone(), NOW).await;
        assert!(existing);
        assert_eq!(exit2.id, exit.id);
        store
            .complete_command(&dev, &exit.id, "left", NOW, &sign)
            .await
            .unwrap();
        let (exit3, existing) = create(&store, &dev, 18, lab, NOW).await;
        assert!(!existing, "a verified exit does not stand for a new one");
        assert_ne!(exit3.id, exit.id);

        // Unknown and revoked devices.
        let unknown = store
            .create_command(
                new_command(&dev_id(9), 19, DeviceAction::Lock, 600),
                NOW,
                &sign,
            )
            .await;
        assert!(
            matches!(unknown, Err(StoreError::NotFound(_))),
            "{unknown:?}"
        );
        store
            .revoke_device(&dev, NOW, NOW.plus_secs(60), |_| vec![], |_| vec![], &sign)
            .await
            .unwrap();
        let refused = store
            .create_command(new_command(&dev, 20, DeviceAction::Unlock, 600), NOW, &sign)
            .await;
        match refused {
            Err(StoreError::Conflict(m)) => assert!(m.contains("revoked"), "{m}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let (_, existing) = create(&store, &dev, 21, DeviceAction::Revoke, NOW).await;
        assert!(!existing, "revoke is still taken, to record it");
        verify(&store).await.unwrap();
    }
}

contract! {
    async fn the_lifecycle_moves_forward_and_every_step_is_audited(tmp) {
        let store = open(&tmp).await;
        let dev = enrolled(&store, 2).await;
        let (lock, _) = create(&store, &dev, 30, DeviceAction::Lock, NOW).await;
        let (exit, _) = create(
            &store,
            &dev,
            31,
            DeviceAction::ExitZone {
                zone: "lab".parse().unwrap(),
            },
            NOW.plus_secs(1),
        )
        .await;
        let (revoke, _) = create(&store, &dev, 32, DeviceAction::Revoke, NOW.plus_secs(2)).await;

        // Oldest first; `revoke` is the server's own business and never sent.
        let to_send = store.commands_to_send(&dev, NOW).await.unwrap();
        assert_eq!(
            to_send.iter().map(|c| &c.id).collect::<Vec<_>>(),
            [&lock.id, &exit.id]
        );
        assert!(!to_send.iter().any(|c| c.id == revoke.id));

        store
            .mark_delivered(
                &dev,
                &[lock.id.clone(), exit.id.clone()],
                NOW.plus_secs(3),
                &sign,
            )
            .await
            .unwrap();
        let listed = store.list_commands(&dev).await.unwrap();
        let got = |id: &CommandId| listed.iter().find(|c| &c.id == id).unwrap().clone();
        assert_eq!(got(&lock.id).state, CommandState::Delivered);
        assert_eq!(got(&lock.id).delivered_at, Some(NOW.plus_secs(3)));
        // Delivered but not acknowledged: still sent at the next connection.
        assert_eq!(store.commands_to_send(&dev, NOW).await.unwrap().len(), 2);

        let acked = store
            .acknowledge_command(&dev, &lock.id, true, None, NOW.plus_secs(4), &sign)
            .await
            .unwrap();
        assert_eq!(acked.state, CommandState::Acknowledged);
        assert_eq!(acked.acknowledged_at, Some(NOW.plus_secs(4)));
        let refused = store
            .acknowledge_command(
                &dev,
                &exit.id,
                false,
                Some("not inside zone lab"),
                NOW.plus_secs(4),
                &sign,
            )
            .await
            .unwrap();
        assert_eq!(refused.state, CommandState::Failed);
        assert_eq!(
            refused.note.as_deref(),
            Some("refused by the phone: not inside zone lab")
        );
        assert!(store.commands_to_send(&dev, NOW).await.unwrap().is_empty());

        let done = store
            .complete_command(&dev, &lock.id, "report 7: locked", NOW.plus_secs(5), &sign)
            .await
            .unwrap();
        assert_eq!(done.state, CommandState::Verified);
        assert_eq!(done.verified_at, Some(NOW.plus_secs(5)));
        // Another device cannot acknowledge it.
        let other = enrolled(&store, 3).await;
        assert!(
            store
                .acknowledge_command(&other, &lock.id, true, None, NOW, &sign)
                .await
                .is_err()
        );

        let log = all(&store).await;
        let mine: Vec<_> = log
            .iter()
            .filter(|e| e.device_id.as_ref() == Some(&dev) && e.action != "device.enroll")
            .cloned()
            .collect();
        assert_eq!(
            actions(&mine),
            [
                "device.lock",
                "device.exit-zone",
                "device.revoke",
                "command.delivered",
                "command.delivered",
                "command.acknowledged",
                "command.failed",
                "command.verified",
            ]
        );
        assert_eq!(mine[0].actor, "admin:alice");
        assert_eq!(mine[0].source, "192.0.2.7");
        verify(&store).await.unwrap();
    }
}

contract! {
    async fn overdue_commands_expire_and_are_not_sent_any_more(tmp) {
        let store = open(&tmp).await;
        let dev = enrolled(&store, 4).await;
        let (queued, _) = create(&store, &dev, 40, DeviceAction::Lock, NOW).await;
        let (delivered, _) = create(&store, &dev, 41, DeviceAction::Wipe, NOW).await;
        let (acked, _) = create(
            &store,
            &dev,
            42,
            DeviceAction::ExitZone {
                zone: "lab".parse().unwrap(),
            },
            NOW,
        )
        .await;
        store
            .mark_delivered(&dev, &[delivered.id.clone(), acked.id.clone()], NOW, &sign)
            .await
            .unwrap();
        store
            .acknowledge_command(&dev, &acked.id, true, None, NOW, &sign)
            .await
            .unwrap();

        // Not yet due: nothing expires.
        assert!(
            store
                .expire_commands(NOW.plus_secs(599), &sign)
                .await
                .unwrap()
                .is_empty()
        );
        // Past the expiry the phone is not sent them, even before the sweep.
        assert!(
            store
                .commands_to_send(&dev, NOW.plus_secs(600))
                .await
                .unwrap()
                .is_empty()
        );
        let expired = store
            .expire_commands(NOW.plus_secs(600), &sign)
            .await
            .unwrap();
        let mut ids: Vec<_> = expired.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        let mut want = vec![queued.id.clone(), delivered.id.clone()];
        want.sort();
        assert_eq!(ids, want, "acknowledged commands do not expire");
        assert!(expired.iter().all(|c| c.state == CommandState::Expired));
        // A second sweep finds nothing; a late acknowledgement does not revive one.
        assert!(
            store
                .expire_commands(NOW.plus_secs(700), &sign)
                .await
                .unwrap()
                .is_empty()
        );
        let late = store
            .acknowledge_command(&dev, &queued.id, true, None, NOW.plus_secs(701), &sign)
            .await;
        if let Ok(c) = &late {
            assert_eq!(c.state, CommandState::Expired, "{late:?}");
        }
        let listed = store.list_commands(&dev).await.unwrap();
        let state = |id: &CommandId| listed.iter().find(|c| &c.id == id).unwrap().state;
        assert_eq!(state(&queued.id), CommandState::Expired);
        assert_eq!(state(&acked.id), CommandState::Acknowledged);
        // An expired lock does not stand: a new lock is a new command.
        let (relock, existing) = create(&store, &dev, 43, DeviceAction::Lock, NOW.plus_secs(702)).await;
        assert!(!existing);
        assert_ne!(relock.id, queued.id);
        let expired_entries = all(&store)
            .await
            .into_iter()
            .filter(|e| e.action == "command.expired")
            .count();
        assert_eq!(expired_entries, 2);
        verify(&store).await.unwrap();
    }
}

// The phone said "wiping" but its final report never came (it was switched off, or
// its holder stopped the agent): at the wipe's expiry the server must learn it, so
// it can do its part of the wipe (revoke the device).
contract! {
    async fn an_acknowledged_wipe_without_its_final_report_expires(tmp) {
        let store = open(&tmp).await;
        let dev = enrolled(&store, 5).await;
        let (wipe, _) = create(&store, &dev, 50, DeviceAction::Wipe, NOW).await;
        store
            .mark_delivered(&dev, std::slice::from_ref(&wipe.id), NOW, &sign)
            .await
            .unwrap();
        let acked = store
            .acknowledge_command(&dev, &wipe.id, true, None, NOW.plus_secs(1), &sign)
            .await
            .unwrap();
        assert_eq!(acked.state, CommandState::Acknowledged);

        assert!(
            store
                .expire_commands(NOW.plus_secs(599), &sign)
                .await
                .unwrap()
                .is_empty(),
            "not before its expiry"
        );
        let expired = store
            .expire_commands(NOW.plus_secs(600), &sign)
            .await
            .unwrap();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0].id, wipe.id);
        assert_eq!(expired[0].action, DeviceAction::Wipe);
        assert_eq!(expired[0].state, CommandState::Expired);
        let entry = all(&store)
            .await
            .into_iter()
            .find(|e| e.action == "command.expired")
            .expect("an audit entry for the expiry");
        assert!(
            entry.detail.to_string().contains("final report"),
            "{:?}",
            entry.detail
        );
        verify(&store).await.unwrap();
    }
}
