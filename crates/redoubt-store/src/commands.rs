//! Operators' commands to devices (lock, unlock, wipe, revoke, exit-zone) and their
//! lifecycle: queued → delivered → acknowledged → verified, or expired / failed.
//! Every change of state is appended to the audit log in the same transaction.

use redoubt_proto::{CommandId, CommandState, DeviceAction, DeviceId, SignedEnvelope, Timestamp};
use serde_json::json;
use sqlx::{Any, Row, Transaction};

use crate::audit::{AuditDraft, HeadSigner};
use crate::{Result, Store, StoreError, from_json, parse, to_json};

/// A command as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// Its id.
    pub id: CommandId,
    /// The device.
    pub device_id: DeviceId,
    /// What it does.
    pub action: DeviceAction,
    /// The signed command the phone receives.
    pub envelope: SignedEnvelope,
    /// Where it is.
    pub state: CommandState,
    /// Who asked (`admin:NAME`).
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
    /// Sent to the phone.
    pub delivered_at: Option<Timestamp>,
    /// The phone stored it.
    pub acknowledged_at: Option<Timestamp>,
    /// Its effect was seen in a signed report.
    pub verified_at: Option<Timestamp>,
    /// Why it failed, or what verified it.
    pub note: Option<String>,
}

/// A command to store.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Its id.
    pub id: CommandId,
    /// The device.
    pub device_id: DeviceId,
    /// What it does.
    pub action: DeviceAction,
    /// The signed command.
    pub envelope: SignedEnvelope,
    /// Who asked.
    pub created_by: String,
    /// From where (for the audit log).
    pub source: String,
    /// Expiry.
    pub expires_at: Timestamp,
}

const COLUMNS: &str = "id, device_id, body, envelope, state, created_by, created_at, expires_at, \
     delivered_at, acknowledged_at, verified_at, note";

fn record(r: &sqlx::any::AnyRow) -> Result<CommandRecord> {
    let state: &str = r.try_get("state")?;
    Ok(CommandRecord {
        id: parse("command id", r.try_get("id")?)?,
        device_id: parse("device id", r.try_get("device_id")?)?,
        action: from_json("command action", r.try_get("body")?)?,
        envelope: from_json("command envelope", r.try_get("envelope")?)?,
        state: CommandState::parse(state).ok_or_else(|| crate::corrupt("command state", state))?,
        created_by: r.try_get("created_by")?,
        created_at: Timestamp(r.try_get("created_at")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        delivered_at: r.try_get::<Option<i64>, _>("delivered_at")?.map(Timestamp),
        acknowledged_at: r
            .try_get::<Option<i64>, _>("acknowledged_at")?
            .map(Timestamp),
        verified_at: r.try_get::<Option<i64>, _>("verified_at")?.map(Timestamp),
        note: r.try_get("note")?,
    })
}

fn draft(
    actor: &str,
    source: &str,
    action: &str,
    c: &CommandRecord,
    extra: serde_json::Value,
) -> AuditDraft {
    let mut detail = json!({ "command": c.id.as_str(), "action": c.action.name() });
    if let DeviceAction::ExitZone { zone } | DeviceAction::EnterZone { zone } = &c.action {
        detail["zone"] = json!(zone.as_str());
    }
    if let (Some(d), Some(e)) = (detail.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    AuditDraft {
        actor: actor.to_owned(),
        source: source.to_owned(),
        action: action.to_owned(),
        device_id: Some(c.device_id.clone()),
        detail,
    }
}

pub(crate) async fn load(
    tx: &mut Transaction<'_, Any>,
    device: &DeviceId,
    id: &CommandId,
) -> Result<Option<CommandRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_commands WHERE id = $1 AND device_id = $2"
    )))
    .bind(id.as_str())
    .bind(device.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(record).transpose()
}

/// Commands of a device that are not final, oldest first.
pub(crate) async fn open_in(
    tx: &mut Transaction<'_, Any>,
    device: &DeviceId,
) -> Result<Vec<CommandRecord>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM device_commands
         WHERE device_id = $1 AND state IN ('queued', 'delivered', 'acknowledged')
         ORDER BY created_at, rowid"
    )))
    .bind(device.as_str())
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(record).collect()
}

/// Moves a command to `state` (with its time column) and appends the audit entry.
pub(crate) async fn transition(
    tx: &mut Transaction<'_, Any>,
    c: &CommandRecord,
    state: CommandState,
    note: Option<&str>,
    now: Timestamp,
    actor: &str,
    sign: HeadSigner<'_>,
) -> Result<CommandRecord> {
    let column = match state {
        CommandState::Delivered => Some("delivered_at"),
        CommandState::Acknowledged => Some("acknowledged_at"),
        CommandState::Verified => Some("verified_at"),
        _ => None,
    };
    let sql = match column {
        Some(col) => format!(
            "UPDATE device_commands SET state = $1, note = coalesce($2, note), {col} = coalesce({col}, $3) WHERE id = $4"
        ),
        None => {
            "UPDATE device_commands SET state = $1, note = coalesce($2, note) WHERE id = $3".into()
        }
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(state.as_str())
        .bind(note);
    if column.is_some() {
        q = q.bind(now.unix());
    }
    let q = q.bind(c.id.as_str());
    q.execute(&mut **tx).await?;
    let mut extra = json!({ "from": c.state.as_str(), "to": state.as_str() });
    if let Some(n) = note {
        extra["note"] = json!(n);
    }
    crate::audit::append(
        tx,
        &[draft(
            actor,
            "",
            &format!("command.{}", state.as_str()),
            c,
            extra,
        )],
        now,
        sign,
    )
    .await?;
    load(tx, &c.device_id, &c.id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("command {}", c.id)))
}

