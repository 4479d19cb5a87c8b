//! Secured zones: definitions (`PUT /zones/{name}`), checkpoint codes signed with each
//! checkpoint's own key (`POST /zones/{name}/codes`), and gate-terminal credentials
//! (`POST /zones/{name}/checkpoints/{cp}/gate-credentials`; listed with
//! `GET /zones/{name}/gate-credentials`, revoked with
//! `POST /zones/{name}/gate-credentials/{id}/revoke`), which expire.
//!
//! Every live device's bundle lists every zone with its checkpoints' public keys, so a
//! phone verifies a code offline. Checkpoint keys are derived from the organization key
//! ([`crate::pki::Keys::checkpoint_key`]); nothing more secret is stored.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::RngCore;
use redoubt_proto::api::{
    CreateGateCredential, CredentialId, CredentialState, GateCredentialCreated, GateCredentialView,
    IssueCode, IssuedCode, Role, ZoneDefinition, ZoneView,
};
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::{
    CheckpointCode, CheckpointKey, CheckpointName, Direction, Timestamp, ZoneName,
};
use redoubt_store::{AuditDraft, ZoneRecord};
use serde_json::json;

use crate::app::{App, Push, hash_token, new_token};
use crate::error::ServiceError;
use crate::http::{Admin, ApiJson, HttpState, parse_path};
use crate::routes::{ANY_ADMIN, Access, GATE_READERS, OFFICER, Routes};

/// Routes under `/api/v1/zones`.
pub fn routes() -> Routes {
    use Access::Admin as A;
    use Method as V;
    Routes::new()
        .add(V::GET, "/", A(ANY_ADMIN), list)
        .add(V::GET, "/{name}", A(ANY_ADMIN), show)
        .add(V::PUT, "/{name}", A(OFFICER), put)
        .add(V::POST, "/{name}/codes", A(OFFICER), issue_code)
        .add(
            V::GET,
            "/{name}/gate-credentials",
            A(GATE_READERS),
            list_gate_credentials,
        )
        .add(
            V::POST,
            "/{name}/gate-credentials/{id}/revoke",
            A(OFFICER),
            revoke_gate_credential,
        )
        .add(
            V::POST,
            "/{name}/checkpoints/{checkpoint}/gate-credentials",
            A(OFFICER),
            create_gate_credential,
        )
}

fn check_definition(name: &ZoneName, def: &ZoneDefinition) -> Result<(), ServiceError> {
    if &def.name != name {
        return Err(ServiceError::BadRequest(format!(
            "the zone in the body is {}, the path names {name}",
            def.name
        )));
    }
    if def.checkpoints.is_empty() {
        return Err(ServiceError::BadRequest(format!(
            "zone {name} needs at least one checkpoint"
        )));
    }
    let mut cps = def.checkpoints.clone();
    cps.sort();
    cps.dedup();
    if cps.len() != def.checkpoints.len() {
        return Err(ServiceError::BadRequest(format!(
            "zone {name} names a checkpoint twice"
        )));
    }
    let mut aps = def.wifi_bssids.clone();
    aps.sort();
    aps.dedup();
    if aps.len() != def.wifi_bssids.len() {
        return Err(ServiceError::BadRequest(format!(
            "zone {name} lists a BSSID twice"
        )));
    }
    if def.description.len() > 1000 || def.checkpoints.len() > 64 || def.wifi_bssids.len() > 256 {
        return Err(ServiceError::BadRequest(format!(
            "zone {name} is too large (at most 64 checkpoints, 256 BSSIDs, 1000 characters of description)"
        )));
    }
    Ok(())
}

impl App {
    fn zone_view(&self, z: ZoneRecord, creds: std::collections::BTreeMap<String, u64>) -> ZoneView {
        let checkpoint_keys = z
            .definition
            .checkpoints
            .iter()
            .map(|cp| CheckpointKey {
                name: cp.clone(),
                public_key: encode_public_key(
                    &self
                        .keys
                        .checkpoint_key(&z.definition.name, cp)
                        .verifying_key(),
                ),
            })
            .collect();
        ZoneView {
            definition: z.definition,
            checkpoint_keys,
            gate_credentials: creds,
            updated_at: z.updated_at,
        }
    }

    /// Every zone.
    pub async fn list_zones(&self) -> Result<Vec<ZoneView>, ServiceError> {
        let mut out = Vec::new();
        for z in self.store.list_zones().await? {
            let creds = self
                .store
                .gate_credential_counts(&z.definition.name, Timestamp::now())
                .await?;
            out.push(self.zone_view(z, creds));
        }
        Ok(out)
    }

