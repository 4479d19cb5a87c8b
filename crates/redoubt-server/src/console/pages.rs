//! The console's pages and form handlers. Thin, like the API's: take the officer and the
//! form, call the same services the API calls (`App`), render a template or redirect.
//! Forms arrive as `application/x-www-form-urlencoded` bodies, read as pairs so that a
//! field may repeat (a selection of devices, several groups).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use redoubt_proto::DeviceAction;
use redoubt_proto::api::{
    BulkAction, BulkRequest, CreateCommand, CreateEnrollment, CredentialId, DeviceQuery,
    DeviceView, EnrollmentState, Role,
};
use redoubt_proto::{
    Compliance, DeviceGroupName, DeviceId, HardwareKind, ModeName, Timestamp, UserName,
};
use redoubt_store::{ConsoleAccount, NewConsoleSession};

use super::auth::{self, Officer, Verdict};
use super::i18n::{Lang, Tr};
use super::{Frame, error_page, error_text, html};
use crate::audit::Who;
use crate::error::ServiceError;
use crate::http::HttpState;

// ---------------------------------------------------------------- helpers

/// The pairs of a form body or a query string.
pub(super) fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first non-empty value of `key`.
pub(super) fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
}

/// Every non-empty value of `key`.
pub(super) fn fields<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, v)| k == key && !v.trim().is_empty())
        .map(|(_, v)| v.trim())
        .collect()
}

/// A 303 to `to` (a console path).
pub(super) fn see(to: &str) -> Response {
    // Only this console's own paths: never another site, never a broken header.
    let to = if to.starts_with("/console")
        && !to.starts_with("//")
        && !to.contains('\\')
        && !to.chars().any(char::is_control)
    {
        to
    } else {
        "/console"
    };
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

/// A service's refusal as a page, in the officer's language.
pub(super) fn failed(t: Tr, e: ServiceError) -> Response {
    let (status, _) = e.status_and_code();
    if status.is_server_error() {
        tracing::error!(error = %e, "console request failed");
        return error_page(t, status, "error.internal");
    }
    error_text(t, status, e.to_string())
}

pub(super) fn who(o: &Officer) -> Who {
    Who {
        actor: format!("console:{}", o.account.name),
        source: o.source.clone(),
    }
}

fn source_of(peer: &SocketAddr) -> String {
    peer.ip().to_string()
}

/// The notices a redirect may ask for.
const NOTICES: &[&str] = &[
    "mode_saved",
    "zone_saved",
    "gate_revoked",
    "group_saved",
    "mode_set",
    "command_sent",
    "bulk_started",
    "enrollment_revoked",
    "account_disabled",
    "language_set",
    "password_changed",
];

/// A notice after a redirect (`?done=KEY`), looked up in the catalogue; any other value
/// shows nothing.
pub(super) fn notice(t: Tr, pairs: &[(String, String)]) -> Option<String> {
    let key = field(pairs, "done")?;
    NOTICES
        .contains(&key)
        .then(|| t.get(&format!("done.{key}")).to_owned())
}

fn compliance_key(c: Compliance) -> &'static str {
    match c {
        Compliance::Compliant => "compliance.compliant",
        Compliance::NonCompliant => "compliance.non_compliant",
        Compliance::Stale => "compliance.stale",
        Compliance::Pending => "compliance.pending",
    }
}

// ---------------------------------------------------------------- sign-in

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    f: Frame,
    next: String,
    name: String,
    error: Option<String>,
    signed_out: bool,
}

fn login_frame(t: Tr, csrf: String) -> Frame {
    Frame {
        t,
        who: String::new(),
        role: String::new(),
        csrf,
        section: "login",
        can_operate: false,
        can_officer: false,
        is_owner: false,
    }
}

/// `GET /console/login`: the form; sets the pre-session cookie its CSRF token comes from.
pub async fn login_page(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let q = pairs(q.unwrap_or_default().as_bytes());
    let t = Tr {
        lang: auth::browser_lang(&headers),
    };
    let (secret, set) = match auth::cookie(&headers, auth::PRE_COOKIE) {
        Some(s) => (s, false),
        None => (auth::new_secret(), true),
    };
    let page = LoginPage {
        f: login_frame(t, auth::csrf_of(&secret)),
        next: field(&q, "next").unwrap_or("/console").to_owned(),
        name: String::new(),
        error: None,
        signed_out: field(&q, "signed_out").is_some(),
    };
    let mut resp = html(&page);
    if set && let Ok(v) = HeaderValue::from_str(&auth::set_cookie(auth::PRE_COOKIE, &secret, 3600))
    {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

/// `POST /console/login`: password and second factor; a session cookie, or the form
/// again with a message that does not say which part was wrong.
pub async fn login(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = pairs(&body);
    let t = Tr {
        lang: auth::browser_lang(&headers),
    };
    let name = field(&form, "name").unwrap_or("").to_owned();
    let next = field(&form, "next").unwrap_or("/console").to_owned();
    let csrf = auth::cookie(&headers, auth::PRE_COOKIE)
        .map(|c| auth::csrf_of(&c))
        .unwrap_or_default();
    let again = |status: StatusCode, error: String| {
        let page = LoginPage {
            f: login_frame(t, csrf.clone()),
            next: next.clone(),
            name: name.clone(),
            error: Some(error),
            signed_out: false,
        };
        (status, html(&page)).into_response()
    };
    let source = crate::app::Source::of(peer.ip());
    let now = Timestamp::now();
    if !s.app.console_limiter.allow(source, now) {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            t.get("login.slow_down").to_owned(),
        );
    }
    let from = Who::anonymous(&source_of(&peer));
    let account = match s.app.store.console_account_by_name(&name).await {
        Ok(a) => a,
        Err(e) => return failed(t, e.into()),
    };
    let password = field(&form, "password").unwrap_or("").to_owned();
    let code = field(&form, "code").unwrap_or("").to_owned();
    let org = s.app.keys.org_signing.clone();
    // argon2 takes tens of milliseconds of CPU: off the async threads.
    let verdict =
        tokio::task::spawn_blocking(move || auth::judge(&org, account, &password, &code, now))
            .await
            .map_err(|e| ServiceError::Internal(format!("sign-in check failed: {e}")))
            .and_then(|v| v);
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => return failed(t, e),
    };
    match verdict {
        Verdict::Locked(until) => {
            let secs = (until.unix() - now.unix()).max(1);
            if let Err(e) = refuse(&s, &from, &name, None, "locked", now).await {
                return failed(t, e.into());
            }
            again(
                StatusCode::TOO_MANY_REQUESTS,
                t.with("login.locked", "secs", &secs),
            )
        }
        Verdict::Bad(account) => {
            let reason = if account.is_some() {
                "wrong password or code"
            } else {
                "unknown or disabled account"
            };
            match refuse(&s, &from, &name, account, reason, now).await {
                Ok((_, until)) if until > now => again(
                    StatusCode::TOO_MANY_REQUESTS,
                    t.with("login.locked", "secs", &(until.unix() - now.unix())),
                ),
                Ok(_) => again(StatusCode::UNAUTHORIZED, t.get("login.wrong").to_owned()),
                Err(e) => failed(t, e.into()),
            }
        }
        Verdict::Good(account, factor) => {
            let secret = auth::new_secret();
            let hash = auth::secret_hash(&secret);
            let expires_at = now.plus_secs(auth::ABSOLUTE_SECS as i64);
            let who = Who {
                actor: format!("console:{}", account.name),
                source: source_of(&peer),
            };
            let how = match factor {
                redoubt_store::SecondFactor::Totp(_) => "totp",
                redoubt_store::SecondFactor::Recovery(_) => "recovery code",
            };
            let drafts = [who.draft(
                "console.sign_in",
                None,
                serde_json::json!({"second_factor": how, "role": account.role.as_str()}),
            )];
            let stored = s
                .app
                .store
                .console_sign_in(
                    account.id,
                    factor,
                    &NewConsoleSession {
                        token_hash: &hash,
                        expires_at,
                        source: &who.source,
                    },
                    now,
                    &drafts,
                    &crate::audit::signer(&s.app),
                )
                .await;
            match stored {
                Ok(()) => {}
                // The code was used already (a replay): a failure like any other.
                Err(redoubt_store::StoreError::Conflict(_)) => {
                    return match refuse(&s, &from, &name, Some(account), "code used already", now)
                        .await
                    {
                        Ok(_) => again(StatusCode::UNAUTHORIZED, t.get("login.wrong").to_owned()),
                        Err(e) => failed(t, e.into()),
                    };
                }
                Err(e) => return failed(t, e.into()),
            }
            tracing::info!(account = %account.name, "console sign-in");
            let mut resp = see(
                if next.starts_with("/console") && !next.starts_with("/console/login") {
                    &next
                } else {
                    "/console"
                },
            );
            let h = resp.headers_mut();
            for c in [
                auth::set_cookie(auth::SESSION_COOKIE, &secret, auth::ABSOLUTE_SECS),
                auth::set_cookie(auth::PRE_COOKIE, "", 0),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(SET_COOKIE, v);
                }
            }
            resp
        }
    }
}

