//! The messenger's local database (`messenger.db` in the messenger directory): the MLS
//! state rows, conversations, messages, receipts, the processed-item log, the outbox
//! and buffered future-epoch items. The only module of the messenger that speaks SQL.
//!
//! Every change goes through a [`Tx`] (`BEGIN IMMEDIATE`, so processes sharing the state
//! dir take turns). [`Db::begin`] reloads the in-memory MLS state when another process
//! committed since this one last looked (a `generation` counter); [`Tx::commit`] writes
//! the MLS changes with the application rows. A `Tx` dropped without commit rolls back
//! and marks the in-memory state stale, so the next transaction reloads it.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr, Sqlite, Transaction};

use crate::mls_store::MlsState;

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "messenger",
    include_str!("../migrations/0001_messenger.sql"),
)];

/// Database errors.
pub type DbError = sqlx::Error;

/// The local database and the in-memory MLS state it backs.
#[derive(Debug)]
pub struct Db {
    pool: SqlitePool,
    /// The MLS state; only changed inside a [`Tx`].
    pub state: MlsState,
    loaded_generation: AtomicI64,
}

/// A write transaction.
pub struct Tx<'a> {
    db: &'a Db,
    tx: Option<Transaction<'static, Sqlite>>,
}

impl Db {
    /// Opens (creating) the database at `path` and loads the MLS state.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
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
        migrator.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
        let db = Db {
            pool,
            state: MlsState::default(),
            loaded_generation: AtomicI64::new(-1),
        };
        Ok(db)
    }

    /// Begins a write transaction, reloading the MLS state if it is stale.
    pub async fn begin(&self) -> Result<Tx<'_>, DbError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let generation: i64 =
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'generation'")
                .fetch_one(&mut *tx)
                .await?;
        if generation != self.loaded_generation.load(Ordering::SeqCst) || self.state.has_changes() {
            let rows = sqlx::query("SELECT key, value FROM mls_state")
                .fetch_all(&mut *tx)
                .await?;
            let mut pairs = Vec::with_capacity(rows.len());
            for r in rows {
                pairs.push((
                    r.try_get::<Vec<u8>, _>("key")?,
                    r.try_get::<Vec<u8>, _>("value")?,
                ));
            }
            self.state.reset(pairs);
            self.loaded_generation.store(generation, Ordering::SeqCst);
        }
        Ok(Tx {
            db: self,
            tx: Some(tx),
        })
    }

    /// A read-only query connection (no MLS state involved).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl Tx<'_> {
    /// The connection, for application rows.
    pub fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        self.tx
            .as_mut()
            .expect("a Tx holds its transaction until commit consumes it")
    }

    /// The MLS state this transaction changes.
    pub fn state(&self) -> &MlsState {
        &self.db.state
    }

    /// Writes the MLS changes made during this transaction with everything else, and
    /// commits.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let db = self.db;
        let Some(mut tx) = self.tx.take() else {
            return Err(sqlx::Error::Protocol("transaction already finished".into()));
        };
        let changes = db.state.take_changes();
        let result = async move {
            for (key, value) in &changes {
                match value {
                    Some(v) => {
                        sqlx::query(
                            "INSERT INTO mls_state (key, value) VALUES (?, ?)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        )
                        .bind(key)
                        .bind(v)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM mls_state WHERE key = ?")
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            let generation: i64 = sqlx::query_scalar(
                "UPDATE counters SET value = value + 1 WHERE name = 'generation' RETURNING value",
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<i64, DbError>(generation)
        }
        .await;
        match result {
            Ok(generation) => {
                db.loaded_generation.store(generation, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                db.loaded_generation.store(-1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() && self.db.state.has_changes() {
            // The SQLite transaction rolls back when dropped; the in-memory state may
            // hold changes of the failed operation, so force a reload.
            self.db.loaded_generation.store(-1, Ordering::SeqCst);
            let _ = self.db.state.take_changes();
        }
    }
}
