//! The tamper-evident audit log: its HTTP surface (`/api/v1/audit`, read by the
//! auditor role and above) and the helpers services append with.
//!
//! Appending: a change that is stored in one transaction appends its entries in that
//! same transaction, through the store function's audit parameters and [`signer`];
//! anything else calls [`record`]. Who did it comes from a [`Who`].
//!
//! - `GET /api/v1/audit?device=D&since=RFC3339&after=SEQ&limit=N`: entries, oldest first
//!   (at most `limit`, default 1000, at most 10000; page with `after` = the last `seq`).
//! - `GET /api/v1/audit/head`: the signed head (an `audit-head/v1` envelope).
//! - `GET /api/v1/audit/export`: an [`AuditExport`] of the whole log, read from one
//!   snapshot, verifiable offline with the organization key.
//! - `GET /api/v1/audit/key`: the organization's public key (base64).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::Method;
use ed25519_dalek::SigningKey;
use redoubt_proto::api::Role;
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::{AuditExport, AuditHead, DeviceId, SignedEnvelope, Timestamp};
use redoubt_store::{AuditDraft, AuditFilter};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::ServiceError;
use crate::http::{Admin, HttpState};
use crate::routes::{ANY_ADMIN, Access, Routes};

/// Entries returned by one list request when no limit is given.
pub const DEFAULT_LIMIT: u64 = 1000;
/// The most entries one list request returns.
pub const MAX_LIMIT: u64 = 10_000;

/// Who acts, as the audit log records it: the actor (`admin:NAME`, `device:ID`,
/// `server`, `server-cli`, `anonymous`) and the client's address (or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The actor.
    pub actor: String,
    /// The client's address, or empty.
    pub source: String,
}

impl Who {
    /// An authenticated admin, from the address the request came from.
    pub fn admin(admin: &Admin) -> Who {
        Who {
            actor: admin.actor(),
            source: admin.source.clone(),
        }
    }

    /// A device, from `source`.
    pub fn device(id: &DeviceId, source: &str) -> Who {
        Who {
            actor: format!("device:{id}"),
            source: source.to_owned(),
        }
    }

    /// A client that has not proven who it is, from `source`.
    pub fn anonymous(source: &str) -> Who {
        Who {
            actor: "anonymous".into(),
            source: source.to_owned(),
        }
    }

    /// The server itself.
    pub fn server() -> Who {
        Who {
            actor: "server".into(),
            source: String::new(),
        }
    }

    /// The offline `redoubt-server` subcommands, run on the server's machine.
    pub fn server_cli() -> Who {
        Who {
            actor: "server-cli".into(),
            source: String::new(),
        }
    }

    /// An entry saying this actor did `action` (about `device`) with `detail` (a JSON
    /// object; never a secret).
    pub fn draft(
        &self,
        action: &str,
        device: Option<&DeviceId>,
        detail: serde_json::Value,
    ) -> AuditDraft {
        AuditDraft {
            actor: self.actor.clone(),
            source: self.source.clone(),
            action: action.to_owned(),
            device_id: device.cloned(),
            detail,
        }
    }
}

/// Signs new heads of the log with `key` (the organization key).
pub fn sign_with(key: &SigningKey) -> impl Fn(&AuditHead) -> SignedEnvelope + Send + Sync + '_ {
    move |head| SignedEnvelope::sign(AuditHead::KIND, head, key)
}

/// Signs new heads of the log with the organization key, for store functions that
/// append in their own transaction: `store.f(…, &audit::signer(app))`.
pub fn signer(app: &App) -> impl Fn(&AuditHead) -> SignedEnvelope + Send + Sync + '_ {
    sign_with(&app.keys.org_signing)
}

/// Appends `drafts` (in order, now) in a transaction of their own.
pub async fn record(app: &App, drafts: &[AuditDraft]) -> Result<(), ServiceError> {
    app.store
        .audit_append(drafts, Timestamp::now(), &signer(app))
        .await?;
    Ok(())
}

/// Routes under `/api/v1/audit`.
pub fn routes() -> Routes {
    use Access::Admin as A;
    use Method as V;
    Routes::new()
        .add(V::GET, "/", A(ANY_ADMIN), list)
        .add(V::GET, "/head", A(ANY_ADMIN), head)
        .add(V::GET, "/export", A(ANY_ADMIN), export)
        .add(V::GET, "/key", A(ANY_ADMIN), key)
}

/// Query of `GET /audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    device: Option<String>,
    since: Option<String>,
    after: Option<u64>,
    limit: Option<u64>,
}