/// Records a failed sign-in (audited with the name typed and the source; the account's
/// failures counted and its lock set).
async fn refuse(
    s: &HttpState,
    from: &Who,
    name: &str,
    account: Option<Box<ConsoleAccount>>,
    reason: &'static str,
    now: Timestamp,
) -> Result<(u32, Timestamp), redoubt_store::StoreError> {
    let drafts = [from.draft(
        "console.sign_in_failed",
        None,
        serde_json::json!({"name": name_for_audit(name), "reason": reason}),
    )];
    s.app
        .store
        .console_sign_in_failed(
            account.map(|a| a.id),
            now,
            &auth::lock_for,
            &drafts,
            &crate::audit::signer(&s.app),
        )
        .await
}

/// A name typed at sign-in, as the audit log keeps it: bounded, printable.
fn name_for_audit(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// `POST /console/logout`.
pub async fn logout(State(s): State<HttpState>, o: Officer) -> Response {
    let drafts = [who(&o).draft("console.sign_out", None, serde_json::json!({}))];
    if let Err(e) = s
        .app
        .store
        .end_console_session(
            &o.token_hash,
            Timestamp::now(),
            &drafts,
            &crate::audit::signer(&s.app),
        )
        .await
    {
        return failed(o.tr(), e.into());
    }
    let mut resp = see("/console/login?signed_out=1");
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(auth::SESSION_COOKIE, "", 0)) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

/// `POST /console/language`: the account's language when signed in, the browser's
/// cookie either way (so the sign-in page follows too).
pub async fn language(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = pairs(&body);
    let Some(lang) = field(&form, "lang").and_then(Lang::from_tag) else {
        return error_page(
            Tr {
                lang: auth::browser_lang(&headers),
            },
            StatusCode::BAD_REQUEST,
            "error.bad_language",
        );
    };
    if let Some(secret) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        let now = Timestamp::now();
        match s
            .app
            .store
            .console_session(&auth::secret_hash(&secret), now, auth::IDLE_SECS)
            .await
        {
            Ok(Some(session)) => {
                if let Err(e) = s
                    .app
                    .store
                    .set_console_language(session.account.id, lang.tag())
                    .await
                {
                    return failed(Tr { lang }, e.into());
                }
            }
            Ok(None) => {}
            Err(e) => return failed(Tr { lang }, e.into()),
        }
    }
    let back = field(&form, "back").unwrap_or("/console");
    let mut resp = see(back);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "redoubt_lang={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=31536000",
        lang.tag()
    )) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
    resp
}

// ---------------------------------------------------------------- dashboard

