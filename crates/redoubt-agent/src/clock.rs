//! The agent's time: the clock seam ([`Clock`]) every part of the agent reads, and the
//! trusted time floor ([`TimeFloor`]) kept in `time-floor.json`.
//!
//! The holder sets the phone's wall clock, so it never decides anything in their
//! favour. The floor is a lower bound on real time: the newest time the server vouched
//! for (its greeting, a signed bundle's or command's issue time), advanced by the boot
//! clock (`CLOCK_BOOTTIME`, which counts suspend) while the phone runs, never by the wall
//! clock. It is persisted with the boot id and the boot-clock reading it was taken at:
//! after a restart in the same boot the elapsed boot time is added, after a reboot
//! (another boot id) nothing is, so the floor only ever moves forward.
//!
//! Tests move the clocks through [`SystemClock::from_env`]: `REDOUBT_AGENT_TEST_CLOCK`
//! (`wall=±SECS,boot=±SECS,boot-id=TEXT`) shifts the wall clock, shifts the boot clock
//! and replaces the boot id. It cannot move the floor back: a boot clock behind the
//! persisted reading, or another boot id, adds nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use redoubt_policy::PhoneTime;
use redoubt_proto::Timestamp;
use serde::{Deserialize, Serialize};

use crate::state::{StateDir, write_json};

/// The floor file in the state directory.
pub const TIME_FLOOR_FILE: &str = "time-floor.json";
/// The environment variable of the test seam (see the module documentation).
pub const TEST_CLOCK_ENV: &str = "REDOUBT_AGENT_TEST_CLOCK";
/// The floor is written again once it advanced this far past the copy on disk.
const PERSIST_EVERY_SECS: i64 = 30;

/// A reading of the boot clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReading {
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    pub boot_id: String,
    /// Milliseconds since boot, suspend included.
    pub since_boot_ms: u64,
}

/// Where the agent takes its time from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The phone's wall clock (the holder may have set it).
    fn wall(&self) -> Timestamp;
    /// The monotonic boot clock.
    fn boot(&self) -> BootReading;
}

/// The system's clocks, optionally shifted by the test seam.
#[derive(Debug, Clone, Default)]
pub struct SystemClock {
    wall_offset_secs: i64,
    boot_offset_ms: i64,
    boot_id: Option<String>,
}

impl SystemClock {
    /// The system's clocks as they are.
    pub fn new() -> Self {
        Self::default()
    }

    /// The system's clocks, shifted as `REDOUBT_AGENT_TEST_CLOCK` says (unset: as they
    /// are).
    pub fn from_env() -> Result<Self> {
        match std::env::var(TEST_CLOCK_ENV) {
            Ok(spec) => Self::parse(&spec).with_context(|| format!("reading {TEST_CLOCK_ENV}")),
            Err(_) => Ok(Self::new()),
        }
    }

    /// Parses `wall=±SECS,boot=±SECS,boot-id=TEXT` (each part optional).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut c = Self::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                bail!("expected key=value, got {part:?}");
            };
            let secs = || -> Result<i64> {
                v.trim_start_matches('+')
                    .parse()
                    .with_context(|| format!("{k}: not a number of seconds: {v:?}"))
            };
            match k {
                "wall" => c.wall_offset_secs = secs()?,
                "boot" => c.boot_offset_ms = secs()?.saturating_mul(1000),
                "boot-id" if !v.is_empty() => c.boot_id = Some(v.to_owned()),
                _ => bail!("unknown part {part:?} (wall, boot, boot-id)"),
            }
        }
        Ok(c)
    }
}

fn system_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Clock for SystemClock {
    fn wall(&self) -> Timestamp {
        Timestamp::now().plus_secs(self.wall_offset_secs)
    }

    fn boot(&self) -> BootReading {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let ms = (t.tv_sec as i64)
            .saturating_mul(1000)
            .saturating_add(t.tv_nsec as i64 / 1_000_000);
        BootReading {
            boot_id: self.boot_id.clone().unwrap_or_else(system_boot_id),
            since_boot_ms: ms.saturating_add(self.boot_offset_ms).max(0) as u64,
        }
    }
}

