//! The officers' web console: accounts (password hash, sealed TOTP secret, recovery
//! codes by hash), sign-in sessions by the hash of their secret, failed attempts with
//! the lock they lead to, and the fleet's compliance sampled over time for the
//! dashboard. The store decides nothing about passwords or codes: the server verifies
//! them and hands over what to write, and every sign-in, failure and sign-out is
//! appended to the audit log in the transaction that records it.

use redoubt_proto::Timestamp;
use redoubt_proto::api::Role;
use sqlx::Row;

use crate::{AuditDraft, HeadSigner, Result, Store, StoreError, parse};

/// A console account as stored.
#[derive(Clone)]
pub struct ConsoleAccount {
    /// Its number.
    pub id: i64,
    /// The name it signs in with.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The PHC string of its password (argon2id).
    pub password_hash: String,
    /// Its TOTP secret, sealed by the server.
    pub totp_sealed: Vec<u8>,
    /// The newest TOTP time step accepted.
    pub totp_last_step: i64,
    /// The language it chose (`en`, `ru`), if any.
    pub language: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// Who made it.
    pub created_by: String,
    /// When it was disabled.
    pub disabled_at: Option<Timestamp>,
    /// Failed sign-ins since the last good one.
    pub failed_attempts: u32,
    /// No sign-in before this time.
    pub locked_until: Timestamp,
    /// The last good sign-in.
    pub last_sign_in_at: Option<Timestamp>,
}

impl std::fmt::Debug for ConsoleAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleAccount")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password_hash", &"<redacted>")
            .field("totp_sealed", &"<redacted>")
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// A new console account.
pub struct NewConsoleAccount<'a> {
    /// The name it signs in with.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// The PHC string of its password.
    pub password_hash: &'a str,
    /// Its sealed TOTP secret.
    pub totp_sealed: &'a [u8],
    /// SHA-256 of each recovery code.
    pub recovery_hashes: &'a [[u8; 32]],
    /// Who makes it.
    pub created_by: &'a str,
}

/// A console session as stored, with its account.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    /// When it began.
    pub created_at: Timestamp,
    /// The last request seen (idle expiry counts from it; written at most once a minute).
    pub last_seen_at: Timestamp,
    /// Its absolute expiry.
    pub expires_at: Timestamp,
    /// The account.
    pub account: ConsoleAccount,
}

/// How a sign-in proved the second factor.
#[derive(Debug, Clone, Copy)]
pub enum SecondFactor {
    /// A TOTP code of this time step (accepted only if newer than the last one).
    Totp(i64),
    /// A recovery code with this SHA-256 (accepted once).
    Recovery([u8; 32]),
}

/// A sign-in session to store.
pub struct NewConsoleSession<'a> {
    /// SHA-256 of the cookie's secret.
    pub token_hash: &'a [u8; 32],
    /// Its absolute expiry.
    pub expires_at: Timestamp,
    /// The client's address.
    pub source: &'a str,
}

/// One sample of the fleet's compliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComplianceSample {
    /// When it was taken.
    pub at: Timestamp,
    /// Devices compliant then.
    pub compliant: u64,
    /// Devices not compliant then.
    pub non_compliant: u64,
    /// Devices whose last report was too old then.
    pub stale: u64,
    /// Devices that had not reported yet.
    pub pending: u64,
}

macro_rules! account_columns {
    () => {
        "a.id, a.name, a.role, a.password_hash, a.totp_sealed, a.totp_last_step, a.language, \
         a.created_at, a.created_by, a.disabled_at, a.failed_attempts, a.locked_until, \
         a.last_sign_in_at"
    };
}

