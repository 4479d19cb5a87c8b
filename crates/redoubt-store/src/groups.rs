//! Device groups: a unit, a department, a site. A device may belong to several; a group
//! may assign a mode, and every mode assigned to a device (its own and its groups')
//! travels in its bundle, where the strictest applies.
//!
//! A change that affects many devices (a group's mode, its members) marks them
//! `bundle_stale` in its own transaction; [`Store::reissue_stale`] then issues their
//! bundles in batches, so nothing is lost if the server stops in between.

use redoubt_proto::{DeviceGroupName, DeviceId, Mode, ModeName, Timestamp};
use sqlx::{Any, Row, Transaction};

use crate::devices::{BundleRequest, DeviceRecord, IssuedBundle};
use crate::{AuditDraft, HeadSigner, Result, Store, StoreError, parse};

/// A device group as stored, with its number of live devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGroupRecord {
    /// Its name.
    pub name: DeviceGroupName,
    /// What it is, for people.
    pub description: String,
    /// The mode it assigns to its devices.
    pub mode: Option<ModeName>,
    /// Its devices that are not revoked.
    pub devices: u64,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// Last change of its mode, description or members.
    pub updated_at: Timestamp,
}

const GROUP_SELECT: &str =
    "SELECT g.name, g.description, g.mode, g.created_by, g.created_at, g.updated_at,
     (SELECT count(*) FROM device_group_members m JOIN devices d ON d.id = m.device_id
      WHERE m.group_name = g.name AND d.revoked_at IS NULL) AS n
     FROM device_groups g";

fn group_record(r: &sqlx::any::AnyRow) -> Result<DeviceGroupRecord> {
    Ok(DeviceGroupRecord {
        name: parse("group name", r.try_get("name")?)?,
        description: r.try_get("description")?,
        mode: r
            .try_get::<Option<&str>, _>("mode")?
            .map(|m| parse("mode name", m))
            .transpose()?,
        devices: r.try_get::<i64, _>("n")?.max(0) as u64,
        created_by: r.try_get("created_by")?,
        created_at: Timestamp(r.try_get("created_at")?),
        updated_at: Timestamp(r.try_get("updated_at")?),
    })
}

async fn load_group(
    tx: &mut Transaction<'_, Any>,
    name: &DeviceGroupName,
) -> Result<DeviceGroupRecord> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{GROUP_SELECT} WHERE g.name = $1"
    )))
    .bind(name.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("device group {name}")))?;
    group_record(&row)
}

/// The modes the groups of `device` assign, each once.
pub(crate) async fn group_modes_of(
    tx: &mut Transaction<'_, Any>,
    device: &DeviceId,
) -> Result<Vec<Mode>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT g.mode FROM device_group_members m JOIN device_groups g ON g.name = m.group_name
         WHERE m.device_id = $1 AND g.mode IS NOT NULL ORDER BY g.mode",
    )
    .bind(device.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut modes = Vec::with_capacity(names.len());
    for n in names {
        modes.push(crate::devices::load_mode(tx, &parse("mode name", &n)?).await?);
    }
    Ok(modes)
}

/// The modes `groups` assign, each once; `NotFound` names a group that does not exist.
pub(crate) async fn modes_of_groups(
    tx: &mut Transaction<'_, Any>,
    groups: &[DeviceGroupName],
) -> Result<Vec<Mode>> {
    let mut names: Vec<ModeName> = Vec::new();
    for g in groups {
        let row = sqlx::query("SELECT mode FROM device_groups WHERE name = $1")
            .bind(g.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("device group {g}")))?;
        if let Some(m) = row.try_get::<Option<&str>, _>("mode")? {
            names.push(parse("mode name", m)?);
        }
    }
    names.sort();
    names.dedup();
    let mut modes = Vec::with_capacity(names.len());
    for n in &names {
        modes.push(crate::devices::load_mode(tx, n).await?);
    }
    Ok(modes)
}

async fn mode_exists(tx: &mut Transaction<'_, Any>, mode: &ModeName) -> Result<()> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM modes WHERE name = $1")
        .bind(mode.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    exists
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("mode {mode}")))
}

