//! Admin credentials and enrollment tokens; both stored only as SHA-256 hashes.

use redoubt_proto::api::Role;
use redoubt_proto::{ModeName, Timestamp, UserName};
use sqlx::Row;

use crate::{Result, Store, StoreError, parse};

/// An admin credential as stored.
#[derive(Debug, Clone)]
pub struct AdminRecord {
    /// The credential's name (who holds it).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefusal {
    /// No such token.
    Invalid,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
}

impl Store {
    /// Stores a new admin credential and appends `audit` to the audit log, in one
    /// transaction (`sign` signs the log's new head).
    pub async fn create_admin_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &[u8; 32],
        now: Timestamp,
        audit: &[crate::AuditDraft],
        sign: crate::HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO admin_tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(&token_hash[..])
        .bind(now.unix())
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live credential whose token hashes to `token_hash`.
    pub async fn admin_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(
            "SELECT name, role FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(AdminRecord {
                name: r.try_get("name")?,
                role: parse("admin role", r.try_get::<&str, _>("role")?)?,
            })
        })
        .transpose()
    }

    /// Number of live admin credentials.
    pub async fn count_admin_tokens(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM admin_tokens WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }

    /// Stores a new single-use enrollment token (the mode must exist) and appends
    /// `audit` to the audit log, in one transaction (`sign` signs the log's new head).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_enrollment_token(
        &self,
        token_hash: &[u8; 32],
        user: &UserName,
        mode: &ModeName,
        created_by: &str,
        now: Timestamp,
        expires_at: Timestamp,
        audit: &[crate::AuditDraft],
        sign: crate::HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modes WHERE name = ?")
            .bind(mode.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("mode {mode}")));
        }
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_hash, user_name, mode, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&token_hash[..])
        .bind(user.as_str())
        .bind(mode.as_str())
        .bind(created_by)
        .bind(now.unix())
        .bind(expires_at.unix())
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }
}
