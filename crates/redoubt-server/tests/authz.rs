//! The authorization matrix, generated from the router: `redoubt-server routes --json`
//! prints the table the router is built from (every route is registered with the access
//! it requires), and this test calls every route as every kind of caller — nobody, each
//! admin role, an enrolled device, a revoked device, a device outside the conversation,
//! a gate credential — and checks the answer against the declared access.
//!
//! The test also holds its own copy of the table: a route added to the server without a
//! row here (or with another access than the row says) fails it, so every new route is
//! reviewed for who may call it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Agent, Http, Server, bin, chat};
use serde_json::Value;

/// Every route and who may call it, as reviewed. `admin:` lists the roles allowed.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/enroll", "public"),
    ("GET", "/api/v1/device/ws", "public"),
    (
        "GET",
        "/api/v1/whoami",
        "admin:owner,officer,operator,auditor",
    ),
    ("POST", "/api/v1/enrollments", "admin:owner,operator"),
    // Auditors review who was given a code and which phone used it; never the code.
    (
        "GET",
        "/api/v1/enrollments",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/devices",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/devices/{id}",
        "admin:owner,officer,operator,auditor",
    ),
    ("PUT", "/api/v1/devices/{id}/mode", "admin:owner,operator"),
    (
        "GET",
        "/api/v1/devices/counts",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/devices/count",
        "admin:owner,officer,operator,auditor",
    ),
    ("POST", "/api/v1/devices/bulk", "admin:owner,operator"),
    (
        "GET",
        "/api/v1/commands",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/groups",
        "admin:owner,officer,operator,auditor",
    ),
    ("POST", "/api/v1/groups", "admin:owner,operator"),
    (
        "GET",
        "/api/v1/groups/{name}",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "POST",
        "/api/v1/groups/{name}/devices",
        "admin:owner,operator",
    ),
    (
        "POST",
        "/api/v1/groups/{name}/devices/remove",
        "admin:owner,operator",
    ),
    ("PUT", "/api/v1/groups/{name}/mode", "admin:owner,operator"),
    ("POST", "/api/v1/devices/{id}/approve", "admin:owner"),
    (
        "GET",
        "/api/v1/modes",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/modes/{name}",
        "admin:owner,officer,operator,auditor",
    ),
    ("PUT", "/api/v1/modes/{name}", "admin:owner,officer"),
    ("GET", "/api/v1/admin-tokens", "admin:owner,auditor"),
    ("POST", "/api/v1/admin-tokens/{id}/revoke", "admin:owner"),
    ("POST", "/api/v1/device/challenge", "public"),
    ("POST", "/api/v1/device/session", "public"),
    ("POST", "/api/v1/messenger/certificate", "device"),
    ("GET", "/api/v1/messenger/revocations", "device"),
    ("POST", "/api/v1/messenger/key-packages", "device"),
    ("POST", "/api/v1/messenger/key-packages/claim", "device"),
    ("POST", "/api/v1/messenger/groups", "device"),
    ("GET", "/api/v1/messenger/groups/{id}", "member"),
    ("POST", "/api/v1/messenger/groups/{id}/commit", "member"),
    ("POST", "/api/v1/messenger/groups/{id}/messages", "member"),
    ("GET", "/api/v1/messenger/queue", "device"),
    ("POST", "/api/v1/messenger/queue/ack", "device"),
    ("GET", "/api/v1/messenger/ws", "device"),
    ("POST", "/api/v1/messenger/groups/{id}/blobs", "member"),
    (
        "GET",
        "/api/v1/messenger/groups/{id}/blobs/{blob}",
        "member",
    ),
    (
        "GET",
        "/api/v1/audit",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/audit/head",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/audit/export",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/audit/key",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/zones",
        "admin:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/api/v1/zones/{name}",
        "admin:owner,officer,operator,auditor",
    ),
    ("PUT", "/api/v1/zones/{name}", "admin:owner,officer"),
    ("POST", "/api/v1/zones/{name}/codes", "admin:owner,officer"),
    (
        "GET",
        "/api/v1/zones/{name}/gate-credentials",
        "admin:owner,officer,auditor",
    ),
    (
        "POST",
        "/api/v1/zones/{name}/gate-credentials/{id}/revoke",
        "admin:owner,officer",
    ),
    (
        "POST",
        "/api/v1/zones/{name}/checkpoints/{checkpoint}/gate-credentials",
        "admin:owner,officer",
    ),
    (
        "POST",
        "/api/v1/devices/{id}/commands",
        "admin:owner,operator",
    ),
    (
        "GET",
        "/api/v1/devices/{id}/commands",
        "admin:owner,officer,operator,auditor",
    ),
    ("GET", "/healthz", "public"),
    ("GET", "/metrics", "admin:owner,officer,operator,auditor"),
    ("GET", "/gate/{zone}/{checkpoint}", "gate"),
    ("GET", "/gate/{zone}/{checkpoint}/codes", "gate"),
    // The web console: pages for every role; changes for the roles the API allows.
    ("POST", "/console/accounts/{id}/reset", "console:owner"),
    (
        "GET",
        "/console/account",
        "console:owner,officer,operator,auditor",
    ),
    (
        "POST",
        "/console/account/password",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/modes",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/modes/{name}",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/modes/preview", "console:owner,officer"),
    ("POST", "/console/modes/apply", "console:owner,officer"),
    (
        "GET",
        "/console/zones",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/zones/{name}",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/zones/preview", "console:owner,officer"),
    ("POST", "/console/zones/apply", "console:owner,officer"),
    (
        "POST",
        "/console/zones/{name}/gate-credentials",
        "console:owner,officer",
    ),
    (
        "POST",
        "/console/zones/{name}/gate-credentials/{id}/revoke",
        "console:owner,officer",
    ),
    (
        "GET",
        "/console/groups",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/groups", "console:owner,operator"),
    (
        "POST",
        "/console/groups/{name}/mode",
        "console:owner,operator",
    ),
    (
        "GET",
        "/console/audit/export",
        "console:owner,officer,operator,auditor",
    ),
    // Sign-in, the language choice and the script and styles are public.
    ("GET", "/console", "console:owner,officer,operator,auditor"),
    ("GET", "/console/login", "public"),
    ("POST", "/console/login", "public"),
    (
        "POST",
        "/console/logout",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/language", "public"),
    ("GET", "/console/assets/{file}", "public"),
    (
        "GET",
        "/console/events",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/devices",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/devices.csv",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/devices/bulk", "console:owner,operator"),
    (
        "GET",
        "/console/devices/{id}",
        "console:owner,officer,operator,auditor",
    ),
    (
        "POST",
        "/console/devices/{id}/mode",
        "console:owner,operator",
    ),
    (
        "POST",
        "/console/devices/{id}/command",
        "console:owner,operator",
    ),
    (
        "GET",
        "/console/enrollments",
        "console:owner,officer,operator,auditor",
    ),
    ("POST", "/console/enrollments", "console:owner,operator"),
    (
        "POST",
        "/console/enrollments/{id}/revoke",
        "console:owner,operator",
    ),
    (
        "GET",
        "/console/audit",
        "console:owner,officer,operator,auditor",
    ),
    (
        "GET",
        "/console/audit/verify",
        "console:owner,officer,operator,auditor",
    ),
    ("GET", "/console/accounts", "console:owner"),
    ("POST", "/console/accounts", "console:owner"),
    ("POST", "/console/accounts/{id}/disable", "console:owner"),
];

const ROLES: [&str; 4] = ["owner", "officer", "operator", "auditor"];

/// One row of `redoubt-server routes --json`.
#[derive(Debug, Clone)]
struct Route {
    method: String,
    path: String,
    access: String,
}

fn route_table() -> Vec<Route> {
    let out = Command::new(bin("redoubt-server"))
        .args(["routes", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| {
            let access = &r["access"];
            let access = match access["kind"].as_str().unwrap() {
                kind @ ("admin" | "console") => format!(
                    "{kind}:{}",
                    access["role"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => other.to_owned(),
            };
            Route {
                method: r["method"].as_str().unwrap().to_owned(),
                path: r["path"].as_str().unwrap().to_owned(),
                access,
            }
        })
        .collect()
}

#[test]
fn every_route_has_a_reviewed_row() {
    let table: BTreeSet<(String, String, String)> = route_table()
        .into_iter()
        .map(|r| (r.method, r.path, r.access))
        .collect();
    let expected: BTreeSet<(String, String, String)> = EXPECTED
        .iter()
        .map(|(m, p, a)| (m.to_string(), p.to_string(), a.to_string()))
        .collect();
    let unreviewed: Vec<_> = table.difference(&expected).collect();
    let gone: Vec<_> = expected.difference(&table).collect();
    assert!(
        unreviewed.is_empty() && gone.is_empty(),
        "routes without a reviewed row (add them to EXPECTED after deciding who may call them): \
         {unreviewed:#?}\nrows without a route: {gone:#?}"
    );
}

/// Who calls.
#[derive(Debug, Clone)]
enum Caller {
    Nobody,
    Admin(&'static str, String),
    /// A member of the conversation.
    Device(String),
    /// A member whose device was revoked after its session opened.
    Revoked(String),
    /// An enrolled device that is not in the conversation.
    Outsider(String),
    Gate(String),
    /// Signed in to the web console with this role.
    Console(&'static str, common::ConsoleSession),
}

impl Caller {
    fn name(&self) -> String {
        match self {
            Caller::Nobody => "no credential".into(),
            Caller::Admin(r, _) => format!("admin {r}"),
            Caller::Device(_) => "enrolled member device".into(),
            Caller::Revoked(_) => "revoked device".into(),
            Caller::Outsider(_) => "device outside the conversation".into(),
            Caller::Gate(_) => "gate credential".into(),
            Caller::Console(r, _) => format!("console {r}"),
        }
    }

    fn authorization(&self) -> Option<String> {
        match self {
            Caller::Nobody => None,
            Caller::Admin(_, t) => Some(format!("Bearer {t}")),
            Caller::Device(t) | Caller::Revoked(t) | Caller::Outsider(t) => {
                Some(format!("Device {t}"))
            }
            Caller::Gate(t) => Some(format!("Gate {t}")),
            Caller::Console(..) => None,
        }
    }
}

/// What the answer must be.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Past authorization: anything but 401, 403 (and, for members, 404).
    Allowed,
    /// 401 (no or the wrong kind of credential), 403 (a role that may not).
    Refused(u16),
}

fn verdict(access: &str, caller: &Caller) -> Verdict {
    use Verdict::{Allowed, Refused};
    match (access, caller) {
        ("public", _) => Allowed,
        (a, Caller::Admin(role, _)) if a.starts_with("admin:") => {
            if a["admin:".len()..].split(',').any(|r| r == *role) {
                Allowed
            } else {
                Refused(403)
            }
        }
        ("device", Caller::Device(_) | Caller::Outsider(_)) => Allowed,
        ("member", Caller::Device(_)) => Allowed,
        // A device outside the group learns nothing: the group does not exist for it.
        ("member", Caller::Outsider(_)) => Refused(404),
        ("gate", Caller::Gate(_)) => Allowed,
        (a, Caller::Console(role, _)) if a.starts_with("console:") => {
            if a["console:".len()..].split(',').any(|r| r == *role) {
                Allowed
            } else {
                Refused(403)
            }
        }
        // Anyone else meets the sign-in page.
        (a, _) if a.starts_with("console:") => Refused(303),
        _ => Refused(401),
    }
}

#[test]
fn every_route_answers_every_caller_as_its_row_says() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);

    // A zone with a checkpoint and a gate credential for it.
    let zone_file = tmp.path().join("lab.toml");
    std::fs::write(
        &zone_file,
        "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"north-gate\"]\n",
    )
    .unwrap();
    server.cli_json(&["zones", "apply", zone_file.to_str().unwrap()]);
    let gate = server.cli_json(&["zones", "gate", "lab", "north-gate"]);
    let gate_url = gate["url"].as_str().unwrap();
    let gate_key = gate_url[gate_url.find("key=").unwrap() + 4..].to_owned();

    // Alice, Bob and Dave talk; Carol is enrolled but not in their conversation.
    let phones: Vec<(String, Agent)> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| {
            let a = Agent::new(tmp.path().join(u));
            let id = a.enroll(&server.enrollment_url(u));
            (id, a)
        })
        .collect();
    for (_, p) in &phones[1..] {
        chat(&p.state, &["list"]);
    }
    let created = chat(
        &phones[0].1.state,
        &["create", "Ops", "--members", "bob,dave"],
    );
    let group = created["conversation"].as_str().unwrap().to_owned();
    let session = |i: usize| {
        let auth = http.device_session(&phones[i].1.state, &phones[i].0);
        auth.strip_prefix("Device ").unwrap().to_owned()
    };
    let (member, outsider, revoked) = (session(0), session(2), session(3));
    let (status, body) = http.send(
        "POST",
        &format!("/api/v1/devices/{}/commands", phones[3].0),
        Some(&server.owner_token),
        Some(br#"{"action":"revoke"}"#.to_vec()),
    );
    assert!(status == 200 || status == 201, "revoke: {status} {body}");

    let mut callers = vec![Caller::Nobody];
    for role in ROLES {
        callers.push(Caller::Admin(
            role,
            server.admin_token(&format!("matrix-{role}"), role),
        ));
    }
    callers.extend([
        Caller::Device(member),
        Caller::Revoked(revoked),
        Caller::Outsider(outsider),
        Caller::Gate(gate_key),
    ]);
    for role in ROLES {
        let account = server.console_account(&format!("console-{role}"), role);
        let session = http.console_sign_in(&account, &account.code());
        callers.push(Caller::Console(role, session));
    }
    // Every caller of a console form holds the sign-in page's cookie and its CSRF
    // token, as a browser would: what decides is the session, not the token.
    let pre = http.console_pre_session();

    // Path parameters: real objects, so an allowed call reaches the service; actions
    // that would change something name objects that do not exist.
    let fill = |method: &str, path: &str| -> String {
        let destructive = method == "POST" && path.ends_with("/revoke");
        path.replace("/devices/{id}", &format!("/devices/{}", phones[0].0))
            .replace("/groups/{id}", &format!("/groups/{group}"))
            .replace("{blob}", "blob_00000000000000000000000000000000")
            .replace(
                "{name}",
                if path.contains("/modes/") {
                    "standard"
                } else {
                    "lab"
                },
            )
            .replace("{zone}", "lab")
            .replace("{file}", "console.css")
            .replace("{checkpoint}", "north-gate")
            .replace(
                "{id}",
                if destructive {
                    "0000000000000000"
                } else {
                    "unknown"
                },
            )
    };

    let mut wrong = Vec::new();
    let mut calls = 0;
    // Signing out ends the session the later calls use: last.
    let mut routes = route_table();
    routes.sort_by_key(|r| r.path == "/console/logout");
    for route in routes {
        let path = fill(&route.method, &route.path);
        assert!(
            !path.contains('{'),
            "no fixture for a parameter of {}",
            route.path
        );
        // The gate page is asked for one direction so an allowed call answers 200.
        let path = if path.starts_with("/gate/") {
            format!("{path}?direction=in")
        } else {
            path
        };
        for caller in &callers {
            let auth = caller.authorization();
            let mut headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            let console = route.path.starts_with("/console");
            let (cookie, csrf) = match caller {
                Caller::Console(_, s) => (s.cookie.clone(), s.csrf.clone()),
                _ => (pre.cookie.clone(), pre.csrf.clone()),
            };
            let form = format!("csrf={csrf}");
            let body = if route.method == "GET" {
                None
            } else if console {
                headers.push(("content-type", "application/x-www-form-urlencoded"));
                Some(form.as_bytes())
            } else {
                Some(&b"{}"[..])
            };
            if console || matches!(caller, Caller::Console(..)) {
                headers.push(("cookie", &cookie));
            }
            let (status, response_headers, answer) =
                http.request_full(&route.method, &path, &headers, body);
            let to_sign_in = status == 303
                && response_headers.iter().any(|(k, v)| {
                    k == "location" && v.starts_with("/console/login") && !v.contains("signed_out")
                });
            calls += 1;
            let expected = verdict(&route.access, caller);
            let ok = match expected {
                // A console route lets a caller through unless it is refused (403) or
                // sent to sign in; a sign-in form answers 401 for the wrong password.
                Verdict::Allowed if console => status != 403 && !to_sign_in,
                Verdict::Refused(303) => to_sign_in,
                Verdict::Allowed => {
                    // A member may meet a 404 for an object inside the group (a
                    // file that does not exist), never the group's own.
                    !(status == 401
                        || status == 403
                        || (route.access == "member"
                            && status == 404
                            && answer.contains("no conversation ")))
                }
                Verdict::Refused(code) => status == code,
            };
            if !ok {
                wrong.push(format!(
                    "{} {} ({}) as {}: expected {expected:?}, got {status} {}",
                    route.method,
                    route.path,
                    route.access,
                    caller.name(),
                    answer.chars().take(160).collect::<String>()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {calls} calls answered against the route table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
