//! The SIMULATED hardware backend: a phone whose switches live in
//! `sim-hardware.json` in the state directory.
//!
//! `redoubt-agent sim set` changes the file behind the agent's back, the way a user
//! or a malicious app would change a real phone. A capability marked `stuck` models a
//! driver that answers "done" and changes nothing, so the agent's read-back is
//! exercised. A missing or corrupt file reads as `unknown`, never `off`.
//! `redoubt-agent sim wifi` sets the Wi-Fi access points the phone "sees".

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redoubt_proto::{
    Bssid, Capability, CapabilityState, HardwareKind, NetworkReach, NetworkState, Rule,
};
use serde::{Deserialize, Serialize};

use super::{Hardware, HardwareError};
use crate::state::write_atomic;

/// File name of the simulated hardware in the state directory.
pub const SIM_FILE: &str = "sim-hardware.json";
/// File name of the simulator's own lock in the state directory.
pub const SIM_LOCK_FILE: &str = "sim-hardware.lock";

/// A simulated switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    /// Switched on.
    On,
    /// Switched off.
    Off,
}

impl Switch {
    fn measured(self) -> CapabilityState {
        match self {
            Switch::On => CapabilityState::On,
            Switch::Off => CapabilityState::Off,
        }
    }
}

/// The content of `sim-hardware.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimState {
    /// Always true: this is not a real phone.
    pub simulated: bool,
    /// Each capability's switch; a capability that is absent reads as `unknown`.
    pub capabilities: BTreeMap<Capability, Switch>,
    /// Network reach.
    pub network: NetworkReach,
    /// The endpoints the agent allowed when it restricted the network.
    #[serde(default)]
    pub allowed_endpoints: Vec<String>,
    /// Capabilities whose simulated driver accepts enforce calls and changes nothing.
    #[serde(default)]
    pub stuck: BTreeSet<Capability>,
    /// The Wi-Fi access points the simulated phone sees.
    #[serde(default)]
    pub visible_bssids: Vec<Bssid>,
}

impl SimState {
    /// A fresh phone: every capability on, network open.
    pub fn fresh() -> Self {
        SimState {
            simulated: true,
            capabilities: Capability::ALL
                .into_iter()
                .map(|c| (c, Switch::On))
                .collect(),
            network: NetworkReach::Open,
            allowed_endpoints: Vec::new(),
            stuck: BTreeSet::new(),
            visible_bssids: Vec::new(),
        }
    }
}

/// A change made behind the agent's back with `sim set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimChange {
    /// Switch a capability.
    Capability(Capability, Switch),
    /// Change network reach.
    Network(NetworkReach),
}

impl SimChange {
    /// Parses `sim set` arguments: `CAPABILITY on|off` or `network open|organization-only`.
    pub fn parse(target: &str, value: &str) -> Result<Self, String> {
        if target == "network" {
            return match value {
                "open" => Ok(SimChange::Network(NetworkReach::Open)),
                "organization-only" => Ok(SimChange::Network(NetworkReach::OrganizationOnly)),
                other => Err(format!(
                    "network must be `open` or `organization-only`, not {other:?}"
                )),
            };
        }
        let cap: Capability = target.parse().map_err(|e| format!("{e} (or `network`)"))?;
        let switch = match value {
            "on" => Switch::On,
            "off" => Switch::Off,
            other => return Err(format!("{cap} must be set `on` or `off`, not {other:?}")),
        };
        Ok(SimChange::Capability(cap, switch))
    }
}

/// The simulated backend for one state directory.
#[derive(Debug, Clone)]
pub struct SimHardware {
    path: PathBuf,
    lock_path: PathBuf,
}

impl SimHardware {
    /// The simulated phone of the state directory `dir`.
    pub fn new(dir: &Path) -> Self {
        SimHardware {
            path: dir.join(SIM_FILE),
            lock_path: dir.join(SIM_LOCK_FILE),
        }
    }

    /// The file holding the simulated state.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the simulated state.
    pub fn read(&self) -> Result<SimState, HardwareError> {
        let text = fs::read_to_string(&self.path).map_err(|e| {
            HardwareError::Unavailable(if e.kind() == io::ErrorKind::NotFound {
                format!("simulated hardware file {} is missing", self.path.display())
            } else {
                format!("cannot read {}: {e}", self.path.display())
            })
        })?;
        serde_json::from_str(&text).map_err(|e| {
            HardwareError::Unavailable(format!(
                "simulated hardware file {} is corrupt: {e}",
                self.path.display()
            ))
        })
    }

