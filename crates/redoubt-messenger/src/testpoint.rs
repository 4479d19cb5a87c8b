//! Pause points for crash and race tests. With `REDOUBT_TEST_PAUSE=DIR` and
//! `REDOUBT_TEST_PAUSE_AT=NAME[,NAME...]` in the environment, the messenger, on reaching
//! a listed point for the N-th time in this process, creates `DIR/NAME.N.reached` and
//! waits until `DIR/NAME.N.go` exists. A test can then kill -9 the process at that exact
//! step, or let another client act first and release it. Without the variables a point
//! costs two environment lookups and never waits.
//!
//! Points: `commit-before-post` (a commit is staged and in the outbox, not yet sent),
//! `message-after-post` (the server accepted a message; the outbox still holds it),
//! `sync-before-ack` (fetched items are applied and committed locally, not yet acked).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

static REACHED: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// Pauses at point `name` when the environment asks for it.
pub async fn point(name: &str) {
    let Some(dir) = std::env::var_os("REDOUBT_TEST_PAUSE").map(PathBuf::from) else {
        return;
    };
    let listed = std::env::var("REDOUBT_TEST_PAUSE_AT").unwrap_or_default();
    if !listed.split(',').any(|n| n.trim() == name) {
        return;
    }
    let n = {
        let mut reached = REACHED.lock().unwrap_or_else(|p| p.into_inner());
        let n = reached.entry(name.to_owned()).or_insert(0);
        *n += 1;
        *n
    };
    let go = dir.join(format!("{name}.{n}.go"));
    if let Err(e) = std::fs::write(dir.join(format!("{name}.{n}.reached")), b"") {
        tracing::warn!(point = name, error = %e, "test pause point could not be marked");
        return;
    }
    tracing::info!(point = name, n, "paused at a test point");
    while !go.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
