//! Admin credentials and enrollment tokens; both stored only as SHA-256 hashes. Admin
//! credentials expire and can be revoked; a credential is looked up with the time, so
//! an expired or revoked one opens nothing from that moment on.

use redoubt_proto::api::{CredentialId, EnrollmentState, Role};
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

    /// Revokes the open enrollment code `id` (it expires now) and appends the audit
    /// entries `audit` makes from it, in one transaction. Not found: no such code;
    /// conflict: it was used or had expired already.
    pub async fn revoke_enrollment(
        &self,
        id: &CredentialId,
        now: Timestamp,
        audit: impl FnOnce(&EnrollmentRecord) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<EnrollmentRecord> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "SELECT token_hash, user_name, mode, groups, created_by, created_at, expires_at,
                    used_at, device_id
             FROM enrollment_tokens WHERE substr(token_hash, 1, 8) = $1",
        )
        .bind(id.hash_prefix())
        .fetch_all(&mut *tx)
        .await?;
        let mut rec = match rows.as_slice() {
            [one] => enrollment_record(one)?,
            [] => return Err(StoreError::NotFound(format!("enrollment code {id}"))),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "more than one enrollment code has the id {id}"
                )));
            }
        };
        if rec.state(now) != EnrollmentState::Open {
            return Err(StoreError::Conflict(format!(
                "enrollment code {id} is {} already",
                rec.state(now)
            )));
        }
        sqlx::query(
            "UPDATE enrollment_tokens SET expires_at = $1 WHERE substr(token_hash, 1, 8) = $2",
        )
        .bind(now.unix())
        .bind(id.hash_prefix())
        .execute(&mut *tx)
        .await?;
        rec.expires_at = now;
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

/// An enrollment code as stored (never the code itself: only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRecord {
    /// Its public id (the first bytes of the code's hash).
    pub id: CredentialId,
    /// The person the phone is for.
    pub user: UserName,
    /// The phone's initial mode.
    pub mode: ModeName,
    /// The groups the phone joins.
    pub groups: Vec<DeviceGroupName>,
    /// Who created it (`admin:NAME`).
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When a phone used it.
    pub used_at: Option<Timestamp>,
    /// The phone that used it.
    pub device_id: Option<redoubt_proto::DeviceId>,
}

impl EnrollmentRecord {
    /// Where the code is in its life at `now`.
    pub fn state(&self, now: Timestamp) -> EnrollmentState {
        if self.used_at.is_some() {
            EnrollmentState::Used
        } else if self.expires_at <= now {
            EnrollmentState::Expired
        } else {
            EnrollmentState::Open
        }
    }
}

/// Which enrollment codes a list covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentFilter {
    /// Only in this state (judged at the list's `now`).
    pub state: Option<EnrollmentState>,
    /// Only for this person.
    pub user: Option<UserName>,
    /// Only those this admin created (`admin:NAME`).
    pub created_by: Option<String>,
}

impl Store {
    /// One page of the enrollment codes `filter` covers, oldest first, after the row
    /// `after`; with the row to continue after when more follow.
    pub async fn list_enrollments_page(
        &self,
        filter: &EnrollmentFilter,
        now: Timestamp,
        after: Option<&crate::RowCursor>,
        limit: u32,
    ) -> Result<(Vec<EnrollmentRecord>, Option<crate::RowCursor>)> {
        // The state is a condition on two columns and the time; each state spelled out
        // so that `open` can read the partial index of unused codes.
        let state = match filter.state {
            None => "",
            Some(EnrollmentState::Open) => "AND used_at IS NULL AND expires_at > $5",
            Some(EnrollmentState::Expired) => "AND used_at IS NULL AND expires_at <= $5",
            Some(EnrollmentState::Used) => "AND used_at IS NOT NULL",
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT rowid AS list_row, token_hash, user_name, mode, groups, created_by,
                    created_at, expires_at, used_at, device_id
             FROM enrollment_tokens
             WHERE ($1 IS NULL OR user_name = $1) AND ($2 IS NULL OR created_by = $2)
               AND rowid > $3 {state}
             ORDER BY rowid LIMIT $4"
        )))
        .bind(filter.user.as_ref().map(UserName::as_str))
        .bind(filter.created_by.as_deref())
        .bind(after.map_or(0, |c| c.row))
        .bind(i64::from(limit) + 1);
        let query = match filter.state {
            Some(EnrollmentState::Open | EnrollmentState::Expired) => query.bind(now.unix()),
            _ => query,
        };
        let rows = query.fetch_all(&self.pool).await?;
        let more = rows.len() > limit as usize;
        let mut out = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = None;
        for r in rows.iter().take(limit as usize) {
            out.push(enrollment_record(r)?);
            last = Some(r.try_get::<i64, _>("list_row")?);
        }
        Ok((
            out,
            last.filter(|_| more).map(|row| crate::RowCursor { row }),
        ))
    }
}

fn enrollment_record(r: &sqlx::any::AnyRow) -> Result<EnrollmentRecord> {
    let hash: Vec<u8> = r.try_get("token_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| crate::corrupt("enrollment token hash", "not 32 bytes"))?;
    Ok(EnrollmentRecord {
        id: CredentialId::from_hash(&hash),
        user: parse("enrollment user", r.try_get::<&str, _>("user_name")?)?,
        mode: parse("enrollment mode", r.try_get::<&str, _>("mode")?)?,
        groups: crate::from_json("enrollment groups", r.try_get("groups")?)?,
        created_by: r.try_get("created_by")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        used_at: r.try_get::<Option<i64>, _>("used_at")?.map(Timestamp),
        device_id: r
            .try_get::<Option<&str>, _>("device_id")?
            .map(|d| parse("enrollment device", d))
            .transpose()?,
    })
}
