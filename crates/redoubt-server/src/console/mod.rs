//! The officers' web console at `/console`: pages rendered on the server from templates
//! compiled into the binary (askama, `templates/console/`), in Russian or English
//! (`i18n.rs`), with one small script and one style sheet served by the server itself
//! (`assets/`): nothing is fetched from elsewhere, and the Content-Security-Policy
//! allows nothing else (no inline script, no inline style).
//!
//! Every route is in the route table with the roles that may call it (`Access::Console`);
//! the `Officer` extractor (`auth.rs`) enforces it before anything else, and pages show
//! only the actions the role may take. Every request that changes something carries the
//! session's CSRF token, checked by [`csrf_guard`] before the handler runs.

mod accounts;
pub mod auth;
mod chart;
pub mod i18n;
mod pages;
mod policy;

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, ORIGIN, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redoubt_proto::Timestamp;

use self::i18n::Tr;
use crate::routes::{ANY_ADMIN, Access, OFFICER, OPERATOR, OWNER, Routes};

/// The policy every console response carries: only this server's script, styles and
/// images; forms post only here; no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The largest form the console accepts.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Routes under `/console`.
pub fn routes() -> Routes {
    use Access::{Console as C, Public as P};
    use Method as V;
    Routes::new()
        .add(V::GET, "/", C(ANY_ADMIN), pages::dashboard)
        .add(V::GET, "/login", P, pages::login_page)
        .add(V::POST, "/login", P, pages::login)
        .add(V::POST, "/logout", C(ANY_ADMIN), pages::logout)
        .add(V::POST, "/language", P, pages::language)
        .add(V::GET, "/assets/{file}", P, asset)
        .add(V::GET, "/events", C(ANY_ADMIN), pages::events)
        .add(V::GET, "/devices", C(ANY_ADMIN), pages::devices)
        .add(V::GET, "/devices.csv", C(ANY_ADMIN), pages::devices_csv)
        .add(V::POST, "/devices/bulk", C(OPERATOR), pages::bulk)
        .add(V::GET, "/devices/{id}", C(ANY_ADMIN), pages::device)
        .add(
            V::POST,
            "/devices/{id}/mode",
            C(OPERATOR),
            pages::device_mode,
        )
        .add(
            V::POST,
            "/devices/{id}/command",
            C(OPERATOR),
            pages::device_command,
        )
        .add(V::GET, "/enrollments", C(ANY_ADMIN), pages::enrollments)
        .add(
            V::POST,
            "/enrollments",
            C(OPERATOR),
            pages::create_enrollment,
        )
        .add(
            V::POST,
            "/enrollments/{id}/revoke",
            C(OPERATOR),
            pages::revoke_enrollment,
        )
        .add(V::GET, "/modes", C(ANY_ADMIN), policy::modes)
        .add(V::GET, "/modes/{name}", C(ANY_ADMIN), policy::mode)
        .add(V::POST, "/modes/preview", C(OFFICER), policy::mode_preview)
        .add(V::POST, "/modes/apply", C(OFFICER), policy::mode_apply)
        .add(V::GET, "/zones", C(ANY_ADMIN), policy::zones)
        .add(V::GET, "/zones/{name}", C(ANY_ADMIN), policy::zone)
        .add(V::POST, "/zones/preview", C(OFFICER), policy::zone_preview)
        .add(V::POST, "/zones/apply", C(OFFICER), policy::zone_apply)
        .add(
            V::POST,
            "/zones/{name}/gate-credentials",
            C(OFFICER),
            policy::create_gate,
        )
        .add(
            V::POST,
            "/zones/{name}/gate-credentials/{id}/revoke",
            C(OFFICER),
            policy::revoke_gate,
        )
        .add(V::GET, "/groups", C(ANY_ADMIN), policy::groups)
        .add(V::POST, "/groups", C(OPERATOR), policy::create_group)
        .add(
            V::POST,
            "/groups/{name}/mode",
            C(OPERATOR),
            policy::group_mode,
        )
        .add(V::GET, "/audit", C(ANY_ADMIN), pages::audit)
        .add(V::GET, "/audit/export", C(ANY_ADMIN), pages::audit_export)
        .add(V::GET, "/audit/verify", C(ANY_ADMIN), pages::audit_verify)
        .add(V::GET, "/accounts", C(OWNER), pages::accounts)
        .add(V::POST, "/accounts", C(OWNER), pages::create_account)
        .add(
            V::POST,
            "/accounts/{id}/disable",
            C(OWNER),
            pages::disable_account,
        )
        .add(
            V::POST,
            "/accounts/{id}/reset",
            C(OWNER),
            pages::reset_account,
        )
        .add(V::GET, "/account", C(ANY_ADMIN), pages::own_account)
        .add(
            V::POST,
            "/account/password",
            C(ANY_ADMIN),
            pages::change_password,
        )
}

