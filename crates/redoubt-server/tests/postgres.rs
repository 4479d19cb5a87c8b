//! The whole server on PostgreSQL (`database_url`), with a real phone: enrollment,
//! a group's mode, a bulk lock, the audit log, and a restart that finds everything in
//! the database. The database is made for this test and dropped after it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Agent, Server, stderr, wait_for};
use redoubt_store::test_support::TempPostgres;

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn the_server_runs_on_postgresql() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(TempPostgres::create());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let env = [("REDOUBT_DATABASE_URL", pg.url())];
    let server = Server::start(&data, &env);
    // It names the database it uses, never with a password.
    let mut printed = Vec::new();
    wait_for("the server to name its database", DEADLINE, || {
        printed.extend(server.printed());
        printed
            .iter()
            .find(|l| l.starts_with("Database: "))
            .cloned()
    })
    .starts_with("Database: PostgreSQL at 127.0.0.1:5432/redoubt_test_")
    .then_some(())
    .expect("the PostgreSQL database is named");
    server.cli_json(&["groups", "create", "unit-7", "--mode", "secure-site"]);
    let code = server.cli_json(&["enroll", "create", "--user", "alice", "--group", "unit-7"]);
    let mut phone = Agent::new(tmp.path().join("alice"));
    let id = phone.enroll(code["url"].as_str().unwrap());
    phone.start();
    let compliant_in = |server: &Server, mode: &str| {
        wait_for(&format!("{id} compliant in {mode}"), DEADLINE, || {
            let d = server.device(&id);
            (d["compliance"] == "compliant" && d["reported_mode"] == mode).then_some(d)
        })
    };
    compliant_in(&server, "secure-site");
    server.cli_json(&[
        "devices", "bulk", "lock", "--group", "unit-7", "--count", "1",
    ]);
    compliant_in(&server, "lockdown");
    let out = server.cli_as(&server.owner_token, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    phone.stop();
    server.stop();

    // A new process finds the device, its group and its log in the database.
    let server = Server::start(&data, &env);
    let d = server.device(&id);
    assert_eq!(d["groups"], serde_json::json!(["unit-7"]));
    assert_eq!(d["reported_mode"], "lockdown");
    let counts = server.cli_json(&["devices", "counts"]);
    assert_eq!(counts["by_group"]["unit-7"], 1);
    let out = server.cli_as(&server.owner_token, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    server.stop();
    drop(pg);
}
