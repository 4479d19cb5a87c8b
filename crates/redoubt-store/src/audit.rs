//! The tamper-evident audit log: an append-only hash chain whose newest head the
//! organization key signs in the same transaction as the append.
//!
//! STUB: the interface is fixed; the bodies are being written.

use redoubt_proto::{AuditEntry, AuditHead, DeviceId, SignedEnvelope, Timestamp};
use sqlx::SqliteConnection;

use crate::{Result, Store};

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

/// Appends `drafts` in order inside the caller's write transaction and re-signs the head.
pub(crate) async fn append(
    _conn: &mut SqliteConnection,
    _drafts: &[AuditDraft],
    _at: Timestamp,
    _sign: HeadSigner<'_>,
) -> Result<()> {
    Ok(())
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
    pub async fn audit_list(&self, _filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        Ok(Vec::new())
    }

    /// The signed head, if the log has any entry.
    pub async fn audit_head(&self) -> Result<Option<SignedEnvelope>> {
        Ok(None)
    }
}
