//! The officers' web console in a real browser (headless Chromium, `mod browser`)
//! against the real server and real phones (simulated hardware): sign-in with password
//! and TOTP, an enrollment code read from the page's QR code and used by a phone, a
//! mode set from the console turning the dashboard compliant without a reload, a bulk
//! lock of a filter, what an auditor sees and may not do, CSRF, the audit chain and the
//! language. Screenshots of the main pages are saved as test artifacts
//! (`target/console-screenshots/`). The sign-in rules the browser cannot show quickly
//! (lockout, replayed codes, the audit trail of sign-ins) are checked over HTTP.
#![allow(clippy::unwrap_used)]

mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, WAIT};
use common::{Agent, Http, Server, wait_for};
use serde_json::{Value, json};

/// Sets a `<select>`'s value from the page.
fn choose(b: &Browser, css: &str, value: &str) {
    b.find(css);
    b.execute(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
         if (e.value !== arguments[1]) { throw new Error('no option ' + arguments[1]); }",
        vec![json!(css), json!(value)],
    );
}

/// Signs in through the form.
fn sign_in(b: &Browser, server: &Server, name: &str, password: &str, code: &str) {
    b.goto(&format!("{}/console/login", server.url));
    b.fill("#name", name);
    b.fill("#password", password);
    b.fill("#code", code);
    b.click("#sign-in");
}

/// A six-digit code that is not the current one.
fn wrong_code(right: &str) -> String {
    let n: u32 = right.parse().unwrap();
    format!("{:06}", (n + 500_000) % 1_000_000)
}

/// Every control of the page shown has a name a screen reader can say (a label, an
/// `aria-label`, or a button's text), and every time is written in the reader's time
/// zone by the page's script (the UTC fallback is gone).
fn assert_accessible(b: &Browser) {
    let unlabelled = b.execute(
        "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]\
           .filter(e => e.tagName === 'BUTTON' ? !e.textContent.trim() && !e.getAttribute('aria-label')\
                                              : e.labels.length === 0 && !e.getAttribute('aria-label'))\
           .map(e => e.outerHTML.slice(0, 120));",
        vec![],
    );
    assert_eq!(
        unlabelled,
        json!([]),
        "controls without a label on {}",
        b.current_url()
    );
    let utc = b.execute(
        "return [...document.querySelectorAll('time')].filter(t => t.textContent.endsWith('UTC')).length;",
        vec![],
    );
    assert_eq!(utc, json!(0), "times left in UTC on {}", b.current_url());
}

/// The number the dashboard shows for `state`.
fn tile(b: &Browser, state: &str) -> String {
    b.text(&format!("[data-compliance=\"{state}\"]"))
}

