//! Fleet queries: which devices a filter covers, in pages with a stable cursor, and
//! how many there are. Lists at 100k devices read one page at a time in the order the
//! devices were enrolled (the row id), so a cursor stays valid while devices enroll or
//! change.

use redoubt_proto::{
    Compliance, DeviceGroupName, HardwareKind, ModeName, Timestamp, UserName, ZoneName,
};

use redoubt_proto::{DeviceAction, DeviceId};

use crate::commands::{CommandRecord, NewCommand};
use crate::devices::{DEVICE_COLUMNS, DeviceRecord, device_record, fill_groups, hardware_str};
use crate::{AuditDraft, HeadSigner, Result, Store, StoreError, from_json, parse, to_json};

/// Which devices a list, a count or a bulk action covers. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// The verdict, `Stale` included (a device whose latest report arrived before
    /// `stale_before` is `Stale`, whatever was stored).
    pub compliance: Option<Compliance>,
    /// The effective mode of the newest bundle.
    pub mode: Option<String>,
    /// The operator's own assignment.
    pub assigned_mode: Option<ModeName>,
    /// The owner.
    pub user: Option<UserName>,
    /// The hardware backend.
    pub hardware: Option<HardwareKind>,
    /// Members of this device group.
    pub group: Option<DeviceGroupName>,
    /// Inside this zone, as last reported.
    pub zone: Option<ZoneName>,
    /// Latest report before this time (or none at all).
    pub seen_before: Option<Timestamp>,
    /// Latest report at or after this time.
    pub seen_after: Option<Timestamp>,
    /// Revoked devices too (by default only live ones).
    pub include_revoked: bool,
}

/// Where a page starts: after this row, in the order rows were inserted (SQLite's
/// rowid, PostgreSQL's `rowid` identity column). Devices and commands page by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCursor {
    /// The last row of the previous page.
    pub row: i64,
}

impl RowCursor {
    /// The cursor as the API carries it.
    pub fn encode(&self) -> String {
        format!("r{}", self.row)
    }

    /// Reads a cursor the API handed out; `None` for anything else.
    pub fn decode(s: &str) -> Option<RowCursor> {
        let row: i64 = s.strip_prefix('r')?.parse().ok()?;
        (row >= 0).then_some(RowCursor { row })
    }
}

enum Value {
    Int(i64),
    Text(String),
}

/// A WHERE clause with its parameters, numbered from `$1`.
struct Where {
    sql: Vec<String>,
    values: Vec<Value>,
}

impl Where {
    fn param(&mut self, v: Value) -> String {
        self.values.push(v);
        format!("${}", self.values.len())
    }

    fn build(filter: &DeviceFilter, stale_before: Timestamp) -> Where {
        let mut w = Where {
            sql: Vec::new(),
            values: Vec::new(),
        };
        if !filter.include_revoked {
            w.sql.push("d.revoked_at IS NULL".into());
        }
        if let Some(c) = filter.compliance {
            let t = w.param(Value::Int(stale_before.unix()));
            let stale = format!("(d.last_report_at IS NOT NULL AND d.last_report_at < {t})");
            if c == Compliance::Stale {
                w.sql.push(stale);
            } else {
                let p = w.param(Value::Text(c.as_str().to_owned()));
                w.sql.push(format!("d.compliance = {p} AND NOT {stale}"));
            }
        }
        if let Some(m) = &filter.mode {
            let p = w.param(Value::Text(m.clone()));
            w.sql.push(format!("d.effective_mode = {p}"));
        }
        if let Some(m) = &filter.assigned_mode {
            let p = w.param(Value::Text(m.to_string()));
            w.sql.push(format!("d.assigned_mode = {p}"));
        }
        if let Some(u) = &filter.user {
            let p = w.param(Value::Text(u.to_string()));
            w.sql.push(format!("d.user_name = {p}"));
        }
        if let Some(h) = filter.hardware {
            let p = w.param(Value::Text(hardware_str(h).to_owned()));
            w.sql.push(format!("d.hardware = {p}"));
        }
        if let Some(g) = &filter.group {
            let p = w.param(Value::Text(g.to_string()));
            w.sql.push(format!(
                "d.id IN (SELECT device_id FROM device_group_members WHERE group_name = {p})"
            ));
        }
        if let Some(z) = &filter.zone {
            let p = w.param(Value::Text(z.to_string()));
            w.sql.push(format!(
                "d.id IN (SELECT device_id FROM device_zones WHERE zone = {p})"
            ));
        }
        if let Some(t) = filter.seen_before {
            let p = w.param(Value::Int(t.unix()));
            w.sql.push(format!(
                "(d.last_report_at IS NULL OR d.last_report_at < {p})"
            ));
        }
        if let Some(t) = filter.seen_after {
            let p = w.param(Value::Int(t.unix()));
            w.sql.push(format!("d.last_report_at >= {p}"));
        }
        w
    }