/// One row of a breakdown table.
pub struct Row {
    /// What is counted (already in the reader's words where it is ours).
    pub label: String,
    /// A link to the device list filtered to it.
    pub link: String,
    /// How many.
    pub count: u64,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
struct Dashboard {
    f: Frame,
    total: u64,
    connected: u64,
    by_compliance: Vec<(String, &'static str, u64)>,
    by_mode: Vec<Row>,
    by_zone: Vec<Row>,
    by_group: Vec<Row>,
    failing: Vec<DeviceView>,
    chart_day: String,
    chart_week: String,
}

fn rows(map: &BTreeMap<String, u64>, param: &str) -> Vec<Row> {
    map.iter()
        .map(|(k, n)| Row {
            label: k.clone(),
            link: format!(
                "/console/devices?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(param, k)
                    .finish()
            ),
            count: *n,
        })
        .collect()
}

/// `GET /console`: the fleet at a glance, kept current by `/console/events`.
pub async fn dashboard(State(s): State<HttpState>, o: Officer) -> Response {
    let t = o.tr();
    // Counted now, and kept as the newest count, so the page's live updates never start
    // from an older one.
    let counts = match s.app.recent_device_counts(Duration::ZERO).await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    let failing = match s
        .app
        .list_devices(&DeviceQuery {
            compliance: Some(Compliance::NonCompliant),
            limit: Some(20),
            ..Default::default()
        })
        .await
    {
        Ok(p) => p.devices,
        Err(e) => return failed(t, e),
    };
    let now = Timestamp::now();
    let samples = match s
        .app
        .store
        .compliance_samples(now.plus_secs(-7 * 86400))
        .await
    {
        Ok(v) => v,
        Err(e) => return failed(t, e.into()),
    };
    let by_compliance = [
        Compliance::Compliant,
        Compliance::NonCompliant,
        Compliance::Stale,
        Compliance::Pending,
    ]
    .iter()
    .map(|c| {
        (
            t.get(compliance_key(*c)).to_owned(),
            c.as_str(),
            counts.by_compliance.get(c.as_str()).copied().unwrap_or(0),
        )
    })
    .collect();
    let page = Dashboard {
        by_compliance,
        total: counts.total,
        connected: counts.connected,
        by_mode: rows(&counts.by_mode, "mode"),
        by_zone: rows(&counts.by_zone, "zone"),
        by_group: rows(&counts.by_group, "group"),
        failing,
        chart_day: super::chart::svg(
            &samples,
            now,
            86400,
            t.get("dashboard.chart_day"),
            t.get("dashboard.no_samples"),
        ),
        chart_week: super::chart::svg(
            &samples,
            now,
            7 * 86400,
            t.get("dashboard.chart_week"),
            t.get("dashboard.no_samples"),
        ),
        f: Frame::of(&o, "dashboard"),
    };
    html(&page)
}

/// How often a live dashboard's figures are checked (shared by every open dashboard of
/// a node, `App::recent_device_counts`).
const LIVE_EVERY: Duration = Duration::from_secs(2);

/// `GET /console/events`: the dashboard's figures as server-sent events, sent when
/// they change (checked every two seconds); the stream ends with the session or the
/// server.
pub async fn events(State(s): State<HttpState>, o: Officer) -> Response {
    let shutdown = s.app.shutdown.clone();
    Sse::new(counts_stream(s.app.clone(), o.token_hash, shutdown))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn counts_stream(
    app: crate::app::SharedApp,
    token_hash: [u8; 32],
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    struct St {
        app: crate::app::SharedApp,
        token_hash: [u8; 32],
        shutdown: tokio::sync::watch::Receiver<bool>,
        last: String,
        last_figures: String,
        ticks: u32,
        done: bool,
    }
    futures_util::stream::unfold(
        St {
            app,
            token_hash,
            shutdown,
            last: String::new(),
            last_figures: String::new(),
            ticks: 0,
            done: false,
        },
        |mut st| async move {
            loop {
                if st.done || *st.shutdown.borrow() {
                    return None;
                }
                if st.ticks > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(LIVE_EVERY) => {}
                        _ = st.shutdown.changed() => return None,
                    }
                }
                st.ticks += 1;
                // The session is checked again every half minute: signing out or
                // expiring ends the stream.
                if st.ticks % 15 == 0 {
                    match st
                        .app
                        .store
                        .console_session(&st.token_hash, Timestamp::now(), auth::IDLE_SECS)
                        .await
                    {
                        Ok(Some(_)) => {}
                        _ => {
                            st.done = true;
                            return Some((Ok(Event::default().event("signed-out").data("")), st));
                        }
                    }
                }
                let Ok(counts) = st.app.recent_device_counts(LIVE_EVERY).await else {
                    continue;
                };
                let figures = serde_json::json!({
                    "total": counts.total,
                    "connected": counts.connected,
                    "compliance": counts.by_compliance,
                });
                // The list of failing phones is read again when the figures moved, and
                // every half minute (another phone may fail as one recovers).
                let figures_text = figures.to_string();
                if figures_text == st.last_figures && st.ticks % 15 != 1 {
                    continue;
                }
                st.last_figures = figures_text;
                let Ok(failing) = st
                    .app
                    .list_devices(&DeviceQuery {
                        compliance: Some(Compliance::NonCompliant),
                        limit: Some(20),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                let failing: Vec<serde_json::Value> = failing
                    .devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id,
                            "user": d.user,
                            "mode": d.mode,
                            "reasons": d.compliance_reasons.join("; "),
                        })
                    })
                    .collect();
                let mut data = figures;
                data["failing"] = serde_json::Value::Array(failing);
                let data = data.to_string();
                if data != st.last {
                    st.last = data.clone();
                    return Some((Ok(Event::default().event("counts").data(data)), st));
                }
            }
        },
    )
}

// ---------------------------------------------------------------- devices

/// The device list's filter as the form sends it (every field optional and possibly
/// empty), turned into the API's query with a message per field that is wrong.
#[derive(Default)]
struct FilterForm {
    compliance: String,
    mode: String,
    user: String,
    hardware: String,
    group: String,
    zone: String,
    seen: String,
}

impl FilterForm {
    fn read(p: &[(String, String)]) -> FilterForm {
        let g = |k: &str| field(p, k).unwrap_or("").to_owned();
        FilterForm {
            compliance: g("compliance"),
            mode: g("mode"),
            user: g("user"),
            hardware: g("hardware"),
            group: g("group"),
            zone: g("zone"),
            seen: g("seen"),
        }
    }

    /// The query, and the fields that could not be read (field, message key).
    fn query(&self, now: Timestamp) -> (DeviceQuery, Vec<(&'static str, &'static str)>) {
        let mut errors = Vec::new();
        let mut q = DeviceQuery::default();
        macro_rules! parse {
            ($field:ident, $ty:ty, $key:literal) => {
                if !self.$field.is_empty() {
                    match self.$field.parse::<$ty>() {
                        Ok(v) => q.$field = Some(v),
                        Err(_) => errors.push((stringify!($field), $key)),
                    }
                }
            };
        }
        if !self.compliance.is_empty() {
            match serde_json::from_value::<Compliance>(serde_json::Value::String(
                self.compliance.clone(),
            )) {
                Ok(c) => q.compliance = Some(c),
                Err(_) => errors.push(("compliance", "filter.bad_compliance")),
            }
        }
        if !self.mode.is_empty() {
            q.mode = Some(self.mode.clone());
        }
        parse!(user, UserName, "filter.bad_user");
        parse!(group, DeviceGroupName, "filter.bad_group");
        parse!(zone, redoubt_proto::ZoneName, "filter.bad_zone");
        if !self.hardware.is_empty() {
            match serde_json::from_value::<HardwareKind>(serde_json::Value::String(
                self.hardware.clone(),
            )) {
                Ok(h) => q.hardware = Some(h),
                Err(_) => errors.push(("hardware", "filter.bad_hardware")),
            }
        }
        match self.seen.as_str() {
            "" => {}
            "hour" => q.seen_after = Some(now.plus_secs(-3600)),
            "day" => q.seen_after = Some(now.plus_secs(-86400)),
            "not_day" => q.seen_before = Some(now.plus_secs(-86400)),
            "not_week" => q.seen_before = Some(now.plus_secs(-7 * 86400)),
            _ => errors.push(("seen", "filter.bad_seen")),
        }
        (q, errors)
    }

