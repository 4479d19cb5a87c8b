//! Device commands: `POST /devices/{id}/commands` (lock, unlock, wipe, revoke,
//! exit-zone) and `GET /devices/{id}/commands`.
//!
//! Lifecycle: **queued** (stored, signed by the organization key) → **delivered** (sent
//! over the phone's session; re-sent at every connection until acknowledged) →
//! **acknowledged** (the phone verified and stored it) → **verified** (a signed report
//! from the phone shows the effect: lockdown under the lock, the lock lifted, the zone
//! left, the final report of a wipe). Not acknowledged by its expiry → **expired**;
//! refused by the phone → **failed**. `revoke` acts on the server alone and is verified
//! at once. A wipe that does not end verified revokes the device: refused by the phone
//! (for any reason), or expired unacknowledged, or acknowledged but without the final
//! report by its expiry. Expiry is the server's alone to judge: the phone never refuses a
//! lock or a wipe for its age (its clock is the holder's). A request that matches a command already standing returns that command.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use rand_core::RngCore;
use redoubt_proto::api::{CommandPage, CommandQuery, CommandView, CreateCommand, Role};
use redoubt_proto::{
    CommandId, CommandState, Compliance, ComplianceReport, DeviceAction, DeviceCommand,
    DeviceEventKind, DeviceId, SignedEnvelope, Timestamp,
};
use redoubt_store::{CommandFilter, CommandRecord, NewCommand};

use crate::app::{App, Push};
use crate::error::ServiceError;
use crate::http::{Admin, ApiJson, HttpState, parse_path};
use crate::routes::{ANY_ADMIN, Access, OPERATOR, Routes};

/// Routes merged into `/api/v1`.
pub fn routes() -> Routes {
    use Access::Admin as A;
    Routes::new()
        .add(Method::POST, "/devices/{id}/commands", A(OPERATOR), create)
        .add(Method::GET, "/devices/{id}/commands", A(ANY_ADMIN), list)
        .add(Method::GET, "/commands", A(ANY_ADMIN), list_all)
}

/// `GET /commands`: one page of the fleet's commands, oldest first.
async fn list_all(
    State(s): State<HttpState>,
    _admin: Admin,
    query: Result<axum::extract::Query<CommandQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ServiceError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let (after, limit) = crate::fleet::page_of(q.after.as_deref(), q.limit)?;
    s.app.expire_commands().await?;
    let filter = CommandFilter {
        state: q.state,
        action: q.action,
        device: q.device,
    };
    let (commands, next) = s
        .app
        .store
        .list_commands_page(&filter, after.as_ref(), limit)
        .await?;
    Ok(Json(CommandPage {
        commands: commands.into_iter().map(|c| view(c, false)).collect(),
        next: next.map(|c| c.encode()),
    }))
}

/// The API view of a stored command.
pub fn view(c: CommandRecord, existing: bool) -> CommandView {
    CommandView {
        id: c.id,
        device_id: c.device_id,
        action: c.action,
        state: c.state,
        created_by: c.created_by,
        created_at: c.created_at,
        expires_at: c.expires_at,
        delivered_at: c.delivered_at,
        acknowledged_at: c.acknowledged_at,
        verified_at: c.verified_at,
        note: c.note,
        existing,
    }
}

/// Whether `report` (judged `compliance`) shows the effect of command `c`; the note says
/// what verified it.
pub fn judge(
    c: &CommandRecord,
    report: &ComplianceReport,
    compliance: Compliance,
) -> Option<String> {
    let done = report.commands_done.contains(&c.id);
    let compliant = compliance == Compliance::Compliant;
    let seq = report.seq;
    match &c.action {
        DeviceAction::Lock => (done
            && compliant
            && report.locked_by.as_ref() == Some(&c.id)
            && report.effective_mode == redoubt_policy::LOCKDOWN)
            .then(|| format!("report {seq}: locked, lockdown enforced and measured")),
        DeviceAction::Unlock => (done && compliant && report.locked_by.is_none())
            .then(|| format!("report {seq}: lock lifted, {} enforced", report.effective_mode)),
        DeviceAction::ExitZone { zone } => (done && compliant && !report.zones.contains(zone))
            .then(|| format!("report {seq}: outside zone {zone}, {} enforced", report.effective_mode)),
        DeviceAction::EnterZone { zone } => (done && compliant && report.zones.contains(zone))
            .then(|| format!("report {seq}: inside zone {zone}, {} enforced", report.effective_mode)),
        DeviceAction::Wipe => report
            .events
            .iter()
            .any(|e| matches!(&e.kind, DeviceEventKind::CommandDone { command, .. } if command == &c.id))
            .then(|| format!("report {seq}: the phone's last signed report before destroying its keys")),
        DeviceAction::Revoke => None,
    }
}

