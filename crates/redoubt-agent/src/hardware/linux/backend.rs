//! [`LinuxHardware`]: the backend for mainline-Linux phones (postmarketOS, Mobian),
//! assembled from the kernel parts of this module.
//!
//! | capability | enforced by | verified by |
//! |---|---|---|
//! | wifi, bluetooth, nfc, location (gps) | a `CHANGE_ALL` event per radio type on `/dev/rfkill` (also the default for radios registered later) | `/sys/class/rfkill/*/{type,soft,hard}`; no switch of the type = `unknown` |
//! | cellular data | rfkill `wwan` and an nftables table dropping traffic on mobile-data interfaces | rfkill `wwan`, or the read-back table covering every mobile-data interface present |
//! | camera | unbinding the driver of every `/sys/class/video4linux` device | that class empty and no process holding `/dev/video*`, `/dev/media*` |
//! | microphone | unbinding the driver of every sound card that has a capture PCM — **the whole card, playback too**: ALSA has no per-direction switch the kernel enforces | no `/proc/asound/card*/pcm*c` left |
//! | network reach | an nftables table letting out only the organization's addresses and loopback | the table read back (`nft -j`) |
//! | USB data, screenshots | not through kernel interfaces | always `unknown` |
//!
//! What was unbound or blocked is kept in `linux-hardware.json` in the state directory
//! (written before the change), so that `Allow` — after a restart too — rebinds and
//! unblocks exactly that: a radio the person switched off stays off when a mode ends.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use redoubt_proto::{Capability, CapabilityState, HardwareKind, NetworkReach, NetworkState, Rule};
use serde::{Deserialize, Serialize};

use super::binding::{self, Binding};
use super::netfilter::{self, CELLULAR_TABLE, REACH_TABLE};
use super::rfkill::{self, RadioType};
use super::{Roots, media, watch};
use crate::hardware::record::Record;
use crate::hardware::{Hardware, HardwareError, Wake, refused, refused_if, unavailable};

/// How long `nft` may take before it is killed and the call fails.
const NFT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// File name of what the backend changed, in the state directory.
pub const LINUX_STATE_FILE: &str = "linux-hardware.json";

/// What the backend changed and must be able to undo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxState {
    /// Driver bindings the agent removed, per capability (camera, microphone).
    #[serde(default)]
    pub unbound: BTreeMap<Capability, BTreeSet<Binding>>,
    /// The addresses the loaded reach table lets through.
    #[serde(default)]
    pub reach_allowed: Vec<IpAddr>,
    /// The endpoints the bundle named when the table was loaded (host names among
    /// them were ignored, see [`reach_addresses`]).
    #[serde(default)]
    pub reach_endpoints: Vec<String>,
    /// Left from when endpoints were resolved through DNS: read so that older state
    /// files still load, never written.
    #[serde(default, skip_serializing)]
    pub reach_resolved_at: u64,
    /// Radios the agent blocked: `Allow` unblocks only these, so a radio the person
    /// switched off stays off when a mode ends.
    #[serde(default)]
    pub blocked_radios: BTreeSet<Capability>,
}

/// The radio type behind a capability, for those switched through rfkill.
pub fn radio_of(cap: Capability) -> Option<RadioType> {
    match cap {
        Capability::Wifi => Some(RadioType::Wlan),
        Capability::Bluetooth => Some(RadioType::Bluetooth),
        Capability::CellularData => Some(RadioType::Wwan),
        Capability::Location => Some(RadioType::Gps),
        Capability::Nfc => Some(RadioType::Nfc),
        _ => None,
    }
}

