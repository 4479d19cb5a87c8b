//! The messenger runs as the phone's person, the agent as root: a phone app that links
//! `redoubt-messenger` must not carry the root daemon (its hardware backends, its
//! state and device key handling). Checked on Cargo's resolved graph for this machine's
//! target, so a dependency added anywhere below the messenger fails here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

/// Every package `root` links (normal dependencies, transitively), by name.
fn linked_by(root: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}", "-p", root])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_messenger_never_links_the_agent() {
    let linked = linked_by("redoubt-messenger");
    // The walk itself works: what the messenger does need is there.
    for needed in [
        "redoubt-proto",
        "redoubt-client",
        "redoubt-device",
        "openmls",
    ] {
        assert!(linked.contains(needed), "{needed} missing from {linked:?}");
    }
    for forbidden in ["redoubt-agent", "redoubt-server", "redoubt-store", "zbus"] {
        assert!(
            !linked.contains(forbidden),
            "redoubt-messenger links {forbidden}"
        );
    }
    // And the check can fail: the agent does link its D-Bus backend.
    assert!(linked_by("redoubt-agent").contains("zbus"));
}