impl App {
    /// Creates (or finds the standing) command for a device and pushes it to the phone.
    pub async fn create_command(
        &self,
        admin: &Admin,
        device: &DeviceId,
        req: CreateCommand,
    ) -> Result<CommandView, ServiceError> {
        let _issuing = self.command_issue.lock().await;
        // Strictly after the device's previous command: the phone decides between a
        // lock and an unlock by their signed issue times, a tie would keep the lock.
        let now = match self.store.newest_command_at(device).await? {
            Some(prev) if prev.0 >= Timestamp::now().0 => Timestamp(prev.0 + 1),
            _ => Timestamp::now(),
        };
        let ttl = req.expires_in_secs.unwrap_or(self.config.command_ttl_secs);
        if !(10..=90 * 24 * 3600).contains(&ttl) {
            return Err(ServiceError::BadRequest(
                "expires_in_secs must be between 10 and 7776000".into(),
            ));
        }
        if let DeviceAction::ExitZone { zone } | DeviceAction::EnterZone { zone } = &req.action
            && self.store.get_zone(zone).await?.is_none()
        {
            return Err(ServiceError::NotFound(format!("no zone {zone}")));
        }
        let mut raw = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut raw);
        let command = DeviceCommand {
            id: CommandId::from_random(raw),
            device_id: device.clone(),
            action: req.action.clone(),
            issued_at: now,
            expires_at: now.plus_secs(ttl as i64),
        };
        let envelope = SignedEnvelope::sign(DeviceCommand::KIND, &command, &self.keys.org_signing);
        let (c, existing) = self
            .store
            .create_command(
                NewCommand {
                    id: command.id.clone(),
                    device_id: device.clone(),
                    action: req.action,
                    envelope,
                    created_by: admin.actor(),
                    source: admin.source.clone(),
                    expires_at: command.expires_at,
                },
                now,
                &|h| self.sign_audit_head(h),
            )
            .await?;
        if existing {
            return Ok(view(c, true));
        }
        tracing::info!(device = %device, command = %c.id, action = c.action.name(), by = %admin.name, "command queued");
        let c = if c.action == DeviceAction::Revoke {
            self.revoke_device_as(&crate::audit::Who::admin(admin), &admin.name, device)
                .await?;
            self.store
                .complete_command(
                    device,
                    &c.id,
                    "credentials refused from now on; its conversations were asked to remove it",
                    Timestamp::now(),
                    &|h| self.sign_audit_head(h),
                )
                .await?
        } else {
            self.push(device, Push::CommandsChanged);
            c
        };
        Ok(view(c, false))
    }

    /// A device's commands, newest first (expiring overdue ones first).
    pub async fn list_commands(&self, device: &DeviceId) -> Result<Vec<CommandView>, ServiceError> {
        self.store
            .get_device(device)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no device {device}")))?;
        self.expire_commands().await?;
        Ok(self
            .store
            .list_commands(device)
            .await?
            .into_iter()
            .map(|c| view(c, false))
            .collect())
    }

    /// Moves overdue commands to `expired`.
    pub async fn expire_commands(&self) -> Result<(), ServiceError> {
        for c in self
            .store
            .expire_commands(Timestamp::now(), &|h| self.sign_audit_head(h))
            .await?
        {
            tracing::warn!(device = %c.device_id, command = %c.id, action = c.action.name(), "command expired before the phone carried it out");
            // A lost phone that never came back for its wipe must not keep working
            // credentials: the server does its part of the wipe.
            if c.action == DeviceAction::Wipe {
                self.revoke_device("server (wipe expired unverified)", &c.device_id)
                    .await?;
                self.push(&c.device_id, Push::Revoked);
            }
        }
        Ok(())
    }

    /// The phone acknowledged (or refused) a command.
    pub async fn command_ack(
        &self,
        device: &DeviceId,
        id: &CommandId,
        accepted: bool,
        reason: Option<&str>,
    ) -> Result<CommandRecord, ServiceError> {
        let c = self
            .store
            .acknowledge_command(device, id, accepted, reason, Timestamp::now(), &|h| {
                self.sign_audit_head(h)
            })
            .await?;
        if c.state == CommandState::Failed {
            tracing::warn!(device = %device, command = %id, "the phone refused a command");
            // A wipe the phone refused, for whatever reason it gives (its clock, a
            // signature it claims is bad), leaves the server's part: the device's
            // credentials stop working and it leaves its conversations.
            if c.action == DeviceAction::Wipe {
                self.revoke_device("server (wipe refused by the phone)", device)
                    .await?;
                self.push(device, Push::Revoked);
            }
        }
        Ok(c)
    }

    /// After a report verified a wipe: the device is revoked (its keys are gone).
    pub async fn after_verified(&self, verified: &[CommandRecord]) -> Result<(), ServiceError> {
        for c in verified {
            tracing::info!(device = %c.device_id, command = %c.id, action = c.action.name(), "command verified");
            if c.action == DeviceAction::Wipe {
                self.revoke_device("server (device wiped)", &c.device_id)
                    .await?;
                self.push(&c.device_id, Push::Revoked);
            }
        }
        Ok(())
    }
}

async fn create(
    State(s): State<HttpState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateCommand>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "send commands to devices")?;
    let id: DeviceId = parse_path(&id)?;
    let v = s.app.create_command(&admin, &id, req).await?;
    let status = if v.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(v)))
}

async fn list(
    State(s): State<HttpState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: DeviceId = parse_path(&id)?;
    Ok(Json(s.app.list_commands(&id).await?))
}
