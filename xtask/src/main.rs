//! `cargo xtask`: project automation written in Rust.
//!
//! - `cargo xtask bench compliance [--devices N] [--rounds R]` measures, on loopback with
//!   release binaries, the time from an operator's mode change to the server showing
//!   the device compliant in that mode, for N simulated phones switched at once.
//! - `cargo xtask bench messaging …` measures end-to-end messaging between N simulated
//!   devices (messages/s, latency, server memory) and the cost of MLS operations in
//!   groups of 10/100/1000 members (see [`messaging`]).
//! - `cargo xtask bench fleet [--phones N] …` simulates N phones in one process with the
//!   real protocol and measures connections held, memory per phone, a set-mode to all,
//!   report ingest and one phone's set-mode (see [`fleet`]).
//! - `cargo xtask bench relay [--members S] [--senders K] [--messages M] [--database …]`
//!   measures what the server relays in one conversation: deliveries/s, send → fetched
//!   latency, the server's CPU per 1000 deliveries (see [`relay`]).
//! - `cargo xtask bench console [--devices N] [--samples S] [--data DIR] [--keep] …`
//!   fills a server with N devices (default 100 000) through the real API, signs in to
//!   the web console as a browser does and times its pages: the device list's first,
//!   deep and filtered pages, the dashboard, the CSV export (see [`console`]).
//! - `cargo xtask fuzz [--seconds N] [TARGET…]` builds the cargo-fuzz targets of
//!   `fuzz/` once and runs each N seconds on generated seed corpora (see [`fuzz`]).
//! - `cargo xtask soak [--cycles N] …` kills the release server with SIGKILL N times
//!   under load (agents reporting, messengers talking) and checks that nothing
//!   acknowledged was lost (see [`soak`]).
//! - `cargo xtask test` runs every test: it installs the Debian packages the tests need
//!   (as root; otherwise it names them, see [`setup`]), then `cargo test --workspace`,
//!   `vm-test`, and every fuzz target for 10 s.
//! - `cargo xtask vm-test [--timeout SECS]` proves the agent's `linux` backend against a
//!   real kernel under qemu (see [`vm`]).

mod common;
mod compliance;
mod console;
mod fleet;
mod fleet_gen;
mod fuzz;
mod messaging;
mod mls_cost;
mod relay;
mod setup;
mod soak;
mod vm;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "compliance", rest @ ..] => {
            common::check_flags(rest, &["--devices", "--rounds"])?;
            let devices = common::flag(rest, "--devices")?.unwrap_or(20);
            let rounds = common::flag(rest, "--rounds")?.unwrap_or(10);
            tokio::runtime::Runtime::new()?.block_on(compliance::bench_compliance(devices, rounds))
        }
        ["bench", "console", rest @ ..] => console::main(rest),
        ["bench", "messaging", rest @ ..] => messaging::main(rest),
        ["bench", "fleet", rest @ ..] => fleet::main(rest),
        ["bench", "fleet-generator"] => fleet_gen::generator_main(),
        ["bench", "relay", rest @ ..] => relay::main(rest),
        ["vm-test", rest @ ..] => vm::main(rest),
        ["fuzz", rest @ ..] => fuzz::main(rest),
        ["soak", rest @ ..] => soak::main(rest),
        ["test"] => test_all(),
        _ => {
            eprintln!("usage: cargo xtask test");
            eprintln!("       cargo xtask bench compliance [--devices N] [--rounds R]");
            eprintln!("       {}", console::USAGE);
            eprintln!("       {}", fleet::USAGE);
            eprintln!("       {}", messaging::USAGE);
            eprintln!("       {}", relay::USAGE);
            eprintln!("       {}", vm::USAGE);
            eprintln!("       {}", fuzz::USAGE);
            eprintln!("       {}", soak::USAGE);
            bail!("unknown task {args:?}")
        }
    }
}

/// Every test: the workspace's (unit, integration, D-Bus), then the VM test, then every
/// fuzz target briefly (10 s each; nightly and cargo-fuzz are installed when missing).
/// First the Debian packages the tests use are checked (and installed, as root).
fn test_all() -> anyhow::Result<()> {
    setup::ensure_packages()?;
    setup::ensure_services()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args(["test", "--workspace"])
        .current_dir(common::workspace_root())
        .status()?;
    if !status.success() {
        bail!("cargo test --workspace failed ({status})");
    }
    vm::main(&[])?;
    fuzz::main(&["--seconds", "10"])
}