    fn write(&self, state: &SimState) -> Result<(), HardwareError> {
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| {
            HardwareError::Unavailable(format!("cannot encode simulated state: {e}"))
        })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, 0o600).map_err(|e| {
            HardwareError::Unavailable(format!("cannot write {}: {e}", self.path.display()))
        })
    }

    /// Runs a read-modify-write of the file under the simulator's lock, so `sim set`
    /// and a running agent do not lose each other's changes.
    fn update(&self, f: impl FnOnce(&mut SimState)) -> Result<(), HardwareError> {
        let lock = self.lock()?;
        let mut state = self.read()?;
        f(&mut state);
        let result = self.write(&state);
        drop(lock);
        result
    }

    fn lock(&self) -> Result<File, HardwareError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| {
                HardwareError::Unavailable(format!("cannot open {}: {e}", self.lock_path.display()))
            })?;
        file.lock().map_err(|e| {
            HardwareError::Unavailable(format!("cannot lock {}: {e}", self.lock_path.display()))
        })?;
        Ok(file)
    }

    /// Puts a fresh phone in place: every capability on, network open, nothing stuck.
    pub fn reset(&self) -> Result<(), HardwareError> {
        let lock = self.lock()?;
        let result = self.write(&SimState::fresh());
        drop(lock);
        result
    }

    /// Changes the simulated phone behind the agent's back. With `stuck`, the
    /// capability's simulated driver then ignores the agent (it says "done" and
    /// changes nothing); without it, the driver works again.
    pub fn set(&self, change: SimChange, stuck: bool) -> Result<(), HardwareError> {
        self.update(|s| match change {
            SimChange::Capability(cap, switch) => {
                s.capabilities.insert(cap, switch);
                if stuck {
                    s.stuck.insert(cap);
                } else {
                    s.stuck.remove(&cap);
                }
            }
            SimChange::Network(reach) => s.network = reach,
        })
    }
}

impl SimHardware {
    /// Sets the Wi-Fi access points the simulated phone sees (none: an empty list).
    pub fn set_visible(&self, bssids: &[Bssid]) -> Result<(), HardwareError> {
        let mut list = bssids.to_vec();
        list.sort();
        list.dedup();
        self.update(|s| s.visible_bssids = list)
    }
}

impl Hardware for SimHardware {
    fn kind(&self) -> HardwareKind {
        HardwareKind::Sim
    }

    fn inventory(&self, state_dir: &Path) -> redoubt_proto::Inventory {
        crate::inventory::simulated(&super::linux::Roots::system(), state_dir)
    }

    fn enforce(&mut self, cap: Capability, rule: Rule) -> Result<(), HardwareError> {
        let want = match rule {
            Rule::Allow => Switch::On,
            Rule::Deny => Switch::Off,
        };
        self.update(|s| {
            // A stuck driver reports success and does nothing: only verify can tell.
            if !s.stuck.contains(&cap) {
                s.capabilities.insert(cap, want);
            }
        })
    }

    fn verify(&self, cap: Capability) -> CapabilityState {
        match self.read() {
            Ok(s) => s
                .capabilities
                .get(&cap)
                .map_or(CapabilityState::Unknown, |sw| sw.measured()),
            Err(_) => CapabilityState::Unknown,
        }
    }

    fn enforce_network(
        &mut self,
        reach: NetworkReach,
        endpoints: &[String],
    ) -> Result<(), HardwareError> {
        self.update(|s| {
            s.network = reach;
            s.allowed_endpoints = match reach {
                NetworkReach::Open => Vec::new(),
                NetworkReach::OrganizationOnly => endpoints.to_vec(),
            };
        })
    }

    fn visible_bssids(&self) -> Result<Vec<Bssid>, HardwareError> {
        self.read().map(|s| s.visible_bssids)
    }

