//! Secured zones and the credentials of their gate terminals (which expire and can be
//! revoked; a credential is looked up with the time).

use std::collections::BTreeMap;

use redoubt_proto::api::{CredentialId, ZoneDefinition};
use redoubt_proto::{CheckpointName, DeviceId, Mode, Timestamp, ZoneName};
use sqlx::{Any, Row, Transaction};

use crate::audit::{AuditDraft, HeadSigner};
use crate::devices::{BundleRequest, IssuedBundle, load_mode, reissue};
use crate::{Result, Store, StoreError, from_json, parse, to_json};

/// A zone as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRecord {
    /// The operator's definition.
    pub definition: ZoneDefinition,
    /// Last change.
    pub updated_at: Timestamp,
}

fn zone_record(r: &sqlx::any::AnyRow) -> Result<ZoneRecord> {
    Ok(ZoneRecord {
        definition: from_json("zone definition", r.try_get("definition")?)?,
        updated_at: Timestamp(r.try_get("updated_at")?),
    })
}

/// A gate credential as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateCredentialRecord {
    /// Its public id.
    pub id: CredentialId,
    /// The zone.
    pub zone: ZoneName,
    /// The checkpoint whose gate it opens.
    pub checkpoint: CheckpointName,
    /// Who made it.
    pub created_by: String,
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
macro_rules! gate_columns {
    () => {
        "token_hash, zone, checkpoint, created_by, created_at, expires_at, revoked_at, revoked_by"
    };
}

fn gate_record(r: &sqlx::any::AnyRow) -> Result<GateCredentialRecord> {
    let hash: Vec<u8> = r.try_get("token_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| crate::corrupt("gate credential hash", "not 32 bytes"))?;
    Ok(GateCredentialRecord {
        id: CredentialId::from_hash(&hash),
        zone: parse("zone name", r.try_get("zone")?)?,
        checkpoint: parse("checkpoint name", r.try_get("checkpoint")?)?,
        created_by: r.try_get("created_by")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
        revoked_by: r.try_get("revoked_by")?,
    })
}

/// Every zone with the definition of the mode that holds inside, for a bundle.
pub(crate) async fn load_zone_grants(
    tx: &mut Transaction<'_, Any>,
) -> Result<Vec<(ZoneDefinition, Mode)>> {
    let defs: Vec<String> = sqlx::query_scalar("SELECT definition FROM zones ORDER BY name")
        .fetch_all(&mut **tx)
        .await?;
    let mut out = Vec::with_capacity(defs.len());
    for d in defs {
        let def: ZoneDefinition = from_json("zone definition", &d)?;
        let mode = load_mode(tx, &def.mode).await?;
        out.push((def, mode));
    }
    Ok(out)
}

/// Issues a new bundle to every live device (a zone changed, so every bundle must say so).
async fn reissue_all(
    tx: &mut Transaction<'_, Any>,
    issue: &mut impl FnMut(&BundleRequest) -> IssuedBundle,
) -> Result<Vec<DeviceId>> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE revoked_at IS NULL ORDER BY id")
            .fetch_all(&mut **tx)
            .await?;
    let mut touched = Vec::with_capacity(ids.len());
    for id in ids {
        let id: DeviceId = parse("device id", &id)?;
        reissue(tx, &id, None, issue).await?;
        touched.push(id);
    }
    Ok(touched)
}