    /// One zone.
    pub async fn zone(&self, name: &ZoneName) -> Result<ZoneView, ServiceError> {
        let z = self
            .store
            .get_zone(name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no zone {name}")))?;
        let creds = self
            .store
            .gate_credential_counts(name, Timestamp::now())
            .await?;
        Ok(self.zone_view(z, creds))
    }

    /// Creates or replaces a zone; every live device gets a new bundle listing it.
    pub async fn put_zone(
        &self,
        admin: &Admin,
        name: &ZoneName,
        def: ZoneDefinition,
    ) -> Result<ZoneView, ServiceError> {
        check_definition(name, &def)?;
        let now = Timestamp::now();
        let existed = self.store.get_zone(name).await?.is_some();
        let audit = [AuditDraft {
            actor: admin.actor(),
            source: admin.source.clone(),
            action: if existed {
                "zone.updated"
            } else {
                "zone.created"
            }
            .into(),
            device_id: None,
            detail: json!({
                "zone": name.as_str(),
                "mode": def.mode.as_str(),
                "checkpoints": def.checkpoints,
                "wifi_bssids": def.wifi_bssids,
            }),
        }];
        let touched = self
            .store
            .put_zone(&def, now, &audit, &|h| self.sign_audit_head(h), |req| {
                self.issue_bundle(req, now)
            })
            .await?;
        for id in &touched {
            self.push(id, Push::BundleChanged);
        }
        tracing::info!(zone = %name, by = %admin.name, devices = touched.len(), "zone stored");
        self.zone(name).await
    }

    /// Signs a checkpoint code valid from now.
    pub async fn issue_code(
        &self,
        zone: &ZoneName,
        req: &IssueCode,
    ) -> Result<IssuedCode, ServiceError> {
        let z = self
            .store
            .get_zone(zone)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no zone {zone}")))?;
        let checkpoint =
            match &req.checkpoint {
                Some(cp) if z.definition.checkpoints.contains(cp) => cp.clone(),
                Some(cp) => {
                    return Err(ServiceError::NotFound(format!(
                        "no checkpoint {cp} in zone {zone}"
                    )));
                }
                None => z.definition.checkpoints.first().cloned().ok_or_else(|| {
                    ServiceError::Conflict(format!("zone {zone} has no checkpoint"))
                })?,
            };
        let valid = req.valid_secs.unwrap_or(self.config.gate_code_secs);
        if !(5..=300).contains(&valid) {
            return Err(ServiceError::BadRequest(
                "valid_secs must be between 5 and 300".into(),
            ));
        }
        Ok(self.sign_code(zone, &checkpoint, req.direction, valid))
    }

    /// A fresh code for a checkpoint, valid `valid_secs` from now.
    pub fn sign_code(
        &self,
        zone: &ZoneName,
        checkpoint: &CheckpointName,
        direction: Direction,
        valid_secs: u32,
    ) -> IssuedCode {
        let now = Timestamp::now();
        let mut nonce = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let code = CheckpointCode {
            zone: zone.clone(),
            checkpoint: checkpoint.clone(),
            direction,
            not_before: now,
            not_after: now.plus_secs(i64::from(valid_secs)),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
        };
        let text = code.encode(&self.keys.checkpoint_key(zone, checkpoint));
        IssuedCode {
            code: text,
            zone: code.zone,
            checkpoint: code.checkpoint,
            direction,
            not_before: code.not_before,
            not_after: code.not_after,
        }
    }

    /// A new credential for the gate terminal of a checkpoint; the URL carries it once.
    /// It stops working `ttl_secs` (else the configured default) from now.
    pub async fn create_gate_credential(
        &self,
        admin: &Admin,
        zone: &ZoneName,
        checkpoint: &CheckpointName,
        ttl_secs: Option<u64>,
    ) -> Result<GateCredentialCreated, ServiceError> {
        let ttl = ttl_secs.unwrap_or(self.config.gate_credential_ttl_secs);
        crate::app::check_credential_ttl(ttl)?;
        let token = new_token("rgt_");
        let hash = hash_token(&token);
        let id = CredentialId::from_hash(&hash);
        let now = Timestamp::now();
        let expires_at = now.plus_secs(ttl as i64);
        let audit = [AuditDraft {
            actor: admin.actor(),
            source: admin.source.clone(),
            action: "gate.credential_created".into(),
            device_id: None,
            detail: json!({
                "id": id,
                "zone": zone.as_str(),
                "checkpoint": checkpoint.as_str(),
                "expires_at": expires_at,
            }),
        }];
        self.store
            .create_gate_credential(
                &hash,
                zone,
                checkpoint,
                &admin.actor(),
                now,
                expires_at,
                &audit,
                &|h| self.sign_audit_head(h),
            )
            .await?;
        let mut url = self.public_url.clone();
        url.set_path(&format!("/gate/{zone}/{checkpoint}"));
        url.set_query(Some(&format!("key={token}")));
        Ok(GateCredentialCreated {
            zone: zone.clone(),
            checkpoint: checkpoint.clone(),
            url: url.to_string(),
            id: Some(id),
            expires_at: Some(expires_at),
        })
    }

    /// `GET /zones/{name}/gate-credentials`: every gate credential of a zone, without
    /// secrets.
    pub async fn list_gate_credentials(
        &self,
        zone: &ZoneName,
    ) -> Result<Vec<GateCredentialView>, ServiceError> {
        if self.store.get_zone(zone).await?.is_none() {
            return Err(ServiceError::NotFound(format!("no zone {zone}")));
        }
        let now = Timestamp::now();
        Ok(self
            .store
            .list_gate_credentials(zone)
            .await?
            .into_iter()
            .map(|r| gate_view(r, now))
            .collect())
    }

    /// `POST /zones/{name}/gate-credentials/{id}/revoke`: the gate page and its JSON
    /// refuse the credential from the next request on (its cookie too).
    pub async fn revoke_gate_credential(
        &self,
        admin: &Admin,
        zone: &ZoneName,
        id: &CredentialId,
    ) -> Result<GateCredentialView, ServiceError> {
        let now = Timestamp::now();
        let rec = self
            .store
            .revoke_gate_credential(
                zone,
                id,
                &admin.actor(),
                now,
                |r| {
                    vec![AuditDraft {
                        actor: admin.actor(),
                        source: admin.source.clone(),
                        action: "gate.credential_revoked".into(),
                        device_id: None,
                        detail: json!({
                            "id": r.id,
                            "zone": r.zone.as_str(),
                            "checkpoint": r.checkpoint.as_str(),
                        }),
                    }]
                },
                &|h| self.sign_audit_head(h),
            )
            .await?;
        tracing::info!(zone = %zone, id = %id, by = %admin.actor(), "gate credential revoked");
        Ok(gate_view(rec, now))
    }
}

async fn list(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.list_zones().await?))
}