/// Whether a new request for `action` is the same as the stored command `c`
/// (idempotency: asking twice gives the first command back).
fn same_request(c: &CommandRecord, action: &DeviceAction) -> bool {
    &c.action == action && !matches!(c.state, CommandState::Expired | CommandState::Failed)
}

impl Store {
    /// Stores a new command, or returns the command already standing for the same
    /// request (`true`): a pending or verified lock that no later unlock lifted, a
    /// pending unlock, any live wipe or revoke, a pending exit from the same zone.
    pub async fn create_command(
        &self,
        new: NewCommand,
        now: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<(CommandRecord, bool)> {
        let mut tx = self.write_tx().await?;
        let (c, existing) = insert_command(&mut tx, &new, now).await?;
        if !existing {
            crate::audit::append(
                &mut tx,
                &[draft(
                    &new.created_by,
                    &new.source,
                    &format!("device.{}", new.action.name()),
                    &c,
                    json!({ "expires_at": new.expires_at.to_string() }),
                )],
                now,
                sign,
            )
            .await?;
        }
        tx.commit().await?;
        Ok((c, existing))
    }
}

/// Stores a new command inside `tx`, or returns the command already standing for the
/// same request (`true`); see [`Store::create_command`]. Appends no audit entry.
pub(crate) async fn insert_command(
    tx: &mut Transaction<'_, Any>,
    new: &NewCommand,
    now: Timestamp,
) -> Result<(CommandRecord, bool)> {
    {
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM devices WHERE id = $1")
                .bind(new.device_id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        match revoked {
            None => return Err(StoreError::NotFound(format!("device {}", new.device_id))),
            Some(Some(_)) if !matches!(new.action, DeviceAction::Revoke) => {
                return Err(StoreError::Conflict(format!(
                    "device {} is revoked; it takes no more commands",
                    new.device_id
                )));
            }
            _ => {}
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands WHERE device_id = $1 ORDER BY created_at DESC, rowid DESC"
        )))
        .bind(new.device_id.as_str())
        .fetch_all(&mut **tx)
        .await?;
        let history: Vec<CommandRecord> = rows.iter().map(record).collect::<Result<_>>()?;
        let standing = match &new.action {
            // The newest lock-or-unlock decides whether the device is (being) locked.
            DeviceAction::Lock | DeviceAction::Unlock => history
                .iter()
                .filter(|c| {
                    matches!(c.action, DeviceAction::Lock | DeviceAction::Unlock)
                        && !matches!(c.state, CommandState::Expired | CommandState::Failed)
                })
                .find(|_| true)
                .filter(|c| same_request(c, &new.action)),
            DeviceAction::Wipe | DeviceAction::Revoke => {
                history.iter().find(|c| same_request(c, &new.action))
            }
            DeviceAction::ExitZone { .. } | DeviceAction::EnterZone { .. } => history
                .iter()
                .find(|c| same_request(c, &new.action) && !c.state.is_final()),
        };
        if let Some(c) = standing {
            return Ok((c.clone(), true));
        }
        // The phone orders a lock and an unlock by their signed issue times, so they
        // strictly grow per device. A server computes its issue time before this
        // transaction; another node may have issued one for the device in between.
        let lock_or_unlock =
            |a: &DeviceAction| matches!(a, DeviceAction::Lock | DeviceAction::Unlock);
        if lock_or_unlock(&new.action)
            && let Some(newest) = history
                .iter()
                .filter(|c| lock_or_unlock(&c.action))
                .map(|c| c.created_at)
                .max()
            && newest >= now
        {
            return Err(StoreError::Conflict(format!(
                "another command for device {} was issued at the same moment (through another \
                 server node); nothing was done, send this one again",
                new.device_id
            )));
        }
        sqlx::query(
            "INSERT INTO device_commands (id, device_id, action, body, envelope, state, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8)",
        )
        .bind(new.id.as_str())
        .bind(new.device_id.as_str())
        .bind(new.action.name())
        .bind(to_json(&new.action))
        .bind(to_json(&new.envelope))
        .bind(&new.created_by)
        .bind(now.unix())
        .bind(new.expires_at.unix())
        .execute(&mut **tx)
        .await?;
        let c = load(tx, &new.device_id, &new.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("command {}", new.id)))?;
        Ok((c, false))
    }
}

impl Store {
    /// When the device's newest command was issued, if it has any.
    pub async fn newest_command_at(&self, device: &DeviceId) -> Result<Option<Timestamp>> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT MAX(created_at) FROM device_commands WHERE device_id = $1")
                .bind(device.as_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(at.map(Timestamp))
    }

