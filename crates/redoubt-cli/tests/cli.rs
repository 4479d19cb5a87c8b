//! The `redoubt` binary end to end: usage, local validation that fails before any
//! network, transport and pinning failures, and the requests and output of each
//! command against a fake HTTPS server behind its own CA.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{FakeServer, TOKEN, closed_port, redoubt, redoubt_in, wrong_fingerprint};

const DEVICE: &str = "dev_0123456789abcdef01234567";

const NIGHT: &str = r#"name = "night"
description = "Guards on the night shift"
network = "organization-only"

[capabilities]
camera = "deny"
microphone = "allow"
bluetooth = "deny"
wifi = "allow"
cellular_data = "allow"
location = "deny"
nfc = "allow"
usb_data = "deny"
screenshots = "deny"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Settings that point at a port where nothing listens, so any network attempt
/// fails with "cannot reach".
fn unreachable_env() -> [(&'static str, String); 3] {
    [
        ("REDOUBT_SERVER", "https://127.0.0.1:9".to_owned()),
        ("REDOUBT_CA_FINGERPRINT", wrong_fingerprint()),
        ("REDOUBT_TOKEN", TOKEN.to_owned()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// ---- usage ----

#[test]
fn help_lists_the_commands() {
    let run = redoubt(&["--help"], &[("REDOUBT_TOKEN", TOKEN)]);
    let out = run.succeeds();
    for cmd in [
        "enroll", "devices", "modes", "whoami", "--server", "--token", "--json",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from\n{out}");
    }
    let out = redoubt(&["devices", "--help"], &[]).succeeds().to_owned();
    for cmd in ["list", "show", "set-mode"] {
        assert!(out.contains(cmd), "{cmd} missing from\n{out}");
    }
    let out = redoubt(&["modes", "--help"], &[]).succeeds().to_owned();
    for cmd in ["list", "show", "apply"] {
        assert!(out.contains(cmd), "{cmd} missing from\n{out}");
    }
}

#[test]
fn missing_settings_name_the_variable_and_the_option() {
    redoubt(&["whoami"], &[]).fails_with(&["REDOUBT_SERVER", "--server"]);
    redoubt(
        &["devices", "list"],
        &[("REDOUBT_SERVER", "https://127.0.0.1:9")],
    )
    .fails_with(&["REDOUBT_CA_FINGERPRINT", "--ca-fingerprint"]);
    let fp = wrong_fingerprint();
    redoubt(
        &["--json", "modes", "list"],
        &[
            ("REDOUBT_SERVER", "https://127.0.0.1:9"),
            ("REDOUBT_CA_FINGERPRINT", &fp),
        ],
    )
    .fails_with(&["REDOUBT_TOKEN", "--token"]);
}

#[test]
fn malformed_input_is_refused_before_any_network() {
    let env = unreachable_env();
    let env = env_refs(&env);
    let mut bad_fp = env.clone();
    bad_fp[1] = ("REDOUBT_CA_FINGERPRINT", "md5:1234");
    redoubt(&["whoami"], &bad_fp).fails_with(&["CA fingerprint", "sha256:"]);
    redoubt(&["whoami", "--ca-fingerprint", "sha256:abc"], &env)
        .fails_with(&["CA fingerprint", "64 hex digits"]);
    redoubt(&["whoami", "--server", "http://127.0.0.1:9"], &env).fails_with(&["https://"]);
    redoubt(&["devices", "show", "dev_XYZ"], &env).fails_with(&["invalid device id"]);
    redoubt(&["devices", "set-mode", DEVICE, "Secure Site"], &env)
        .fails_with(&["invalid mode name"]);
    redoubt(&["enroll", "create", "--user", "bob smith"], &env).fails_with(&["invalid user name"]);
    redoubt(
        &["enroll", "create", "--user", "bob", "--ttl", "soon"],
        &env,
    )
    .fails_with(&["--ttl"]);
    redoubt(
        &[
            "enroll",
            "create",
            "--user",
            "bob",
            "--png",
            "/nonexistent/dir/q.png",
        ],
        &env,
    )
    .fails_with(&["cannot write /nonexistent/dir/q.png"]);
}

#[test]
fn bad_mode_file_names_file_line_and_field_before_any_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "night.toml",
        &NIGHT.replace("camera = \"deny\"", "camera = \"maybe\""),
    );
    let env = unreachable_env();
    let run = redoubt_in(
        Some(dir.path()),
        &["modes", "apply", "night.toml"],
        &env_refs(&env),
    );
    run.fails_with(&["error: night.toml line 6, field `camera`: unknown variant `maybe`"]);
    assert!(!run.stderr.contains("cannot reach"), "{run:#?}");

    // Checked even when no server is configured at all.
    let run = redoubt_in(Some(dir.path()), &["modes", "apply", "night.toml"], &[]);
    run.fails_with(&["night.toml line 6, field `camera`"]);

    write(
        dir.path(),
        "std.toml",
        &NIGHT.replace("\"night\"", "\"standard\""),
    );
    redoubt_in(
        Some(dir.path()),
        &["modes", "apply", "std.toml"],
        &env_refs(&env),
    )
    .fails_with(&["`standard` is a built-in preset"]);
    redoubt_in(
        Some(dir.path()),
        &["modes", "apply", "gone.toml"],
        &env_refs(&env),
    )
    .fails_with(&["cannot read gone.toml"]);
}

// ---- failures talking to a server ----

#[test]
fn absent_server_is_a_transport_error() {
    let url = format!("https://127.0.0.1:{}", closed_port());
    let fp = wrong_fingerprint();
    let env = [
        ("REDOUBT_SERVER", url.as_str()),
        ("REDOUBT_CA_FINGERPRINT", fp.as_str()),
        ("REDOUBT_TOKEN", TOKEN),
    ];
    redoubt(&["whoami"], &env).fails_with(&[&format!("cannot reach {url}")]);

    // A good mode file gets as far as the network, and no further.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "night.toml", NIGHT);
    let file = file.to_str().expect("utf-8 path");
    redoubt(&["modes", "apply", file], &env).fails_with(&["cannot reach"]);
}

#[test]
fn a_server_outside_the_pinned_ca_is_refused() {
    let server = FakeServer::start(vec![(
        "GET",
        "/api/v1/whoami".into(),
        200,
        r#"{"name":"root","role":"owner"}"#.into(),
    )]);
    let fp = wrong_fingerprint();
    let mut env = server.env();
    env[1] = ("REDOUBT_CA_FINGERPRINT", &fp);
    redoubt(&["whoami"], &env)
        .fails_with(&["does not match the pinned CA fingerprint", &server.url]);
    assert!(server.requests().is_empty(), "a request got through");
}

#[test]
fn api_errors_print_the_servers_message() {
    let server = FakeServer::start(vec![
        (
            "PUT",
            "/api/v1/modes/night".into(),
            403,
            r#"{"code":"forbidden","message":"role auditor may not change modes"}"#.into(),
        ),
        (
            "GET",
            format!("/api/v1/devices/{DEVICE}"),
            404,
            r#"{"code":"not_found","message":"no such device"}"#.into(),
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "night.toml", NIGHT);
    let file = file.to_str().expect("utf-8 path");
    redoubt(&["modes", "apply", file], &server.env())
        .fails_with(&["forbidden: role auditor may not change modes"]);
    redoubt(&["devices", "show", DEVICE, "--json"], &server.env())
        .fails_with(&["no such device", "404"]);

    let requests = server.requests();
    assert_eq!(requests[0].method, "PUT");
    let sent: Value = serde_json::from_str(&requests[0].body).expect("json body");
    assert_eq!(sent["name"], "night");
    assert_eq!(sent["capabilities"]["camera"], "deny");
    assert_eq!(sent["network"], "organization-only");
}

// ---- commands against a server ----

fn device_json(assigned: &str) -> Value {
    json!({
        "id": DEVICE,
        "user": "alice",
        "mode": assigned,
        "assigned_mode": assigned,
        "compliance": "non_compliant",
        "compliance_reasons": ["camera is on but the mode denies it"],
        "capabilities": {"camera": "on", "microphone": "off"},
        "network": "organization-only",
        "bundle_version": 3,
        "reported_bundle_version": 3,
        "last_report_at": "2026-01-01T00:00:00Z",
        "last_report_seq": 9,
        "hardware": "sim",
        "connected": true,
        "enrolled_at": "2025-12-01T00:00:00Z",
        "approval": "approved",
        "approved_by": "admin:boss",
        "approved_at": "2025-12-01T00:10:00Z",
        "enrolled_by": "admin:op"
    })
}

fn mode_json(name: &str, builtin: bool) -> Value {
    let caps: serde_json::Map<String, Value> = [
        "camera",
        "microphone",
        "bluetooth",
        "wifi",
        "cellular_data",
        "location",
        "nfc",
        "usb_data",
        "screenshots",
    ]
    .iter()
    .map(|c| {
        (
            (*c).to_owned(),
            json!(if *c == "camera" { "deny" } else { "allow" }),
        )
    })
    .collect();
    json!({
        "name": name,
        "description": "",
        "network": "open",
        "capabilities": caps,
        "builtin": builtin,
        "updated_at": "2026-01-01T00:00:00Z"
    })
}

#[test]
fn read_commands_print_text_or_the_servers_json() {
    let enrollment = json!({
        "url": "redoubt://enroll?server=https%3A%2F%2F127.0.0.1&token=t0k&ca=sha256%3A00",
        "expires_at": "2030-01-01T00:00:00Z"
    });
    let modes = json!([mode_json("standard", true), mode_json("night", false)]);
    let server = FakeServer::start(vec![
        (
            "GET",
            "/api/v1/whoami".into(),
            200,
            r#"{"name":"ops","role":"operator"}"#.into(),
        ),
        // Two pages: the CLI follows the cursor and prints both.
        (
            "GET",
            "/api/v1/devices?limit=5000".into(),
            200,
            json!({"devices": [device_json("standard")], "next": format!("1800000000.{DEVICE}")})
                .to_string(),
        ),
        (
            "GET",
            format!("/api/v1/devices?after=1800000000.{DEVICE}&limit=5000"),
            200,
            json!({"devices": [device_json("secure-site")], "next": null}).to_string(),
        ),
        (
            "GET",
            format!("/api/v1/devices/{DEVICE}"),
            200,
            device_json("standard").to_string(),
        ),
        ("GET", "/api/v1/modes".into(), 200, modes.to_string()),
        (
            "GET",
            "/api/v1/modes/night".into(),
            200,
            mode_json("night", false).to_string(),
        ),
        (
            "POST",
            "/api/v1/enrollments".into(),
            200,
            enrollment.to_string(),
        ),
        (
            "GET",
            "/api/v1/enrollments?limit=5000".into(),
            200,
            json!({"enrollments": [{
                "id": "0123456789abcdef", "user": "alice", "mode": "standard",
                "created_by": "admin:ops", "created_at": "2026-01-01T00:00:00Z",
                "expires_at": "2026-01-01T00:15:00Z", "state": "used",
                "used_at": "2026-01-01T00:05:00Z", "device_id": DEVICE
            }], "next": null})
            .to_string(),
        ),
    ]);
    let env = server.env();
    let json_of = |run: support::Run| -> Value {
        serde_json::from_str(run.succeeds()).expect("stdout is JSON")
    };

    assert_eq!(
        redoubt(&["whoami"], &env).succeeds(),
        "name: ops\nrole: operator\n"
    );
    assert_eq!(
        json_of(redoubt(&["--json", "whoami"], &env))["role"],
        "operator"
    );

    let out = redoubt(&["devices", "list"], &env).succeeds().to_owned();
    assert!(out.starts_with("ID  "), "{out}");
    assert!(
        out.contains(DEVICE) && out.contains("non_compliant"),
        "{out}"
    );
    assert_eq!(
        json_of(redoubt(&["devices", "list", "--json"], &env)),
        json!([device_json("standard"), device_json("secure-site")])
    );

    let out = redoubt(&["devices", "show", DEVICE], &env)
        .succeeds()
        .to_owned();
    for line in [
        "user:",
        "  camera      on\n",
        "- camera is on but the mode denies it",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert_eq!(
        json_of(redoubt(&["--json", "devices", "show", DEVICE], &env)),
        device_json("standard")
    );

    let out = redoubt(&["modes", "list"], &env).succeeds().to_owned();
    assert!(
        out.contains("standard") && out.contains("preset") && out.contains("custom"),
        "{out}"
    );
    assert_eq!(json_of(redoubt(&["--json", "modes", "list"], &env)), modes);
    let out = redoubt(&["modes", "show", "night"], &env)
        .succeeds()
        .to_owned();
    assert!(out.contains("camera         deny"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("enroll.png");
    let png_arg = png.to_str().expect("utf-8 path");
    let out = redoubt(
        &[
            "enroll",
            "create",
            "--user",
            "alice",
            "--mode",
            "secure-site",
            "--ttl",
            "15m",
            "--png",
            png_arg,
        ],
        &env,
    )
    .succeeds()
    .to_owned();
    assert!(
        out.contains("redoubt://enroll?") && out.contains("2030-01-01T00:00:00Z"),
        "{out}"
    );
    assert!(out.contains('\u{2588}'), "no QR code in\n{out}");
    assert!(
        std::fs::read(&png)
            .expect("png written")
            .starts_with(b"\x89PNG")
    );
    assert_eq!(
        json_of(redoubt(
            &["--json", "enroll", "create", "--user", "alice"],
            &env
        )),
        enrollment
    );

    let out = redoubt(&["enroll", "list"], &env).succeeds().to_owned();
    assert!(out.starts_with("CODE ID  "), "{out}");
    for needle in ["0123456789abcdef", "alice", "used", "admin:ops", DEVICE] {
        assert!(out.contains(needle), "{needle:?} missing from\n{out}");
    }
    redoubt(&["enroll", "list", "--state", "lost"], &env).fails_with(&["open, used, expired"]);

    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{requests:#?}"
    );
    let posts: Vec<Value> = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| serde_json::from_str(&r.body).expect("json body"))
        .collect();
    assert_eq!(posts[0]["user"], "alice");
    assert_eq!(posts[0]["mode"], "secure-site");
    assert_eq!(posts[0]["ttl_secs"], 900);
    assert_eq!(posts[1]["user"], "alice");
}

#[test]
fn write_commands_send_validated_bodies() {
    let server = FakeServer::start(vec![
        (
            "PUT",
            format!("/api/v1/devices/{DEVICE}/mode"),
            200,
            device_json("secure-site").to_string(),
        ),
        (
            "PUT",
            "/api/v1/modes/night".into(),
            200,
            mode_json("night", false).to_string(),
        ),
        (
            "POST",
            format!("/api/v1/devices/{DEVICE}/approve"),
            200,
            device_json("standard").to_string(),
        ),
    ]);
    let env = server.env();
    let out = redoubt(&["devices", "set-mode", DEVICE, "secure-site"], &env)
        .succeeds()
        .to_owned();
    assert!(out.contains("assigned mode secure-site"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "f.toml", NIGHT);
    let out = redoubt_in(Some(dir.path()), &["modes", "apply", "f.toml"], &env)
        .succeeds()
        .to_owned();
    assert!(out.contains("applied f.toml as mode night"), "{out}");
    let out = redoubt(&["devices", "approve", DEVICE], &env)
        .succeeds()
        .to_owned();
    assert!(
        out.contains(&format!("approved {DEVICE} of alice")),
        "{out}"
    );
    assert!(
        out.contains("approval:       approved by admin:boss"),
        "{out}"
    );

    let requests = server.requests();
    assert_eq!(requests[2].method, "POST");
    assert_eq!(
        requests[2].path,
        format!("/api/v1/devices/{DEVICE}/approve")
    );
    assert_eq!(requests[0].body, r#"{"mode":"secure-site"}"#);
    let mode: Value = serde_json::from_str(&requests[1].body).expect("json body");
    assert_eq!(mode["description"], "Guards on the night shift");
    assert_eq!(mode["capabilities"]["usb_data"], "deny");
}