    fn clause(&self) -> String {
        if self.sql.is_empty() {
            "TRUE".into()
        } else {
            self.sql.join(" AND ")
        }
    }

    fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for v in &self.values {
            q = match v {
                Value::Int(i) => q.bind(*i),
                Value::Text(s) => q.bind(s.as_str()),
            };
        }
        q
    }
}

/// Live devices counted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceBreakdown {
    /// By the effective mode of the newest bundle.
    pub by_mode: Vec<(String, u64)>,
    /// By the operator's own assignment.
    pub by_assigned_mode: Vec<(String, u64)>,
    /// By hardware backend.
    pub by_hardware: Vec<(String, u64)>,
    /// By device group (a device in two groups counts in both).
    pub by_group: Vec<(String, u64)>,
    /// By zone last reported (a device in two counts in both).
    pub by_zone: Vec<(String, u64)>,
}

/// Most devices one page holds.
pub const MAX_PAGE: u32 = redoubt_proto::api::DeviceQuery::MAX_LIMIT;

impl Store {
    /// One page of the devices `filter` covers, in enrollment order (row id), starting after
    /// `after`; with the cursor of the next page when more follow.
    pub async fn list_devices_page(
        &self,
        filter: &DeviceFilter,
        stale_before: Timestamp,
        after: Option<&RowCursor>,
        limit: u32,
    ) -> Result<(Vec<DeviceRecord>, Option<RowCursor>)> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(StoreError::Conflict(format!(
                "a page holds 1 to {MAX_PAGE} devices"
            )));
        }
        let mut w = Where::build(filter, stale_before);
        if let Some(c) = after {
            let row = w.param(Value::Int(c.row));
            w.sql.push(format!("d.rowid > {row}"));
        }
        let lim = w.param(Value::Int(i64::from(limit) + 1));
        let columns = DEVICE_COLUMNS
            .split(", ")
            .map(|c| format!("d.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT d.rowid AS list_row, {columns} FROM devices d WHERE {} ORDER BY d.rowid LIMIT {lim}",
            w.clause()
        );
        let rows = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        let mut recs = rows
            .iter()
            .take(limit as usize)
            .map(device_record)
            .collect::<Result<Vec<_>>>()?;
        fill_groups(&self.pool, self, &mut recs).await?;
        let next = match rows.get(limit as usize - 1) {
            Some(last) if rows.len() > limit as usize => Some(RowCursor {
                row: sqlx::Row::try_get::<i64, _>(last, "list_row")?,
            }),
            _ => None,
        };
        Ok((recs, next))
    }

    /// Live devices counted by effective mode, by assigned mode, by hardware and by
    /// group (each a list of `(key, count)` sorted by key).
    pub async fn device_breakdown(&self) -> Result<DeviceBreakdown> {
        let by = |sql: &'static str| async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
            Ok::<_, StoreError>(
                rows.into_iter()
                    .map(|(k, n)| (k, n.max(0) as u64))
                    .collect::<Vec<_>>(),
            )
        };
        Ok(DeviceBreakdown {
            by_mode: by(
                "SELECT effective_mode, count(*) FROM devices WHERE revoked_at IS NULL
                 GROUP BY effective_mode ORDER BY effective_mode",
            )
            .await?,
            by_assigned_mode: by(
                "SELECT assigned_mode, count(*) FROM devices WHERE revoked_at IS NULL
                 GROUP BY assigned_mode ORDER BY assigned_mode",
            )
            .await?,
            by_hardware: by(
                "SELECT hardware, count(*) FROM devices WHERE revoked_at IS NULL
                 GROUP BY hardware ORDER BY hardware",
            )
            .await?,
            by_group: by("SELECT m.group_name, count(*) FROM device_group_members m
                 JOIN devices d ON d.id = m.device_id WHERE d.revoked_at IS NULL
                 GROUP BY m.group_name ORDER BY m.group_name")
            .await?,
            by_zone: by("SELECT z.zone, count(*) FROM device_zones z
                 JOIN devices d ON d.id = z.device_id WHERE d.revoked_at IS NULL
                 GROUP BY z.zone ORDER BY z.zone")
            .await?,
        })
    }

    /// How many devices `filter` covers.
    pub async fn count_devices(
        &self,
        filter: &DeviceFilter,
        stale_before: Timestamp,
    ) -> Result<u64> {
        let w = Where::build(filter, stale_before);
        let sql = format!("SELECT count(*) AS n FROM devices d WHERE {}", w.clause());
        let row = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_one(&self.pool)
            .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, "n")?.max(0) as u64)
    }
}

