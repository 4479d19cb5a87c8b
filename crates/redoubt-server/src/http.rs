//! The HTTP surface: routes, the admin-credential extractor with role checks, JSON
//! extraction with API-shaped errors, request metrics, `/healthz` and `/metrics`.
//! Handlers are thin: extract, call one service, map the result.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use redoubt_proto::api::{CreateEnrollment, CredentialId, EnrollRequest, Role, SetMode, WhoAmI};
use redoubt_proto::messaging::{
    Ack, CertificateRequest, ClaimKeyPackages, CreateGroup, PostCommit, PostMessage,
    SessionRequest, UploadKeyPackages,
};
use redoubt_proto::{BlobId, DeviceId, GroupId, Mode, ModeName, Timestamp};
use serde::de::DeserializeOwned;

use crate::app::{SharedApp, Source, hash_token};
use crate::audit::Who;
use crate::error::ServiceError;
use crate::messaging::DeviceSession;

/// Router state: the services and the metrics handle.
#[derive(Clone)]
pub struct HttpState {
    /// Services.
    pub app: SharedApp,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
}

/// Builds the router.
pub fn router(state: HttpState) -> Router {
    let body_limit = state.app.config.max_body_bytes;
    let api = Router::new()
        .route("/enroll", post(enroll))
        .route("/device/ws", get(crate::ws::device_ws))
        .route("/whoami", get(whoami))
        .route("/enrollments", post(create_enrollment))
        .route("/devices", get(list_devices))
        .route("/devices/{id}", get(show_device))
        .route("/devices/{id}/mode", put(set_mode))
        .route("/devices/{id}/approve", post(approve_device))
        .route("/modes", get(list_modes))
        .route("/modes/{name}", get(show_mode).put(put_mode))
        .route("/admin-tokens", get(list_admin_tokens))
        .route("/admin-tokens/{id}/revoke", post(revoke_admin_token))
        .route("/device/challenge", post(device_challenge))
        .route("/device/session", post(device_session));
    // MLS messages (a Welcome for a large group) and files are bigger than admin bodies.
    let message_limit = state.app.config.max_message_bytes * 4 + 64 * 1024;
    let file_limit = state.app.config.max_file_bytes as usize + 64 * 1024;
    let messenger = Router::new()
        .route("/certificate", post(certify))
        .route("/revocations", get(revocations))
        .route("/key-packages", post(upload_key_packages))
        .route("/key-packages/claim", post(claim_key_packages))
        .route("/groups", post(create_group))
        .route("/groups/{id}", get(show_group))
        .route("/groups/{id}/commit", post(post_commit))
        .route("/groups/{id}/messages", post(post_message))
        .route("/queue", get(fetch_queue))
        .route("/queue/ack", post(ack_queue))
        .route("/ws", get(crate::messenger_ws::messenger_ws))
        .layer(DefaultBodyLimit::max(message_limit))
        .merge(
            Router::new()
                .route("/blobs", post(upload_blob))
                .route("/blobs/{id}", get(download_blob))
                .layer(DefaultBodyLimit::max(file_limit)),
        );
    let api = api
        .nest("/messenger", messenger)
        .nest("/audit", crate::audit::routes())
        .nest("/zones", crate::zones::routes())
        .merge(crate::commands::routes());
    Router::new()
        .nest(redoubt_proto::API_PREFIX, api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::gate::routes())
        .fallback(|| async { ServiceError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Records request counts and latencies per route. Every label has a fixed set of
/// values, whatever the client sends: the method is a standard one or `other`, the
/// route is the matched route template or `unmatched`, the status is its class.
///
/// Every request must be answered within the request timeout, body read included: a
/// client that trickles its body is cut off with 408. (A WebSocket upgrade is answered
/// at once; the session that follows is not a request.)
async fn track(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let limit = s.app.config.limits.request_timeout;
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("redoubt_http_request_timeouts_total").increment(1);
            (
                StatusCode::REQUEST_TIMEOUT,
                Json(redoubt_proto::api::ApiError {
                    code: "timeout".into(),
                    message: format!("the request took longer than {} s", limit.as_secs()),
                }),
            )
                .into_response()
        }
    };
    let status = status_label(resp.status());
    metrics::counter!("redoubt_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("redoubt_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The method as a metrics label: one of the standard methods, else `other`.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status as a metrics label: its class (`2xx` … `5xx`, else `other`).
pub fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// JSON body whose rejections are API errors (400 with a message, 413 when too big).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                let message = match &rejection {
                    JsonRejection::JsonDataError(e) => {
                        format!("invalid request body: {}", e.body_text())
                    }
                    JsonRejection::JsonSyntaxError(_) => "request body is not valid JSON".into(),
                    JsonRejection::MissingJsonContentType(_) => {
                        "expected Content-Type: application/json".into()
                    }
                    other => other.body_text(),
                };
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                };
                let status = if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err((
                    status,
                    Json(redoubt_proto::api::ApiError {
                        code: code.into(),
                        message,
                    }),
                )
                    .into_response())
            }
        }
    }
}