    /// A device's commands, newest first.
    pub async fn list_commands(&self, device: &DeviceId) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands WHERE device_id = $1 ORDER BY created_at DESC, rowid DESC"
        )))
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Commands the phone still has to be sent (queued or delivered, not expired),
    /// oldest first.
    pub async fn commands_to_send(
        &self,
        device: &DeviceId,
        now: Timestamp,
    ) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands
             WHERE device_id = $1 AND state IN ('queued', 'delivered') AND expires_at > $2 AND action != 'revoke'
             ORDER BY created_at, rowid"
        )))
        .bind(device.as_str())
        .bind(now.unix())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Marks queued commands delivered (sent over the phone's session).
    pub async fn mark_delivered(
        &self,
        device: &DeviceId,
        ids: &[CommandId],
        now: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            if let Some(c) = load(&mut tx, device, id).await?
                && c.state == CommandState::Queued
            {
                transition(
                    &mut tx,
                    &c,
                    CommandState::Delivered,
                    None,
                    now,
                    "server",
                    sign,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the phone's acknowledgement (or refusal) of a command. Unknown ids and
    /// commands of other devices are `NotFound`; a repeated acknowledgement changes
    /// nothing.
    pub async fn acknowledge_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        accepted: bool,
        reason: Option<&str>,
        now: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<CommandRecord> {
        let mut tx = self.write_tx().await?;
        let c = load(&mut tx, device, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("command {id} of device {device}")))?;
        let actor = format!("device:{device}");
        let c = match (c.state, accepted) {
            (CommandState::Queued | CommandState::Delivered, true) => {
                transition(
                    &mut tx,
                    &c,
                    CommandState::Acknowledged,
                    None,
                    now,
                    &actor,
                    sign,
                )
                .await?
            }
            (
                CommandState::Queued | CommandState::Delivered | CommandState::Acknowledged,
                false,
            ) => {
                let note = format!(
                    "refused by the phone: {}",
                    reason.unwrap_or("no reason given")
                );
                transition(
                    &mut tx,
                    &c,
                    CommandState::Failed,
                    Some(&note),
                    now,
                    &actor,
                    sign,
                )
                .await?
            }
            _ => c,
        };
        tx.commit().await?;
        Ok(c)
    }

    /// Moves every open command past its expiry to `expired`; returns them. A wipe also
    /// expires once acknowledged but not verified (the phone never sent its final
    /// report): the server then does its part of the wipe.
    pub async fn expire_commands(
        &self,
        now: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<Vec<CommandRecord>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_commands
             WHERE (state IN ('queued', 'delivered') OR (state = 'acknowledged' AND action = 'wipe'))
               AND expires_at <= $1 ORDER BY created_at, rowid"
        )))
        .bind(now.unix())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let c = record(r)?;
            out.push(
                transition(
                    &mut tx,
                    &c,
                    CommandState::Expired,
                    Some(if c.state == CommandState::Acknowledged {
                        "acknowledged, but the phone's final report did not come before its expiry"
                    } else {
                        "not acknowledged by the phone before its expiry"
                    }),
                    now,
                    "server",
                    sign,
                )
                .await?,
            );
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records that a server-side command (revoke) took effect at once.
    pub async fn complete_command(
        &self,
        device: &DeviceId,
        id: &CommandId,
        note: &str,
        now: Timestamp,
        sign: HeadSigner<'_>,
    ) -> Result<CommandRecord> {
        let mut tx = self.write_tx().await?;
        let c = load(&mut tx, device, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("command {id}")))?;
        let c = if c.state.is_final() {
            c
        } else {
            transition(
                &mut tx,
                &c,
                CommandState::Verified,
                Some(note),
                now,
                "server",
                sign,
            )
            .await?
        };
        tx.commit().await?;
        Ok(c)
    }
}

/// Which commands a fleet-wide list covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandFilter {
    /// Only in this state.
    pub state: Option<CommandState>,
    /// Only this action (`lock`, `wipe`, …).
    pub action: Option<String>,
    /// Only this device's.
    pub device: Option<DeviceId>,
}

impl Store {
    /// One page of the commands `filter` covers, oldest first, after the row `after`;
    /// with the row to continue after when more follow.
    pub async fn list_commands_page(
        &self,
        filter: &CommandFilter,
        after: Option<&crate::RowCursor>,
        limit: u32,
    ) -> Result<(Vec<CommandRecord>, Option<crate::RowCursor>)> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT rowid AS list_row, {COLUMNS} FROM device_commands
             WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR action = $2)
               AND ($3 IS NULL OR device_id = $3) AND rowid > $4
             ORDER BY rowid LIMIT $5"
        )))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.action.as_deref())
        .bind(filter.device.as_ref().map(DeviceId::as_str))
        .bind(after.map_or(0, |c| c.row))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let mut out = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = None;
        for r in rows.iter().take(limit as usize) {
            out.push(record(r)?);
            last = Some(r.try_get::<i64, _>("list_row")?);
        }
        Ok((
            out,
            last.filter(|_| more).map(|row| crate::RowCursor { row }),
        ))
    }
}