/// Checks that every device exists and is not revoked.
async fn live_devices(tx: &mut Transaction<'_, Any>, devices: &[DeviceId]) -> Result<()> {
    for d in devices {
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM devices WHERE id = $1")
                .bind(d.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        match revoked {
            None => return Err(StoreError::NotFound(format!("device {d}"))),
            Some(Some(_)) => return Err(StoreError::Conflict(format!("device {d} is revoked"))),
            Some(None) => {}
        }
    }
    Ok(())
}

async fn touch(
    tx: &mut Transaction<'_, Any>,
    name: &DeviceGroupName,
    now: Timestamp,
) -> Result<()> {
    sqlx::query("UPDATE device_groups SET updated_at = $1 WHERE name = $2")
        .bind(now.unix())
        .bind(name.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn mark_stale(tx: &mut Transaction<'_, Any>, devices: &[DeviceId]) -> Result<u64> {
    let mut n = 0;
    for d in devices {
        n +=
            sqlx::query("UPDATE devices SET bundle_stale = 1 WHERE id = $1 AND revoked_at IS NULL")
                .bind(d.as_str())
                .execute(&mut **tx)
                .await?
                .rows_affected();
    }
    Ok(n)
}

/// The result of adding devices to, or removing them from, a group.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    /// The group after the change.
    pub group: DeviceGroupRecord,
    /// The devices that were added (or removed); those already in (or not in) are not.
    pub changed: Vec<DeviceId>,
    /// How many devices now wait for a new bundle because of it.
    pub reissued: u64,
}

impl Store {
    /// Creates a group, audited in the same transaction. `Conflict` if the name is
    /// taken, `NotFound` for an unknown mode.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_device_group(
        &self,
        name: &DeviceGroupName,
        description: &str,
        mode: Option<&ModeName>,
        created_by: &str,
        now: Timestamp,
        audit: impl FnOnce(&DeviceGroupRecord) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<DeviceGroupRecord> {
        let mut tx = self.write_tx().await?;
        if let Some(m) = mode {
            mode_exists(&mut tx, m).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO device_groups (name, description, mode, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(name.as_str())
        .bind(description)
        .bind(mode.map(ModeName::as_str))
        .bind(created_by)
        .bind(now.unix())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a device group named {name} exists already"
            )));
        }
        let rec = load_group(&mut tx, name).await?;
        crate::audit::append(&mut tx, &audit(&rec), now, sign).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The names of every group, in order: what a menu needs, without counting each
    /// group's devices (which reads the whole fleet).
    pub async fn device_group_names(&self) -> Result<Vec<DeviceGroupName>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM device_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        names
            .iter()
            .map(|n| parse("device group name", n))
            .collect()
    }

    /// Every group, by name.
    pub async fn list_device_groups(&self) -> Result<Vec<DeviceGroupRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{GROUP_SELECT} ORDER BY g.name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_record).collect()
    }

    /// One group.
    pub async fn get_device_group(
        &self,
        name: &DeviceGroupName,
    ) -> Result<Option<DeviceGroupRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{GROUP_SELECT} WHERE g.name = $1"
        )))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(group_record).transpose()
    }

    /// The groups a device belongs to, by name.
    pub async fn groups_of_device(&self, device: &DeviceId) -> Result<Vec<DeviceGroupName>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT group_name FROM device_group_members WHERE device_id = $1 ORDER BY group_name",
        )
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await?;
        names.iter().map(|n| parse("group name", n)).collect()
    }

    /// Adds devices to a group (each must exist and not be revoked; one already in is
    /// left as it is). When the group assigns a mode, the added devices wait for a new
    /// bundle ([`Store::reissue_stale`]). Audited in the same transaction.
    pub async fn add_to_device_group(
        &self,
        name: &DeviceGroupName,
        devices: &[DeviceId],
        now: Timestamp,
        audit: impl FnOnce(&DeviceGroupRecord, &[DeviceId]) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<MembershipChange> {
        self.change_members(name, devices, true, now, audit, sign)
            .await
    }

    /// Removes devices from a group (one not in it is left as it is); they get a new
    /// bundle without the group's mode. Audited in the same transaction.
    pub async fn remove_from_device_group(
        &self,
        name: &DeviceGroupName,
        devices: &[DeviceId],
        now: Timestamp,
        audit: impl FnOnce(&DeviceGroupRecord, &[DeviceId]) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<MembershipChange> {
        self.change_members(name, devices, false, now, audit, sign)
            .await
    }

    async fn change_members(
        &self,
        name: &DeviceGroupName,
        devices: &[DeviceId],
        add: bool,
        now: Timestamp,
        audit: impl FnOnce(&DeviceGroupRecord, &[DeviceId]) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<MembershipChange> {
        let mut tx = self.write_tx().await?;
        let before = load_group(&mut tx, name).await?;
        let mut devices = devices.to_vec();
        devices.sort();
        devices.dedup();
        if add {
            live_devices(&mut tx, &devices).await?;
        }
        let mut changed = Vec::new();
        for d in &devices {
            let n = if add {
                sqlx::query(
                    "INSERT INTO device_group_members (group_name, device_id, added_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(name.as_str())
                .bind(d.as_str())
                .bind(now.unix())
                .execute(&mut *tx)
                .await?
            } else {
                sqlx::query(
                    "DELETE FROM device_group_members WHERE group_name = $1 AND device_id = $2",
                )
                .bind(name.as_str())
                .bind(d.as_str())
                .execute(&mut *tx)
                .await?
            };
            if n.rows_affected() == 1 {
                changed.push(d.clone());
            }
        }
        let reissued = if before.mode.is_some() {
            mark_stale(&mut tx, &changed).await?
        } else {
            0
        };
        if !changed.is_empty() {
            touch(&mut tx, name, now).await?;
        }
        let group = load_group(&mut tx, name).await?;
        crate::audit::append(&mut tx, &audit(&group, &changed), now, sign).await?;
        tx.commit().await?;
        Ok(MembershipChange {
            group,
            changed,
            reissued,
        })
    }

    /// Sets (or with `None` takes away) the mode a group assigns; every live device in
    /// it waits for a new bundle. Audited in the same transaction (`audit` gets the
    /// group before and after). Returns the group and how many devices wait.
    pub async fn set_device_group_mode(
        &self,
        name: &DeviceGroupName,
        mode: Option<&ModeName>,
        now: Timestamp,
        audit: impl FnOnce(&DeviceGroupRecord, &DeviceGroupRecord) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<(DeviceGroupRecord, u64)> {
        let mut tx = self.write_tx().await?;
        let before = load_group(&mut tx, name).await?;
        if let Some(m) = mode {
            mode_exists(&mut tx, m).await?;
        }
        sqlx::query("UPDATE device_groups SET mode = $1, updated_at = $2 WHERE name = $3")
            .bind(mode.map(ModeName::as_str))
            .bind(now.unix())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        let reissued = if before.mode.as_ref() == mode {
            0
        } else {
            sqlx::query(
                "UPDATE devices SET bundle_stale = 1 WHERE revoked_at IS NULL
                 AND id IN (SELECT device_id FROM device_group_members WHERE group_name = $1)",
            )
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        let after = load_group(&mut tx, name).await?;
        crate::audit::append(&mut tx, &audit(&before, &after), now, sign).await?;
        tx.commit().await?;
        Ok((after, reissued))
    }

    /// How many live devices wait for a new bundle.
    pub async fn stale_bundle_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM devices WHERE bundle_stale = 1 AND revoked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Issues the next bundle of up to `limit` devices that wait for one, in one
    /// transaction (one fsync for the batch), and returns them; empty when none waits.
    pub async fn reissue_stale(
        &self,
        limit: u32,
        mut issue: impl FnMut(&BundleRequest) -> IssuedBundle,
    ) -> Result<Vec<DeviceRecord>> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE devices SET bundle_stale = 0 WHERE bundle_stale = 1 AND revoked_at IS NOT NULL",
        )
        .execute(&mut *tx)
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM devices WHERE bundle_stale = 1 ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(ids.len());
        let zones = crate::zones::load_zone_grants(&mut tx).await?;
        for id in &ids {
            let id: DeviceId = parse("device id", id)?;
            out.push(crate::devices::reissue_with(&mut tx, &id, None, &zones, &mut issue).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
}
