//! The HTTP surface: routes, the admin-credential extractor with role checks, JSON
//! extraction with API-shaped errors, request metrics, `/healthz` and `/metrics`.
//! Handlers are thin: extract, call one service, map the result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, RawPathParams,
    Request, State,
};
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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
use crate::routes::{
    ANY_ADMIN, Access, OFFICER, OPERATOR, OWNER, OWNER_AUDITOR, RouteSpec, Routes,
};

/// Router state: the services and the metrics handle.
#[derive(Clone)]
pub struct HttpState {
    /// Services.
    pub app: SharedApp,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// Who may call each route (method, route template), filled by [`router`] from the
    /// route table; the `Admin` and `Device` extractors enforce it.
    pub access: Arc<HashMap<(Method, String), Access>>,
}

impl HttpState {
    /// The declared access of the route a request matched (none for an unmatched one).
    pub(crate) fn access_of(&self, parts: &Parts) -> Option<Access> {
        let path = parts.extensions.get::<MatchedPath>()?.as_str().to_owned();
        self.access.get(&(parts.method.clone(), path)).copied()
    }
}

/// Builds the router.
pub fn router(mut state: HttpState) -> Router {
    let (router, table) = routes(&state.app.config);
    state.access = Arc::new(
        table
            .into_iter()
            .map(|r| {
                let method = r
                    .method
                    .parse()
                    .expect("the route table holds valid methods");
                ((method, r.path), r.access)
            })
            .collect(),
    );
    router
        .fallback(|| async { ServiceError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(state.app.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Every route with the access it requires (`routes.rs`): the router is built from it.
pub fn routes(config: &crate::config::Config) -> (Router<HttpState>, Vec<RouteSpec>) {
    use Access::{Admin as A, Device as D, Member as M, Public as P};
    use Method as V;
    let api = Routes::new()
        .add(V::POST, "/enroll", P, enroll)
        // The agent proves itself inside the WebSocket (a signed challenge).
        .add(V::GET, "/device/ws", P, crate::ws::device_ws)
        .add(V::GET, "/whoami", A(ANY_ADMIN), whoami)
        .add(V::POST, "/enrollments", A(OPERATOR), create_enrollment)
        .add(V::GET, "/enrollments", A(ANY_ADMIN), list_enrollments)
        .add(V::GET, "/devices/{id}", A(ANY_ADMIN), show_device)
        .add(V::PUT, "/devices/{id}/mode", A(OPERATOR), set_mode)
        .add(V::POST, "/devices/{id}/approve", A(OWNER), approve_device)
        .add(V::GET, "/modes", A(ANY_ADMIN), list_modes)
        .add(V::GET, "/modes/{name}", A(ANY_ADMIN), show_mode)
        .add(V::PUT, "/modes/{name}", A(OFFICER), put_mode)
        .add(V::GET, "/admin-tokens", A(OWNER_AUDITOR), list_admin_tokens)
        .add(
            V::POST,
            "/admin-tokens/{id}/revoke",
            A(OWNER),
            revoke_admin_token,
        )
        .add(V::POST, "/device/challenge", P, device_challenge)
        .add(V::POST, "/device/session", P, device_session);
    // MLS messages (a Welcome for a large group) and files are bigger than admin bodies.
    let message_limit = config.max_message_bytes * 4 + 64 * 1024;
    let file_limit = config.max_file_bytes as usize + 64 * 1024;
    let messenger = Routes::new()
        .add(V::POST, "/certificate", D, certify)
        .add(V::GET, "/revocations", D, revocations)
        .add(V::POST, "/key-packages", D, upload_key_packages)
        .add(V::POST, "/key-packages/claim", D, claim_key_packages)
        .add(V::POST, "/groups", D, create_group)
        .add(V::GET, "/groups/{id}", M, show_group)
        .add(V::POST, "/groups/{id}/commit", M, post_commit)
        .add(V::POST, "/groups/{id}/messages", M, post_message)
        .add(V::GET, "/queue", D, fetch_queue)
        .add(V::POST, "/queue/ack", D, ack_queue)
        .add(V::GET, "/ws", D, crate::messenger_ws::messenger_ws)
        .layer(DefaultBodyLimit::max(message_limit))
        .merge(
            Routes::new()
                .add(V::POST, "/groups/{id}/blobs", M, upload_blob)
                .add(V::GET, "/groups/{id}/blobs/{blob}", M, download_blob)
                .layer(DefaultBodyLimit::max(file_limit)),
        );
    let api = api
        .nest("/messenger", messenger)
        .nest("/audit", crate::audit::routes())
        .nest("/zones", crate::zones::routes())
        .merge(crate::commands::routes())
        .merge(crate::groups::routes())
        .merge(crate::fleet::routes());
    Routes::new()
        .nest(redoubt_proto::API_PREFIX, api)
        .add(V::GET, "/healthz", P, healthz)
        .add(V::GET, "/metrics", A(ANY_ADMIN), metrics)
        .merge(crate::gate::routes())
        .nest(
            "/console",
            crate::console::routes()
                .layer(axum::middleware::from_fn(crate::console::csrf_guard))
                .layer(axum::middleware::from_fn(crate::console::headers)),
        )
        .into_parts()
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
    /// Signed in to the web console (`console:NAME` in the audit log) rather than
    /// holding an API token (`admin:NAME`).
    pub console: bool,
}

impl Admin {
    /// Who this is in the audit log.
    pub fn actor(&self) -> String {
        if self.console {
            format!("console:{}", self.name)
        } else {
            format!("admin:{}", self.name)
        }
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
        // The route table decides which roles may call a route, before any body is read
        // (a role that may not act learns nothing about the body it would need).
        match state.access_of(parts) {
            Some(Access::Admin(roles)) if roles.contains(&rec.role) => {}
            Some(Access::Admin(roles)) => {
                let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                return Err(ServiceError::Forbidden(format!(
                    "role {} may not call {} {} (needs {})",
                    rec.role,
                    parts.method,
                    parts.uri.path(),
                    needed.join(" or ")
                )));
            }
            // A handler asking for an admin on a route not declared for admins: closed.
            _ => {
                return Err(ServiceError::Forbidden(
                    "this route does not take admin credentials".into(),
                ));
            }
        }
        Ok(Admin {
            id: rec.id,
            expires_at: rec.expires_at,
            name: rec.name,
            role: rec.role,
            source,
            console: false,
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
        let session = state
            .app
            .sessions
            .check(token.trim(), Timestamp::now())
            .ok_or_else(|| {
                ServiceError::Unauthorized(
                    "device session unknown or expired; sign a new challenge".into(),
                )
            })?;
        match state.access_of(parts) {
            Some(Access::Device) => {}
            // Membership is checked before any body is read: a device outside the group
            // gets the 404 of a group that does not exist, whatever it sent.
            Some(Access::Member) => {
                let params = RawPathParams::from_request_parts(parts, state)
                    .await
                    .map_err(|e| ServiceError::BadRequest(e.body_text()))?;
                let raw = params
                    .iter()
                    .find(|(k, _)| *k == "id")
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        ServiceError::Internal("a member route without a group id".into())
                    })?;
                let group: GroupId = parse_path(raw)?;
                if !state
                    .app
                    .store
                    .is_group_member(&group, &session.device)
                    .await?
                {
                    return Err(crate::messaging::not_a_member(&group));
                }
            }
            _ => {
                return Err(ServiceError::Forbidden(
                    "this route does not take device sessions".into(),
                ));
            }
        }
        Ok(Device(session))
    }
}

/// The value of cookie `name` (none when absent, empty or longer than any of ours).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
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
    let stale_before = s.app.stale_before(Timestamp::now());
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

/// `GET /enrollments`: one page of the enrollment codes made, oldest first.
async fn list_enrollments(
    State(s): State<HttpState>,
    _admin: Admin,
    query: Result<
        axum::extract::Query<redoubt_proto::api::EnrollmentQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<impl IntoResponse, ServiceError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ServiceError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let (after, limit) = crate::fleet::page_of(q.after.as_deref(), q.limit)?;
    let filter = redoubt_store::EnrollmentFilter {
        state: q.state,
        user: q.user,
        created_by: q.created_by,
    };
    let now = Timestamp::now();
    let (codes, next) = s
        .app
        .store
        .list_enrollments_page(&filter, now, after.as_ref(), limit)
        .await?;
    Ok(Json(redoubt_proto::api::EnrollmentPage {
        enrollments: codes
            .into_iter()
            .map(|c| redoubt_proto::api::EnrollmentView {
                state: c.state(now),
                id: c.id,
                user: c.user,
                mode: c.mode,
                groups: c.groups,
                created_by: c.created_by,
                created_at: c.created_at,
                expires_at: c.expires_at,
                used_at: c.used_at,
                device_id: c.device_id,
            })
            .collect(),
        next: next.map(|c| c.encode()),
    }))
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
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: GroupId = parse_path(&id)?;
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
        Json(s.app.store_blob(&d, &id, bytes).await?),
    ))
}

async fn download_blob(
    State(s): State<HttpState>,
    Device(d): Device,
    Path((id, blob)): Path<(String, String)>,
) -> Result<impl IntoResponse, ServiceError> {
    let id: GroupId = parse_path(&id)?;
    let blob: BlobId = parse_path(&blob)?;
    let bytes = s.app.load_blob(&d, &id, &blob).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    ))
}