/// Adds the console's security headers to every response under `/console`.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`: nothing leaves for other sites, and the browser still names this
    // origin in `Origin` on the console's own form posts (with `no-referrer` it sends
    // `Origin: null`, which the CSRF guard refuses).
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Refuses a state-changing request to the console unless its form carries the CSRF
/// token of the caller's cookie (session, or the sign-in page's pre-session cookie), and
/// unless it comes from this origin where the browser says (`Origin`,
/// `Sec-Fetch-Site`). The body is read here (bounded) and handed on unchanged.
pub async fn csrf_guard(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let lang = auth::browser_lang(req.headers());
    let refuse = || error_page(Tr { lang }, StatusCode::FORBIDDEN, "error.csrf");
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return refuse();
    }
    if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        // HTTP/1.1 names the host in `Host`, HTTP/2 in the request's authority.
        let host = headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if origin != format!("https://{host}") {
            return refuse();
        }
    }
    let secret = auth::cookie(headers, auth::SESSION_COOKIE)
        .or_else(|| auth::cookie(headers, auth::PRE_COOKIE));
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return error_page(
            Tr { lang },
            StatusCode::PAYLOAD_TOO_LARGE,
            "error.too_large",
        );
    };
    let sent = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    match (secret, sent) {
        (Some(secret), Some(sent)) if auth::same(&auth::csrf_of(&secret), &sent) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        _ => refuse(),
    }
}

/// The console's script and styles, named by content so they can be cached for good.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/console.js"),
    },
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (CONTENT_TYPE, a.content_type),
                (CACHE_CONTROL, "private, max-age=3600"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

pub use accounts::create_in as create_account;

/// The QR code of `text` in half-block characters for a terminal (light modules drawn
/// filled, for the usual light-on-dark terminal).
pub fn terminal_qr(text: &str) -> anyhow::Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot encode a QR code: {e}"))?;
    let mut out = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    out.push('\n');
    Ok(out)
}

/// How often the fleet's compliance is sampled for the dashboard's chart.
pub const SAMPLE_EVERY_SECS: i64 = 300;
/// How long samples are kept (the chart shows a week).
const SAMPLES_KEPT_SECS: i64 = 8 * 86400;

/// Samples the fleet's compliance every [`SAMPLE_EVERY_SECS`] (at start too) until the
/// server stops. Samples are stamped with the start of their period, so the nodes of a
/// cluster write the same row rather than one each.
pub async fn sample_compliance(app: crate::app::SharedApp) {
    let mut stop = app.shutdown.clone();
    loop {
        let now = Timestamp::now();
        let at = Timestamp(now.unix() - now.unix().rem_euclid(SAMPLE_EVERY_SECS));
        match app.store.compliance_counts(app.stale_before(now)).await {
            Ok(counts) => {
                let n = |c: redoubt_proto::Compliance| {
                    counts.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n)
                };
                let sample = redoubt_store::ComplianceSample {
                    at,
                    compliant: n(redoubt_proto::Compliance::Compliant),
                    non_compliant: n(redoubt_proto::Compliance::NonCompliant),
                    stale: n(redoubt_proto::Compliance::Stale),
                    pending: n(redoubt_proto::Compliance::Pending),
                };
                if let Err(e) = app
                    .store
                    .record_compliance_sample(&sample, at.plus_secs(-SAMPLES_KEPT_SECS))
                    .await
                {
                    tracing::warn!(error = %e, "recording a compliance sample failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "counting compliance for a sample failed"),
        }
        let next = at.unix() + SAMPLE_EVERY_SECS - Timestamp::now().unix();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(next.clamp(1, SAMPLE_EVERY_SECS) as u64)) => {}
            _ = stop.changed() => break,
        }
    }
}