/// A device of a bulk command that has not got its own command yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPending {
    /// The bulk action.
    pub bulk_id: String,
    /// What every device gets.
    pub action: DeviceAction,
    /// Who asked (`admin:NAME`).
    pub created_by: String,
    /// From where.
    pub source: String,
    /// When each command expires.
    pub expires_at: Timestamp,
    /// The device.
    pub device: DeviceId,
}

/// A bulk command about to start.
#[derive(Debug, Clone)]
pub struct NewBulk<'a> {
    /// Its id.
    pub id: &'a str,
    /// What every device gets.
    pub action: &'a DeviceAction,
    /// The filter, as the API carried it (kept with the action and in the audit entry).
    pub filter_json: &'a str,
    /// Who asks.
    pub created_by: &'a str,
    /// From where.
    pub source: &'a str,
    /// When each command expires.
    pub expires_at: Timestamp,
}

impl Store {
    /// The WHERE clause of the live devices `filter` covers, and their number, if it is
    /// `expected` (else `CountMismatch`): a bulk action never touches revoked devices.
    async fn confirm_count(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        filter: &DeviceFilter,
        stale_before: Timestamp,
        expected: u64,
    ) -> Result<(Where, u64)> {
        let live = DeviceFilter {
            include_revoked: false,
            ..filter.clone()
        };
        let w = Where::build(&live, stale_before);
        let sql = format!("SELECT count(*) AS n FROM devices d WHERE {}", w.clause());
        let row = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_one(&mut **tx)
            .await?;
        let actual = sqlx::Row::try_get::<i64, _>(&row, "n")?.max(0) as u64;
        if actual != expected {
            return Err(StoreError::CountMismatch { expected, actual });
        }
        Ok((w, actual))
    }

