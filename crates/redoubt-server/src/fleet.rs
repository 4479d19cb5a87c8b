//! Fleet-wide views: `GET /devices` (filtered pages with a stable cursor) and
//! `GET /devices/counts` (live devices counted by verdict, mode, assignment, hardware,
//! group and zone, and those connected to this node).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::IntoResponse;
use rand_core::RngCore;
use redoubt_proto::api::{
    BulkAction, BulkDone, BulkRequest, DeviceCount, DeviceCounts, DevicePage, DeviceQuery, Role,
};
use redoubt_proto::{CommandId, DeviceAction, DeviceCommand, SignedEnvelope, Timestamp};
use redoubt_store::{BulkPending, DeviceFilter, NewBulk, NewCommand, RowCursor};

use crate::app::{App, Push};
use crate::audit::Who;
use crate::error::ServiceError;
use crate::http::{Admin, ApiJson, HttpState};
use crate::routes::{ANY_ADMIN, Access, OPERATOR, Routes};

/// Routes merged into `/api/v1`.
pub fn routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/devices", Access::Admin(ANY_ADMIN), list)
        .add(
            Method::GET,
            "/devices/counts",
            Access::Admin(ANY_ADMIN),
            counts,
        )
        .add(
            Method::GET,
            "/devices/count",
            Access::Admin(ANY_ADMIN),
            count,
        )
        .add(Method::POST, "/devices/bulk", Access::Admin(OPERATOR), bulk)
}

/// Where a list's page starts and how long it is, from the query's `after` and
/// `limit` (a cursor this server handed out; 1 to the most a page holds).
pub fn page_of(
    after: Option<&str>,
    limit: Option<u32>,
) -> Result<(Option<RowCursor>, u32), ServiceError> {
    let limit = limit.unwrap_or(DeviceQuery::DEFAULT_LIMIT);
    if !(1..=DeviceQuery::MAX_LIMIT).contains(&limit) {
        return Err(ServiceError::BadRequest(format!(
            "limit must be between 1 and {}",
            DeviceQuery::MAX_LIMIT
        )));
    }
    let after = after
        .map(|a| {
            RowCursor::decode(a).ok_or_else(|| {
                ServiceError::BadRequest(
                    "after must be the `next` cursor of a previous page".into(),
                )
            })
        })
        .transpose()?;
    Ok((after, limit))
}

/// The store's filter for a query's filters (paging aside).
pub fn filter_of(q: &DeviceQuery) -> DeviceFilter {
    DeviceFilter {
        compliance: q.compliance,
        mode: q.mode.clone(),
        assigned_mode: q.assigned_mode.clone(),
        user: q.user.clone(),
        hardware: q.hardware,
        group: q.group.clone(),
        zone: q.zone.clone(),
        seen_before: q.seen_before,
        seen_after: q.seen_after,
        include_revoked: q.revoked,
    }
}

impl App {
    /// The moment before which a device's latest report makes it `stale`.
    pub fn stale_before(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(
            -(i64::from(self.config.check_in_interval_secs)
                * i64::from(self.config.stale_after_intervals)),
        )
    }

    /// `GET /devices`: one page of the devices the query covers.
    pub async fn list_devices(&self, q: &DeviceQuery) -> Result<DevicePage, ServiceError> {
        let (after, limit) = page_of(q.after.as_deref(), q.limit)?;
        let now = Timestamp::now();
        let (devices, next) = self
            .store
            .list_devices_page(&filter_of(q), self.stale_before(now), after.as_ref(), limit)
            .await?;
        Ok(DevicePage {
            devices: devices
                .into_iter()
                .map(|d| self.device_view(d, now))
                .collect(),
            next: next.map(|c| c.encode()),
        })
    }