#[test]
fn an_officer_runs_the_fleet_from_the_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let owner = server.console_account("olga", "owner");
    let mut used = Vec::new();
    let b = Browser::start();

    // Signed out, a console page leads to the sign-in form.
    b.goto(&format!("{}/console/devices", server.url));
    b.wait_for_text("h1", "Sign in", WAIT);
    b.screenshot("login");
    assert_accessible(&b);

    // The right password with a wrong code is refused, and says nothing more.
    let code = owner.fresh_code(&mut used);
    sign_in(&b, &server, "olga", &owner.password, &wrong_code(&code));
    b.wait_for_text("#login-error", "wrong", WAIT);
    sign_in(&b, &server, "olga", &owner.password, &code);
    b.wait_for_text("h1", "Dashboard", WAIT);
    let session = b
        .cookie("__Host-redoubt_console")
        .expect("a session cookie");
    assert!(session.http_only, "{session:?}");
    assert!(session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"), "{session:?}");

    // An enrollment code for Alice, read from the QR code on the page.
    b.goto(&format!("{}/console/enrollments", server.url));
    b.fill("#e-user", "alice");
    b.click("#create-code");
    b.wait_for_text("#code-user", "alice", WAIT);
    let url = b.read_qr("#enroll-qr");
    assert!(url.starts_with("redoubt://enroll?"), "{url}");
    assert_eq!(url, b.text("#enroll-url"));
    b.screenshot("enrollment-sheet");
    assert_accessible(&b);
    let mut alice = Agent::new(tmp.path().join("alice"));
    let alice_id = alice.enroll(&url);
    // The code is used: the list of open codes no longer has it.
    b.goto(&format!("{}/console/enrollments", server.url));
    assert!(
        !b.source().contains("<td>alice</td>"),
        "a used code is still listed as open"
    );

    // The phone has not reported yet. Its mode is set from its page.
    b.goto(&format!("{}/console/devices/{alice_id}", server.url));
    b.wait_for_text("#device-compliance", "pending", WAIT);
    choose(&b, "#set-mode", "secure-site");
    b.click("#set-mode-apply");
    b.wait_for_text(".notice", "mode was set", WAIT);

    // The dashboard turns compliant when the phone reports, without a reload.
    b.goto(&format!("{}/console", server.url));
    b.wait_for_text("#live-status", "live", WAIT);
    assert_eq!(tile(&b, "compliant"), "0");
    assert_eq!(tile(&b, "pending"), "1");
    b.execute("window.redoubtMarker = 42;", vec![]);
    alice.start();
    wait_for(
        "the dashboard to show one compliant phone",
        Duration::from_secs(30),
        || (tile(&b, "compliant") == "1").then_some(()),
    );
    assert_eq!(tile(&b, "pending"), "0");
    assert_eq!(
        b.execute("return window.redoubtMarker;", vec![]),
        json!(42),
        "the page was reloaded"
    );
    let shown = server.device(&alice_id);
    assert_eq!(shown["mode"], "secure-site", "{shown}");

    // A camera the agent cannot switch off: the phone is listed as failing, with why,
    // still without a reload; freed, it is compliant again.
    let out = alice.cmd(&["sim", "set", "camera", "on", "--stuck"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    b.wait_for_text("#failing", &alice_id, Duration::from_secs(30));
    b.wait_for_text("#failing", "camera", WAIT);
    assert_eq!(tile(&b, "non_compliant"), "1");
    b.screenshot("dashboard-failing");
    assert_accessible(&b);
    alice.sim_set("camera", "on");
    wait_for(
        "the dashboard to show the phone compliant again",
        Duration::from_secs(30),
        || (tile(&b, "compliant") == "1" && !b.exists("#failing tbody tr")).then_some(()),
    );
    assert_eq!(b.execute("return window.redoubtMarker;", vec![]), json!(42));
    b.screenshot("dashboard");
    assert_accessible(&b);

    // The device page: measured capabilities and the inventory the phone reported.
    b.goto(&format!("{}/console/devices/{alice_id}", server.url));
    b.wait_for_text("#device-compliance", "compliant", WAIT);
    b.wait_for_text("#inv-backend", "SIMULATED", WAIT);
    b.screenshot("device");
    assert_accessible(&b);

    // Three phones in a group, locked together by filtering on the group.
    server.cli_json(&["groups", "create", "night-shift"]);
    let crew: Vec<String> = ["boris", "vera", "gleb"]
        .iter()
        .map(|u| {
            let made =
                server.cli_json(&["enroll", "create", "--user", u, "--group", "night-shift"]);
            Agent::new(tmp.path().join(u)).enroll(made["url"].as_str().unwrap())
        })
        .collect();
    b.goto(&format!("{}/console/devices?group=night-shift", server.url));
    b.wait_for_text("#device-count", "3 devices", WAIT);
    b.screenshot("devices");
    assert_accessible(&b);
    b.click("#scope-filter");
    choose(&b, "#bulk-action", "lock");
    b.click("#bulk-apply");
    b.wait_for_text(".notice", "recorded", WAIT);
    for id in &crew {
        wait_for("a lock command for each phone of the filter", WAIT, || {
            let commands = server.cli_json(&["devices", "commands", id]);
            commands
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["action"].to_string().contains("\"lock\""))
                .then_some(())
        });
    }
    // Alice is outside the filter: no lock for her.
    let alice_commands = server.cli_json(&["devices", "commands", &alice_id]);
    assert_eq!(
        alice_commands.as_array().unwrap().len(),
        0,
        "{alice_commands}"
    );
    let audit = server.cli_json(&["audit", "list"]);
    let bulk = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "bulk.lock")
        .unwrap_or_else(|| panic!("no bulk.lock entry: {audit}"));
    assert_eq!(bulk["actor"], "console:olga", "{bulk}");
    assert_eq!(bulk["detail"]["count"], 3, "{bulk}");

    // A form without the CSRF token is refused, and nothing happens.
    let forged = b.post_form(
        &format!("{}/console/devices/{alice_id}/command", server.url),
        &[("action", "wipe"), ("confirm", "1")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    let alice_commands = server.cli_json(&["devices", "commands", &alice_id]);
    assert_eq!(
        alice_commands.as_array().unwrap().len(),
        0,
        "{alice_commands}"
    );

    // A device found by its id, put in a group from its page and taken out again.
    b.goto(&format!("{}/console/devices", server.url));
    b.fill("#find", &alice_id);
    b.click("#find-go");
    b.wait_for_text("h1", &alice_id, WAIT);
    choose(&b, "#dg-group", "night-shift");
    b.click("#group-apply");
    b.wait_for_text(".notice", "group was saved", WAIT);
    b.goto(&format!("{}/console/devices?group=night-shift", server.url));
    b.wait_for_text("#device-count", "4 devices", WAIT);
    b.goto(&format!("{}/console/devices/{alice_id}", server.url));
    choose(&b, "#dg-action", "group_remove");
    choose(&b, "#dg-group", "night-shift");
    b.click("#group-apply");
    b.wait_for_text(".notice", "group was saved", WAIT);
    b.goto(&format!("{}/console/devices?group=night-shift", server.url));
    b.wait_for_text("#device-count", "3 devices", WAIT);

    // The audit chain verified from the console.
    b.goto(&format!("{}/console/audit", server.url));
    b.click("#verify");
    b.wait_for_text("#verify-result", "intact", WAIT);
    b.screenshot("audit");
    assert_accessible(&b);

    // The language: Russian for this account, kept after signing out and in again.
    choose(&b, "#lang-choice", "ru");
    b.click("#lang-apply");
    b.wait_for_text("h1", "Журнал аудита", WAIT);
    assert_eq!(
        b.execute("return document.documentElement.lang;", vec![]),
        json!("ru")
    );
    b.goto(&format!("{}/console", server.url));
    b.wait_for_text("h1", "Сводка", WAIT);
    b.screenshot("dashboard-ru");
    assert_accessible(&b);
    b.goto(&format!("{}/console/accounts", server.url));
    b.screenshot("accounts-ru");
    assert_accessible(&b);
    b.click("#sign-out");
    b.wait_for_text("h1", "Вход", WAIT);
    // The sign-in page switches back too (the browser remembers the choice).
    choose(&b, "#lang-choice", "en");
    b.click("#lang-apply");
    b.wait_for_text("h1", "Sign in", WAIT);

    // An auditor: every page readable, no control that changes anything, and a form
    // posted from the auditor's own session (with its CSRF token) is refused.
    let auditor = server.console_account("ivan", "auditor");
    sign_in(&b, &server, "ivan", &auditor.password, &auditor.code());
    b.wait_for_text("h1", "Dashboard", WAIT);
    b.goto(&format!("{}/console/devices?group=night-shift", server.url));
    b.wait_for_text("#device-count", "3 devices", WAIT);
    for control in ["#bulk-apply", "#select-all", "input.pick"] {
        assert!(!b.exists(control), "the auditor sees {control}");
    }
    b.goto(&format!("{}/console/devices/{alice_id}", server.url));
    b.wait_for_text("#device-compliance", "compliant", WAIT);
    for control in ["#lock", "#wipe", "#set-mode"] {
        assert!(!b.exists(control), "the auditor sees {control}");
    }
    b.goto(&format!("{}/console/enrollments", server.url));
    assert!(
        !b.exists("#create-code"),
        "the auditor sees the enrollment form"
    );
    assert!(
        !b.source().contains("/console/accounts\""),
        "the auditor sees the accounts section"
    );
    let csrf: String = serde_json::from_value(b.execute(
        "return document.querySelector('input[name=csrf]').value;",
        vec![],
    ))
    .unwrap();
    for (path, fields) in [
        (
            format!("/console/devices/{alice_id}/command"),
            vec![("action", "lock")],
        ),
        (
            format!("/console/devices/{alice_id}/mode"),
            vec![("mode", "standard")],
        ),
        ("/console/enrollments".to_owned(), vec![("user", "mallory")]),
        (
            "/console/accounts".to_owned(),
            vec![("name", "mallory"), ("role", "owner")],
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let answer = b.post_form(&format!("{}{path}", server.url), &fields);
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    let shown = server.device(&alice_id);
    assert_eq!(shown["assigned_mode"], "secure-site", "{shown}");
    assert_eq!(
        server
            .cli_json(&["devices", "commands", &alice_id])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A browser that prefers Russian gets the sign-in page in Russian.
    let ru = Browser::start_with_language("ru");
    ru.goto(&format!("{}/console/login", server.url));
    ru.wait_for_text("h1", "Вход в консоль", WAIT);

    // Tablet width: the device list still shows its filter and the list.
    b.set_size(800, 1280);
    b.goto(&format!("{}/console/devices", server.url));
    b.wait_for_text("#device-count", "4 devices", WAIT);
    b.screenshot("devices-tablet");
    let overflow = b.execute(
        "return document.documentElement.scrollWidth - window.innerWidth;",
        vec![],
    );
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the device list is wider than a tablet: {overflow}"
    );
    assert_accessible(&b);
    alice.stop();
}

/// Sign-in rules over plain HTTPS: a TOTP code works once; failures lock the account
/// with a growing pause; every sign-in, failure and sign-out is in the audit log with
/// the address it came from; a session outlives neither its sign-out nor its account.
#[test]
fn sign_in_is_guarded_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let http = Http::new(&server);
    let anna = server.console_account("anna", "operator");
    let mut used = Vec::new();
    let code = anna.fresh_code(&mut used);
    let session = http.console_sign_in(&anna, &code);

    let post = |path: &str, cookie: &str, form: &str| {
        http.request_full(
            "POST",
            path,
            &[
                ("cookie", cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(form.as_bytes()),
        )
    };
    let try_sign_in = |password: &str, code: &str| {
        let pre = http.console_pre_session();
        let (status, _, page) = post(
            "/console/login",
            &pre.cookie,
            &format!(
                "csrf={}&name=anna&password={password}&code={code}",
                pre.csrf
            ),
        );
        (status, page)
    };

    // The same code again (a replay, within its 30 s): refused.
    let (status, page) = try_sign_in(&anna.password, &code);
    assert_eq!(status, 401, "{page}");
    // A recovery code signs in once.
    let (status, _) = try_sign_in(&anna.password, &anna.recovery[0].to_uppercase());
    assert_eq!(status, 303);
    let (status, _) = try_sign_in(&anna.password, &anna.recovery[0]);
    assert_eq!(status, 401);
    // Wrong passwords: after five failures in a row the account is paused, even for the
    // right password and a fresh code.
    for _ in 0..4 {
        let (status, page) = try_sign_in("not-the-password", &anna.recovery[1]);
        assert!(status == 401 || status == 429, "{status} {page}");
    }
    let (status, page) = try_sign_in(&anna.password, &anna.recovery[1]);
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("paused"), "{page}");

    // A form without its token, or with another session's token, is refused.
    let (status, _, _) = post(
        "/console/devices/bulk",
        &session.cookie,
        "action=lock&scope=filter&count=0",
    );
    assert_eq!(status, 403);
    let pre = http.console_pre_session();
    let (status, _, _) = post(
        "/console/devices/bulk",
        &session.cookie,
        &format!("csrf={}&action=lock&scope=filter&count=0", pre.csrf),
    );
    assert_eq!(status, 403);
    // A form from another site is refused even with the token.
    let (status, _, _) = http.request_full(
        "POST",
        "/console/logout",
        &[
            ("cookie", &session.cookie),
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "https://attacker.example"),
        ],
        Some(format!("csrf={}", session.csrf).as_bytes()),
    );
    assert_eq!(status, 403);

    // Every console page carries the policy that allows no inline script.
    let (_, headers, _) =
        http.request_full("GET", "/console", &[("cookie", &session.cookie)], None);
    let csp = headers
        .iter()
        .find(|(k, _)| k == "content-security-policy")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // An owner resets another account: its sessions end, its old password and
    // recovery codes stop working.
    let owner = server.console_account("olga", "owner");
    let owner_session = http.console_sign_in(&owner, &owner.code());
    let boris = server.console_account("boris", "operator");
    let boris_session = http.console_sign_in(&boris, &boris.code());
    let (_, _, page) = http.request_full(
        "GET",
        "/console/accounts",
        &[("cookie", &owner_session.cookie)],
        None,
    );
    // Accounts are listed by name: anna, boris, olga; the first reset form is anna's,
    // the second boris's.
    let resets: Vec<String> = page
        .match_indices("action=\"/console/accounts/")
        .map(|(i, _)| page[i + 26..].split('"').next().unwrap().to_owned())
        .filter(|a| a.ends_with("/reset"))
        .collect();
    let boris_id = resets[1].trim_end_matches("/reset").to_owned();
    assert!(page.find(">anna<").unwrap() < page.find(">boris<").unwrap());
    let (status, _, sheet) = post(
        &format!("/console/accounts/{boris_id}/reset"),
        &owner_session.cookie,
        &format!("csrf={}", owner_session.csrf),
    );
    assert_eq!(status, 200, "{sheet}");
    assert!(sheet.contains("Redoubt:boris?secret="), "{sheet}");
    assert!(sheet.contains("Account reset"), "{sheet}");
    let (status, _, _) = http.request_full(
        "GET",
        "/console",
        &[("cookie", &boris_session.cookie)],
        None,
    );
    assert_eq!(status, 303, "the reset did not end boris's session");
    let pre = http.console_pre_session();
    let (status, _, _) = post(
        "/console/login",
        &pre.cookie,
        &format!(
            "csrf={}&name=boris&password={}&code={}",
            pre.csrf, boris.password, boris.recovery[0]
        ),
    );
    assert_eq!(status, 401, "the old password and recovery code still work");

    // Sign-out ends the session at once.
    let (status, _, _) = post(
        "/console/logout",
        &session.cookie,
        &format!("csrf={}", session.csrf),
    );
    assert_eq!(status, 303);
    let (status, headers, _) =
        http.request_full("GET", "/console", &[("cookie", &session.cookie)], None);
    assert_eq!(status, 303);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "location" && v.starts_with("/console/login"))
    );

    // The audit log names each step, who and from where; never a password or a code.
    let audit = server.cli_json(&["audit", "list"]);
    let entries: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("console."))
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "console.account_create",
            "console.sign_in",
            "console.sign_in_failed",
            "console.sign_in",
            "console.sign_in_failed",
            "console.sign_in_failed",
            "console.sign_in_failed",
            "console.sign_in_failed",
            "console.sign_in_failed",
            "console.sign_in_failed",
            "console.account_create",
            "console.sign_in",
            "console.account_create",
            "console.sign_in",
            "console.account_reset",
            "console.sign_in_failed",
            "console.sign_out",
        ],
        "{entries:#?}"
    );
    // Accounts made on the server's machine have no address; everything else does.
    for e in entries.iter().filter(|e| e["actor"] != "server-cli") {
        assert_eq!(e["source"], "127.0.0.1", "{e}");
    }
    let text = audit.to_string();
    assert!(!text.contains(&anna.password) && !text.contains(&anna.recovery[0]));
}

