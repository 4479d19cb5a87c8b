//! The gate terminal: the tablet at a checkpoint's entrance shows the current check-in
//! or check-out code as a QR code and refreshes it.
//!
//! One direction at a time: a phone checking in must not be able to keep the check-out
//! code of the same moment (and leave with it later). The page without a direction shows
//! two buttons (the guard, or the person, chooses); `?direction=in` or `?direction=out`
//! shows that one code and nothing of the other (a terminal at an exit lane can stay on
//! `out`). The JSON endpoint follows the same rule: `…/codes?direction=in|out`.
//!
//! `GET /gate/{zone}/{checkpoint}?key=TOKEN` (the link an officer created with
//! `redoubt zones gate`) checks the credential, stores it in an HttpOnly cookie scoped to
//! the page's path and redirects to the bare URL, so the credential does not stay in the
//! address bar or the history. `GET /gate/{zone}/{checkpoint}` renders the page (plain
//! HTML, inline SVG, refreshed by `<meta http-equiv=refresh>`: no script, nothing
//! fetched from elsewhere). `GET /gate/{zone}/{checkpoint}/codes?direction=in|out` returns
//! that one code as JSON for a scripted terminal (cookie or `Authorization: Gate TOKEN`).

use std::fmt::Write as _;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use qrcode::{Color, QrCode};
use redoubt_proto::api::IssuedCode;
use redoubt_proto::{CheckpointName, Direction, ZoneName};
use serde::{Deserialize, Serialize};

use crate::app::hash_token;
use crate::error::ServiceError;
use crate::http::HttpState;
use crate::routes::{Access, Routes};

const COOKIE_NAME: &str = "redoubt_gate";

/// Routes at the top level (`/gate/...`).
pub fn routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/gate/{zone}/{checkpoint}", Access::Gate, page)
        .add(
            Method::GET,
            "/gate/{zone}/{checkpoint}/codes",
            Access::Gate,
            codes,
        )
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
    direction: Option<String>,
}

#[derive(Deserialize)]
struct DirectionQuery {
    direction: Option<String>,
}

/// The direction asked for: none (choose first), or `in` / `out`; anything else is a
/// clear 400.
fn parse_direction(raw: Option<&str>) -> Result<Option<Direction>, ServiceError> {
    match raw {
        None | Some("") => Ok(None),
        Some("in") => Ok(Some(Direction::In)),
        Some("out") => Ok(Some(Direction::Out)),
        Some(_) => Err(ServiceError::BadRequest(
            "direction must be `in` or `out`".into(),
        )),
    }
}

/// The one code a gate shows.
#[derive(Debug, Serialize)]
struct GateCode {
    /// `in` or `out`.
    direction: Direction,
    /// The code.
    code: IssuedCode,
    /// Seconds until the page asks for a new code.
    refresh_secs: u32,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    crate::http::cookie(headers, COOKIE_NAME)
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Gate "))
        .map(|v| v.trim().to_owned())
}

fn names(zone: &str, checkpoint: &str) -> Option<(ZoneName, CheckpointName)> {
    Some((zone.parse().ok()?, checkpoint.parse().ok()?))
}

/// Whether `token` is a live credential of exactly this checkpoint: looked up on every
/// request (the cookie holds the credential itself), so a revoked or expired one stops
/// working at once.
async fn authorized(
    s: &HttpState,
    token: Option<&str>,
    zone: &ZoneName,
    checkpoint: &CheckpointName,
) -> Result<bool, ServiceError> {
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 128) else {
        return Ok(false);
    };
    Ok(s.app
        .store
        .gate_credential(&hash_token(token), redoubt_proto::Timestamp::now())
        .await?
        .is_some_and(|(z, c)| &z == zone && &c == checkpoint))
}

