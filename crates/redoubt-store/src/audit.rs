//! The tamper-evident audit log: an append-only hash chain whose newest head the
//! organization key signs in the same transaction as the append.
//!
//! Appends run inside a write transaction (`BEGIN IMMEDIATE`), so they are serialized
//! and the chain has no gaps. The head is one row, overwritten at each append; a new
//! entry chains to the *signed* head, so entries deleted at the end of the log stay
//! visible as a gap after the next append, and the store refuses to sign over
//! entries that lie beyond the signed head (someone added them without the key).

use redoubt_policy::{GENESIS, entry_hash};
use redoubt_proto::{AuditEntry, AuditHead, DeviceId, SignedEnvelope, Timestamp};
use sqlx::{AnyConnection, Row};

use crate::{Result, Store, StoreError, corrupt, from_json, to_json};

/// An entry to append: who, from where, what, about which device.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// `admin:NAME`, `device:ID` or `server`.
    pub actor: String,
    /// The client's address, or empty.
    pub source: String,
    /// What happened, e.g. `device.lock`.
    pub action: String,
    /// The device concerned.
    pub device_id: Option<DeviceId>,
    /// Details (a JSON object; never secrets or message text).
    pub detail: serde_json::Value,
}

/// Signs a new head of the log with the organization key.
pub type HeadSigner<'a> = &'a (dyn Fn(&AuditHead) -> SignedEnvelope + Send + Sync);

/// Which entries `audit_list` returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries about this device.
    pub device: Option<DeviceId>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries with a sequence number above this.
    pub after_seq: Option<u64>,
    /// At most this many (oldest first).
    pub limit: Option<u64>,
}

const ENTRY_COLUMNS: &str = "seq, at, actor, source, action, device_id, detail, prev_hash, hash";

fn entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    let seq = r.try_get::<i64, _>("seq")? as u64;
    let what = |field: &str| format!("audit entry #{seq} {field}");
    Ok(AuditEntry {
        seq,
        at: Timestamp(r.try_get("at")?),
        actor: r.try_get("actor")?,
        source: r.try_get("source")?,
        action: r.try_get("action")?,
        device_id: r
            .try_get::<Option<&str>, _>("device_id")?
            .map(|s| s.parse().map_err(|e| corrupt(&what("device id"), e)))
            .transpose()?,
        detail: from_json(&what("detail"), r.try_get("detail")?)?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// The `(seq, hash)` the next entry chains to: the signed head's.
async fn chain_tip(conn: &mut AnyConnection) -> Result<(u64, String)> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, hash) = match head {
        None => (0, GENESIS.to_owned()),
        Some(r) => (r.try_get::<i64, _>("seq")? as u64, r.try_get("hash")?),
    };
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_log")
        .fetch_one(&mut *conn)
        .await?;
    let newest = newest.unwrap_or(0) as u64;
    if newest > seq {
        return Err(StoreError::Corrupt(format!(
            "the audit log holds entry #{newest} but its signed head ends at #{seq}; \
             refusing to sign over entries added without the organization key \
             (run `redoubt audit verify`)"
        )));
    }
    Ok((seq, hash))
}

/// Appends `drafts` in order inside the caller's write transaction and re-signs the head.
///
/// Each entry gets the next sequence number and a hash chained to the previous one;
/// then `sign` signs the new head, which replaces the stored one. Nothing is written
/// (and nothing signed) when `drafts` is empty.
pub(crate) async fn append(
    conn: &mut AnyConnection,
    drafts: &[AuditDraft],
    at: Timestamp,
    sign: HeadSigner<'_>,
) -> Result<()> {
    if drafts.is_empty() {
        return Ok(());
    }
    let (mut seq, mut hash) = chain_tip(conn).await?;
    for d in drafts {
        seq += 1;
        let next = entry_hash(
            &hash,
            seq,
            at,
            &d.actor,
            &d.source,
            &d.action,
            d.device_id.as_ref(),
            &d.detail,
        );
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, source, action, device_id, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq as i64)
        .bind(at.unix())
        .bind(&d.actor)
        .bind(&d.source)
        .bind(&d.action)
        .bind(d.device_id.as_ref().map(DeviceId::as_str))
        .bind(to_json(&d.detail))
        .bind(&hash)
        .bind(&next)
        .execute(&mut *conn)
        .await?;
        hash = next;
    }
    let envelope = sign(&AuditHead {
        seq,
        hash: hash.clone(),
        signed_at: at,
    });
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash, envelope) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, envelope = excluded.envelope",
    )
    .bind(seq as i64)
    .bind(&hash)
    .bind(to_json(&envelope))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn head(conn: &mut AnyConnection) -> Result<Option<SignedEnvelope>> {
    let envelope: Option<String> =
        sqlx::query_scalar("SELECT envelope FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    envelope.map(|e| from_json("audit head", &e)).transpose()
}

impl Store {
    /// Appends `drafts` in one transaction of their own.
    pub async fn audit_append(
        &self,
        drafts: &[AuditDraft],
        at: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        append(&mut tx, drafts, at, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Entries matching `filter`, oldest first.
    pub async fn audit_list(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let device = filter.device.as_ref().map(DeviceId::as_str);
        let since = filter.since.map(Timestamp::unix);
        let limit = filter
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let after = filter
            .after_seq
            .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_log
             WHERE ($1 IS NULL OR device_id = $2) AND ($3 IS NULL OR at >= $4) AND seq > $5
             ORDER BY seq LIMIT $6"
        )))
        .bind(device)
        .bind(device)
        .bind(since)
        .bind(since)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry).collect()
    }

    /// The newest entries first, before entry `before_seq` (the page after the one that
    /// ended there), of one device, one actor and actions starting with a prefix where
    /// given; at most `limit`.
    pub async fn audit_recent(
        &self,
        device: Option<&DeviceId>,
        actor: Option<&str>,
        action_prefix: Option<&str>,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let device = device.map(DeviceId::as_str);
        let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let prefix = action_prefix.map(|p| {
            let escaped = p
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("{escaped}%")
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_log
             WHERE ($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR actor = $2)
               AND ($3 IS NULL OR action LIKE $3 ESCAPE '\\') AND seq < $4
             ORDER BY seq DESC LIMIT $5"
        )))
        .bind(device)
        .bind(actor)
        .bind(prefix)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry).collect()
    }

    /// The signed head, if the log has any entry.
    pub async fn audit_head(&self) -> Result<Option<SignedEnvelope>> {
        let mut conn = self.pool.acquire().await?;
        head(&mut conn).await
    }

    /// Every entry, oldest first, and the signed head, read from one snapshot of the
    /// database (an append in between cannot make them disagree).
    pub async fn audit_snapshot(&self) -> Result<(Vec<AuditEntry>, Option<SignedEnvelope>)> {
        let mut tx = self.read_tx().await?;
        let head = head(&mut tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let entries = rows.iter().map(entry).collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok((entries, head))
    }
}
