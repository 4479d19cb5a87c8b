//! What several server nodes sharing one database need of it: the organization the
//! database belongs to, the revocations a node may have missed, and the bytes of files
//! (PostgreSQL only: the one place every node reads).

use redoubt_proto::{DeviceId, Timestamp};

use crate::{Backend, Result, Store, StoreError, to_json};

impl Store {
    /// Claims the database for the organization whose CA has `ca_fingerprint` and whose
    /// bundles are signed by `signing_key` (public, encoded), or checks that it already
    /// belongs to it. Any other keys are refused: a second node started on a data
    /// directory of its own would sign bundles the phones refuse.
    pub async fn claim_organization(
        &self,
        ca_fingerprint: &str,
        signing_key: &str,
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let held: Option<(String, String)> =
            sqlx::query_as("SELECT ca_fingerprint, signing_key FROM organization WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        match held {
            None => {
                sqlx::query(
                    "INSERT INTO organization (id, ca_fingerprint, signing_key, claimed_at)
                     VALUES (1, $1, $2, $3)",
                )
                .bind(ca_fingerprint)
                .bind(signing_key)
                .bind(now.unix())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
            Some((ca, key)) if ca == ca_fingerprint && key == signing_key => Ok(()),
            Some((ca, _)) => Err(StoreError::Conflict(format!(
                "the database belongs to the organization whose CA is {ca}, not {ca_fingerprint}: \
                 every node needs the first node's ca.crt, ca.key and org-signing.key in its data \
                 directory"
            ))),
        }
    }

    /// Which of `devices` are revoked (or no longer exist).
    pub async fn revoked_among(&self, devices: &[DeviceId]) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for chunk in devices.chunks(1000) {
            let ids = to_json(&chunk.iter().map(DeviceId::as_str).collect::<Vec<_>>());
            let live: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM devices WHERE revoked_at IS NULL AND id IN ({})",
                self.json_text_elements("$1")
            )))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
            let live: std::collections::HashSet<String> = live.into_iter().collect();
            out.extend(chunk.iter().filter(|d| !live.contains(d.as_str())).cloned());
        }
        Ok(out)
    }

    /// Whether file bytes live in the database ([`Store::put_blob_bytes`]) rather than
    /// beside it: on PostgreSQL, which several nodes share.
    pub fn keeps_blob_bytes(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Stores the bytes of a file whose record [`Store::reserve_blob`] made.
    pub async fn put_blob_bytes(&self, id: &redoubt_proto::BlobId, bytes: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO blob_contents (id, bytes) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(bytes.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The bytes of a file, if stored.
    pub async fn blob_bytes(&self, id: &redoubt_proto::BlobId) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM blob_contents WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