    /// The filter as query-string pairs (for links and the bulk form's hidden fields).
    fn as_pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("compliance", &self.compliance),
            ("mode", &self.mode),
            ("user", &self.user),
            ("hardware", &self.hardware),
            ("group", &self.group),
            ("zone", &self.zone),
            ("seen", &self.seen),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect()
    }

    fn query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.as_pairs() {
            s.append_pair(k, &v);
        }
        s.finish()
    }
}

#[derive(Template)]
#[template(path = "console/devices.html")]
struct DevicesPage {
    f: Frame,
    filter: FilterForm,
    errors: super::FieldErrors,
    devices: Vec<DeviceView>,
    count: u64,
    next: Option<String>,
    first: bool,
    modes: Vec<String>,
    groups: Vec<String>,
    zones: Vec<String>,
    hidden: Vec<(&'static str, String)>,
    query: String,
    notice: Option<String>,
}

/// The names of the modes, groups and zones, for the filter's menus.
pub(super) async fn names(
    s: &HttpState,
) -> Result<(Vec<String>, Vec<String>, Vec<String>), ServiceError> {
    let modes = s
        .app
        .list_modes()
        .await?
        .into_iter()
        .map(|m| m.mode.name.to_string())
        .collect();
    let groups = s
        .app
        .store
        .device_group_names()
        .await?
        .into_iter()
        .map(|g| g.to_string())
        .collect();
    let zones = s
        .app
        .list_zones()
        .await?
        .into_iter()
        .map(|z| z.definition.name.to_string())
        .collect();
    Ok((modes, groups, zones))
}

/// `GET /console/devices`: one page of the filtered list (100 devices), with the
/// filter's count and the bulk actions.
pub async fn devices(State(s): State<HttpState>, o: Officer, RawQuery(q): RawQuery) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    // "Find": a device id goes to its page; anything else is a person's name.
    if let Some(find) = field(&p, "find") {
        if let Ok(id) = find.parse::<DeviceId>() {
            match s.app.device(&id).await {
                Ok(_) => return see(&format!("/console/devices/{id}")),
                Err(ServiceError::NotFound(_)) => {
                    return error_page(t, StatusCode::NOT_FOUND, "error.no_device");
                }
                Err(e) => return failed(t, e),
            }
        }
        let mut s2 = url::form_urlencoded::Serializer::new(String::new());
        s2.append_pair("user", find);
        return see(&format!("/console/devices?{}", s2.finish()));
    }
    let filter = FilterForm::read(&p);
    let now = Timestamp::now();
    let (mut query, errors) = filter.query(now);
    let after = field(&p, "after").map(str::to_owned);
    query.after = after.clone();
    query.limit = Some(100);
    let (page, count) = if errors.is_empty() {
        let page = match s.app.list_devices(&query).await {
            Ok(p) => p,
            Err(e) => return failed(t, e),
        };
        let count = match s
            .app
            .store
            .count_devices(&crate::fleet::filter_of(&query), s.app.stale_before(now))
            .await
        {
            Ok(n) => n,
            Err(e) => return failed(t, e.into()),
        };
        (page, count)
    } else {
        (
            redoubt_proto::api::DevicePage {
                devices: vec![],
                next: None,
            },
            0,
        )
    };
    let (modes, groups, zones) = match names(&s).await {
        Ok(n) => n,
        Err(e) => return failed(t, e),
    };
    let page = DevicesPage {
        errors: super::FieldErrors::of(&t, errors),
        devices: page.devices,
        count,
        next: page.next,
        first: after.is_none(),
        modes,
        groups,
        zones,
        hidden: filter.as_pairs(),
        query: filter.query_string(),
        filter,
        notice: notice(t, &p),
        f: Frame::of(&o, "devices"),
    };
    html(&page)
}