/// What every page's frame needs: the words, who is signed in, the CSRF token, which
/// section is open, and what the role may do.
pub struct Frame {
    /// The words.
    pub t: Tr,
    /// The signed-in officer's name (empty on the sign-in page).
    pub who: String,
    /// Their role.
    pub role: String,
    /// The CSRF token for forms.
    pub csrf: String,
    /// The section open (`dashboard`, `devices`, …).
    pub section: &'static str,
    /// May change devices and enroll (operator, owner).
    pub can_operate: bool,
    /// May change modes, zones and gates (officer, owner).
    pub can_officer: bool,
    /// Is an owner.
    pub is_owner: bool,
}

impl Frame {
    /// The frame of a signed-in officer's page.
    pub fn of(o: &auth::Officer, section: &'static str) -> Frame {
        use redoubt_proto::api::Role;
        Frame {
            t: o.tr(),
            who: o.account.name.clone(),
            role: o.account.role.to_string(),
            csrf: o.csrf.clone(),
            section,
            can_operate: o.can(Role::Operator),
            can_officer: o.can(Role::Officer),
            is_owner: o.account.role == Role::Owner,
        }
    }

    /// The BCP 47 tag of the page's language.
    pub fn lang(&self) -> &'static str {
        self.t.lang.tag()
    }

    /// The languages the menu offers.
    pub fn languages(&self) -> [(&'static str, &'static str, bool); 2] {
        i18n::Lang::ALL.map(|l| (l.tag(), l.own_name(), l == self.t.lang))
    }

    /// `aria-current` for the section's link.
    pub fn current(&self, section: &str) -> &'static str {
        if self.section == section {
            "page"
        } else {
            "false"
        }
    }
}

/// The catalogue's name of a hardware kind (`sim`, `linux`, `sailfish`).
pub fn hw_key(h: &redoubt_proto::HardwareKind) -> &'static str {
    match h {
        redoubt_proto::HardwareKind::Sim => "sim",
        redoubt_proto::HardwareKind::Linux => "linux",
        redoubt_proto::HardwareKind::Sailfish => "sailfish",
    }
}

/// Whether `a` is `b` (for templates, which hold their values by reference).
pub fn is(a: &str, b: &str) -> bool {
    a == b
}

/// "`free` free of `total`", or a dash when either is unknown.
pub fn storage(t: &Tr, free: &Option<u64>, total: &Option<u64>) -> String {
    match (free, total) {
        (Some(free), Some(total)) => t
            .with("inventory.free_of", "free", &bytes(*free))
            .replace("{total}", &bytes(*total)),
        _ => "—".to_owned(),
    }
}

/// A size in bytes as people read it (GB, MB with one decimal).
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{n} B")
    }
}

/// `" selected"` when `a` is `b` (for a menu's option).
pub fn selected(a: &str, b: &str) -> &'static str {
    if a == b { " selected" } else { "" }
}

/// The messages of a form's fields that are wrong, each shown at its field.
#[derive(Default)]
pub struct FieldErrors(pub Vec<(String, String)>);

impl FieldErrors {
    /// The message of `field`, if it is wrong.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, m)| m.as_str())
    }

    /// Whether every field is right.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// From (field, catalogue key) pairs, in the reader's words.
    pub fn of<F: Into<String>>(
        t: &Tr,
        errors: impl IntoIterator<Item = (F, &'static str)>,
    ) -> FieldErrors {
        FieldErrors(
            errors
                .into_iter()
                .map(|(f, k)| (f.into(), t.get(k).to_owned()))
                .collect(),
        )
    }
}

/// A time as the page shows it: machine-readable for the script, which writes it in the
/// reader's time zone; UTC until then.
pub fn time_html(t: &Timestamp) -> String {
    let iso = t.to_string();
    let shown = iso.replace('T', " ").trim_end_matches('Z').to_owned() + " UTC";
    format!("<time datetime=\"{iso}\">{shown}</time>")
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    f: Frame,
    message: String,
}

/// A page that says what went wrong, in the reader's language.
pub fn error_page(t: Tr, status: StatusCode, key: &str) -> Response {
    error_text(t, status, t.get(key).to_owned())
}

/// A page that says `message`.
pub fn error_text(t: Tr, status: StatusCode, message: String) -> Response {
    let page = ErrorPage {
        f: Frame {
            t,
            who: String::new(),
            role: String::new(),
            csrf: String::new(),
            section: "",
            can_operate: false,
            can_officer: false,
            is_owner: false,
        },
        message,
    };
    (status, html(&page)).into_response()
}

/// Renders a template as an HTML response.
pub fn html<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(body) => ([(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}