impl ListQuery {
    fn filter(self) -> Result<AuditFilter, ServiceError> {
        let device = self
            .device
            .map(|d| {
                d.parse::<DeviceId>()
                    .map_err(|e| ServiceError::BadRequest(format!("device: {e}")))
            })
            .transpose()?;
        let since = self
            .since
            .map(|s| {
                Timestamp::parse(&s).map_err(|_| {
                    ServiceError::BadRequest(
                        "since must be an RFC 3339 time, e.g. 2026-01-31T08:00:00Z".into(),
                    )
                })
            })
            .transpose()?;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ServiceError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        Ok(AuditFilter {
            device,
            since,
            after_seq: self.after,
            limit: Some(limit),
        })
    }
}

const READ: &str = "read the audit log";

async fn list(
    State(s): State<HttpState>,
    admin: Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<redoubt_proto::AuditEntry>>, ServiceError> {
    admin.require(Role::Auditor, READ)?;
    let Query(q) =
        query.map_err(|e| ServiceError::BadRequest(format!("bad query: {}", e.body_text())))?;
    Ok(Json(s.app.store.audit_list(&q.filter()?).await?))
}

async fn head(
    State(s): State<HttpState>,
    admin: Admin,
) -> Result<Json<SignedEnvelope>, ServiceError> {
    admin.require(Role::Auditor, READ)?;
    s.app.store.audit_head().await?.map(Json).ok_or_else(empty)
}

async fn export(
    State(s): State<HttpState>,
    admin: Admin,
) -> Result<Json<AuditExport>, ServiceError> {
    admin.require(Role::Auditor, READ)?;
    let export = export_of(&s.app).await?;
    tracing::info!(by = %admin.name, entries = export.entries.len(), "audit log exported");
    Ok(Json(export))
}

/// The whole log with its signed head and the key that signed it.
pub async fn export_of(app: &App) -> Result<AuditExport, ServiceError> {
    let (entries, head) = app.store.audit_snapshot().await?;
    let head = head.ok_or_else(empty)?;
    Ok(AuditExport {
        format: AuditExport::FORMAT.into(),
        organization_key: org_key(app),
        entries,
        head,
    })
}

/// [`export_of`] as JSON text.
pub async fn export_json(app: &App) -> Result<String, ServiceError> {
    serde_json::to_string_pretty(&export_of(app).await?)
        .map_err(|e| ServiceError::Internal(format!("cannot write the export: {e}")))
}

/// Body of `GET /audit/key`.
#[derive(Debug, Serialize)]
struct OrgKey {
    organization_key: String,
}

async fn key(State(s): State<HttpState>, admin: Admin) -> Result<Json<OrgKey>, ServiceError> {
    admin.require(Role::Auditor, READ)?;
    Ok(Json(OrgKey {
        organization_key: org_key(&s.app),
    }))
}

fn org_key(app: &App) -> String {
    encode_public_key(&app.keys.org_signing.verifying_key())
}

fn empty() -> ServiceError {
    ServiceError::NotFound("the audit log has no entries yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(device: Option<&str>, since: Option<&str>, limit: Option<u64>) -> ListQuery {
        ListQuery {
            device: device.map(str::to_owned),
            since: since.map(str::to_owned),
            after: Some(7),
            limit,
        }
    }

    #[test]
    fn list_queries_are_checked() {
        let f = query(None, Some("2026-01-31T08:00:00Z"), None)
            .filter()
            .expect("valid");
        assert_eq!(f.limit, Some(DEFAULT_LIMIT));
        assert_eq!(f.after_seq, Some(7));
        assert_eq!(
            f.since,
            Some(Timestamp::parse("2026-01-31T08:00:00Z").expect("time"))
        );
        assert_eq!(
            query(None, None, Some(MAX_LIMIT))
                .filter()
                .expect("max")
                .limit,
            Some(MAX_LIMIT)
        );
        for bad in [
            query(None, None, Some(0)),
            query(None, None, Some(MAX_LIMIT + 1)),
            query(None, Some("yesterday"), None),
            query(Some("../x"), None, None),
        ] {
            assert!(matches!(bad.filter(), Err(ServiceError::BadRequest(_))));
        }
    }

    #[test]
    fn drafts_carry_who_and_what() {
        let id = DeviceId::from_random([1; 12]);
        let d = Who::device(&id, "10.1.2.3").draft(
            "device.enroll",
            Some(&id),
            serde_json::json!({"user": "a"}),
        );
        assert_eq!(d.actor, format!("device:{id}"));
        assert_eq!(d.source, "10.1.2.3");
        assert_eq!(d.device_id, Some(id));
        assert_eq!(Who::server_cli().actor, "server-cli");
        let key = SigningKey::from_bytes(&[3; 32]);
        let head = AuditHead {
            seq: 1,
            hash: redoubt_policy::GENESIS.into(),
            signed_at: Timestamp(1),
        };
        let env = sign_with(&key)(&head);
        assert_eq!(
            env.verify::<AuditHead>(AuditHead::KIND, &key.verifying_key()),
            Ok(head)
        );
    }
}
