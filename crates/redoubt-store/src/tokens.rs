//! Admin credentials and enrollment tokens; both stored only as SHA-256 hashes. Admin
//! credentials expire and can be revoked; a credential is looked up with the time, so
//! an expired or revoked one opens nothing from that moment on.

use redoubt_proto::api::{CredentialId, Role};
use redoubt_proto::{DeviceGroupName, ModeName, Timestamp, UserName};
use sqlx::Row;

use crate::{Result, Store, StoreError, parse};

/// An admin credential as stored.
#[derive(Debug, Clone)]
pub struct AdminRecord {
    /// Its public id.
    pub id: CredentialId,
    /// The credential's name (who holds it).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// The columns a record is read from.
macro_rules! admin_columns {
    () => {
        "token_hash, name, role, created_at, expires_at, revoked_at, revoked_by"
    };
}

fn admin_record(r: &sqlx::any::AnyRow) -> Result<AdminRecord> {
    let hash: Vec<u8> = r.try_get("token_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| crate::corrupt("admin token hash", "not 32 bytes"))?;
    Ok(AdminRecord {
        id: CredentialId::from_hash(&hash),
        name: r.try_get("name")?,
        role: parse("admin role", r.try_get::<&str, _>("role")?)?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
        revoked_by: r.try_get("revoked_by")?,
    })
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
    #[allow(clippy::too_many_arguments)] // each is a distinct column or the audit pair
    pub async fn create_admin_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &[u8; 32],
        now: Timestamp,
        expires_at: Timestamp,
        audit: &[crate::AuditDraft],
        sign: crate::HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO admin_tokens (name, role, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(&token_hash[..])
        .bind(now.unix())
        .bind(expires_at.unix())
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The credential whose token hashes to `token_hash`, if it is live at `now`
    /// (neither revoked nor expired).
    pub async fn admin_by_token_hash(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            admin_columns!(),
            " FROM admin_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2"
        ))
        .bind(&token_hash[..])
        .bind(now.unix())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(admin_record).transpose()
    }

    /// Number of admin credentials live at `now`.
    pub async fn count_admin_tokens(&self, now: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM admin_tokens WHERE revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now.unix())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Every admin credential ever made, oldest first (revoked and expired ones too).
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            admin_columns!(),
            " FROM admin_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(admin_record).collect()
    }

    /// Revokes the admin credential `id` (by `by`) and appends the audit entries
    /// `audit` makes from it, in one transaction. Not found: no such credential;
    /// conflict: it was revoked already.
    pub async fn revoke_admin_token(
        &self,
        id: &CredentialId,
        by: &str,
        now: Timestamp,
        audit: impl FnOnce(&AdminRecord) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<AdminRecord> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            admin_columns!(),
            " FROM admin_tokens WHERE substr(token_hash, 1, 8) = $1"
        ))
        .bind(id.hash_prefix())
        .fetch_all(&mut *tx)
        .await?;
        let mut rec = match rows.as_slice() {
            [one] => admin_record(one)?,
            [] => return Err(StoreError::NotFound(format!("admin credential {id}"))),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "more than one admin credential has the id {id}"
                )));
            }
        };
        if rec.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "admin credential {id} is revoked already"
            )));
        }
        sqlx::query(
            "UPDATE admin_tokens SET revoked_at = $1, revoked_by = $2
             WHERE substr(token_hash, 1, 8) = $3",
        )
        .bind(now.unix())
        .bind(by)
        .bind(id.hash_prefix())
        .execute(&mut *tx)
        .await?;
        rec.revoked_at = Some(now);
        rec.revoked_by = Some(by.to_owned());
        crate::audit::append(&mut tx, &audit(&rec), now, sign).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Stores a new single-use enrollment token (the mode must exist) and appends
    /// `audit` to the audit log, in one transaction (`sign` signs the log's new head).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_enrollment_token(
        &self,
        token_hash: &[u8; 32],
        user: &UserName,
        mode: &ModeName,
        groups: &[DeviceGroupName],
        created_by: &str,
        now: Timestamp,
        expires_at: Timestamp,
        audit: &[crate::AuditDraft],
        sign: crate::HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modes WHERE name = $1")
            .bind(mode.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("mode {mode}")));
        }
        // Each group must exist (its mode is read at enrollment).
        crate::groups::modes_of_groups(&mut tx, groups).await?;
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_hash, user_name, mode, created_by, created_at, expires_at, groups)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token_hash[..])
        .bind(user.as_str())
        .bind(mode.as_str())
        .bind(created_by)
        .bind(now.unix())
        .bind(expires_at.unix())
        .bind(crate::to_json(&groups))
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }
}