    /// `GET /devices/counts`.
    pub async fn device_counts(&self) -> Result<DeviceCounts, ServiceError> {
        let by_compliance: std::collections::BTreeMap<String, u64> = self
            .store
            .compliance_counts(self.stale_before(Timestamp::now()))
            .await?
            .into_iter()
            .map(|(c, n)| (c.as_str().to_owned(), n))
            .collect();
        let b = self.store.device_breakdown().await?;
        Ok(DeviceCounts {
            total: by_compliance.values().sum(),
            // This node's phones and those the other nodes reported in their last
            // heartbeat (a node silent for 15 s counts none).
            connected: self.hub.len() as u64 + self.cluster.peer_devices(),
            by_compliance,
            by_mode: b.by_mode.into_iter().collect(),
            by_assigned_mode: b.by_assigned_mode.into_iter().collect(),
            by_hardware: b.by_hardware.into_iter().collect(),
            by_group: b.by_group.into_iter().collect(),
            by_zone: b.by_zone.into_iter().collect(),
        })
    }
}

impl App {
    /// [`App::device_counts`] taken at most `max_age` ago. One caller counts while the
    /// others wait for its result (the lock guards only this cache; counting reads the
    /// whole fleet, so N open dashboards must not count N times).
    pub async fn recent_device_counts(
        &self,
        max_age: std::time::Duration,
    ) -> Result<DeviceCounts, ServiceError> {
        let mut cached = self.recent_counts.lock().await;
        if let Some((at, counts)) = cached.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(counts.clone());
        }
        let counts = self.device_counts().await?;
        *cached = Some((std::time::Instant::now(), counts.clone()));
        Ok(counts)
    }

    /// The signed command a device of a bulk action gets, issued at `at`.
    pub fn bulk_command(&self, item: &BulkPending, at: Timestamp) -> NewCommand {
        let mut raw = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut raw);
        let command = DeviceCommand {
            id: CommandId::from_random(raw),
            device_id: item.device.clone(),
            action: item.action.clone(),
            issued_at: at,
            expires_at: item.expires_at,
        };
        NewCommand {
            id: command.id.clone(),
            device_id: item.device.clone(),
            action: item.action.clone(),
            envelope: SignedEnvelope::sign(DeviceCommand::KIND, &command, &self.keys.org_signing),
            created_by: item.created_by.clone(),
            source: item.source.clone(),
            expires_at: item.expires_at,
        }
    }

    /// `POST /devices/bulk`.
    pub async fn bulk(&self, by: &Who, req: BulkRequest) -> Result<BulkDone, ServiceError> {
        if req.filter.after.is_some() || req.filter.limit.is_some() || req.filter.revoked {
            return Err(ServiceError::BadRequest(
                "a bulk action's filter takes no after, limit or revoked".into(),
            ));
        }
        let filter_json = serde_json::to_value(&req.filter).unwrap_or_default();
        let now = Timestamp::now();
        let stale_before = self.stale_before(now);
        let filter = filter_of(&req.filter);
        let mut raw = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut raw);
        let id = format!(
            "bulk_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let action = req.action.name();
        let devices = match (req.action, &req.mode) {
            (BulkAction::SetMode, Some(mode)) => {
                self.store
                    .bulk_set_mode(
                        &filter,
                        stale_before,
                        req.expected_count,
                        mode,
                        now,
                        |n| {
                            vec![by.draft(
                                "bulk.set_mode",
                                None,
                                serde_json::json!({"id": id, "filter": filter_json, "count": n, "mode": mode}),
                            )]
                        },
                        &crate::audit::signer(self),
                    )
                    .await?
            }
            (BulkAction::SetMode, None) => {
                return Err(ServiceError::BadRequest("set_mode needs a mode".into()));
            }
            (_, Some(_)) => {
                return Err(ServiceError::BadRequest(format!(
                    "{action} takes no mode"
                )));
            }
            (kind, None) => {
                let ttl = req.expires_in_secs.unwrap_or(self.config.command_ttl_secs);
                if !(10..=90 * 24 * 3600).contains(&ttl) {
                    return Err(ServiceError::BadRequest(
                        "expires_in_secs must be between 10 and 7776000".into(),
                    ));
                }
                let command = match kind {
                    BulkAction::Lock => DeviceAction::Lock,
                    BulkAction::Unlock => DeviceAction::Unlock,
                    _ => DeviceAction::Wipe,
                };
                let expires_at = now.plus_secs(ttl as i64);
                let filter_text = filter_json.to_string();
                self.store
                    .start_bulk_command(
                        &NewBulk {
                            id: &id,
                            action: &command,
                            filter_json: &filter_text,
                            created_by: &by.actor,
                            source: &by.source,
                            expires_at,
                        },
                        &filter,
                        stale_before,
                        req.expected_count,
                        now,
                        |n| {
                            vec![by.draft(
                                &format!("bulk.{action}"),
                                None,
                                serde_json::json!({"id": id, "filter": filter_json, "count": n, "expires_at": expires_at}),
                            )]
                        },
                        &crate::audit::signer(self),
                    )
                    .await?
            }
        };
        self.fleet_worker.wake();
        tracing::info!(bulk = %id, action, devices, by = %by.actor, "bulk action accepted");
        Ok(BulkDone {
            id,
            action: action.to_owned(),
            devices,
        })
    }
}