    /// Assigns `mode` to every live device `filter` covers, if they are exactly
    /// `expected` devices; they wait for their new bundles ([`Store::reissue_stale`]).
    /// One transaction with the one audit entry `audit` makes from the count.
    #[allow(clippy::too_many_arguments)]
    pub async fn bulk_set_mode(
        &self,
        filter: &DeviceFilter,
        stale_before: Timestamp,
        expected: u64,
        mode: &ModeName,
        now: Timestamp,
        audit: impl FnOnce(u64) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        crate::devices::load_mode(&mut tx, mode).await?;
        let (mut w, n) = Store::confirm_count(&mut tx, filter, stale_before, expected).await?;
        let m = w.param(Value::Text(mode.to_string()));
        let sql = format!(
            "UPDATE devices SET assigned_mode = {m}, bundle_stale = 1
             WHERE id IN (SELECT d.id FROM devices d WHERE {})",
            w.clause()
        );
        w.bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&mut *tx)
            .await?;
        crate::audit::append(&mut tx, &audit(n), now, sign).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Fixes the live devices `filter` covers as the targets of a bulk command, if they
    /// are exactly `expected`, with the one audit entry `audit` makes from the count,
    /// in one transaction. Their commands are made by [`Store::carry_out_bulk`].
    #[allow(clippy::too_many_arguments)]
    pub async fn start_bulk_command(
        &self,
        bulk: &NewBulk<'_>,
        filter: &DeviceFilter,
        stale_before: Timestamp,
        expected: u64,
        now: Timestamp,
        audit: impl FnOnce(u64) -> Vec<AuditDraft>,
        sign: HeadSigner<'_>,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let (mut w, n) = Store::confirm_count(&mut tx, filter, stale_before, expected).await?;
        sqlx::query(
            "INSERT INTO bulk_actions (id, action, body, filter, devices, created_by, source, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(bulk.id)
        .bind(bulk.action.name())
        .bind(to_json(bulk.action))
        .bind(bulk.filter_json)
        .bind(n as i64)
        .bind(bulk.created_by)
        .bind(bulk.source)
        .bind(now.unix())
        .bind(bulk.expires_at.unix())
        .execute(&mut *tx)
        .await?;
        let id = w.param(Value::Text(bulk.id.to_owned()));
        let sql = format!(
            "INSERT INTO bulk_action_devices (bulk_id, device_id) SELECT {id}, d.id FROM devices d WHERE {}",
            w.clause()
        );
        w.bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&mut *tx)
            .await?;
        crate::audit::append(&mut tx, &audit(n), now, sign).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Up to `limit` devices of bulk commands still waiting for their own command,
    /// oldest bulk first.
    pub async fn pending_bulk(&self, limit: u32) -> Result<Vec<BulkPending>> {
        let rows = sqlx::query(
            "SELECT b.id, b.body, b.created_by, b.source, b.expires_at, p.device_id
             FROM bulk_action_devices p JOIN bulk_actions b ON b.id = p.bulk_id
             WHERE p.done = 0 ORDER BY b.created_at, b.id, p.device_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                Ok(BulkPending {
                    bulk_id: r.try_get("id")?,
                    action: from_json("bulk action", r.try_get("body")?)?,
                    created_by: r.try_get("created_by")?,
                    source: r.try_get("source")?,
                    expires_at: Timestamp(r.try_get("expires_at")?),
                    device: parse("device id", r.try_get("device_id")?)?,
                })
            })
            .collect()
    }

    /// Gives each pending device its own command (`make` signs it for the issue time,
    /// strictly after the device's previous command), in one transaction; a device
    /// revoked since is skipped, a command already standing is kept. Marks the bulk
    /// actions whose devices are all done as finished. Returns the commands made.
    pub async fn carry_out_bulk(
        &self,
        items: &[BulkPending],
        now: Timestamp,
        mut make: impl FnMut(&BulkPending, Timestamp) -> NewCommand,
    ) -> Result<Vec<CommandRecord>> {
        let mut tx = self.write_tx().await?;
        let mut made = Vec::new();
        for item in items {
            let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT d.revoked_at, (SELECT MAX(c.created_at) FROM device_commands c WHERE c.device_id = d.id)
                 FROM devices d WHERE d.id = $1",
            )
            .bind(item.device.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((None, newest)) = row {
                let at = match newest {
                    Some(prev) if prev >= now.unix() => Timestamp(prev + 1),
                    _ => now,
                };
                let new = make(item, at);
                let (c, existing) = crate::commands::insert_command(&mut tx, &new, at).await?;
                if !existing {
                    made.push(c);
                }
            }
            sqlx::query(
                "UPDATE bulk_action_devices SET done = 1 WHERE bulk_id = $1 AND device_id = $2",
            )
            .bind(&item.bulk_id)
            .bind(item.device.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let mut ids: Vec<&str> = items.iter().map(|i| i.bulk_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            sqlx::query(
                "UPDATE bulk_actions SET finished_at = $1 WHERE id = $2 AND finished_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM bulk_action_devices WHERE bulk_id = $2 AND done = 0)",
            )
            .bind(now.unix())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(made)
    }
}