/// Network interfaces that carry mobile data: those sysfs types as `wwan`, and
/// those named like one.
pub fn wwan_interfaces(roots: &Roots) -> Option<Vec<String>> {
    let dir = roots.sys.join("class/net");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let typed = fs::read_to_string(entry.path().join("uevent"))
            .map(|u| u.lines().any(|l| l.trim() == "DEVTYPE=wwan"))
            .unwrap_or(false);
        let named = netfilter::WWAN_PATTERNS
            .iter()
            .any(|p| netfilter::pattern_covers(p, &name));
        // `lower_X` entries name the devices this one is stacked on (a QMAP/MBIM
        // multiplexed link over the modem's device).
        let lower: Vec<String> = fs::read_dir(entry.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("lower_"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        all.push((name, typed || named, lower));
    }
    // A link stacked on a mobile-data link carries mobile data too (any depth).
    let mut mobile: BTreeSet<String> = all
        .iter()
        .filter(|(_, m, _)| *m)
        .map(|(n, _, _)| n.clone())
        .collect();
    loop {
        let before = mobile.len();
        for (name, _, lower) in &all {
            if lower.iter().any(|l| mobile.contains(l)) {
                mobile.insert(name.clone());
            }
        }
        if mobile.len() == before {
            break;
        }
    }
    Some(mobile.into_iter().collect())
}

/// The capture-capable sound cards' driver bindings: cards with a `pcm*c` in
/// `/proc/asound`, found through `/sys/class/sound/cardN/device`. A capture card
/// without a driver link cannot be unbound and is returned in the second list.
pub fn capture_card_bindings(roots: &Roots) -> Result<(Vec<Binding>, Vec<String>), HardwareError> {
    let subs = media::capture_substreams(&roots.proc)
        .ok_or_else(|| unavailable("/proc/asound is unreadable"))?;
    let cards: BTreeSet<&str> = subs
        .iter()
        .filter_map(|s| s.name.split('/').next())
        .collect();
    let mut found = BTreeSet::new();
    let mut stuck = Vec::new();
    for card in cards {
        let device = fs::canonicalize(roots.sys.join("class/sound").join(card).join("device"));
        let driver = device
            .as_ref()
            .ok()
            .and_then(|d| fs::canonicalize(d.join("driver")).ok());
        match (device, driver) {
            (Ok(device), Some(driver)) => {
                if let Some(name) = device.file_name() {
                    found.insert(Binding {
                        driver,
                        device: name.to_string_lossy().into_owned(),
                    });
                }
            }
            _ => stuck.push(card.to_owned()),
        }
    }
    Ok((found.into_iter().collect(), stuck))
}

/// The mainline-Linux backend.
#[derive(Debug)]
pub struct LinuxHardware {
    roots: Roots,
    record: Record<LinuxState>,
    nft: Vec<OsString>,
}

impl LinuxHardware {
    /// The backend on this phone's kernel (`/sys`, `/dev`, `/proc`, `nft` from `PATH`).
    pub fn new(state_dir: &Path) -> Self {
        Self::with(Roots::system(), state_dir, vec!["nft".into()])
    }

    /// The backend on other roots and with another `nft` command line (the program and
    /// leading arguments, e.g. `ip netns exec NS nft`); for tests.
    pub fn with(roots: Roots, state_dir: &Path, nft: Vec<OsString>) -> Self {
        LinuxHardware {
            roots,
            record: Record::in_dir(state_dir, LINUX_STATE_FILE),
            nft,
        }
    }

    /// The kernel roots this backend reads.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// What the backend changed, as stored. A missing file is nothing changed; an
    /// unreadable one is an error (see [`Record`]).
    pub fn load_state(&self) -> Result<LinuxState, HardwareError> {
        self.record.load()
    }

    fn update_state<T>(&self, f: impl FnOnce(&mut LinuxState) -> T) -> Result<T, HardwareError> {
        self.record.update(f)
    }

    /// Runs `nft ARGS`, feeding `script` on stdin when given; the stdout on success.
    fn nft(&self, args: &[&str], script: Option<&str>) -> Result<String, NftError> {
        let (program, lead) = self
            .nft
            .split_first()
            .ok_or_else(|| NftError::NotRunnable("no nft command configured".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(lead).args(args);
        let out = super::run_bounded(cmd, script, NFT_LIMIT).map_err(|e| {
            NftError::NotRunnable(format!("running {}: {e}", program.to_string_lossy()))
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("").trim().to_owned();
            if first.contains("No such file or directory") {
                Err(NftError::NoTable)
            } else {
                Err(NftError::Failed(format!("nft {}: {first}", args.join(" "))))
            }
        }
    }

    fn load_rules(&self, what: &str, script: &str) -> Result<(), HardwareError> {
        self.nft(&["-f", "-"], Some(script))
            .map(drop)
            .map_err(|e| match e {
                NftError::NotRunnable(m) => unavailable(m),
                other => refused(what, other),
            })
    }

    /// The table `name` as read back, `None` when it is not loaded.
    fn read_table(&self, name: &str) -> Result<Option<String>, NftError> {
        match self.nft(&["-j", "list", "table", "inet", name], None) {
            Ok(json) => Ok(Some(json)),
            Err(NftError::NoTable) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the loaded mobile-data table drops every mobile-data interface present.
    fn cellular_dropped(&self) -> bool {
        let Some(ifaces) = wwan_interfaces(&self.roots) else {
            return false;
        };
        let Ok(Some(json)) = self.read_table(CELLULAR_TABLE) else {
            return false;
        };
        let Ok(dropped) = netfilter::parse_cellular_listing(&json) else {
            return false;
        };
        let covers_patterns = netfilter::WWAN_PATTERNS
            .iter()
            .all(|p| dropped.contains(*p));
        covers_patterns
            && ifaces
                .iter()
                .all(|i| dropped.iter().any(|p| netfilter::pattern_covers(p, i)))
    }

    /// The bindings that turn `cap` on (camera, microphone).
    fn bindings_of(&self, cap: Capability) -> Result<(Vec<Binding>, Vec<String>), HardwareError> {
        match cap {
            Capability::Camera => binding::class_bindings(&self.roots.sys, "video4linux")
                .map(|b| (b, Vec::new()))
                .map_err(unavailable),
            Capability::Microphone => capture_card_bindings(&self.roots),
            _ => Ok((Vec::new(), Vec::new())),
        }
    }

    fn unbind_all(&self, cap: Capability) -> Result<(), HardwareError> {
        let (found, stuck) = self.bindings_of(cap)?;
        // Recorded before the unbind: a crash in between leaves a binding to restore
        // that is still bound, which rebinding later tolerates.
        self.update_state(|s| {
            s.unbound
                .entry(cap)
                .or_default()
                .extend(found.iter().cloned());
        })?;
        let mut errors: Vec<String> = stuck
            .iter()
            .map(|c| format!("{c} has no driver that can be unbound"))
            .collect();
        for b in &found {
            if let Err(e) = binding::unbind(b) {
                errors.push(e.to_string());
            }
        }
        refused_if(cap, &errors)
    }

    fn rebind_all(&self, cap: Capability) -> Result<(), HardwareError> {
        let held = self
            .load_state()?
            .unbound
            .get(&cap)
            .cloned()
            .unwrap_or_default();
        let mut kept = BTreeSet::new();
        let mut errors = Vec::new();
        for b in held {
            match binding::rebind(&b) {
                Ok(()) => {}
                Err(e) => match e.raw_os_error() {
                    // Already bound again (EBUSY), or the device is gone (ENODEV):
                    // nothing left to restore.
                    Some(16) | Some(19) => {}
                    _ => {
                        errors.push(e.to_string());
                        kept.insert(b);
                    }
                },
            }
        }
        self.update_state(|s| {
            if kept.is_empty() {
                s.unbound.remove(&cap);
            } else {
                s.unbound.insert(cap, kept);
            }
        })?;
        refused_if(cap, &errors)
    }

    fn set_radio(&self, cap: Capability, t: RadioType, block: bool) -> Result<(), HardwareError> {
        if block {
            // Recorded first (a crash after the write still lets `Allow` undo it), and
            // only when the agent changes something: a type the person already has
            // switched off is not the agent's to switch back on.
            // Soft-blocked by the person (a hard block is a switch that may go back
            // on, and the agent's soft block would then stay behind).
            let already_off = rfkill::list(&self.roots.sys).is_ok_and(|radios| {
                let mut of_type = radios.iter().filter(|r| r.radio_type == Some(t)).peekable();
                of_type.peek().is_some() && of_type.all(|r| r.soft)
            });
            self.update_state(|s| {
                if !already_off {
                    s.blocked_radios.insert(cap);
                }
            })?;
        } else if !self.load_state()?.blocked_radios.contains(&cap) {
            return Ok(());
        }
        let dev = self.roots.rfkill_dev();
        rfkill::set_all(&dev, t, block).map_err(|e| {
            if dev.exists() {
                refused(cap, e)
            } else {
                unavailable(e)
            }
        })?;
        if !block {
            self.update_state(|s| {
                s.blocked_radios.remove(&cap);
            })?;
        }
        Ok(())
    }

    fn set_cellular(&self, block: bool) -> Result<(), HardwareError> {
        let radio = self.set_radio(Capability::CellularData, RadioType::Wwan, block);
        let table = if block {
            let named = wwan_interfaces(&self.roots).unwrap_or_default();
            self.load_rules("cellular_data", &netfilter::cellular_ruleset(&named))
        } else {
            self.load_rules("cellular_data", &netfilter::open_cellular_ruleset())
        };
        // Either way of cutting mobile data is enough; verify decides what holds.
        match (radio, table) {
            (Ok(()), _) | (_, Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(refused("cellular_data", format!("{a}; {b}"))),
        }
    }
}

/// The addresses the reach table lets through: the IP literals among the bundle's
/// organization endpoints. A host name is never looked up — the phone's resolver is
/// whatever network it is on (a hostile hotspot answers with its own addresses), so
/// only addresses the server signed into the bundle open the table.
pub fn reach_addresses(endpoints: &[String]) -> Vec<IpAddr> {
    let addrs: BTreeSet<IpAddr> = endpoints
        .iter()
        .filter_map(|e| {
            e.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
        .collect();
    addrs.into_iter().collect()
}

/// Why running `nft` failed.
#[derive(Debug, thiserror::Error)]
enum NftError {
    /// `nft` could not be started (not installed, no permission).
    #[error("{0}")]
    NotRunnable(String),
    /// The table asked for is not loaded.
    #[error("the table is not loaded")]
    NoTable,
    /// `nft` ran and refused.
    #[error("{0}")]
    Failed(String),
}

impl Hardware for LinuxHardware {
    fn kind(&self) -> HardwareKind {
        HardwareKind::Linux
    }

    fn inventory(&self, state_dir: &Path) -> redoubt_proto::Inventory {
        crate::inventory::collect(&self.roots, state_dir, HardwareKind::Linux)
    }

    fn enforce(&mut self, cap: Capability, rule: Rule) -> Result<(), HardwareError> {
        let deny = rule == Rule::Deny;
        match cap {
            Capability::CellularData => self.set_cellular(deny),
            Capability::Camera | Capability::Microphone => {
                if deny {
                    self.unbind_all(cap)
                } else {
                    self.rebind_all(cap)
                }
            }
            Capability::UsbData | Capability::Screenshots => {
                if deny {
                    Err(unavailable(format!(
                        "{cap} cannot be switched off through kernel interfaces"
                    )))
                } else {
                    Ok(())
                }
            }
            other => match radio_of(other) {
                Some(t) => self.set_radio(other, t, deny),
                None => Err(unavailable(format!("{other} has no kernel switch"))),
            },
        }
    }

    fn verify(&self, cap: Capability) -> CapabilityState {
        let r = &self.roots;
        match cap {
            Capability::Camera => media::camera_state(&r.sys, &r.proc, &r.dev),
            Capability::Microphone => media::microphone_state(&r.proc),
            Capability::CellularData => match rfkill::state(&r.sys, RadioType::Wwan) {
                CapabilityState::Off => CapabilityState::Off,
                _ if self.cellular_dropped() => CapabilityState::Off,
                measured => measured,
            },
            Capability::UsbData | Capability::Screenshots => CapabilityState::Unknown,
            other => match radio_of(other) {
                Some(t) => rfkill::state(&r.sys, t),
                None => CapabilityState::Unknown,
            },
        }
    }

    fn enforce_network(
        &mut self,
        reach: NetworkReach,
        endpoints: &[String],
    ) -> Result<(), HardwareError> {
        match reach {
            NetworkReach::Open => {
                self.load_rules("network", &netfilter::open_ruleset())?;
                self.update_state(|s| {
                    s.reach_allowed.clear();
                    s.reach_endpoints.clear();
                    s.reach_resolved_at = 0;
                })
            }
            NetworkReach::OrganizationOnly => {
                let allowed = reach_addresses(endpoints);
                // The table is recorded first: verify then never accepts an address the
                // loaded table does not hold, and never misses one it does.
                self.update_state(|s| {
                    s.reach_allowed = allowed.clone();
                    s.reach_endpoints = endpoints.to_vec();
                })?;
                self.load_rules("network", &netfilter::reach_ruleset(&allowed))?;
                if allowed.is_empty() {
                    // Closed is the safe side, but the phone cannot reach its server now.
                    Err(refused(
                        "network",
                        "the bundle names no organization address; everything but loopback is cut",
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn verify_network(&self) -> NetworkState {
        let Ok(state) = self.load_state() else {
            return NetworkState::Unknown;
        };
        match self.read_table(REACH_TABLE) {
            Ok(None) => NetworkState::Open,
            Ok(Some(json)) => match netfilter::parse_listing(&json) {
                Ok(loaded) => netfilter::measured_reach(&loaded, &state.reach_allowed),
                Err(_) => NetworkState::Unknown,
            },
            Err(_) => NetworkState::Unknown,
        }
    }

    fn watch(&self, wake: Wake) -> Result<bool, HardwareError> {
        watch::start(&self.roots, wake)
    }
}

#[cfg(test)]
mod tests;