async fn bulk(
    State(s): State<HttpState>,
    admin: Admin,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "act on devices")?;
    if req.action == BulkAction::Wipe {
        admin.require(Role::Owner, "wipe devices in bulk")?;
    }
    Ok(Json(s.app.bulk(&Who::admin(&admin), req).await?))
}

fn parse_query(
    query: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<DeviceQuery, ServiceError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ServiceError::BadRequest(format!("bad query: {}", e.body_text())))
}

async fn list(
    State(s): State<HttpState>,
    _admin: Admin,
    query: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.list_devices(&parse_query(query)?).await?))
}

async fn count(
    State(s): State<HttpState>,
    _admin: Admin,
    query: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    let q = parse_query(query)?;
    if q.after.is_some() || q.limit.is_some() {
        return Err(ServiceError::BadRequest(
            "a count takes no after or limit".into(),
        ));
    }
    let n = s
        .app
        .store
        .count_devices(&filter_of(&q), s.app.stale_before(Timestamp::now()))
        .await?;
    Ok(Json(DeviceCount { count: n }))
}

async fn counts(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.device_counts().await?))
}

/// Carries out what bulk changes left to do, in batches: the bundles of devices whose
/// assignments changed (`bundle_stale`), then the commands of bulk lock, unlock and
/// wipe; pushes each to its phone if connected. Woken after every such change, and at
/// start, so work a stop interrupted is finished.
#[derive(Debug, Default)]
pub struct FleetWorker {
    wake: tokio::sync::Notify,
}

/// Devices whose bundles or commands one transaction issues.
pub const BATCH: u32 = 500;

impl FleetWorker {
    /// Asks the task to look for work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One batch of work; `false` when there was none.
    async fn step(app: &App) -> Result<bool, ServiceError> {
        let now = Timestamp::now();
        let done = app
            .store
            .reissue_stale(BATCH, |r| app.issue_bundle(r, now))
            .await?;
        if !done.is_empty() {
            for d in &done {
                app.push(&d.id, Push::BundleChanged);
            }
            tracing::debug!(devices = done.len(), "bundles reissued");
            return Ok(true);
        }
        let pending = app.store.pending_bulk(BATCH).await?;
        if pending.is_empty() {
            return Ok(false);
        }
        // Issue times strictly increase per device, as for single commands.
        let _issuing = app.command_issue.lock().await;
        let made = app
            .store
            .carry_out_bulk(&pending, Timestamp::now(), |item, at| {
                app.bulk_command(item, at)
            })
            .await?;
        for c in &made {
            app.push(&c.device_id, Push::CommandsChanged);
        }
        tracing::debug!(
            devices = pending.len(),
            commands = made.len(),
            "bulk commands issued"
        );
        Ok(true)
    }

    /// Runs until the server shuts down.
    pub async fn run(app: Arc<App>) {
        let mut shutdown = app.shutdown.clone();
        loop {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                match FleetWorker::step(&app).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "bulk work failed; retrying in 5 s");
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
            tokio::select! {
                _ = app.fleet_worker.wake.notified() => {}
                // Another node may have stopped in the middle of a bulk change: every
                // node looks for work left over now and then, not only at its start.
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How often the worker looks for work nobody woke it for.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(30);
