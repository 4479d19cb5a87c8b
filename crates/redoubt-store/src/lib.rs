//! The one `Store` API of Redoubt and the only crate that speaks SQL.
//!
//! The embedded backend is SQLite (one file in the data dir, WAL, `synchronous=FULL`
//! so that what the server acknowledged survives a crash). Operations that must be
//! atomic take a closure that runs inside the transaction, so callers never hold a
//! transaction themselves and never see SQL.

mod audit;
mod commands;
mod devices;
mod messaging;
mod modes;
mod tokens;
mod zones;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit::{AuditDraft, AuditFilter, HeadSigner};
pub use commands::{CommandRecord, NewCommand};
pub use devices::{
    APPROVED_AS_FIRST_DEVICE, BundleRequest, DeviceRecord, IssuedBundle, NewDevice, ReportOutcome,
};
pub use messaging::{
    AWAITING_APPROVAL, BlobRecord, ClaimedRecord, CommitBase, CommitInput, CommitOutcome,
    GroupRecord, HANDOUT_WINDOW_SECS, MessageOutcome, QueuedGroup,
};
pub use modes::ModeRecord;
pub use tokens::{AdminRecord, EnrollRefusal};
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

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "devices", include_str!("../migrations/0001_devices.sql")),
    (
        2,
        "messaging",
        include_str!("../migrations/0002_messaging.sql"),
    ),
    (3, "zones", include_str!("../migrations/0003_zones.sql")),
    (4, "audit", include_str!("../migrations/0004_audit.sql")),
    (
        5,
        "public_groups",
        include_str!("../migrations/0005_public_groups.sql"),
    ),
    (
        6,
        "credentials",
        include_str!("../migrations/0006_credentials.sql"),
    ),
    (
        7,
        "blob_owners",
        include_str!("../migrations/0007_blob_owners.sql"),
    ),
    (
        8,
        "device_approval",
        include_str!("../migrations/0008_device_approval.sql"),
    ),
];

/// The store: a pool of connections to the embedded database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        let migrator = Migrator::with_migrations(
            MIGRATIONS
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
        Ok(Store { pool })
    }

    /// Begins a write transaction that takes SQLite's write lock at once, so a
    /// read-then-write transaction never fails on a snapshot another writer made stale.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes every connection (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
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