/// A clock set by hand, for tests in process.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<(Timestamp, BootReading)>>);

impl ManualClock {
    /// Wall clock at `wall`, boot clock at 0 of boot `boot-1`.
    pub fn new(wall: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new((
            wall,
            BootReading {
                boot_id: "boot-1".into(),
                since_boot_ms: 0,
            },
        ))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut (Timestamp, BootReading)) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets the wall clock.
    pub fn set_wall(&self, wall: Timestamp) {
        self.with(|c| c.0 = wall);
    }

    /// Lets `secs` pass on both clocks.
    pub fn advance(&self, secs: i64) {
        self.with(|c| {
            c.0 = c.0.plus_secs(secs);
            c.1.since_boot_ms = c.1.since_boot_ms.saturating_add_signed(secs * 1000);
        });
    }

    /// A reboot: a new boot id, the boot clock back at 0.
    pub fn reboot(&self, boot_id: &str) {
        self.with(|c| {
            c.1 = BootReading {
                boot_id: boot_id.into(),
                since_boot_ms: 0,
            }
        });
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> Timestamp {
        self.with(|c| c.0)
    }

    fn boot(&self) -> BootReading {
        self.with(|c| c.1.clone())
    }
}

/// "At boot clock `boot_ms` of boot `boot_id`, real time was at least `floor`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Anchor {
    floor: Timestamp,
    boot_id: String,
    boot_ms: u64,
}

impl Anchor {
    /// The floor at `now`: plus the boot time elapsed since the anchor, in the same
    /// boot only.
    fn at(&self, now: &BootReading) -> Anchor {
        if now.boot_id != self.boot_id {
            // Another boot: the time the phone was off is unknown, add nothing.
            return Anchor {
                floor: self.floor,
                boot_id: now.boot_id.clone(),
                boot_ms: now.since_boot_ms,
            };
        }
        let elapsed_secs = now.since_boot_ms.saturating_sub(self.boot_ms) / 1000;
        Anchor {
            floor: self.floor.plus_secs(elapsed_secs as i64),
            boot_id: self.boot_id.clone(),
            // Keep the fraction of a second not added yet.
            boot_ms: self.boot_ms + elapsed_secs * 1000,
        }
    }
}

/// The trusted time floor: only moves forward, survives restarts and reboots.
#[derive(Debug, Clone)]
pub struct TimeFloor {
    anchor: Anchor,
    /// What `time-floor.json` holds (None: nothing yet).
    stored: Option<Anchor>,
    /// A server time raised the floor since it was stored.
    observed: bool,
}

impl TimeFloor {
    /// Reads `time-floor.json`; raised to `at_least` (e.g. the held bundle's issue time,
    /// which the server signed). A missing or unreadable file starts from `at_least`.
    pub fn load(dir: &StateDir, at_least: Timestamp, now: &BootReading) -> Self {
        let path = dir.path(TIME_FLOOR_FILE);
        let stored = match read_anchor(&path) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the time floor is unreadable; starting again from the held bundle's issue time");
                None
            }
        };
        let mut floor = TimeFloor {
            anchor: stored.clone().unwrap_or(Anchor {
                floor: at_least,
                boot_id: now.boot_id.clone(),
                boot_ms: now.since_boot_ms,
            }),
            stored,
            observed: false,
        };
        floor.observe(at_least, now);
        floor
    }

    /// The floor at boot reading `now` (advances the anchor by the boot clock).
    pub fn advance(&mut self, now: &BootReading) -> Timestamp {
        self.anchor = self.anchor.at(now);
        self.anchor.floor
    }

    /// Takes a time the server vouched for into account: the floor rises to it, never
    /// falls.
    pub fn observe(&mut self, t: Timestamp, now: &BootReading) {
        let current = self.advance(now);
        if t > current {
            self.anchor = Anchor {
                floor: t,
                boot_id: now.boot_id.clone(),
                boot_ms: now.since_boot_ms,
            };
            self.observed = true;
        }
    }

    /// Whether the copy on disk is behind enough (another boot, an observed server time,
    /// or [`PERSIST_EVERY_SECS`] of boot time) to be written again.
    pub fn needs_store(&self) -> bool {
        match &self.stored {
            None => true,
            Some(s) => {
                s.boot_id != self.anchor.boot_id
                    || self.anchor.floor.unix() - s.floor.unix() >= PERSIST_EVERY_SECS
                    || self.observed
            }
        }
    }

    /// Writes `time-floor.json` atomically.
    pub fn store(&mut self, dir: &StateDir) -> Result<()> {
        write_json(&dir.path(TIME_FLOOR_FILE), &self.anchor).context("storing the time floor")?;
        self.stored = Some(self.anchor.clone());
        self.observed = false;
        Ok(())
    }

    /// The floor as last advanced.
    pub fn value(&self) -> Timestamp {
        self.anchor.floor
    }
}