/// Modes and zones edited in the browser: a mistake is shown at its field, a change is
/// previewed with the phones it touches before it is applied, a gate credential is made
/// with its printable sheet and revoked; an officer may not manage groups.
#[test]
fn an_officer_edits_modes_and_zones_with_a_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let officer = server.console_account("pavel", "officer");
    let mut phone = Agent::new(tmp.path().join("phone"));
    let phone_id = phone.enroll(&server.enrollment_url("dmitri"));
    phone.start();
    let b = Browser::start();
    sign_in(&b, &server, "pavel", &officer.password, &officer.code());
    b.wait_for_text("h1", "Dashboard", WAIT);

    // A new mode with a name that cannot be: the editor comes back with the field marked.
    b.goto(&format!("{}/console/modes/new", server.url));
    b.fill("#m-name", "Night Watch!");
    b.click("#mode-preview");
    b.wait_for_text("#form-errors", "correcting", WAIT);
    b.wait_for_text("#e-name", "lowercase", WAIT);
    assert_eq!(
        b.execute(
            "return document.querySelector('#m-name').getAttribute('aria-invalid');",
            vec![]
        ),
        json!("true")
    );
    b.screenshot("mode-editor-error");
    assert_accessible(&b);
    b.fill("#m-name", "night-watch");
    b.fill("#m-description", "Night patrols: camera allowed");
    choose(&b, "#cap-camera", "allow");
    b.click("#mode-preview");
    b.wait_for_text("#impact", "is new", WAIT);
    b.click("#apply");
    b.wait_for_text(".notice", "saved", WAIT);

    // The phone is put in it; a later change of the mode previews its one phone.
    server.cli_json(&["devices", "set-mode", &phone_id, "night-watch"]);
    wait_for(
        "the phone to report night-watch",
        Duration::from_secs(30),
        || (server.device(&phone_id)["mode"] == "night-watch").then_some(()),
    );
    b.goto(&format!("{}/console/modes/night-watch", server.url));
    choose(&b, "#cap-bluetooth", "allow");
    b.click("#mode-preview");
    b.wait_for_text("#impact", "1 phone is assigned", WAIT);
    let changed: Vec<String> = serde_json::from_value(b.execute(
        "return [...document.querySelectorAll('#changes tr.changed th')].map(e => e.textContent);",
        vec![],
    ))
    .unwrap();
    assert_eq!(changed, ["Bluetooth"]);
    b.screenshot("mode-preview");
    assert_accessible(&b);
    b.click("#apply");
    b.wait_for_text(".notice", "saved", WAIT);
    let mode = server.cli_json(&["modes", "show", "night-watch"]);
    assert_eq!(mode["capabilities"]["bluetooth"], "allow", "{mode}");
    let audit = server.cli_json(&["audit", "list"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "mode.update" && e["actor"] == "console:pavel"),
        "{audit}"
    );

    // A zone: a wrong checkpoint name is marked, then the zone is made.
    b.goto(&format!("{}/console/zones/new", server.url));
    b.fill("#z-name", "lab");
    b.fill("#z-checkpoints", "north-gate\nSouth Gate");
    b.click("#zone-preview");
    b.wait_for_text("#e-checkpoints", "checkpoint name", WAIT);
    b.fill("#z-checkpoints", "north-gate\nsouth-gate");
    b.click("#zone-preview");
    b.wait_for_text("#impact", "1 phone gets a new policy", WAIT);
    b.click("#apply");
    b.wait_for_text(".notice", "zone was saved", WAIT);

    // A gate credential with its printable sheet; the code on the sheet is the link.
    choose(&b, "#g-checkpoint", "south-gate");
    b.click("#create-gate");
    b.wait_for_text("#gate-checkpoint", "south-gate", WAIT);
    let link = b.read_qr("#gate-qr");
    assert_eq!(link, b.text("#gate-url"));
    assert!(link.contains("/gate/lab/south-gate?key="), "{link}");
    b.screenshot("gate-sheet");
    assert_accessible(&b);
    b.goto(&format!("{}/console/zones/lab", server.url));
    b.wait_for_text("#gates", "live", WAIT);
    b.screenshot("zone");
    assert_accessible(&b);
    b.click("button.revoke-gate");
    b.wait_for_text(".notice", "revoked", WAIT);
    b.wait_for_text("#gates", "revoked", WAIT);
    let creds = server.cli_json(&["zones", "gate-list", "lab"]);
    assert_eq!(creds[0]["state"], "revoked", "{creds}");

    // The officer changes her password: a wrong current one is marked at its field.
    b.goto(&format!("{}/console/account", server.url));
    b.fill("#pw-current", "not my password");
    b.fill("#pw-new", "a much longer passphrase");
    b.fill("#pw-repeat", "a much longer passphrase");
    b.click("#change-password");
    b.wait_for_text("#e-current", "wrong", WAIT);
    b.fill("#pw-current", &officer.password);
    b.fill("#pw-new", "a much longer passphrase");
    b.fill("#pw-repeat", "a much longer passphrase!");
    b.click("#change-password");
    b.wait_for_text("#e-repeat", "differ", WAIT);
    b.fill("#pw-current", &officer.password);
    b.fill("#pw-new", "a much longer passphrase");
    b.fill("#pw-repeat", "a much longer passphrase");
    b.click("#change-password");
    b.wait_for_text(".notice", "password was changed", WAIT);

    // Groups are an operator's: the officer reads them and gets no form.
    b.goto(&format!("{}/console/groups", server.url));
    b.wait_for_text("h1", "Device groups", WAIT);
    assert!(!b.exists("#create-group"));
    let refused = b.post_form(
        &format!("{}/console/groups", server.url),
        &[("name", "x"), ("csrf", &officer_csrf(&b))],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    phone.stop();
}

/// The CSRF token of the page shown.
fn officer_csrf(b: &Browser) -> String {
    serde_json::from_value(b.execute(
        "return document.querySelector('input[name=csrf]').value;",
        vec![],
    ))
    .unwrap()
}
