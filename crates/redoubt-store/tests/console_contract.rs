//! Console accounts and sessions on both backends: a name is taken once; a sign-in
//! spends its TOTP step or recovery code once (a replay changes nothing); failures count
//! and lock; a session ends at sign-out, after its idle time, at its absolute expiry and
//! when its account is disabled; each of these is audited in a chain that verifies. And
//! the dashboard's compliance samples.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use redoubt_proto::Timestamp;
use redoubt_proto::api::Role;
use redoubt_store::{
    ComplianceSample, NewConsoleAccount, NewConsoleSession, SecondFactor, Store, StoreError,
};

const RECOVERY: [[u8; 32]; 2] = [[1; 32], [2; 32]];

async fn account(store: &Store, name: &str) -> i64 {
    store
        .create_console_account(
            &NewConsoleAccount {
                name,
                role: Role::Operator,
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
                totp_sealed: &[9; 40],
                recovery_hashes: &RECOVERY,
                created_by: "server (cli)",
            },
            NOW,
            &[draft(
                "console.account_create",
                None,
                serde_json::json!({"name": name}),
            )],
            &sign,
        )
        .await
        .unwrap()
}

async fn sign_in(
    store: &Store,
    id: i64,
    factor: SecondFactor,
    token: u8,
    at: Timestamp,
) -> Result<(), StoreError> {
    store
        .console_sign_in(
            id,
            factor,
            &NewConsoleSession {
                token_hash: &[token; 32],
                expires_at: at.plus_secs(3600),
                source: "192.0.2.9",
            },
            at,
            &[draft("console.sign_in", None, serde_json::json!({}))],
            &sign,
        )
        .await
}