fn read_anchor(path: &Path) -> Result<Option<Anchor>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// Reads the time as the agent judges it, without writing anything (for `status`).
pub fn peek(dir: &StateDir, at_least: Timestamp, clock: &dyn Clock) -> PhoneTime {
    let boot = clock.boot();
    let mut floor = TimeFloor::load(dir, at_least, &boot);
    PhoneTime {
        floor: floor.advance(&boot),
        wall: clock.wall(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp(1_800_000_000);

    #[test]
    fn the_floor_moves_with_the_boot_clock_and_the_server_never_with_the_wall() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let clock = ManualClock::new(T);
        let mut f = TimeFloor::load(&dir, T, &clock.boot());
        assert_eq!(f.advance(&clock.boot()), T);
        // The wall clock a day ahead: the floor does not follow.
        clock.set_wall(T.plus_secs(86_400));
        assert_eq!(f.advance(&clock.boot()), T);
        // The boot clock does.
        clock.advance(90);
        assert_eq!(f.advance(&clock.boot()), T.plus_secs(90));
        // A server time behind the floor changes nothing; one ahead raises it.
        f.observe(T, &clock.boot());
        assert_eq!(f.value(), T.plus_secs(90));
        f.observe(T.plus_secs(500), &clock.boot());
        assert_eq!(f.value(), T.plus_secs(500));
        assert!(f.needs_store());
        f.store(&dir).unwrap();
        assert!(!f.needs_store());

        // A restart in the same boot: the elapsed boot time counts.
        clock.advance(40);
        let mut again = TimeFloor::load(&dir, Timestamp(0), &clock.boot());
        assert_eq!(again.advance(&clock.boot()), T.plus_secs(540));
        // A reboot: the boot clock restarts; the floor stays, then runs on.
        clock.reboot("boot-2");
        let mut rebooted = TimeFloor::load(&dir, Timestamp(0), &clock.boot());
        assert_eq!(rebooted.advance(&clock.boot()), T.plus_secs(500));
        clock.advance(10);
        assert_eq!(rebooted.advance(&clock.boot()), T.plus_secs(510));
        // A boot clock set back (test seam or not) does not move it back.
        let back = BootReading {
            boot_id: "boot-2".into(),
            since_boot_ms: 0,
        };
        assert_eq!(rebooted.advance(&back), T.plus_secs(510));
    }

    #[test]
    fn the_test_seam_parses_and_refuses_nonsense() {
        let c = SystemClock::parse("wall=-3600,boot=+20,boot-id=abc").unwrap();
        assert_eq!(
            (c.wall_offset_secs, c.boot_offset_ms, c.boot_id.as_deref()),
            (-3600, 20_000, Some("abc"))
        );
        assert!(SystemClock::parse("wall=soon").is_err());
        assert!(SystemClock::parse("floor=+10").is_err());
        let real = SystemClock::new().boot();
        assert!(!real.boot_id.is_empty());
    }
}
