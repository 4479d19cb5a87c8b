//! Modes: the built-in presets (refreshed at every start) and custom modes.

use redoubt_proto::{DeviceId, Mode, ModeName, Timestamp};
use sqlx::Row;

use crate::devices::{BundleRequest, IssuedBundle};
use crate::{Result, Store, StoreError, from_json, to_json};

/// A mode as stored.
#[derive(Debug, Clone)]
pub struct ModeRecord {
    /// The definition.
    pub mode: Mode,
    /// Whether it is a built-in preset.
    pub builtin: bool,
    /// Last change.
    pub updated_at: Timestamp,
}

fn record(r: &sqlx::any::AnyRow) -> Result<ModeRecord> {
    Ok(ModeRecord {
        mode: from_json("mode definition", r.try_get("definition")?)?,
        builtin: r.try_get::<i64, _>("builtin")? != 0,
        updated_at: Timestamp(r.try_get("updated_at")?),
    })
}

impl Store {
    /// Writes the built-in presets (their definitions come from the code, so an
    /// upgrade changes them everywhere at once).
    pub async fn install_builtin_modes(&self, presets: &[Mode], now: Timestamp) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for m in presets {
            sqlx::query(
                "INSERT INTO modes (name, definition, builtin, updated_at) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, builtin = 1,
                 updated_at = CASE WHEN modes.definition = excluded.definition THEN modes.updated_at ELSE excluded.updated_at END",
            )
            .bind(m.name.as_str())
            .bind(to_json(m))
            .bind(now.unix())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every mode, by name.
    pub async fn list_modes(&self) -> Result<Vec<ModeRecord>> {
        let rows = sqlx::query("SELECT definition, builtin, updated_at FROM modes ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record).collect()
    }

    /// One mode.
    pub async fn get_mode(&self, name: &ModeName) -> Result<Option<ModeRecord>> {
        let row = sqlx::query("SELECT definition, builtin, updated_at FROM modes WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    /// Creates or replaces a custom mode and, in the same transaction, issues a new
    /// bundle (through `issue`) to every live device assigned to it. Built-in presets
    /// cannot be replaced. Returns the devices that got a new bundle. The entries
    /// `audit` makes from whether the mode is new and which devices got a bundle are
    /// appended in the same transaction (`sign` signs the log's new head).
    pub async fn put_custom_mode(
        &self,
        mode: &Mode,
        now: Timestamp,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
        audit: impl FnOnce(bool, &[DeviceId]) -> Vec<crate::AuditDraft>,
        sign: crate::HeadSigner<'_>,
    ) -> Result<Vec<DeviceId>> {
        let mut tx = self.write_tx().await?;
        let builtin: Option<i64> = sqlx::query_scalar("SELECT builtin FROM modes WHERE name = $1")
            .bind(mode.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if builtin.is_some_and(|b| b != 0) {
            return Err(StoreError::Conflict(format!(
                "{} is a built-in preset and cannot be changed; give your mode another name",
                mode.name
            )));
        }
        sqlx::query(
            "INSERT INTO modes (name, definition, builtin, updated_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
        )
        .bind(mode.name.as_str())
        .bind(to_json(mode))
        .bind(now.unix())
        .execute(&mut *tx)
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM devices WHERE assigned_mode = $1 AND revoked_at IS NULL",
        )
        .bind(mode.name.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut touched = Vec::with_capacity(ids.len());
        for id in ids {
            let id: DeviceId = crate::parse("device id", &id)?;
            crate::devices::reissue(&mut tx, &id, None, &mut issue).await?;
            touched.push(id);
        }
        let created = builtin.is_none();
        crate::audit::append(&mut tx, &audit(created, &touched), now, sign).await?;
        tx.commit().await?;
        Ok(touched)
    }
}