    fn verify_network(&self) -> NetworkState {
        match self.read() {
            Ok(s) => match s.network {
                NetworkReach::Open => NetworkState::Open,
                NetworkReach::OrganizationOnly => NetworkState::OrganizationOnly,
            },
            Err(_) => NetworkState::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> (tempfile::TempDir, SimHardware) {
        let tmp = tempfile::tempdir().unwrap();
        let hw = SimHardware::new(tmp.path());
        (tmp, hw)
    }

    #[test]
    fn missing_file_reads_unknown_and_refuses_enforcement() {
        let (_tmp, mut hw) = sim();
        for c in Capability::ALL {
            assert_eq!(hw.verify(c), CapabilityState::Unknown);
        }
        assert_eq!(hw.verify_network(), NetworkState::Unknown);
        assert!(matches!(
            hw.enforce(Capability::Camera, Rule::Deny),
            Err(HardwareError::Unavailable(_))
        ));
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::Unknown);
    }

    #[test]
    fn corrupt_file_reads_unknown() {
        let (_tmp, hw) = sim();
        fs::write(hw.path(), b"{\"simulated\": tr").unwrap();
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::Unknown);
        assert_eq!(hw.verify_network(), NetworkState::Unknown);
    }

    #[test]
    fn a_fresh_phone_is_all_on_and_obeys() {
        let (_tmp, mut hw) = sim();
        hw.reset().unwrap();
        assert!(hw.verify_all().values().all(|s| *s == CapabilityState::On));
        assert_eq!(hw.verify_network(), NetworkState::Open);
        hw.enforce(Capability::Camera, Rule::Deny).unwrap();
        hw.enforce_network(NetworkReach::OrganizationOnly, &["redoubt.example".into()])
            .unwrap();
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::Off);
        assert_eq!(hw.verify(Capability::Microphone), CapabilityState::On);
        assert_eq!(hw.verify_network(), NetworkState::OrganizationOnly);
        assert_eq!(
            hw.read().unwrap().allowed_endpoints,
            vec!["redoubt.example".to_owned()]
        );
    }

    #[test]
    fn a_stuck_driver_says_done_and_changes_nothing() {
        let (_tmp, mut hw) = sim();
        hw.reset().unwrap();
        hw.set(SimChange::Capability(Capability::Camera, Switch::On), true)
            .unwrap();
        assert_eq!(hw.enforce(Capability::Camera, Rule::Deny), Ok(()));
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::On);
        hw.set(SimChange::Capability(Capability::Camera, Switch::On), false)
            .unwrap();
        hw.enforce(Capability::Camera, Rule::Deny).unwrap();
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::Off);
    }

    #[test]
    fn a_capability_missing_from_the_file_is_unknown() {
        let (_tmp, hw) = sim();
        let mut s = SimState::fresh();
        s.capabilities.remove(&Capability::Nfc);
        fs::write(hw.path(), serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(hw.verify(Capability::Nfc), CapabilityState::Unknown);
        assert_eq!(hw.verify(Capability::Camera), CapabilityState::On);
    }

    #[test]
    fn visible_access_points_are_set_and_read_back() {
        let (_tmp, hw) = sim();
        assert!(
            hw.visible_bssids().is_err(),
            "no file: the scan cannot be read"
        );
        hw.reset().unwrap();
        assert_eq!(hw.visible_bssids(), Ok(vec![]));
        let a: Bssid = "02:00:00:00:00:02".parse().unwrap();
        let b: Bssid = "02:00:00:00:00:01".parse().unwrap();
        hw.set_visible(&[a.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(hw.visible_bssids(), Ok(vec![b, a]));
        hw.set_visible(&[]).unwrap();
        assert_eq!(hw.visible_bssids(), Ok(vec![]));
    }

    #[test]
    fn sim_set_arguments_parse() {
        assert_eq!(
            SimChange::parse("camera", "on"),
            Ok(SimChange::Capability(Capability::Camera, Switch::On))
        );
        assert_eq!(
            SimChange::parse("network", "organization-only"),
            Ok(SimChange::Network(NetworkReach::OrganizationOnly))
        );
        assert!(SimChange::parse("camera", "maybe").is_err());
        assert!(
            SimChange::parse("toaster", "on")
                .unwrap_err()
                .contains("network")
        );
        assert!(SimChange::parse("network", "closed").is_err());
    }
}