/// `GET /console/devices.csv`: every device the filter covers, as CSV.
pub async fn devices_csv(
    State(s): State<HttpState>,
    o: Officer,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    let (mut query, errors) = FilterForm::read(&p).query(Timestamp::now());
    if !errors.is_empty() {
        return error_page(t, StatusCode::BAD_REQUEST, errors[0].1);
    }
    let mut out = String::from(
        "id,user,compliance,mode,assigned_mode,hardware,connected,zones,last_report_at,enrolled_at,reasons\r\n",
    );
    query.limit = Some(redoubt_store::MAX_PAGE);
    loop {
        let page = match s.app.list_devices(&query).await {
            Ok(p) => p,
            Err(e) => return failed(t, e),
        };
        for d in &page.devices {
            let cells = [
                d.id.to_string(),
                d.user.to_string(),
                d.compliance.as_str().to_owned(),
                d.mode.clone(),
                d.assigned_mode.to_string(),
                super::hw_key(&d.hardware).to_owned(),
                d.connected.to_string(),
                d.zones
                    .iter()
                    .map(|z| z.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                d.last_report_at.map(|t| t.to_string()).unwrap_or_default(),
                d.enrolled_at.to_string(),
                d.compliance_reasons.join("; "),
            ];
            let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
        match page.next {
            Some(n) => query.after = Some(n),
            None => break,
        }
    }
    (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"redoubt-devices.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}

/// One CSV cell: quoted when it holds a separator, a quote or a line break; a leading
/// `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does not run it.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `POST /console/devices/bulk`: set mode, lock, unlock or wipe on the devices selected
/// (`id` fields) or on the whole filter (`scope=filter`, with the count shown, which the
/// server checks again). Wiping needs an owner and the count typed.
pub async fn bulk(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    if let Some(kind @ ("group_add" | "group_remove")) = field(&p, "action") {
        return bulk_group(&s, &o, &p, kind == "group_add").await;
    }
    let action = match field(&p, "action") {
        Some("set_mode") => BulkAction::SetMode,
        Some("lock") => BulkAction::Lock,
        Some("unlock") => BulkAction::Unlock,
        Some("wipe") => BulkAction::Wipe,
        _ => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_action"),
    };
    if action == BulkAction::Wipe && !o.can(Role::Owner) {
        return error_page(t, StatusCode::FORBIDDEN, "bulk.wipe_owner");
    }
    let mode = match (action, field(&p, "mode")) {
        (BulkAction::SetMode, Some(m)) => match m.parse::<ModeName>() {
            Ok(m) => Some(m),
            Err(_) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_mode"),
        },
        (BulkAction::SetMode, None) => {
            return error_page(t, StatusCode::BAD_REQUEST, "bulk.need_mode");
        }
        _ => None,
    };
    let filter = FilterForm::read(&p);
    let back = format!("/console/devices?{}", filter.query_string());
    let by = who(&o);
    let admin = o.admin();
    if field(&p, "scope") == Some("filter") {
        let (query, errors) = filter.query(Timestamp::now());
        if let Some((_, key)) = errors.first() {
            return error_page(t, StatusCode::BAD_REQUEST, key);
        }
        let Some(expected) = field(&p, "count").and_then(|c| c.parse::<u64>().ok()) else {
            return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_count");
        };
        if action == BulkAction::Wipe
            && field(&p, "confirm").and_then(|c| c.parse::<u64>().ok()) != Some(expected)
        {
            return error_page(t, StatusCode::BAD_REQUEST, "bulk.type_count");
        }
        let req = BulkRequest {
            filter: query,
            action,
            mode,
            expected_count: expected,
            expires_in_secs: None,
        };
        return match s.app.bulk(&by, req).await {
            Ok(_) => see(&format!("{back}&done=bulk_started")),
            Err(e) => failed(t, e),
        };
    }
    let ids: Vec<DeviceId> = match fields(&p, "id").iter().map(|i| i.parse()).collect() {
        Ok(ids) => ids,
        Err(_) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_id"),
    };
    if ids.is_empty() {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.none_selected");
    }
    if ids.len() > redoubt_store::MAX_PAGE as usize {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.too_many");
    }
    if action == BulkAction::Wipe
        && field(&p, "confirm").and_then(|c| c.parse::<usize>().ok()) != Some(ids.len())
    {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.type_count");
    }
    for id in &ids {
        let done = match (action, &mode) {
            (BulkAction::SetMode, Some(m)) => s.app.set_mode(&by, id, m).await.map(|_| ()),
            (kind, _) => {
                let action = match kind {
                    BulkAction::Lock => DeviceAction::Lock,
                    BulkAction::Unlock => DeviceAction::Unlock,
                    _ => DeviceAction::Wipe,
                };
                s.app
                    .create_command(
                        &admin,
                        id,
                        CreateCommand {
                            action,
                            expires_in_secs: None,
                        },
                    )
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = done {
            return failed(t, e);
        }
    }
    see(&format!("{back}&done=bulk_started"))
}

/// Adds the selected devices to a group, or removes them (`id` fields, `group`).
async fn bulk_group(s: &HttpState, o: &Officer, p: &[(String, String)], add: bool) -> Response {
    let t = o.tr();
    let Some(Ok(group)) = field(p, "to_group").map(str::parse::<DeviceGroupName>) else {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.need_group");
    };
    if field(p, "scope") == Some("filter") {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.group_selection");
    }
    let devices: Vec<DeviceId> = match fields(p, "id").iter().map(|i| i.parse()).collect() {
        Ok(ids) => ids,
        Err(_) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_id"),
    };
    if devices.is_empty() {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.none_selected");
    }
    let req = redoubt_proto::api::GroupDevices { devices };
    // From a device's page, back to it; from the list, back to the same filter.
    let back = match field(p, "return_to") {
        Some(r) if r.starts_with("/console/devices/") && !r.contains(['?', '#']) => {
            format!("{r}?done=group_saved")
        }
        _ => format!(
            "/console/devices?{}&done=group_saved",
            FilterForm::read(p).query_string()
        ),
    };
    match s.app.change_group_members(&who(o), &group, &req, add).await {
        Ok(_) => see(&back),
        Err(e) => failed(t, e),
    }
}

#[derive(Template)]
#[template(path = "console/device.html")]
struct DevicePage {
    f: Frame,
    d: DeviceView,
    reports: Vec<(u64, Timestamp, String)>,
    commands: Vec<redoubt_proto::api::CommandView>,
    audit: Vec<redoubt_proto::AuditEntry>,
    zone_events: Vec<redoubt_proto::AuditEntry>,
    modes: Vec<String>,
    groups: Vec<String>,
    notice: Option<String>,
}

/// `GET /console/devices/{id}`.
pub async fn device(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let Ok(id) = id.parse::<DeviceId>() else {
        return error_page(t, StatusCode::NOT_FOUND, "error.no_device");
    };
    let d = match s.app.device(&id).await {
        Ok(d) => d,
        Err(ServiceError::NotFound(_)) => {
            return error_page(t, StatusCode::NOT_FOUND, "error.no_device");
        }
        Err(e) => return failed(t, e),
    };
    let reports = match s.app.store.recent_reports(&id, 20).await {
        Ok(r) => r,
        Err(e) => return failed(t, e.into()),
    };
    let commands = match s.app.list_commands(&id).await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    let audit = match s
        .app
        .store
        .audit_recent(Some(&id), None, None, None, 50)
        .await
    {
        Ok(a) => a,
        Err(e) => return failed(t, e.into()),
    };
    let zone_events = match s
        .app
        .store
        .audit_recent(Some(&id), None, Some("zone."), None, 20)
        .await
    {
        Ok(a) => a,
        Err(e) => return failed(t, e.into()),
    };
    let (modes, groups, _) = match names(&s).await {
        Ok(n) => n,
        Err(e) => return failed(t, e),
    };
    let page = DevicePage {
        d,
        reports,
        commands,
        audit,
        zone_events,
        modes,
        groups,
        notice: notice(t, &pairs(q.unwrap_or_default().as_bytes())),
        f: Frame::of(&o, "devices"),
    };
    html(&page)
}

/// `POST /console/devices/{id}/mode`.
pub async fn device_mode(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let (Ok(id), Some(Ok(mode))) = (
        id.parse::<DeviceId>(),
        field(&p, "mode").map(str::parse::<ModeName>),
    ) else {
        return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_mode");
    };
    match s.app.set_mode(&who(&o), &id, &mode).await {
        Ok(_) => see(&format!("/console/devices/{id}?done=mode_set")),
        Err(e) => failed(t, e),
    }
}

/// `POST /console/devices/{id}/command`: lock, unlock, or wipe (the count, 1, typed).
pub async fn device_command(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let Ok(id) = id.parse::<DeviceId>() else {
        return error_page(t, StatusCode::NOT_FOUND, "error.no_device");
    };
    let action = match field(&p, "action") {
        Some("lock") => DeviceAction::Lock,
        Some("unlock") => DeviceAction::Unlock,
        Some("wipe") => {
            if field(&p, "confirm") != Some("1") {
                return error_page(t, StatusCode::BAD_REQUEST, "bulk.type_count");
            }
            DeviceAction::Wipe
        }
        _ => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_action"),
    };
    match s
        .app
        .create_command(
            &o.admin(),
            &id,
            CreateCommand {
                action,
                expires_in_secs: None,
            },
        )
        .await
    {
        Ok(_) => see(&format!("/console/devices/{id}?done=command_sent")),
        Err(e) => failed(t, e),
    }
}

// ---------------------------------------------------------------- enrollment

#[derive(Template)]
#[template(path = "console/enrollments.html")]
struct EnrollmentsPage {
    f: Frame,
    codes: Vec<redoubt_store::EnrollmentRecord>,
    state: String,
    now: Timestamp,
    modes: Vec<String>,
    groups: Vec<String>,
    notice: Option<String>,
}

/// `GET /console/enrollments`: the codes (open ones unless `state` says otherwise) and
/// the form for a new one.
pub async fn enrollments(
    State(s): State<HttpState>,
    o: Officer,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    let state = field(&p, "state").unwrap_or("open").to_owned();
    let filter = redoubt_store::EnrollmentFilter {
        state: match state.as_str() {
            "open" => Some(EnrollmentState::Open),
            "used" => Some(EnrollmentState::Used),
            "expired" => Some(EnrollmentState::Expired),
            _ => None,
        },
        ..Default::default()
    };
    let now = Timestamp::now();
    let codes = match s
        .app
        .store
        .list_enrollments_page(&filter, now, None, 500)
        .await
    {
        Ok((c, _)) => c,
        Err(e) => return failed(t, e.into()),
    };
    let (modes, groups, _) = match names(&s).await {
        Ok(n) => n,
        Err(e) => return failed(t, e),
    };
    let page = EnrollmentsPage {
        codes,
        state,
        now,
        modes,
        groups,
        notice: notice(t, &p),
        f: Frame::of(&o, "enroll"),
    };
    html(&page)
}

#[derive(Template)]
#[template(path = "console/enrollment_created.html")]
struct EnrollmentCreatedPage {
    f: Frame,
    user: String,
    url: String,
    qr: String,
    expires_at: Timestamp,
    groups: Vec<String>,
}

/// `POST /console/enrollments`: a code for a person (and groups), shown once as a QR
/// code and a printable sheet.
pub async fn create_enrollment(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let Some(Ok(user)) = field(&p, "user").map(str::parse::<UserName>) else {
        return error_page(t, StatusCode::BAD_REQUEST, "enroll.bad_user");
    };
    let mode = match field(&p, "mode").map(str::parse::<ModeName>) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(_)) => return error_page(t, StatusCode::BAD_REQUEST, "bulk.bad_mode"),
    };
    let groups: Vec<DeviceGroupName> = match fields(&p, "group").iter().map(|g| g.parse()).collect()
    {
        Ok(g) => g,
        Err(_) => return error_page(t, StatusCode::BAD_REQUEST, "filter.bad_group"),
    };
    let ttl_secs = match field(&p, "ttl").map(str::parse::<u64>) {
        None => None,
        Some(Ok(h)) if (1..=24 * 30).contains(&h) => Some(h * 3600),
        Some(_) => return error_page(t, StatusCode::BAD_REQUEST, "enroll.bad_ttl"),
    };
    let req = CreateEnrollment {
        user: user.clone(),
        mode,
        ttl_secs,
        groups: groups.clone(),
    };
    let created = match s.app.create_enrollment(&who(&o), req).await {
        Ok(c) => c,
        Err(e) => return failed(t, e),
    };
    let qr = match crate::gate::qr_svg(&created.url) {
        Ok(q) => q,
        Err(e) => return failed(t, e),
    };
    let page = EnrollmentCreatedPage {
        user: user.to_string(),
        url: created.url,
        qr,
        expires_at: created.expires_at,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        f: Frame::of(&o, "enroll"),
    };
    html(&page)
}

/// `POST /console/enrollments/{id}/revoke`.
pub async fn revoke_enrollment(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<String>,
) -> Response {
    let t = o.tr();
    let Ok(id) = id.parse::<CredentialId>() else {
        return error_page(t, StatusCode::NOT_FOUND, "error.no_code");
    };
    let by = who(&o);
    let done = s
        .app
        .store
        .revoke_enrollment(
            &id,
            Timestamp::now(),
            |rec| {
                vec![by.draft(
                    "enrollment.revoke",
                    None,
                    serde_json::json!({"id": rec.id, "user": rec.user}),
                )]
            },
            &crate::audit::signer(&s.app),
        )
        .await;
    match done {
        Ok(_) => see("/console/enrollments?done=enrollment_revoked"),
        Err(e) => failed(t, e.into()),
    }
}

// ---------------------------------------------------------------- audit

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    f: Frame,
    entries: Vec<redoubt_proto::AuditEntry>,
    device: String,
    actor: String,
    action: String,
    next: Option<u64>,
    query: String,
    verified: Option<Result<String, String>>,
}

/// `GET /console/audit`: the log, newest first, 100 a page, filtered by device, actor
/// and action.
pub async fn audit(State(s): State<HttpState>, o: Officer, RawQuery(q): RawQuery) -> Response {
    audit_page(s, o, q, None).await
}

async fn audit_page(
    s: HttpState,
    o: Officer,
    q: Option<String>,
    verified: Option<Result<String, String>>,
) -> Response {
    let t = o.tr();
    let p = pairs(q.unwrap_or_default().as_bytes());
    let device = field(&p, "device").unwrap_or("").to_owned();
    let actor = field(&p, "actor").unwrap_or("").to_owned();
    let action = field(&p, "action").unwrap_or("").to_owned();
    let dev = match (!device.is_empty()).then(|| device.parse::<DeviceId>()) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => return error_page(t, StatusCode::BAD_REQUEST, "error.no_device"),
    };
    let before = field(&p, "before").and_then(|b| b.parse::<u64>().ok());
    let entries = match s
        .app
        .store
        .audit_recent(
            dev.as_ref(),
            (!actor.is_empty()).then_some(actor.as_str()),
            (!action.is_empty()).then_some(action.as_str()),
            before,
            100,
        )
        .await
    {
        Ok(e) => e,
        Err(e) => return failed(t, e.into()),
    };
    let next = (entries.len() == 100)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    let mut qs = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("device", &device), ("actor", &actor), ("action", &action)] {
        if !v.is_empty() {
            qs.append_pair(k, v);
        }
    }
    let page = AuditPage {
        entries,
        device,
        actor,
        action,
        next,
        query: qs.finish(),
        verified,
        f: Frame::of(&o, "audit"),
    };
    html(&page)
}

/// `GET /console/audit/export`: the whole log and its signed head as JSON, the file
/// `redoubt audit verify --file` checks (kept elsewhere, it anchors the log).
pub async fn audit_export(State(s): State<HttpState>, o: Officer) -> Response {
    let t = o.tr();
    match crate::audit::export_json(&s.app).await {
        Ok(body) => (
            [
                (CONTENT_TYPE, "application/json"),
                (
                    CONTENT_DISPOSITION,
                    "attachment; filename=\"redoubt-audit.json\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => failed(t, e),
    }
}

/// `GET /console/audit/verify`: recomputes the whole chain and checks the signed head,
/// and shows the result above the log.
pub async fn audit_verify(State(s): State<HttpState>, o: Officer) -> Response {
    let t = o.tr();
    let (entries, head) = match s.app.store.audit_snapshot().await {
        Ok(x) => x,
        Err(e) => return failed(t, e.into()),
    };
    let key = s.app.keys.org_signing.verifying_key();
    let result = match head {
        None if entries.is_empty() => Ok(t.get("audit.empty").to_owned()),
        None => Err(t.get("audit.no_head").to_owned()),
        Some(head) => {
            let n = entries.len() as u64;
            match tokio::task::spawn_blocking(move || {
                redoubt_policy::verify_log(&entries, &head, &key).map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Ok(_)) => Ok(t.n("audit.verified", n)),
                Ok(Err(e)) => Err(t.with("audit.broken", "reason", &e)),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let drafts = [who(&o).draft(
        "audit.verify",
        None,
        serde_json::json!({"ok": result.is_ok()}),
    )];
    if let Err(e) = crate::audit::record(&s.app, &drafts).await {
        return failed(t, e);
    }
    audit_page(s, o, None, Some(result)).await
}

// ---------------------------------------------------------------- accounts

#[derive(Template)]
#[template(path = "console/accounts.html")]
struct AccountsPage {
    f: Frame,
    accounts: Vec<ConsoleAccount>,
    notice: Option<String>,
}

/// `GET /console/accounts` (owners).
pub async fn accounts(State(s): State<HttpState>, o: Officer, RawQuery(q): RawQuery) -> Response {
    let t = o.tr();
    let accounts = match s.app.store.list_console_accounts().await {
        Ok(a) => a,
        Err(e) => return failed(t, e.into()),
    };
    let page = AccountsPage {
        accounts,
        notice: notice(t, &pairs(q.unwrap_or_default().as_bytes())),
        f: Frame::of(&o, "accounts"),
    };
    html(&page)
}

#[derive(Template)]
#[template(path = "console/account_created.html")]
struct AccountCreatedPage {
    f: Frame,
    name: String,
    role: String,
    password: String,
    otpauth: String,
    qr: String,
    recovery: Vec<String>,
    reset: bool,
}

/// `POST /console/accounts` (owners): a new account, its first password, its TOTP
/// enrollment and recovery codes, shown once.
pub async fn create_account(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let Some(name) = field(&p, "name").filter(|n| valid_account_name(n)) else {
        return error_page(t, StatusCode::BAD_REQUEST, "accounts.bad_name");
    };
    let Some(Ok(role)) = field(&p, "role").map(str::parse::<Role>) else {
        return error_page(t, StatusCode::BAD_REQUEST, "accounts.bad_role");
    };
    match super::accounts::create(&s.app, &who(&o), name, role, None).await {
        Ok(made) => {
            let qr = match crate::gate::qr_svg(&made.factor.url) {
                Ok(q) => q,
                Err(e) => return failed(t, e),
            };
            let page = AccountCreatedPage {
                name: name.to_owned(),
                role: role.to_string(),
                password: made.password,
                otpauth: made.factor.url.clone(),
                qr,
                recovery: made.factor.recovery.clone(),
                reset: false,
                f: Frame::of(&o, "accounts"),
            };
            html(&page)
        }
        Err(e) => failed(t, e),
    }
}

/// `POST /console/accounts/{id}/reset` (owners; not one's own account): a new password,
/// second factor and recovery codes, shown once; the account's sessions end.
pub async fn reset_account(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<i64>,
) -> Response {
    let t = o.tr();
    if id == o.account.id {
        return error_page(t, StatusCode::CONFLICT, "accounts.not_yourself");
    }
    match super::accounts::reset(&s.app, &who(&o), id).await {
        Ok((name, made)) => {
            let qr = match crate::gate::qr_svg(&made.factor.url) {
                Ok(q) => q,
                Err(e) => return failed(t, e),
            };
            let role = match s.app.store.console_account(id).await {
                Ok(Some(a)) => a.role.to_string(),
                Ok(None) => return error_page(t, StatusCode::NOT_FOUND, "accounts.no_account"),
                Err(e) => return failed(t, e.into()),
            };
            html(&AccountCreatedPage {
                name,
                role,
                password: made.password,
                otpauth: made.factor.url.clone(),
                qr,
                recovery: made.factor.recovery.clone(),
                reset: true,
                f: Frame::of(&o, "accounts"),
            })
        }
        Err(ServiceError::NotFound(_)) => {
            error_page(t, StatusCode::NOT_FOUND, "accounts.no_account")
        }
        Err(e) => failed(t, e),
    }
}

#[derive(Template)]
#[template(path = "console/own_account.html")]
struct OwnAccountPage {
    f: Frame,
    recovery_left: u64,
    errors: super::FieldErrors,
    notice: Option<String>,
}

/// `GET /console/account`: one's own account (password, recovery codes left).
pub async fn own_account(
    State(s): State<HttpState>,
    o: Officer,
    RawQuery(q): RawQuery,
) -> Response {
    let t = o.tr();
    let recovery_left = match s.app.store.console_recovery_left(o.account.id).await {
        Ok(n) => n,
        Err(e) => return failed(t, e.into()),
    };
    html(&OwnAccountPage {
        recovery_left,
        errors: super::FieldErrors::default(),
        notice: notice(t, &pairs(q.unwrap_or_default().as_bytes())),
        f: Frame::of(&o, "account"),
    })
}

/// `POST /console/account/password`: the current password, the new one twice; the
/// account's other sessions end.
pub async fn change_password(State(s): State<HttpState>, o: Officer, body: Bytes) -> Response {
    let t = o.tr();
    let p = pairs(&body);
    let current = field(&p, "current").unwrap_or("").to_owned();
    let new = p
        .iter()
        .find(|(k, _)| k == "new")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let repeat = p
        .iter()
        .find(|(k, _)| k == "repeat")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let hash = o.account.password_hash.clone();
    let matches = tokio::task::spawn_blocking(move || auth::password_matches(&current, &hash))
        .await
        .unwrap_or(false);
    let mut errors: Vec<(&str, &'static str)> = Vec::new();
    if !matches {
        errors.push(("current", "account.wrong_current"));
    }
    if let Err(key) = auth::check_new_password(&new) {
        errors.push(("new", key));
    } else if new != repeat {
        errors.push(("repeat", "account.no_match"));
    }
    if !errors.is_empty() {
        let recovery_left = s
            .app
            .store
            .console_recovery_left(o.account.id)
            .await
            .unwrap_or(0);
        let page = OwnAccountPage {
            recovery_left,
            errors: super::FieldErrors::of(&t, errors),
            notice: None,
            f: Frame::of(&o, "account"),
        };
        return (StatusCode::BAD_REQUEST, html(&page)).into_response();
    }
    let hashed = match tokio::task::spawn_blocking(move || auth::hash_password(&new)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return failed(t, e),
        Err(e) => return failed(t, ServiceError::Internal(e.to_string())),
    };
    let drafts = [who(&o).draft("console.password", None, serde_json::json!({}))];
    match s
        .app
        .store
        .set_console_password(
            o.account.id,
            &hashed,
            &o.token_hash,
            Timestamp::now(),
            &drafts,
            &crate::audit::signer(&s.app),
        )
        .await
    {
        Ok(()) => see("/console/account?done=password_changed"),
        Err(e) => failed(t, e.into()),
    }
}

/// Whether `name` may name an account: 1–64 letters, digits, `.`, `_`, `-`, `@`.
pub fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// `POST /console/accounts/{id}/disable` (owners; not one's own account).
pub async fn disable_account(
    State(s): State<HttpState>,
    o: Officer,
    Path(id): Path<i64>,
) -> Response {
    let t = o.tr();
    if id == o.account.id {
        return error_page(t, StatusCode::CONFLICT, "accounts.not_yourself");
    }
    let target = match s.app.store.console_account(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return error_page(t, StatusCode::NOT_FOUND, "accounts.no_account"),
        Err(e) => return failed(t, e.into()),
    };
    let drafts = [who(&o).draft(
        "console.account_disable",
        None,
        serde_json::json!({"name": target.name}),
    )];
    match s
        .app
        .store
        .disable_console_account(id, Timestamp::now(), &drafts, &crate::audit::signer(&s.app))
        .await
    {
        Ok(()) => see("/console/accounts?done=account_disabled"),
        Err(e) => failed(t, e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value a page names through `t.sub` has a text in both languages.
    #[test]
    fn every_named_value_is_translated() {
        use redoubt_proto::{Capability, CommandState};
        let mut names: Vec<String> = Vec::new();
        names.extend(Capability::ALL.iter().map(|c| format!("cap.{c}")));
        names.extend(
            Compliance::ALL
                .iter()
                .map(|c| format!("compliance.{}", c.as_str())),
        );
        for r in [Role::Owner, Role::Officer, Role::Operator, Role::Auditor] {
            names.push(format!("role.{r}"));
        }
        for s in [
            CommandState::Queued,
            CommandState::Delivered,
            CommandState::Acknowledged,
            CommandState::Verified,
            CommandState::Expired,
            CommandState::Failed,
        ] {
            names.push(format!("cmdstate.{s}"));
        }
        for a in [
            "lock",
            "unlock",
            "wipe",
            "revoke",
            "exit-zone",
            "enter-zone",
            "set_mode",
        ] {
            names.push(format!("action.{a}"));
        }
        for h in [
            HardwareKind::Sim,
            HardwareKind::Linux,
            HardwareKind::Sailfish,
        ] {
            names.push(format!("hardware.{}", super::super::hw_key(&h)));
        }
        for s in ["on", "off", "unknown"] {
            names.push(format!("capstate.{s}"));
        }
        for s in ["allow", "deny"] {
            names.push(format!("rule.{s}"));
        }
        for s in ["open", "organization-only"] {
            names.push(format!("network.{s}"));
        }
        for s in ["live", "expired", "revoked"] {
            names.push(format!("credstate.{s}"));
        }
        for s in ["simulated", "linux", "sailfish"] {
            names.push(format!("backend.{s}"));
        }
        for s in ["zone.in", "zone.out", "zone.code_refused"] {
            names.push(format!("zoneevent.{s}"));
        }
        for s in ["open", "used", "expired", "all"] {
            names.push(format!("enrollstate.{s}"));
        }
        for s in ["hour", "day", "not_day", "not_week"] {
            names.push(format!("seen.{s}"));
        }
        for lang in Lang::ALL {
            let t = Tr { lang };
            for n in &names {
                assert!(t.has(n), "{}: no text for {n}", lang.tag());
            }
            for k in NOTICES {
                let key = format!("done.{k}");
                assert!(t.has(&key), "{}: no text for {key}", lang.tag());
            }
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("-1,2"), "\"'-1,2\"");
    }

    #[test]
    fn redirects_stay_in_the_console() {
        let target = |to: &str| {
            see(to)
                .headers()
                .get(LOCATION)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(target("/console/devices?x=1"), "/console/devices?x=1");
        for evil in [
            "https://evil.example/",
            "//evil.example/console",
            "/console\\@evil.example",
            "/console/devices\r\nSet-Cookie: x=1",
            "/other",
        ] {
            assert_eq!(target(evil), "/console", "{evil:?}");
        }
    }

    #[test]
    fn account_names() {
        assert!(valid_account_name("anna.petrova"));
        assert!(valid_account_name("Анна"));
        assert!(!valid_account_name(""));
        assert!(!valid_account_name("a b"));
        assert!(!valid_account_name("a<b"));
        assert!(!valid_account_name(&"a".repeat(65)));
    }

    #[test]
    fn filters_from_the_form() {
        let now = Timestamp(1_000_000);
        let f = FilterForm::read(&pairs(
            b"compliance=non_compliant&user=alice&seen=not_day&zone=&group=hq",
        ));
        let (q, errors) = f.query(now);
        assert!(errors.is_empty());
        assert_eq!(q.compliance, Some(Compliance::NonCompliant));
        assert_eq!(q.user.as_ref().map(|u| u.as_str()), Some("alice"));
        assert_eq!(q.seen_before, Some(Timestamp(1_000_000 - 86400)));
        assert_eq!(q.zone, None);
        assert_eq!(
            f.query_string(),
            "compliance=non_compliant&user=alice&group=hq&seen=not_day"
        );
        let (_, errors) =
            FilterForm::read(&pairs(b"compliance=great&seen=yesterday&user=%3Cb%3E")).query(now);
        let fields: Vec<&str> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["compliance", "user", "seen"]);
    }
}
