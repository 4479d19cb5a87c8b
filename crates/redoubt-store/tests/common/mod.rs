//! Shared setup of the store contract tests: a store on SQLite (in a temp dir) or on
//! PostgreSQL (a database of the test's own) with the built-in modes, a fixed
//! organization key for the audit head, an enrolled device. `contract!` runs each test
//! on both backends: `NAME::sqlite` and `NAME::postgres`.
#![allow(dead_code, clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use redoubt_policy::{AuditError, verify_log};
use redoubt_proto::{
    AuditEntry, AuditHead, Compliance, DeviceId, HardwareKind, Mode, ModeName, NetworkReach, Rule,
    SignedEnvelope, Timestamp, UserName,
};
use redoubt_store::{AuditDraft, AuditFilter, BundleRequest, IssuedBundle, NewDevice, Store};
use serde_json::json;

pub const NOW: Timestamp = Timestamp(1_800_000_000);

pub fn org_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub fn sign(head: &AuditHead) -> SignedEnvelope {
    SignedEnvelope::sign(AuditHead::KIND, head, &org_key())
}

pub fn draft(action: &str, device: Option<u8>, detail: serde_json::Value) -> AuditDraft {
    AuditDraft {
        actor: "admin:alice".into(),
        source: "192.0.2.7".into(),
        action: action.into(),
        device_id: device.map(dev_id),
        detail,
    }
}

pub fn dev_id(n: u8) -> DeviceId {
    DeviceId::from_random([n; 12])
}

pub fn mode(name: &str, rule: Rule) -> Mode {
    Mode {
        name: name.parse().unwrap(),
        description: String::new(),
        network: NetworkReach::Open,
        capabilities: redoubt_proto::CapabilityRules::all(rule),
        app_allowlist: None,
    }
}

pub fn issue(req: &BundleRequest) -> IssuedBundle {
    IssuedBundle {
        version: req.version,
        envelope: SignedEnvelope {
            kind: "test".into(),
            payload: String::new(),
            signature: String::new(),
        },
        payload_json: "{}".into(),
        issued_at: NOW,
        expires_at: NOW.plus_secs(3600),
        effective_mode: req.base_mode.name.to_string(),
        compliance: Compliance::Pending,
        reasons: vec![],
    }
}

/// The database a contract test runs on.
pub enum TestDb {
    /// An SQLite file in a temp dir.
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL database made for this test (dropped after it).
    Postgres(redoubt_store::test_support::TempPostgres),
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> TestDb {
        TestDb::Postgres(redoubt_store::test_support::TempPostgres::create().await)
    }

    /// What `Store::open` takes for this database.
    pub fn location(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => dir.path().join("t.db").to_str().unwrap().to_string(),
            TestDb::Postgres(pg) => pg.url().to_string(),
        }
    }
}

/// Runs each test on both backends, as `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! contract {
    ($(async fn $name:ident($db:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test]
                async fn sqlite() {
                    let $db = common::TestDb::sqlite();
                    $body
                }

                #[tokio::test]
                async fn postgres() {
                    let $db = common::TestDb::postgres().await;
                    $body
                }
            }
        )*
    };
}

pub async fn open(db: &TestDb) -> Store {
    let store = Store::open(&db.location()).await.unwrap();
    store
        .install_builtin_modes(
            &[mode("standard", Rule::Allow), mode("lockdown", Rule::Deny)],
            NOW,
        )
        .await
        .unwrap();
    store
}

/// Runs `sql` on the database as someone with direct access to it would, with the
/// audit log's append-only triggers dropped first.
pub async fn tamper(db: &TestDb, sql: &[&str]) {
    match db {
        TestDb::Sqlite(dir) => {
            let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("t.db"));
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            for s in [
                "DROP TRIGGER IF EXISTS audit_log_no_update",
                "DROP TRIGGER IF EXISTS audit_log_no_delete",
            ]
            .iter()
            .chain(sql)
            {
                sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        TestDb::Postgres(pg) => {
            pg.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
                .await;
            for s in sql {
                pg.execute(s).await;
            }
        }
    }
}

/// A direct connection to the database, as someone with access to it would open.
async fn connect_raw(db: &TestDb) -> Result<sqlx::AnyConnection, String> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match db {
        TestDb::Sqlite(dir) => format!("sqlite://{}", dir.path().join("t.db").display()),
        TestDb::Postgres(pg) => pg.url().to_string(),
    };
    sqlx::AnyConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())
}

/// The one integer a query returns, read directly from the database.
pub async fn query_count(db: &TestDb, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = connect_raw(db).await.unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    n
}

/// Runs one statement as someone with direct access to the database, triggers intact.
pub async fn execute_raw(db: &TestDb, sql: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = connect_raw(db).await?;
    let result = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    conn.close().await.ok();
    result
}

pub async fn all(store: &Store) -> Vec<AuditEntry> {
    store.audit_list(&AuditFilter::default()).await.unwrap()
}

pub async fn verify(store: &Store) -> Result<redoubt_policy::VerifiedLog, AuditError> {
    let head = store.audit_head().await.unwrap().expect("a signed head");
    verify_log(&all(store).await, &head, &org_key().verifying_key())
}

pub async fn enrolled(store: &Store, n: u8) -> DeviceId {
    let user: UserName = "carol".parse().unwrap();
    let standard: ModeName = "standard".parse().unwrap();
    store
        .create_enrollment_token(
            &[n; 32],
            &user,
            &standard,
            &[],
            "alice",
            NOW,
            NOW.plus_secs(60),
            &[draft("enrollment.create", None, json!({"user": "carol"}))],
            &sign,
        )
        .await
        .unwrap();
    let dev = NewDevice {
        id: dev_id(n),
        public_key: [n; 32],
        hardware: HardwareKind::Sim,
    };
    store
        .enroll_device(
            &[n; 32],
            dev,
            NOW,
            issue,
            |rec| {
                vec![AuditDraft {
                    actor: format!("device:{}", rec.id),
                    source: "198.51.100.1".into(),
                    action: "device.enroll".into(),
                    device_id: Some(rec.id.clone()),
                    detail: json!({"user": rec.user, "mode": rec.assigned_mode}),
                }]
            },
            &sign,
        )
        .await
        .unwrap()
        .id
}
