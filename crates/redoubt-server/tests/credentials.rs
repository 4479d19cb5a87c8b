//! Admin tokens and gate credentials expire, are listed without secrets and can be
//! revoked (audited); an expired or revoked one stops working at its next request —
//! including a gate page's cookie.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Http, Server, stderr};
use serde_json::Value;

fn whoami(http: &Http, token: &str) -> u16 {
    http.send("GET", "/api/v1/whoami", Some(token), None).0
}

fn id_of(list: &Value, name: &str) -> String {
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn audit_actions(server: &Server) -> Vec<(String, String)> {
    server
        .cli_json(&["audit", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Runs one statement on the running server's database: the way tests let time pass
/// for a stored expiry.
fn sql(server: &Server, statement: &'static str) {
    let db = server.data.join("redoubt.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let done = sqlx::query(statement).execute(&pool).await.unwrap();
            assert_eq!(done.rows_affected(), 1, "{statement}");
            pool.close().await;
        });
}

#[test]
fn an_expired_admin_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let olga = server.admin_token("olga", "officer");
    assert_eq!(whoami(&http, &olga), 200);
    let me: Value =
        serde_json::from_str(&http.send("GET", "/api/v1/whoami", Some(&olga), None).1).unwrap();
    assert!(me["expires_at"].is_string(), "{me}");

    // Its expiry passes (moved into the past in the database, as time would).
    sql(
        &server,
        "UPDATE admin_tokens SET expires_at = expires_at - 91 * 86400 WHERE name = 'olga'",
    );
    let (status, body) = http.send("GET", "/api/v1/whoami", Some(&olga), None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    let list = server.cli_json(&["tokens", "list"]);
    let olga_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "olga")
        .unwrap();
    assert_eq!(olga_row["state"], "expired");
    assert!(!list.to_string().contains(&olga), "a secret was listed");

    // The lifetime is chosen at creation and bounded.
    let out = std::process::Command::new(common::bin("redoubt-server"))
        .args([
            "admin-token",
            "--name",
            "x",
            "--role",
            "auditor",
            "--ttl",
            "5s",
            "--data",
        ])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lifetime"), "{}", stderr(&out));
    let out = std::process::Command::new(common::bin("redoubt-server"))
        .args([
            "admin-token",
            "--name",
            "x",
            "--role",
            "auditor",
            "--ttl",
            "soon",
            "--data",
        ])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_revoked_admin_token_is_refused_at_its_next_request_and_only_owners_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let olga = server.admin_token("olga", "officer");
    let oscar = server.admin_token("oscar", "operator");
    let audrey = server.admin_token("audrey", "auditor");

    // Who may list: owners and auditors; nobody else.
    for (token, expect) in [(&oscar, 403), (&olga, 403), (&audrey, 200)] {
        let (status, body) = http.send("GET", "/api/v1/admin-tokens", Some(token), None);
        assert_eq!(status, expect, "{body}");
    }
    let (status, _) = http.send("GET", "/api/v1/admin-tokens", None, None);
    assert_eq!(status, 401);
    let list = server.cli_json(&["tokens", "list"]);
    let olga_id = id_of(&list, "olga");
    assert_eq!(olga_id.len(), 16);

    // Who may revoke: owners only.
    for token in [&olga, &oscar, &audrey] {
        let out = server.cli_as(token, &["tokens", "revoke", &olga_id]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("may not"), "{}", stderr(&out));
    }
    assert_eq!(whoami(&http, &olga), 200);
    // Bad ids get a clear 4xx and change nothing.
    for bad in ["nothex-nothex-no", "0123", "0000000000000000"] {
        let (status, body) = http.send(
            "POST",
            &format!("/api/v1/admin-tokens/{bad}/revoke"),
            Some(&server.owner_token),
            Some(b"{}".to_vec()),
        );
        assert!(status == 400 || status == 404, "{bad}: {status} {body}");
    }
    assert_eq!(whoami(&http, &olga), 200);

    let revoked = server.cli_json(&["tokens", "revoke", &olga_id]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_by"], "admin:test-owner");
    // The very next request is refused.
    let (status, body) = http.send("GET", "/api/v1/devices", Some(&olga), None);
    assert_eq!(status, 401, "{body}");
    // Revoking twice is a conflict; the others still work.
    let out = server.cli_as(&server.owner_token, &["tokens", "revoke", &olga_id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already"), "{}", stderr(&out));
    assert_eq!(whoami(&http, &oscar), 200);
    let list = server.cli_json(&["tokens", "list"]);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "olga")
            .unwrap()["state"],
        "revoked"
    );
    assert!(
        audit_actions(&server).contains(&("admin_token.revoke".into(), "admin:test-owner".into()))
    );
}

/// A gate credential of zone `lab`'s north gate, opened as a gate device would: its
/// link (path with the key), the `Authorization: Gate` header, the id and the cookie the link sets.
struct Gate {
    link: String,
    header: String,
    id: String,
    cookie: String,
}

fn open_gate(server: &Server, http: &Http, dir: &std::path::Path, ttl: &str) -> Gate {
    let file = dir.join("lab.toml");
    std::fs::write(
        &file,
        "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"north-gate\"]\n",
    )
    .unwrap();
    server.cli_json(&["zones", "apply", file.to_str().unwrap()]);
    let gate = server.cli_json(&["zones", "gate", "lab", "north-gate", "--ttl", ttl]);
    let url = gate["url"].as_str().unwrap();
    let link = url[url.find("/gate/").unwrap()..].to_owned();
    let key = link[link.find("key=").unwrap() + 4..].to_owned();
    let (status, headers, _) = http.get_with(&link, &[]);
    assert_eq!(status, 303);
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    Gate {
        link,
        header: format!("Gate {key}"),
        id: gate["id"].as_str().unwrap().to_owned(),
        cookie,
    }
}

#[test]
fn a_revoked_gate_credential_closes_the_gate_page_and_its_json_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let Gate {
        link,
        header: gate_header,
        id,
        cookie,
    } = open_gate(&server, &http, tmp.path(), "30d");
    let path = link.as_str();
    let page = |http: &Http| {
        http.get_with("/gate/lab/north-gate", &[("cookie", &cookie)])
            .0
    };
    let codes_by_cookie = |http: &Http| {
        http.get_with(
            "/gate/lab/north-gate/codes?direction=in",
            &[("cookie", &cookie)],
        )
        .0
    };
    let codes_by_header = |http: &Http| {
        http.get_with(
            "/gate/lab/north-gate/codes?direction=out",
            &[("authorization", &gate_header)],
        )
        .0
    };
    assert_eq!(
        (page(&http), codes_by_cookie(&http), codes_by_header(&http)),
        (200, 200, 200)
    );

    // Listed without the secret; who may list and revoke.
    let list = server.cli_json(&["zones", "gate-list", "lab"]);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "live");
    assert!(
        !list
            .to_string()
            .contains(gate_header.trim_start_matches("Gate "))
    );
    let oscar = server.admin_token("oscar", "operator");
    let audrey = server.admin_token("audrey", "auditor");
    let (status, _) = http.send(
        "GET",
        "/api/v1/zones/lab/gate-credentials",
        Some(&oscar),
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = http.send(
        "GET",
        "/api/v1/zones/lab/gate-credentials",
        Some(&audrey),
        None,
    );
    assert_eq!(status, 200);
    for token in [&oscar, &audrey] {
        let out = server.cli_as(token, &["zones", "gate-revoke", "lab", &id]);
        assert!(!out.status.success());
    }
    let out = server.cli_as(
        &server.owner_token,
        &["zones", "gate-revoke", "nozone", &id],
    );
    assert!(!out.status.success());
    assert_eq!(page(&http), 200);

    let olga = server.admin_token("olga", "officer");
    let out = server.cli_as(&olga, &["--json", "zones", "gate-revoke", "lab", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    // At once: the page (its cookie), the JSON (cookie or header) refuse it.
    assert_eq!(
        (page(&http), codes_by_cookie(&http), codes_by_header(&http)),
        (401, 401, 401)
    );
    let (status, _, _) = http.get_with(path, &[]);
    assert_eq!(status, 401, "the link does not work again either");
    let list = server.cli_json(&["zones", "gate-list", "lab"]);
    assert_eq!(list[0]["state"], "revoked");
    assert_eq!(list[0]["revoked_by"], "admin:olga");
    assert_eq!(
        server.cli_json(&["zones", "show", "lab"])["gate_credentials"]["north-gate"],
        Value::Null
    );
    assert!(
        audit_actions(&server).contains(&("gate.credential_revoked".into(), "admin:olga".into()))
    );
}

#[test]
fn an_expired_gate_credential_closes_the_gate_page_and_its_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let Gate {
        link,
        header: gate_header,
        cookie,
        ..
    } = open_gate(&server, &http, tmp.path(), "2d");
    let path = link.as_str();
    let answers = |http: &Http| {
        (
            http.get_with("/gate/lab/north-gate", &[("cookie", &cookie)])
                .0,
            http.get_with(
                "/gate/lab/north-gate/codes?direction=in",
                &[("authorization", &gate_header)],
            )
            .0,
        )
    };
    assert_eq!(answers(&http), (200, 200));
    assert_eq!(
        server.cli_json(&["zones", "gate-list", "lab"])[0]["state"],
        "live"
    );

    // Two days pass (the expiry moved into the past, as time would).
    sql(
        &server,
        "UPDATE gate_credentials SET expires_at = expires_at - 2 * 86400 - 1",
    );
    assert_eq!(answers(&http), (401, 401), "an expired gate still opens");
    let (status, _, _) = http.get_with(path, &[]);
    assert_eq!(status, 401, "the link does not work either");
    assert_eq!(
        server.cli_json(&["zones", "gate-list", "lab"])[0]["state"],
        "expired"
    );
    server.stop();
}
