//! What the tests need from the machine, checked (and installed, as root) before
//! `cargo xtask test` runs anything, so the test command works on a fresh machine:
//!
//! - `nftables`, `iproute2`: the linux backend's tests load real rule sets in network
//!   namespaces of their own (`ip netns`, root);
//! - `dbus-daemon`: the sailfish backend's tests run mock system services on a private bus;
//! - `qemu-system-x86`, `linux-image-amd64`, `busybox-static`, `kmod`, `libc6-dev`: the VM
//!   test boots Debian's kernel under qemu with a static agent in a busybox initramfs;
//! - `postgresql`: the store contract suite and the multi-node tests run against a
//!   PostgreSQL server on loopback (each test in a database of its own);
//! - `nats-server`: the multi-node tests carry cross-node pushes over NATS;
//! - `chromium`, `chromium-driver`: the server's browser tests drive headless Chromium
//!   through chromedriver (`crates/redoubt-server/tests/browser/`).
//!
//! Both services are started when they are installed but not answering (as root, with
//! the commands the machine's own service scripts use).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Whether `name` is an executable on `PATH` (or in the sbin directories root has).
fn have_command(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(name).is_file())
}

/// Whether a Debian package is installed.
fn have_package(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with("ok installed"))
}

/// A kernel image with its modules (what the VM test boots).
fn have_kernel() -> bool {
    std::fs::read_dir("/boot").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .is_some_and(|v| Path::new("/lib/modules").join(v).is_dir())
        })
    })
}

/// The Debian packages the tests need that are missing here.
pub fn missing_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (command, package) in [
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("dbus-daemon", "dbus-daemon"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("modprobe", "kmod"),
    ] {
        if !have_command(command) {
            missing.push(package);
        }
    }
    if !have_kernel() {
        missing.push("linux-image-amd64");
    }
    if !have_package("busybox-static") {
        missing.push("busybox-static");
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists() {
        missing.push("libc6-dev");
    }
    if !have_command("pg_ctlcluster") && !have_command("postgres") {
        missing.push("postgresql");
    }
    if !have_command("nats-server") {
        missing.push("nats-server");
    }
    // Where the browser tests look for them (Debian's paths, not whatever is on PATH).
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium");
    }
    if !Path::new("/usr/bin/chromedriver").exists() {
        missing.push("chromium-driver");
    }
    missing
}

/// Whether something accepts TCP connections at `addr` (loopback, within a second).
fn answers(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok()
    })
}

/// Waits up to 30 s for `addr` to answer.
fn wait_answering(addr: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if answers(addr) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

/// PostgreSQL's and NATS's loopback addresses the tests use by default.
pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";
/// See [`POSTGRES_ADDR`].
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// Makes sure PostgreSQL and NATS answer on loopback, starting them as root when they
/// are installed but stopped. A `REDOUBT_TEST_POSTGRES` / `REDOUBT_TEST_NATS` set by the
/// caller points the tests elsewhere, and nothing is started then.
pub fn ensure_services() -> anyhow::Result<()> {
    if std::env::var_os("REDOUBT_TEST_POSTGRES").is_none() && !answers(POSTGRES_ADDR) {
        if !is_root() {
            bail!(
                "the tests need PostgreSQL on {POSTGRES_ADDR} (a role that may CREATE DATABASE, \
                 default postgres://postgres@{POSTGRES_ADDR}/postgres); start it, or set \
                 REDOUBT_TEST_POSTGRES to one that answers"
            );
        }
        eprintln!("starting PostgreSQL");
        let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            bail!("PostgreSQL is installed but has no cluster in /etc/postgresql");
        }
        for v in &versions {
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", v, "main", "start"])
                .status();
        }
        if !wait_answering(POSTGRES_ADDR) {
            bail!("PostgreSQL was started but does not answer on {POSTGRES_ADDR}");
        }
    }
    if std::env::var_os("REDOUBT_TEST_NATS").is_none() && !answers(NATS_ADDR) {
        if !is_root() {
            bail!(
                "the tests need a NATS server on {NATS_ADDR}; start nats-server, or set REDOUBT_TEST_NATS"
            );
        }
        eprintln!("starting NATS");
        let status = Command::new("start-stop-daemon")
            .args([
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/nats-server",
                "--",
                "-a",
                "127.0.0.1",
                "-p",
                "4222",
            ])
            .status()
            .context("starting nats-server")?;
        if !status.success() || !wait_answering(NATS_ADDR) {
            bail!("nats-server was started but does not answer on {NATS_ADDR}");
        }
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Installs the missing packages as root; otherwise fails naming them.
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "the tests need Debian packages that are not installed: {list}\n\
             install them as root: apt-get install --no-install-recommends {list}"
        );
    }
    eprintln!("installing the Debian packages the tests need: {list}");
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}
