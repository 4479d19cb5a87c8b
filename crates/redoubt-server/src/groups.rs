//! Device groups (`/groups`): a unit, a department, a site. A device may be in several;
//! a group may assign a mode, and a device's bundle carries every mode assigned to it
//! (its own and its groups'), of which the strictest applies. Every change is audited
//! in its own transaction.
//!
//! A change that touches many devices marks them `bundle_stale` in that transaction
//! and wakes the [`crate::fleet::FleetWorker`], which issues their bundles in batches
//! (one transaction and one fsync per batch) and pushes each to its phone if
//! connected; it also runs at start, so a change whose bundles were not all issued
//! before a crash is completed.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use redoubt_proto::api::{
    CreateDeviceGroup, DeviceGroupView, GroupChange, GroupDevices, Role, SetGroupMode,
};
use redoubt_proto::{DeviceGroupName, Timestamp};
use redoubt_store::DeviceGroupRecord;

use crate::app::App;
use crate::audit::Who;
use crate::error::ServiceError;
use crate::http::{Admin, ApiJson, HttpState, parse_path};
use crate::routes::{ANY_ADMIN, Access, OPERATOR, Routes};

/// Routes merged into `/api/v1`.
pub fn routes() -> Routes {
    use Access::Admin as A;
    Routes::new()
        .add(Method::GET, "/groups", A(ANY_ADMIN), list)
        .add(Method::POST, "/groups", A(OPERATOR), create)
        .add(Method::GET, "/groups/{name}", A(ANY_ADMIN), show)
        .add(Method::POST, "/groups/{name}/devices", A(OPERATOR), add)
        .add(
            Method::POST,
            "/groups/{name}/devices/remove",
            A(OPERATOR),
            remove,
        )
        .add(Method::PUT, "/groups/{name}/mode", A(OPERATOR), set_mode)
}

/// The API view of a stored group.
pub fn view(g: DeviceGroupRecord) -> DeviceGroupView {
    DeviceGroupView {
        name: g.name,
        description: g.description,
        mode: g.mode,
        devices: g.devices,
        created_by: g.created_by,
        created_at: g.created_at,
        updated_at: g.updated_at,
    }
}

/// Longest group description accepted.
const MAX_DESCRIPTION: usize = 500;

async fn list(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    let groups = s.app.store.list_device_groups().await?;
    Ok(Json(groups.into_iter().map(view).collect::<Vec<_>>()))
}

async fn show(
    State(s): State<HttpState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let name: DeviceGroupName = parse_path(&name)?;
    let g = s
        .app
        .store
        .get_device_group(&name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no device group {name}")))?;
    Ok(Json(view(g)))
}

async fn create(
    State(s): State<HttpState>,
    admin: Admin,
    ApiJson(req): ApiJson<CreateDeviceGroup>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "manage device groups")?;
    let g = s.app.create_device_group(&Who::admin(&admin), req).await?;
    Ok((StatusCode::CREATED, Json(view(g))))
}

fn check_devices(req: &GroupDevices) -> Result<(), ServiceError> {
    if req.devices.is_empty() || req.devices.len() > GroupDevices::MAX {
        return Err(ServiceError::BadRequest(format!(
            "name between 1 and {} devices per request",
            GroupDevices::MAX
        )));
    }
    Ok(())
}

async fn add(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GroupDevices>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "manage device groups")?;
    let name: DeviceGroupName = parse_path(&name)?;
    Ok(Json(
        s.app
            .change_group_members(&Who::admin(&admin), &name, &req, true)
            .await?,
    ))
}

async fn remove(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<GroupDevices>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "manage device groups")?;
    let name: DeviceGroupName = parse_path(&name)?;
    Ok(Json(
        s.app
            .change_group_members(&Who::admin(&admin), &name, &req, false)
            .await?,
    ))
}

async fn set_mode(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetGroupMode>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "manage device groups")?;
    let name: DeviceGroupName = parse_path(&name)?;
    Ok(Json(
        s.app
            .set_group_mode(&Who::admin(&admin), &name, req.mode.as_ref())
            .await?,
    ))
}

impl App {
    /// Creates a device group (audited `group.create`).
    pub async fn create_device_group(
        &self,
        by: &Who,
        req: CreateDeviceGroup,
    ) -> Result<DeviceGroupRecord, ServiceError> {
        if req.description.chars().count() > MAX_DESCRIPTION
            || req.description.chars().any(char::is_control)
        {
            return Err(ServiceError::BadRequest(format!(
                "description: at most {MAX_DESCRIPTION} characters, no control characters"
            )));
        }
        let now = Timestamp::now();
        let g = self
            .store
            .create_device_group(
                &req.name,
                &req.description,
                req.mode.as_ref(),
                &by.actor,
                now,
                |g| {
                    vec![by.draft(
                        "group.create",
                        None,
                        serde_json::json!({"group": g.name, "mode": g.mode, "description": g.description}),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        tracing::info!(group = %g.name, by = %by.actor, "device group created");
        Ok(g)
    }

    /// Adds devices to a group (`add`) or removes them, audited as `group.add` or
    /// `group.remove` with the devices that changed.
    pub async fn change_group_members(
        &self,
        by: &Who,
        name: &DeviceGroupName,
        req: &GroupDevices,
        add: bool,
    ) -> Result<GroupChange, ServiceError> {
        check_devices(req)?;
        let action = if add { "group.add" } else { "group.remove" };
        let audit = |g: &DeviceGroupRecord, changed: &[redoubt_proto::DeviceId]| {
            vec![by.draft(
                action,
                None,
                serde_json::json!({"group": g.name, "count": changed.len(), "devices": changed}),
            )]
        };
        let signer = crate::audit::signer(self);
        let now = Timestamp::now();
        let change = if add {
            self.store
                .add_to_device_group(name, &req.devices, now, audit, &signer)
                .await?
        } else {
            self.store
                .remove_from_device_group(name, &req.devices, now, audit, &signer)
                .await?
        };
        self.fleet_worker.wake();
        tracing::info!(group = %name, action, devices = change.changed.len(), by = %by.actor, "group members changed");
        Ok(GroupChange {
            changed: change.changed.len() as u64,
            reissued: change.reissued,
            group: view(change.group),
        })
    }

    /// Sets (or clears) the mode a group assigns (audited `group.mode`).
    pub async fn set_group_mode(
        &self,
        by: &Who,
        name: &DeviceGroupName,
        mode: Option<&redoubt_proto::ModeName>,
    ) -> Result<GroupChange, ServiceError> {
        let (group, reissued) = self
            .store
            .set_device_group_mode(
                name,
                mode,
                Timestamp::now(),
                |before, after| {
                    vec![by.draft(
                        "group.mode",
                        None,
                        serde_json::json!({
                            "group": after.name,
                            "from": before.mode,
                            "to": after.mode,
                            "devices": after.devices,
                        }),
                    )]
                },
                &crate::audit::signer(self),
            )
            .await?;
        self.fleet_worker.wake();
        tracing::info!(group = %name, mode = ?group.mode, devices = reissued, by = %by.actor, "group mode set");
        Ok(GroupChange {
            changed: 0,
            reissued,
            group: view(group),
        })
    }
}