/// An authenticated admin credential.
pub struct Admin {
    /// Its public id.
    pub id: CredentialId,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The client's address (for the audit log).
    pub source: String,
}

impl Admin {
    /// Who this is in the audit log.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }

    /// Fails with 403 unless the role permits `needed`.
    pub fn require(&self, needed: Role, action: &str) -> Result<(), ServiceError> {
        if self.role.permits(needed) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "role {} may not {action} (needs {needed})",
                self.role
            )))
        }
    }
}

impl FromRequestParts<HttpState> for Admin {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ServiceError::Unauthorized("missing Authorization: Bearer token".into())
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ServiceError::Unauthorized("expected Authorization: Bearer token".into())
        })?;
        let rec = state
            .app
            .store
            .admin_by_token_hash(&hash_token(token.trim()), Timestamp::now())
            .await?
            .ok_or_else(|| {
                ServiceError::Unauthorized("unknown, expired or revoked admin token".into())
            })?;
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        Ok(Admin {
            id: rec.id,
            expires_at: rec.expires_at,
            name: rec.name,
            role: rec.role,
            source,
        })
    }
}

/// An authenticated device session (`Authorization: Device <token>`).
pub struct Device(pub DeviceSession);

impl FromRequestParts<HttpState> for Device {
    type Rejection = ServiceError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Device "))
            .ok_or_else(|| {
                ServiceError::Unauthorized("expected Authorization: Device <session token>".into())
            })?;
        state
            .app
            .sessions
            .check(token.trim(), Timestamp::now())
            .map(Device)
            .ok_or_else(|| {
                ServiceError::Unauthorized(
                    "device session unknown or expired; sign a new challenge".into(),
                )
            })
    }
}

pub(crate) fn parse_path<T: std::str::FromStr>(s: &str) -> Result<T, ServiceError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| ServiceError::BadRequest(e.to_string()))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: any admin credential may read the metrics (they count devices and
/// traffic, nothing secret, but they are not for anyone on the network).
async fn metrics(State(s): State<HttpState>, admin: Admin) -> Result<String, ServiceError> {
    admin.require(Role::Auditor, "read metrics")?;
    let cfg = &s.app.config;
    let stale_before = Timestamp::now()
        .plus_secs(-(i64::from(cfg.check_in_interval_secs) * i64::from(cfg.stale_after_intervals)));
    for (state, n) in s.app.store.compliance_counts(stale_before).await? {
        metrics::gauge!("redoubt_devices", "compliance" => state.as_str()).set(n as f64);
    }
    metrics::gauge!("redoubt_devices_connected").set(s.app.hub.len() as f64);
    metrics::gauge!("redoubt_messengers_connected").set(s.app.doorbells.len() as f64);
    Ok(s.metrics.render())
}

async fn enroll(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<impl IntoResponse, ServiceError> {
    if !s
        .app
        .enroll_limiter
        .allow(Source::of(peer.ip()), Timestamp::now())
    {
        metrics::counter!("redoubt_enroll_rate_limited_total").increment(1);
        return Err(ServiceError::RateLimited);
    }
    Ok((
        StatusCode::CREATED,
        Json(s.app.enroll(req, peer.ip()).await?),
    ))
}

async fn whoami(admin: Admin) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: admin.name,
        role: admin.role,
        id: Some(admin.id),
        expires_at: Some(admin.expires_at),
    })
}

async fn list_admin_tokens(
    State(s): State<HttpState>,
    admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    // Owners manage credentials; auditors review who holds access.
    if !matches!(admin.role, Role::Owner | Role::Auditor) {
        return Err(ServiceError::Forbidden(format!(
            "role {} may not list admin credentials (needs owner or auditor)",
            admin.role
        )));
    }
    Ok(Json(s.app.list_admin_tokens().await?))
}

async fn revoke_admin_token(
    State(s): State<HttpState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Owner, "revoke admin credentials")?;
    let id: CredentialId = parse_path(&id)?;
    Ok(Json(
        s.app.revoke_admin_token(&Who::admin(&admin), &id).await?,
    ))
}

async fn create_enrollment(
    State(s): State<HttpState>,
    admin: Admin,
    ApiJson(req): ApiJson<CreateEnrollment>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "create enrollment codes")?;
    Ok((
        StatusCode::CREATED,
        Json(s.app.create_enrollment(&Who::admin(&admin), req).await?),
    ))
}

