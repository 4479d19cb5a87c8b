//! The one `Store` API of Redoubt and the only crate that speaks SQL.
//!
//! The embedded backend is SQLite (one file in the data dir, WAL, `synchronous=FULL`
//! so that what the server acknowledged survives a crash). Operations that must be
//! atomic take a closure that runs inside the transaction, so callers never hold a
//! transaction themselves and never see SQL.

mod audit;
mod cluster;
mod commands;
mod console;
mod devices;
mod fleet;
mod groups;
mod messaging;
mod modes;
#[cfg(feature = "test-support")]
pub mod test_support;
mod tokens;
mod zones;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, Executor, SqlSafeStr};

pub use audit::{AuditDraft, AuditFilter, HeadSigner};
pub use commands::{CommandFilter, CommandRecord, NewCommand};
pub use console::{
    ComplianceSample, ConsoleAccount, ConsoleSession, NewConsoleAccount, NewConsoleSession,
    SecondFactor,
};
pub use devices::{
    APPROVED_AS_FIRST_DEVICE, BundleRequest, DeviceRecord, IssuedBundle, NewDevice, ReportOutcome,
    ReportStored,
};
pub use fleet::{BulkPending, DeviceBreakdown, DeviceFilter, MAX_PAGE, NewBulk, RowCursor};
pub use groups::{DeviceGroupRecord, MembershipChange};
pub use messaging::{
    AWAITING_APPROVAL, BlobRecord, ClaimedRecord, CommitBase, CommitInput, CommitOutcome,
    GroupRecord, HANDOUT_WINDOW_SECS, MessageOutcome, QueueStatus, QueuedGroup,
};
pub use modes::ModeRecord;
pub use tokens::{AdminRecord, EnrollRefusal, EnrollmentFilter, EnrollmentRecord};
pub use zones::{GateCredentialRecord, ZoneRecord};

/// Errors of the store. Variants exist where callers branch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this to this thing.
    #[error("{0}")]
    Forbidden(String),
    /// A device's live files would exceed its storage quota.
    #[error(
        "the device stores {used} bytes of files; with {size} more it would exceed its quota of {limit} bytes"
    )]
    QuotaExceeded {
        /// Bytes of live files the device stores now.
        used: u64,
        /// Size of the refused file.
        size: u64,
        /// The quota.
        limit: u64,
    },
    /// A bulk action's confirmed count is not the number of devices its filter covers
    /// now (nothing was done).
    #[error("the filter covers {actual} devices, not the {expected} confirmed; nothing was done")]
    CountMismatch {
        /// The count the operator confirmed.
        expected: u64,
        /// The count now.
        actual: u64,
    },
    /// An enrollment token was refused.
    #[error("enrollment refused: {0:?}")]
    Enroll(EnrollRefusal),
    /// A stored value could not be read back (data edited by hand, or a bug).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database failed (disk full, locked, IO).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the schema failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The SQLite migration history (version, description, SQL).
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "devices",
        include_str!("../migrations/sqlite/0001_devices.sql"),
    ),
    (
        2,
        "messaging",
        include_str!("../migrations/sqlite/0002_messaging.sql"),
    ),
    (
        3,
        "zones",
        include_str!("../migrations/sqlite/0003_zones.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../migrations/sqlite/0004_audit.sql"),
    ),
    (
        5,
        "public_groups",
        include_str!("../migrations/sqlite/0005_public_groups.sql"),
    ),
    (
        6,
        "credentials",
        include_str!("../migrations/sqlite/0006_credentials.sql"),
    ),
    (
        7,
        "blob_owners",
        include_str!("../migrations/sqlite/0007_blob_owners.sql"),
    ),
    (
        8,
        "device_approval",
        include_str!("../migrations/sqlite/0008_device_approval.sql"),
    ),
    (
        9,
        "device_groups",
        include_str!("../migrations/sqlite/0009_device_groups.sql"),
    ),
    (
        10,
        "device_zones",
        include_str!("../migrations/sqlite/0010_device_zones.sql"),
    ),
    (
        11,
        "bulk_actions",
        include_str!("../migrations/sqlite/0011_bulk_actions.sql"),
    ),
    (
        12,
        "organization",
        include_str!("../migrations/sqlite/0012_organization.sql"),
    ),
    (
        13,
        "enrollment_list",
        include_str!("../migrations/sqlite/0013_enrollment_list.sql"),
    ),
    (
        14,
        "console",
        include_str!("../migrations/sqlite/0014_console.sql"),
    ),
    (
        15,
        "device_inventory",
        include_str!("../migrations/sqlite/0015_device_inventory.sql"),
    ),
];