async fn show(
    State(s): State<HttpState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let name: ZoneName = parse_path(&name)?;
    Ok(Json(s.app.zone(&name).await?))
}

async fn put(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(def): ApiJson<ZoneDefinition>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Officer, "define zones")?;
    let name: ZoneName = parse_path(&name)?;
    Ok(Json(s.app.put_zone(&admin, &name, def).await?))
}

async fn issue_code(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<IssueCode>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Officer, "issue checkpoint codes")?;
    let name: ZoneName = parse_path(&name)?;
    let code = s.app.issue_code(&name, &req).await?;
    let audit = [AuditDraft {
        actor: admin.actor(),
        source: admin.source.clone(),
        action: "zone.code_issued".into(),
        device_id: None,
        detail: json!({
            "zone": code.zone.as_str(),
            "checkpoint": code.checkpoint.as_str(),
            "direction": code.direction,
            "not_after": code.not_after.to_string(),
        }),
    }];
    s.app
        .store
        .audit_append(&audit, Timestamp::now(), &|h| s.app.sign_audit_head(h))
        .await?;
    Ok(Json(code))
}

async fn create_gate_credential(
    State(s): State<HttpState>,
    admin: Admin,
    Path((name, checkpoint)): Path<(String, String)>,
    ApiJson(req): ApiJson<CreateGateCredential>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Officer, "create gate credentials")?;
    let name: ZoneName = parse_path(&name)?;
    let checkpoint: CheckpointName = parse_path(&checkpoint)?;
    Ok((
        StatusCode::CREATED,
        Json(
            s.app
                .create_gate_credential(&admin, &name, &checkpoint, req.ttl_secs)
                .await?,
        ),
    ))
}

async fn list_gate_credentials(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    if !matches!(admin.role, Role::Owner | Role::Officer | Role::Auditor) {
        return Err(ServiceError::Forbidden(format!(
            "role {} may not list gate credentials (needs officer or auditor)",
            admin.role
        )));
    }
    let name: ZoneName = parse_path(&name)?;
    Ok(Json(s.app.list_gate_credentials(&name).await?))
}

async fn revoke_gate_credential(
    State(s): State<HttpState>,
    admin: Admin,
    Path((name, id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Officer, "revoke gate credentials")?;
    let name: ZoneName = parse_path(&name)?;
    let id: CredentialId = parse_path(&id)?;
    Ok(Json(
        s.app.revoke_gate_credential(&admin, &name, &id).await?,
    ))
}

fn gate_view(r: redoubt_store::GateCredentialRecord, now: Timestamp) -> GateCredentialView {
    GateCredentialView {
        state: CredentialState::at(now, r.expires_at, r.revoked_at),
        id: r.id,
        zone: r.zone,
        checkpoint: r.checkpoint,
        created_by: r.created_by,
        created_at: r.created_at,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        revoked_by: r.revoked_by,
    }
}