async fn list_devices(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.list_devices().await?))
}

async fn show_device(
    State(s): State<HttpState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: DeviceId = parse_path(&id)?;
    Ok(Json(s.app.device(&id).await?))
}

async fn set_mode(
    State(s): State<HttpState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetMode>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Operator, "change a device's mode")?;
    let id: DeviceId = parse_path(&id)?;
    Ok(Json(
        s.app.set_mode(&Who::admin(&admin), &id, &req.mode).await?,
    ))
}

async fn approve_device(
    State(s): State<HttpState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Owner, "approve devices")?;
    let id: DeviceId = parse_path(&id)?;
    Ok(Json(s.app.approve_device(&Who::admin(&admin), &id).await?))
}

async fn list_modes(
    State(s): State<HttpState>,
    _admin: Admin,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.list_modes().await?))
}

async fn show_mode(
    State(s): State<HttpState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let name: ModeName = parse_path(&name)?;
    Ok(Json(s.app.mode(&name).await?))
}

async fn put_mode(
    State(s): State<HttpState>,
    admin: Admin,
    Path(name): Path<String>,
    ApiJson(mode): ApiJson<Mode>,
) -> Result<impl IntoResponse, ServiceError> {
    admin.require(Role::Officer, "change modes")?;
    let name: ModeName = parse_path(&name)?;
    Ok(Json(
        s.app.put_mode(&Who::admin(&admin), &name, mode).await?,
    ))
}

async fn device_challenge(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<impl IntoResponse, ServiceError> {
    let source = Source::of(peer.ip());
    if !s.app.challenge_limiter.allow(source, Timestamp::now()) {
        return Err(ServiceError::RateLimited);
    }
    Ok(Json(s.app.device_challenge(source)))
}

async fn device_session(
    State(s): State<HttpState>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.open_device_session(req).await?))
}

async fn certify(
    State(s): State<HttpState>,
    Device(d): Device,
    ApiJson(req): ApiJson<CertificateRequest>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.certify_mls_key(&d, req).await?))
}

async fn revocations(
    State(s): State<HttpState>,
    _d: Device,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.revocation_list().await?))
}

async fn upload_key_packages(
    State(s): State<HttpState>,
    Device(d): Device,
    ApiJson(req): ApiJson<UploadKeyPackages>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.upload_key_packages(&d, req).await?))
}

async fn claim_key_packages(
    State(s): State<HttpState>,
    Device(d): Device,
    ApiJson(req): ApiJson<ClaimKeyPackages>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.claim_key_packages(&d, req).await?))
}

async fn create_group(
    State(s): State<HttpState>,
    Device(d): Device,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok((
        StatusCode::CREATED,
        Json(s.app.create_group(&d, req).await?),
    ))
}

async fn show_group(
    State(s): State<HttpState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: GroupId = parse_path(&id)?;
    Ok(Json(s.app.group(&d, &id).await?))
}

async fn post_commit(
    State(s): State<HttpState>,
    Device(d): Device,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PostCommit>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: GroupId = parse_path(&id)?;
    Ok(Json(s.app.post_commit(&d, &id, req).await?))
}

async fn post_message(
    State(s): State<HttpState>,
    Device(d): Device,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: GroupId = parse_path(&id)?;
    Ok(Json(s.app.post_message(&d, &id, req).await?))
}

/// Query of `GET /messenger/queue`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    limit: Option<u32>,
}

async fn fetch_queue(
    State(s): State<HttpState>,
    Device(d): Device,
    query: Result<axum::extract::Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ServiceError::BadRequest(format!("bad query: {}", e.body_text())))?;
    Ok(Json(s.app.fetch_queue(&d, q.limit).await?))
}

async fn ack_queue(
    State(s): State<HttpState>,
    Device(d): Device,
    ApiJson(req): ApiJson<Ack>,
) -> Result<impl IntoResponse, ServiceError> {
    Ok(Json(s.app.ack_queue(&d, req).await?))
}

async fn upload_blob(
    State(s): State<HttpState>,
    Device(d): Device,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServiceError::TooLarge(format!(
                "the file is larger than the server's limit of {} bytes",
                s.app.config.max_file_bytes
            ))
        } else {
            ServiceError::BadRequest(e.body_text())
        }
    })?;
    Ok((
        StatusCode::CREATED,
        Json(s.app.store_blob(&d, bytes).await?),
    ))
}

async fn download_blob(
    State(s): State<HttpState>,
    _d: Device,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: BlobId = parse_path(&id)?;
    let bytes = s.app.load_blob(&id).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    ))
}
