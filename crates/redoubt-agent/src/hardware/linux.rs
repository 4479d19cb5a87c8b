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

use std::path::{Path, PathBuf};

/// Where the kernel's pseudo file systems are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
}

impl Roots {
    /// The real ones: `/sys`, `/dev`, `/proc`.
    pub fn system() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }

    /// Roots under one directory (`DIR/sys`, `DIR/dev`, `DIR/proc`), for fake trees.
    pub fn under(dir: &Path) -> Self {
        Roots {
            sys: dir.join("sys"),
            dev: dir.join("dev"),
            proc: dir.join("proc"),
        }
    }

    /// The rfkill control device, `/dev/rfkill`.
    pub fn rfkill_dev(&self) -> PathBuf {
        self.dev.join("rfkill")
    }
}