contract! {
    async fn a_name_is_taken_once(tmp) {
        let store = open(&tmp).await;
        let id = account(&store, "anna").await;
        let again = store
            .create_console_account(
                &NewConsoleAccount {
                    name: "anna",
                    role: Role::Owner,
                    password_hash: "x",
                    totp_sealed: &[1],
                    recovery_hashes: &[],
                    created_by: "x",
                },
                NOW,
                &[],
                &sign,
            )
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let a = store.console_account_by_name("anna").await.unwrap().unwrap();
        assert_eq!((a.id, a.role, a.failed_attempts), (id, Role::Operator, 0));
        assert_eq!(store.console_recovery_left(id).await.unwrap(), 2);
        assert_eq!(store.list_console_accounts().await.unwrap().len(), 1);
    }

    async fn a_second_factor_is_spent_once(tmp) {
        let store = open(&tmp).await;
        let id = account(&store, "anna").await;
        sign_in(&store, id, SecondFactor::Totp(100), 1, NOW).await.unwrap();
        // The same step again, or an older one: refused, and no session stored.
        for step in [100, 99] {
            let r = sign_in(&store, id, SecondFactor::Totp(step), 2, NOW).await;
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        }
        assert!(store.console_session(&[2; 32], NOW, 600).await.unwrap().is_none());
        sign_in(&store, id, SecondFactor::Totp(101), 3, NOW).await.unwrap();
        // A recovery code works once; an unknown one never.
        sign_in(&store, id, SecondFactor::Recovery([1; 32]), 4, NOW).await.unwrap();
        for code in [[1; 32], [7; 32]] {
            let r = sign_in(&store, id, SecondFactor::Recovery(code), 5, NOW).await;
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        }
        assert_eq!(store.console_recovery_left(id).await.unwrap(), 1);
        verify(&store).await.unwrap();
    }

    async fn failures_lock_and_a_good_sign_in_clears_them(tmp) {
        let store = open(&tmp).await;
        let id = account(&store, "anna").await;
        let lock = |n: u32| if n >= 3 { 60 } else { 0 };
        for n in 1..=3u32 {
            let (failures, until) = store
                .console_sign_in_failed(Some(id), NOW, &lock, &[draft("console.sign_in_failed", None, serde_json::json!({}))], &sign)
                .await
                .unwrap();
            assert_eq!(failures, n);
            assert_eq!(until, if n == 3 { NOW.plus_secs(60) } else { Timestamp(0) });
        }
        // An unknown name is audited, nothing else.
        let (failures, _) = store
            .console_sign_in_failed(None, NOW, &lock, &[draft("console.sign_in_failed", None, serde_json::json!({}))], &sign)
            .await
            .unwrap();
        assert_eq!(failures, 0);
        let a = store.console_account(id).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.locked_until), (3, NOW.plus_secs(60)));
        sign_in(&store, id, SecondFactor::Totp(5), 1, NOW.plus_secs(61)).await.unwrap();
        let a = store.console_account(id).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.locked_until), (0, Timestamp(0)));
        assert_eq!(a.last_sign_in_at, Some(NOW.plus_secs(61)));
        verify(&store).await.unwrap();
    }

    async fn sessions_end_every_way_they_should(tmp) {
        let store = open(&tmp).await;
        let id = account(&store, "anna").await;
        let other = account(&store, "boris").await;
        sign_in(&store, id, SecondFactor::Totp(1), 1, NOW).await.unwrap();
        let live = |token: u8, at: Timestamp| {
            let store = &store;
            async move { store.console_session(&[token; 32], at, 600).await.unwrap().is_some() }
        };
        assert!(live(1, NOW.plus_secs(599)).await);
        // Idle: ten minutes without a request; touched, it lives on.
        assert!(!live(1, NOW.plus_secs(600)).await);
        store.touch_console_session(&[1; 32], NOW.plus_secs(500)).await.unwrap();
        assert!(live(1, NOW.plus_secs(1000)).await);
        // Absolute: an hour after sign-in, however busy.
        store.touch_console_session(&[1; 32], NOW.plus_secs(3590)).await.unwrap();
        assert!(!live(1, NOW.plus_secs(3600)).await);
        // Signed out.
        sign_in(&store, id, SecondFactor::Totp(2), 2, NOW).await.unwrap();
        assert!(store.end_console_session(&[2; 32], NOW, &[draft("console.sign_out", None, serde_json::json!({}))], &sign).await.unwrap());
        assert!(!live(2, NOW).await);
        assert!(!store.end_console_session(&[2; 32], NOW, &[], &sign).await.unwrap());
        // Disabled: every session of the account ends, another account's stays.
        sign_in(&store, id, SecondFactor::Totp(3), 3, NOW).await.unwrap();
        sign_in(&store, other, SecondFactor::Totp(3), 4, NOW).await.unwrap();
        store.disable_console_account(id, NOW, &[draft("console.account_disable", None, serde_json::json!({}))], &sign).await.unwrap();
        assert!(!live(3, NOW).await);
        assert!(live(4, NOW).await);
        let again = store.disable_console_account(id, NOW, &[], &sign).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let missing = store.disable_console_account(999, NOW, &[], &sign).await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
        store.set_console_language(other, "ru").await.unwrap();
        let s = store.console_session(&[4; 32], NOW, 600).await.unwrap().unwrap();
        assert_eq!(s.account.language.as_deref(), Some("ru"));
        verify(&store).await.unwrap();
    }

    async fn a_reset_replaces_every_secret_and_ends_the_sessions(tmp) {
        let store = open(&tmp).await;
        let id = account(&store, "anna").await;
        sign_in(&store, id, SecondFactor::Totp(1), 1, NOW).await.unwrap();
        sign_in(&store, id, SecondFactor::Totp(2), 2, NOW).await.unwrap();
        // Her own change of password keeps the session she made it from.
        store
            .set_console_password(id, "new-hash", &[2; 32], NOW, &[draft("console.password", None, serde_json::json!({}))], &sign)
            .await
            .unwrap();
        assert!(store.console_session(&[1; 32], NOW, 600).await.unwrap().is_none());
        let s = store.console_session(&[2; 32], NOW, 600).await.unwrap().unwrap();
        assert_eq!(s.account.password_hash, "new-hash");
        // An owner's reset: new secrets, old recovery codes gone, every session ended.
        store
            .reset_console_account(id, "reset-hash", &[5; 40], &[[9; 32]], NOW, &[draft("console.account_reset", None, serde_json::json!({}))], &sign)
            .await
            .unwrap();
        assert!(store.console_session(&[2; 32], NOW, 600).await.unwrap().is_none());
        let a = store.console_account(id).await.unwrap().unwrap();
        assert_eq!((a.password_hash.as_str(), a.totp_sealed.as_slice()), ("reset-hash", &[5u8; 40][..]));
        let old = sign_in(&store, id, SecondFactor::Recovery([1; 32]), 3, NOW).await;
        assert!(matches!(old, Err(StoreError::Conflict(_))), "{old:?}");
        sign_in(&store, id, SecondFactor::Recovery([9; 32]), 3, NOW).await.unwrap();
        let missing = store.reset_console_account(999, "x", &[1], &[], NOW, &[], &sign).await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))), "{missing:?}");
        verify(&store).await.unwrap();
    }

    async fn compliance_samples_are_kept_for_the_window(tmp) {
        let store = open(&tmp).await;
        let sample = |at: i64, compliant: u64| ComplianceSample {
            at: Timestamp(at),
            compliant,
            non_compliant: 1,
            stale: 2,
            pending: 3,
        };
        store.record_compliance_sample(&sample(100, 5), Timestamp(0)).await.unwrap();
        store.record_compliance_sample(&sample(400, 6), Timestamp(0)).await.unwrap();
        // The same period again replaces its sample (several nodes sample alike).
        store.record_compliance_sample(&sample(400, 7), Timestamp(0)).await.unwrap();
        assert_eq!(store.compliance_samples(Timestamp(0)).await.unwrap(), vec![sample(100, 5), sample(400, 7)]);
        assert_eq!(store.compliance_samples(Timestamp(101)).await.unwrap(), vec![sample(400, 7)]);
        // Samples older than the window are dropped.
        store.record_compliance_sample(&sample(700, 8), Timestamp(400)).await.unwrap();
        assert_eq!(store.compliance_samples(Timestamp(0)).await.unwrap(), vec![sample(400, 7), sample(700, 8)]);
    }
}
