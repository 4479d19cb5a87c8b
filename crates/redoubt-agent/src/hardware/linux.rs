//! The mainline-Linux backend: reading and changing real kernel state through
//! `/sys`, `/dev` and `/proc`, whose roots are parameters ([`Roots`]) so that tests
//! point them at fake trees.

pub mod backend;
pub mod binding;
pub mod media;
pub mod netfilter;
pub mod rfkill;
pub mod watch;

pub use backend::LinuxHardware;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where the kernel's pseudo file systems are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// The system's configuration, normally `/etc` (`os-release` for the inventory).
    pub etc: PathBuf,
}

impl Roots {
    /// The real ones: `/sys`, `/dev`, `/proc`, `/etc`.
    pub fn system() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
            etc: PathBuf::from("/etc"),
        }
    }

    /// Roots under one directory (`DIR/sys`, `DIR/dev`, `DIR/proc`, `DIR/etc`), for
    /// fake trees.
    pub fn under(dir: &Path) -> Self {
        Roots {
            sys: dir.join("sys"),
            dev: dir.join("dev"),
            proc: dir.join("proc"),
            etc: dir.join("etc"),
        }
    }

    /// The rfkill control device, `/dev/rfkill`.
    pub fn rfkill_dev(&self) -> PathBuf {
        self.dev.join("rfkill")
    }
}

/// Runs `cmd` with `input` on its stdin (none: `/dev/null`), collecting its output,
/// and kills it when it has not finished within `limit` (a hung `nft` must not stall
/// the agent's loop).
pub fn run_bounded(
    mut cmd: Command,
    input: Option<&str>,
    limit: Duration,
) -> std::io::Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    let input = input.map(str::to_owned);
    std::thread::Builder::new()
        .name("bounded-command".into())
        .spawn(move || {
            // Written on this thread: a child that reads nothing cannot block the caller.
            if let (Some(text), Some(mut stdin)) = (input, stdin) {
                let _ = stdin.write_all(text.as_bytes());
            }
            let _ = tx.send(child.wait_with_output());
        })?;
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s; killed", limit.as_secs()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_hangs_is_killed_at_the_limit() {
        let started = std::time::Instant::now();
        let err = run_bounded(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        let out = run_bounded(Command::new("cat"), Some("rules"), Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"rules");
    }
}