/// The PostgreSQL migration history: its own, starting from the SQLite schema of 0008.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../migrations/postgres/0001_schema.sql"),
    ),
    (
        2,
        "device_groups",
        include_str!("../migrations/postgres/0002_device_groups.sql"),
    ),
    (
        3,
        "device_zones",
        include_str!("../migrations/postgres/0003_device_zones.sql"),
    ),
    (
        4,
        "bulk_actions",
        include_str!("../migrations/postgres/0004_bulk_actions.sql"),
    ),
    (
        5,
        "organization",
        include_str!("../migrations/postgres/0005_organization.sql"),
    ),
    (
        6,
        "enrollment_list",
        include_str!("../migrations/postgres/0006_enrollment_list.sql"),
    ),
    (
        7,
        "console",
        include_str!("../migrations/postgres/0007_console.sql"),
    ),
    (
        8,
        "device_inventory",
        include_str!("../migrations/postgres/0008_device_inventory.sql"),
    ),
];

/// Connections to the SQLite file (one writes at a time; the others read).
const SQLITE_POOL: u32 = 8;
/// Connections of one server node to PostgreSQL (six nodes stay under PostgreSQL's
/// default limit of 100 connections).
const POSTGRES_POOL: u32 = 16;

/// Which database engine a [`Store`] speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file (one server node).
    Sqlite,
    /// A PostgreSQL server (one or many server nodes).
    Postgres,
}

impl Backend {
    /// The name used in logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A key under which every write transaction on PostgreSQL takes a transaction-level
/// advisory lock, so writes are serialized exactly as SQLite's `BEGIN IMMEDIATE`
/// serializes them (the audit chain and the read-then-write checks rely on it).
const WRITE_LOCK_KEY: i64 = 0x7265_646f_7562_7401;

/// The store: a pool of connections to the database (SQLite or PostgreSQL).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens the database that `database` names: a `postgres://` (or `postgresql://`)
    /// URL, or else the path of the SQLite file (created if missing); migrates it.
    pub async fn open(database: &str) -> Result<Store> {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            Store::open_postgres(database).await
        } else {
            Store::open_sqlite(Path::new(database)).await
        }
    }

    /// Opens (creating if missing) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let name = path.to_str().ok_or_else(|| {
            StoreError::Conflict(format!("the database path {} is not UTF-8", path.display()))
        })?;
        // Percent-encoded, so that `?` or `#` in a path are not read as URL syntax.
        let mut encoded = String::with_capacity(name.len());
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                encoded.push(char::from(b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let url = format!("sqlite://{encoded}?mode=rwc");
        let pool = AnyPoolOptions::new()
            .max_connections(SQLITE_POOL)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL with synchronous=FULL: what the server acknowledged survives a
                    // crash; foreign keys enforced; a writer waits up to 10 s for the lock.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Store::migrate(pool, Backend::Sqlite, SQLITE_MIGRATIONS).await
    }

    /// Connects to the PostgreSQL database at `url` and migrates it (several server
    /// nodes may do this at once: the migrator takes PostgreSQL's advisory lock).
    pub async fn open_postgres(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(POSTGRES_POOL)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Store::migrate(pool, Backend::Postgres, POSTGRES_MIGRATIONS).await
    }

    async fn migrate(
        pool: AnyPool,
        backend: Backend,
        history: &[(i64, &'static str, &'static str)],
    ) -> Result<Store> {
        let migrator = Migrator::with_migrations(
            history
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        (*d).into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        );
        migrator.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// Which engine this store speaks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many database connections this store may hold at once.
    pub fn max_connections(&self) -> usize {
        match self.backend {
            Backend::Sqlite => SQLITE_POOL as usize,
            Backend::Postgres => POSTGRES_POOL as usize,
        }
    }

    /// Begins a write transaction that holds the write lock from its first statement,
    /// so a read-then-write transaction never acts on a snapshot another writer made
    /// stale: SQLite's `BEGIN IMMEDIATE`; on PostgreSQL a transaction-level advisory
    /// lock that every writer takes (released at commit or rollback).
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Begins a read transaction that sees one snapshot for all its statements.
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin().await?),
            Backend::Postgres => Ok(self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?),
        }
    }

    /// A subquery that yields the strings of the JSON array bound at `param` (one row
    /// each): `json_each` on SQLite, `json_array_elements_text` on PostgreSQL.
    pub(crate) fn json_text_elements(&self, param: &str) -> String {
        json_text_elements(self.backend, param)
    }

    /// Closes every connection (checkpointing SQLite's WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A subquery of the text elements of the JSON array in `param`, one row each in a
/// column `value`: the one place the two dialects differ.
fn json_text_elements(backend: Backend, param: &str) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each({param})"),
        Backend::Postgres => {
            format!("SELECT json_array_elements_text(CAST({param} AS json)) AS value")
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| corrupt(what, e))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