fn html_page(status: StatusCode, title: &str, body: &str, refresh: Option<u32>) -> Response {
    let mut page = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if let Some(secs) = refresh {
        let _ = write!(page, "<meta http-equiv=\"refresh\" content=\"{secs}\">");
    }
    let _ = write!(
        page,
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title>\
         <style>body{{font-family:sans-serif;background:#fff;color:#000;margin:1em;text-align:center}}\
         .codes{{display:flex;flex-wrap:wrap;justify-content:center;gap:3em}}\
         figure{{margin:0}}svg{{width:min(42vw,70vh);height:auto}}\
         figcaption{{font-size:2em;font-weight:bold}}\
         .choose{{display:inline-block;font-size:3em;font-weight:bold;padding:1em;border:.2em solid #000;color:#000;text-decoration:none}}\
         .text{{font-family:monospace;font-size:.6em;word-break:break-all;max-width:42vw}}</style>\
         </head><body>{body}</body></html>",
        escape(title)
    );
    let mut resp = (status, page).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The QR code of `text` as an SVG: one path of dark modules, a quiet zone of 4.
pub(crate) fn qr_svg(text: &str) -> Result<String, ServiceError> {
    let code = QrCode::new(text.as_bytes())
        .map_err(|e| ServiceError::Internal(format!("cannot encode a QR code: {e}")))?;
    let w = code.width();
    let side = w + 8;
    let mut path = String::new();
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == Color::Dark {
            let _ = write!(path, "M{} {}h1v1h-1z", i % w + 4, i / w + 4);
        }
    }
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" shape-rendering=\"crispEdges\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

fn current_code(
    s: &HttpState,
    zone: &ZoneName,
    checkpoint: &CheckpointName,
    direction: Direction,
) -> GateCode {
    let valid = s.app.config.gate_code_secs;
    GateCode {
        direction,
        code: s.app.sign_code(zone, checkpoint, direction, valid),
        // Refresh well before expiry, so a code scanned from the screen is still valid.
        refresh_secs: (valid / 3).max(2),
    }
}

fn unauthorized() -> Response {
    html_page(
        StatusCode::UNAUTHORIZED,
        "Gate terminal: no credential",
        "<h1>This gate terminal has no valid credential</h1>\
         <p>Ask an officer for a new gate link: <code>redoubt zones gate ZONE CHECKPOINT</code>.</p>",
        None,
    )
}

async fn page(
    State(s): State<HttpState>,
    Path((zone, checkpoint)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let Some((zone, checkpoint)) = names(&zone, &checkpoint) else {
        return Ok(unauthorized());
    };
    let path = format!("/gate/{zone}/{checkpoint}");
    let direction = parse_direction(q.direction.as_deref())?;
    if let Some(key) = q.key {
        if !authorized(&s, Some(&key), &zone, &checkpoint).await? {
            return Ok(unauthorized());
        }
        let cookie = format!(
            "{COOKIE_NAME}={key}; Path={path}; HttpOnly; Secure; SameSite=Strict; Max-Age=31536000"
        );
        let mut resp = StatusCode::SEE_OTHER.into_response();
        let headers = resp.headers_mut();
        headers.insert(
            SET_COOKIE,
            HeaderValue::from_str(&cookie)
                .map_err(|_| ServiceError::BadRequest("malformed gate key".into()))?,
        );
        let location = match direction {
            Some(d) => format!("{path}?direction={d}"),
            None => path.clone(),
        };
        headers.insert(
            LOCATION,
            HeaderValue::from_str(&location)
                .map_err(|_| ServiceError::BadRequest("malformed path".into()))?,
        );
        return Ok(resp);
    }
    let token = header_token(&headers).or_else(|| cookie_token(&headers));
    if !authorized(&s, token.as_deref(), &zone, &checkpoint).await? {
        return Ok(unauthorized());
    }
    let title = format!("Gate {zone}/{checkpoint}");
    let heading = format!(
        "<h1>Zone {} — checkpoint {}</h1>",
        escape(zone.as_str()),
        escape(checkpoint.as_str())
    );
    let Some(direction) = direction else {
        // Choose first: no code is shown until someone says which way they go.
        let body = format!(
            "{heading}<p>Which way? Each code is shown alone: take only the one for your direction.</p>\
             <div class=\"codes\"><a class=\"choose\" href=\"?direction=in\">CHECK IN</a>\
             <a class=\"choose\" href=\"?direction=out\">CHECK OUT</a></div>"
        );
        return Ok(html_page(StatusCode::OK, &title, &body, None));
    };
    let shown = current_code(&s, &zone, &checkpoint, direction);
    let (label, other, other_label) = match direction {
        Direction::In => ("CHECK IN", "out", "check out"),
        Direction::Out => ("CHECK OUT", "in", "check in"),
    };
    let body = format!(
        "{heading}<p>Scan with the Redoubt agent. The code is valid until {} and refreshes every {} s.</p>\
         <div class=\"codes\"><figure data-direction=\"{}\">{}<figcaption>{label}</figcaption><div class=\"text\">{}</div></figure></div>\
         <p><a href=\"?direction={other}\">Switch to {other_label}</a></p>",
        shown.code.not_after,
        shown.refresh_secs,
        shown.direction,
        qr_svg(&shown.code.code)?,
        escape(&shown.code.code)
    );
    Ok(html_page(
        StatusCode::OK,
        &title,
        &body,
        Some(shown.refresh_secs),
    ))
}

async fn codes(
    State(s): State<HttpState>,
    Path((zone, checkpoint)): Path<(String, String)>,
    Query(q): Query<DirectionQuery>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let Some((zone, checkpoint)) = names(&zone, &checkpoint) else {
        return Err(ServiceError::Unauthorized(
            "no valid gate credential".into(),
        ));
    };
    let token = header_token(&headers).or_else(|| cookie_token(&headers));
    if !authorized(&s, token.as_deref(), &zone, &checkpoint).await? {
        return Err(ServiceError::Unauthorized(
            "no valid gate credential for this checkpoint".into(),
        ));
    }
    let Some(direction) = parse_direction(q.direction.as_deref())? else {
        return Err(ServiceError::BadRequest(
            "choose a direction: ?direction=in or ?direction=out (one code at a time)".into(),
        ));
    };
    let mut resp = Json(current_code(&s, &zone, &checkpoint, direction)).into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use axum::http::header::COOKIE;

    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; redoubt_gate=rgt_x; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("rgt_x"));
        h.insert(COOKIE, HeaderValue::from_static("redoubt_gatex=1"));
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn svg_has_dark_modules_and_a_quiet_zone() {
        let svg = qr_svg("RDZ1.abc.def").unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("M4 4h1v1h-1z"),
            "finder pattern starts at the quiet zone"
        );
        assert!(escape("<a href=\"x\">&").eq("&lt;a href=&quot;x&quot;&gt;&amp;"));
    }
}