fn account(r: &sqlx::any::AnyRow) -> Result<ConsoleAccount> {
    Ok(ConsoleAccount {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: parse("console role", r.try_get::<&str, _>("role")?)?,
        password_hash: r.try_get("password_hash")?,
        totp_sealed: r.try_get("totp_sealed")?,
        totp_last_step: r.try_get("totp_last_step")?,
        language: r.try_get("language")?,
        created_at: Timestamp(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
        disabled_at: r.try_get::<Option<i64>, _>("disabled_at")?.map(Timestamp),
        failed_attempts: r
            .try_get::<i64, _>("failed_attempts")?
            .clamp(0, u32::MAX as i64) as u32,
        locked_until: Timestamp(r.try_get("locked_until")?),
        last_sign_in_at: r
            .try_get::<Option<i64>, _>("last_sign_in_at")?
            .map(Timestamp),
    })
}

/// Ends every live session of account `id`.
async fn end_sessions(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: i64,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "UPDATE console_sessions SET ended_at = $1 WHERE account_id = $2 AND ended_at IS NULL",
    )
    .bind(now.unix())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new console account with its recovery codes and appends `audit`, in one
    /// transaction. Conflict: the name is taken.
    pub async fn create_console_account(
        &self,
        new: &NewConsoleAccount<'_>,
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT id FROM console_accounts WHERE name = $1")
                .bind(new.name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "a console account named {} exists already",
                new.name
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO console_accounts (name, role, password_hash, totp_sealed, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(new.name)
        .bind(new.role.as_str())
        .bind(new.password_hash)
        .bind(new.totp_sealed)
        .bind(now.unix())
        .bind(new.created_by)
        .fetch_one(&mut *tx)
        .await?;
        for h in new.recovery_hashes {
            sqlx::query(
                "INSERT INTO console_recovery_codes (account_id, code_hash) VALUES ($1, $2)",
            )
            .bind(id)
            .bind(&h[..])
            .execute(&mut *tx)
            .await?;
        }
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The account named `name`, disabled or not.
    pub async fn console_account_by_name(&self, name: &str) -> Result<Option<ConsoleAccount>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM console_accounts a WHERE a.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account).transpose()
    }

    /// The account numbered `id`.
    pub async fn console_account(&self, id: i64) -> Result<Option<ConsoleAccount>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM console_accounts a WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account).transpose()
    }

    /// Every console account, by name.
    pub async fn list_console_accounts(&self) -> Result<Vec<ConsoleAccount>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_columns!(),
            " FROM console_accounts a ORDER BY a.name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(account).collect()
    }

    /// Counts a failed sign-in of account `id` (none for an unknown name) and appends
    /// `audit`, in one transaction. `lock_for(failures)` gives the seconds the account is
    /// then locked for (0: not locked). Returns the failures and the lock's end.
    pub async fn console_sign_in_failed(
        &self,
        id: Option<i64>,
        now: Timestamp,
        lock_for: &(dyn Fn(u32) -> u64 + Send + Sync),
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<(u32, Timestamp)> {
        let mut tx = self.write_tx().await?;
        let mut outcome = (0, Timestamp(0));
        if let Some(id) = id {
            let failures: i64 = sqlx::query_scalar(
                "UPDATE console_accounts SET failed_attempts = failed_attempts + 1
                 WHERE id = $1 RETURNING failed_attempts",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let failures = failures.clamp(0, u32::MAX as i64) as u32;
            let secs = lock_for(failures);
            if secs > 0 {
                let until = Timestamp(now.unix().saturating_add(secs as i64));
                sqlx::query("UPDATE console_accounts SET locked_until = $1 WHERE id = $2")
                    .bind(until.unix())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                outcome = (failures, until);
            } else {
                outcome = (failures, Timestamp(0));
            }
        }
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Records a good sign-in of account `id`: spends its second factor (a TOTP step
    /// newer than the last one accepted, or an unused recovery code — otherwise
    /// `Conflict`, and nothing is written), clears its failures, stores the session and
    /// appends `audit`, in one transaction.
    pub async fn console_sign_in(
        &self,
        id: i64,
        factor: SecondFactor,
        session: &NewConsoleSession<'_>,
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let spent = match factor {
            SecondFactor::Totp(step) => sqlx::query(
                "UPDATE console_accounts SET totp_last_step = $1
                 WHERE id = $2 AND totp_last_step < $1",
            )
            .bind(step)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            SecondFactor::Recovery(hash) => sqlx::query(
                "UPDATE console_recovery_codes SET used_at = $1
                 WHERE account_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(now.unix())
            .bind(id)
            .bind(&hash[..])
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if spent != 1 {
            return Err(StoreError::Conflict(
                "this code was used already".to_owned(),
            ));
        }
        sqlx::query(
            "UPDATE console_accounts SET failed_attempts = 0, locked_until = 0, last_sign_in_at = $1
             WHERE id = $2",
        )
        .bind(now.unix())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, account_id, created_at, last_seen_at, expires_at, source)
             VALUES ($1, $2, $3, $3, $4, $5)",
        )
        .bind(&session.token_hash[..])
        .bind(id)
        .bind(now.unix())
        .bind(session.expires_at.unix())
        .bind(session.source)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session whose secret hashes to `token_hash`: not ended, before its
    /// absolute expiry, seen within `idle_secs`, of an account that is not disabled.
    pub async fn console_session(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
        idle_secs: u64,
    ) -> Result<Option<ConsoleSession>> {
        let row = sqlx::query(concat!(
            "SELECT s.created_at AS s_created, s.last_seen_at, s.expires_at, ",
            account_columns!(),
            " FROM console_sessions s JOIN console_accounts a ON a.id = s.account_id
             WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2
               AND s.last_seen_at > $3 AND a.disabled_at IS NULL"
        ))
        .bind(&token_hash[..])
        .bind(now.unix())
        .bind(now.unix().saturating_sub(idle_secs as i64))
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(ConsoleSession {
            created_at: Timestamp(r.try_get("s_created")?),
            last_seen_at: Timestamp(r.try_get("last_seen_at")?),
            expires_at: Timestamp(r.try_get("expires_at")?),
            account: account(&r)?,
        }))
    }

    /// Notes that the session was used at `now` (idle expiry counts from it).
    pub async fn touch_console_session(&self, token_hash: &[u8; 32], now: Timestamp) -> Result<()> {
        sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE token_hash = $2")
            .bind(now.unix())
            .bind(&token_hash[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends the session (sign-out) and appends `audit`, in one transaction. Returns
    /// whether a live session was ended.
    pub async fn end_console_session(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE console_sessions SET ended_at = $1 WHERE token_hash = $2 AND ended_at IS NULL",
        )
        .bind(now.unix())
        .bind(&token_hash[..])
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            crate::audit::append(&mut tx, audit, now, sign).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Sets the language account `id` reads the console in.
    pub async fn set_console_language(&self, id: i64, language: &str) -> Result<()> {
        sqlx::query("UPDATE console_accounts SET language = $1 WHERE id = $2")
            .bind(language)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Disables account `id` (by `by`), ends its sessions and appends `audit`, in one
    /// transaction. Not found: no such account; conflict: disabled already.
    pub async fn disable_console_account(
        &self,
        id: i64,
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE console_accounts SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL",
        )
        .bind(now.unix())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT id FROM console_accounts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match exists {
                None => StoreError::NotFound(format!("console account {id}")),
                Some(_) => {
                    StoreError::Conflict(format!("console account {id} is disabled already"))
                }
            });
        }
        end_sessions(&mut tx, id, now).await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives account `id` a new password, TOTP secret and recovery codes (the old ones
    /// stop working), ends its sessions and appends `audit`, in one transaction. Not
    /// found: no such account.
    #[allow(clippy::too_many_arguments)] // each is a distinct column or the audit pair
    pub async fn reset_console_account(
        &self,
        id: i64,
        password_hash: &str,
        totp_sealed: &[u8],
        recovery_hashes: &[[u8; 32]],
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE console_accounts SET password_hash = $1, totp_sealed = $2, failed_attempts = 0,
                    locked_until = 0
             WHERE id = $3",
        )
        .bind(password_hash)
        .bind(totp_sealed)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::NotFound(format!("console account {id}")));
        }
        sqlx::query("DELETE FROM console_recovery_codes WHERE account_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for h in recovery_hashes {
            sqlx::query(
                "INSERT INTO console_recovery_codes (account_id, code_hash) VALUES ($1, $2)",
            )
            .bind(id)
            .bind(&h[..])
            .execute(&mut *tx)
            .await?;
        }
        end_sessions(&mut tx, id, now).await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets account `id`'s password, ends its other sessions (all but the one whose
    /// secret hashes to `keep`) and appends `audit`, in one transaction.
    pub async fn set_console_password(
        &self,
        id: i64,
        password_hash: &str,
        keep: &[u8; 32],
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE console_accounts SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE console_sessions SET ended_at = $1
             WHERE account_id = $2 AND ended_at IS NULL AND token_hash <> $3",
        )
        .bind(now.unix())
        .bind(id)
        .bind(&keep[..])
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many unused recovery codes account `id` has left.
    pub async fn console_recovery_left(&self, id: i64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM console_recovery_codes WHERE account_id = $1 AND used_at IS NULL",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Stores a sample of the fleet's compliance (a second sample at the same time
    /// replaces the first) and drops samples older than `keep_since`.
    pub async fn record_compliance_sample(
        &self,
        s: &ComplianceSample,
        keep_since: Timestamp,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO compliance_samples (at, compliant, non_compliant, stale, pending)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (at) DO UPDATE SET compliant = excluded.compliant,
               non_compliant = excluded.non_compliant, stale = excluded.stale,
               pending = excluded.pending",
        )
        .bind(s.at.unix())
        .bind(s.compliant as i64)
        .bind(s.non_compliant as i64)
        .bind(s.stale as i64)
        .bind(s.pending as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM compliance_samples WHERE at < $1")
            .bind(keep_since.unix())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The samples taken at or after `since`, oldest first.
    pub async fn compliance_samples(&self, since: Timestamp) -> Result<Vec<ComplianceSample>> {
        let rows = sqlx::query(
            "SELECT at, compliant, non_compliant, stale, pending FROM compliance_samples
             WHERE at >= $1 ORDER BY at",
        )
        .bind(since.unix())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
                Ok(ComplianceSample {
                    at: Timestamp(r.try_get("at")?),
                    compliant: n("compliant")?,
                    non_compliant: n("non_compliant")?,
                    stale: n("stale")?,
                    pending: n("pending")?,
                })
            })
            .collect()
    }
}
