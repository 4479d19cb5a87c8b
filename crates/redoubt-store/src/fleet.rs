//! Fleet queries: which devices a filter covers, in pages with a stable cursor, and
//! how many there are. Lists at 100k devices read one page at a time, in the order
//! of the `devices_enrolled` index (enrollment time, then id), so a cursor stays valid
//! while devices enroll or change.

use redoubt_proto::{Compliance, DeviceGroupName, HardwareKind, ModeName, Timestamp, UserName};

use crate::devices::{DEVICE_COLUMNS, DeviceRecord, device_record, fill_groups, hardware_str};
use crate::{Result, Store, StoreError};

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
    /// Latest report before this time (or none at all).
    pub seen_before: Option<Timestamp>,
    /// Latest report at or after this time.
    pub seen_after: Option<Timestamp>,
    /// Revoked devices too (by default only live ones).
    pub include_revoked: bool,
}

/// Where a page starts: after this device, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCursor {
    /// Enrollment time of the last device of the previous page.
    pub enrolled_at: Timestamp,
    /// Its id.
    pub id: String,
}

impl DeviceCursor {
    /// The cursor as the API carries it.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.enrolled_at.unix(), self.id)
    }

    /// Reads a cursor the API handed out; `None` for anything else.
    pub fn decode(s: &str) -> Option<DeviceCursor> {
        let (at, id) = s.split_once('.')?;
        let id: redoubt_proto::DeviceId = id.parse().ok()?;
        Some(DeviceCursor {
            enrolled_at: Timestamp(at.parse().ok()?),
            id: id.as_str().to_owned(),
        })
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
}

/// Most devices one page holds.
pub const MAX_PAGE: u32 = 5_000;

impl Store {
    /// One page of the devices `filter` covers, in enrollment order, starting after
    /// `after`; with the cursor of the next page when more follow.
    pub async fn list_devices_page(
        &self,
        filter: &DeviceFilter,
        stale_before: Timestamp,
        after: Option<&DeviceCursor>,
        limit: u32,
    ) -> Result<(Vec<DeviceRecord>, Option<DeviceCursor>)> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(StoreError::Conflict(format!(
                "a page holds 1 to {MAX_PAGE} devices"
            )));
        }
        let mut w = Where::build(filter, stale_before);
        if let Some(c) = after {
            let at = w.param(Value::Int(c.enrolled_at.unix()));
            let id = w.param(Value::Text(c.id.clone()));
            w.sql.push(format!(
                "(d.enrolled_at > {at} OR (d.enrolled_at = {at} AND d.id > {id}))"
            ));
        }
        let lim = w.param(Value::Int(i64::from(limit) + 1));
        let columns = DEVICE_COLUMNS
            .split(", ")
            .map(|c| format!("d.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns} FROM devices d WHERE {} ORDER BY d.enrolled_at, d.id LIMIT {lim}",
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
        let next = (rows.len() > limit as usize)
            .then(|| recs.last())
            .flatten()
            .map(|d| DeviceCursor {
                enrolled_at: d.enrolled_at,
                id: d.id.as_str().to_owned(),
            });
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