impl Store {
    /// Creates or replaces a zone and, in the same transaction, issues a new bundle to
    /// every live device and appends `audit`. The zone's mode must exist. Returns the
    /// devices that got a new bundle.
    pub async fn put_zone(
        &self,
        zone: &ZoneDefinition,
        now: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
    ) -> Result<Vec<DeviceId>> {
        let mut tx = self.write_tx().await?;
        let mode_known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modes WHERE name = $1")
            .bind(zone.mode.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if mode_known.is_none() {
            return Err(StoreError::NotFound(format!(
                "mode {} (named by zone {}); define it first with `redoubt modes apply`",
                zone.mode, zone.name
            )));
        }
        sqlx::query(
            "INSERT INTO zones (name, definition, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
        )
        .bind(zone.name.as_str())
        .bind(to_json(zone))
        .bind(now.unix())
        .execute(&mut *tx)
        .await?;
        // A checkpoint that is gone takes its gate credentials with it.
        let creds = sqlx::query(
            "SELECT token_hash, checkpoint FROM gate_credentials WHERE zone = $1 AND revoked_at IS NULL",
        )
        .bind(zone.name.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for c in creds {
            let cp: String = c.try_get("checkpoint")?;
            if !zone.checkpoints.iter().any(|k| k.as_str() == cp) {
                let hash: Vec<u8> = c.try_get("token_hash")?;
                sqlx::query(
                    "UPDATE gate_credentials SET revoked_at = $1, revoked_by = 'zone change'
                     WHERE token_hash = $2",
                )
                .bind(now.unix())
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            }
        }
        let touched = reissue_all(&mut tx, &mut issue).await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(touched)
    }

    /// Every zone, by name.
    pub async fn list_zones(&self) -> Result<Vec<ZoneRecord>> {
        let rows = sqlx::query("SELECT definition, updated_at FROM zones ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(zone_record).collect()
    }

    /// One zone.
    pub async fn get_zone(&self, name: &ZoneName) -> Result<Option<ZoneRecord>> {
        let row = sqlx::query("SELECT definition, updated_at FROM zones WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(zone_record).transpose()
    }

    /// Stores a new gate credential (its hash) for a checkpoint of an existing zone,
    /// with its audit entries.
    #[allow(clippy::too_many_arguments)] // each is a distinct column or the audit pair
    pub async fn create_gate_credential(
        &self,
        token_hash: &[u8; 32],
        zone: &ZoneName,
        checkpoint: &CheckpointName,
        created_by: &str,
        now: Timestamp,
        expires_at: Timestamp,
        audit: &[AuditDraft],
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let def: Option<String> =
            sqlx::query_scalar("SELECT definition FROM zones WHERE name = $1")
                .bind(zone.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let def: ZoneDefinition = from_json(
            "zone definition",
            &def.ok_or_else(|| StoreError::NotFound(format!("zone {zone}")))?,
        )?;
        if !def.checkpoints.contains(checkpoint) {
            return Err(StoreError::NotFound(format!(
                "checkpoint {checkpoint} of zone {zone}"
            )));
        }
        sqlx::query(
            "INSERT INTO gate_credentials (token_hash, zone, checkpoint, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token_hash[..])
        .bind(zone.as_str())
        .bind(checkpoint.as_str())
        .bind(created_by)
        .bind(now.unix())
        .bind(expires_at.unix())
        .execute(&mut *tx)
        .await?;
        crate::audit::append(&mut tx, audit, now, sign).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The zone and checkpoint a gate credential opens, if it is live at `now`
    /// (neither revoked nor expired) and its zone still exists.
    pub async fn gate_credential(
        &self,
        token_hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<Option<(ZoneName, CheckpointName)>> {
        let row = sqlx::query(
            "SELECT g.zone, g.checkpoint FROM gate_credentials g JOIN zones z ON z.name = g.zone
             WHERE g.token_hash = $1 AND g.revoked_at IS NULL AND g.expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(now.unix())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                parse("zone name", r.try_get("zone")?)?,
                parse("checkpoint name", r.try_get("checkpoint")?)?,
            ))
        })
        .transpose()
    }

    /// Gate credentials live at `now`, per checkpoint of a zone.
    pub async fn gate_credential_counts(
        &self,
        zone: &ZoneName,
        now: Timestamp,
    ) -> Result<BTreeMap<String, u64>> {
        let rows = sqlx::query(
            "SELECT checkpoint, count(*) AS n FROM gate_credentials
             WHERE zone = $1 AND revoked_at IS NULL AND expires_at > $2 GROUP BY checkpoint",
        )
        .bind(zone.as_str())
        .bind(now.unix())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("checkpoint")?,
                    r.try_get::<i64, _>("n")? as u64,
                ))
            })
            .collect()
    }

    /// Every gate credential of a zone ever made, oldest first (revoked and expired
    /// ones too).
    pub async fn list_gate_credentials(
        &self,
        zone: &ZoneName,
    ) -> Result<Vec<GateCredentialRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            gate_columns!(),
            " FROM gate_credentials WHERE zone = $1 ORDER BY created_at, rowid"
        ))
        .bind(zone.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(gate_record).collect()
    }

    /// Revokes gate credential `id` of `zone` (by `by`) and appends the audit entries
    /// `audit` makes from it, in one transaction. Not found: no such credential in
    /// this zone; conflict: it was revoked already.
    pub async fn revoke_gate_credential(
        &self,
        zone: &ZoneName,
        id: &CredentialId,
        by: &str,
        now: Timestamp,
        audit: impl FnOnce(&GateCredentialRecord) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<GateCredentialRecord> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            gate_columns!(),
            " FROM gate_credentials
             WHERE zone = $1 AND substr(token_hash, 1, 8) = $2"
        ))
        .bind(zone.as_str())
        .bind(id.hash_prefix())
        .fetch_all(&mut *tx)
        .await?;
        let mut rec = match rows.as_slice() {
            [one] => gate_record(one)?,
            [] => {
                return Err(StoreError::NotFound(format!(
                    "gate credential {id} of zone {zone}"
                )));
            }
            _ => {
                return Err(StoreError::Conflict(format!(
                    "more than one gate credential has the id {id}"
                )));
            }
        };
        if rec.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "gate credential {id} is revoked already"
            )));
        }
        sqlx::query(
            "UPDATE gate_credentials SET revoked_at = $1, revoked_by = $2
             WHERE zone = $3 AND substr(token_hash, 1, 8) = $4",
        )
        .bind(now.unix())
        .bind(by)
        .bind(zone.as_str())
        .bind(id.hash_prefix())
        .execute(&mut *tx)
        .await?;
        rec.revoked_at = Some(now);
        rec.revoked_by = Some(by.to_owned());
        crate::audit::append(&mut tx, &audit(&rec), now, sign).await?;
        tx.commit().await?;
        Ok(rec)
    }
}
