//! Applying an effective mode through a [`Hardware`] backend, measuring what the
//! hardware really does, and building the compliance report from that measurement.
//!
//! Enforcement and measurement are separate on purpose: a report is built only from
//! what [`measure`] read back, whatever the enforce calls answered.

use std::collections::BTreeMap;

use redoubt_policy::{Decision, Effective};
use redoubt_proto::{
    Capability, CapabilityState, CommandId, ComplianceReport, DeviceEvent, DeviceId, NetworkReach,
    NetworkState, Rule, Timestamp,
};

use crate::hardware::Hardware;

/// What the hardware reported when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Every capability.
    pub capabilities: BTreeMap<Capability, CapabilityState>,
    /// Network reach.
    pub network: NetworkState,
}

/// Reads every capability and the network reach back from the hardware.
pub fn measure(hw: &dyn Hardware) -> Measurement {
    Measurement {
        capabilities: hw.verify_all(),
        network: hw.verify_network(),
    }
}

/// How much of a mode to (re-)apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every rule: denied capabilities off, allowed ones on, the network reach.
    /// Used when a mode starts to hold (start-up, new bundle, fallback).
    Full,
    /// Only the restrictions this measurement shows are not in force: denied
    /// capabilities not measured `off`, and an organization-only network not measured
    /// so. Used to repair drift without undoing what the user switched off, and
    /// without rewriting what holds (on real hardware a rewrite is itself a change
    /// the watcher sees).
    Repair(&'a Measurement),
}

/// Asks the hardware to enforce `mode`. Returns the errors the backend gave (the
/// caller logs them); success or failure, only [`measure`] says what holds.
pub fn apply(
    hw: &mut dyn Hardware,
    mode: &Effective,
    endpoints: &[String],
    scope: Scope<'_>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for cap in Capability::ALL {
        let rule = mode.capabilities.get(cap);
        if let Scope::Repair(m) = scope
            && (rule == Rule::Allow
                || m.capabilities.get(&cap).copied() == Some(CapabilityState::Off))
        {
            continue;
        }
        if let Err(e) = hw.enforce(cap, rule) {
            errors.push(format!("{cap}: {e}"));
        }
    }
    let network = match scope {
        Scope::Full => true,
        Scope::Repair(m) => {
            mode.network == NetworkReach::OrganizationOnly
                && m.network != NetworkState::OrganizationOnly
        }
    };
    if network && let Err(e) = hw.enforce_network(mode.network, endpoints) {
        errors.push(format!("network: {e}"));
    }
    errors
}

/// The restrictions of `mode` that the measurement shows are not in force. A denied
/// capability counts only when measured `off`; `unknown` is a violation.
pub fn violations(mode: &Effective, m: &Measurement) -> Vec<String> {
    let mut out = Vec::new();
    for cap in Capability::ALL {
        if mode.capabilities.get(cap) == Rule::Deny {
            let state = m
                .capabilities
                .get(&cap)
                .copied()
                .unwrap_or(CapabilityState::Unknown);
            if state != CapabilityState::Off {
                out.push(format!("{cap} must be off but is {state}"));
            }
        }
    }
    if mode.network == NetworkReach::OrganizationOnly && m.network != NetworkState::OrganizationOnly
    {
        out.push(format!(
            "network must be organization-only but is {}",
            m.network
        ));
    }
    out
}

/// What a report carries besides the measurement: the commands done recently, the
/// events since the previous report, the time floor and the phone's inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportExtras {
    /// Ids of the commands carried out recently, oldest first.
    pub commands_done: Vec<CommandId>,
    /// Events not reported yet, oldest first.
    pub events: Vec<DeviceEvent>,
    /// The trusted time floor.
    pub trusted_floor: Option<Timestamp>,
    /// The wall clock is behind the floor.
    pub clock_tampered: bool,
    /// What the phone is (model, system, storage, battery), read for this report.
    pub inventory: Option<redoubt_proto::Inventory>,
}

/// The compliance report for a measurement taken under `decision`: the zones it names
/// and the lock in force come from the decision, so the server judges the report by
/// the same zones the agent enforced.
pub fn build_report(
    device_id: &DeviceId,
    seq: u64,
    decision: &Decision,
    m: &Measurement,
    hardware: redoubt_proto::HardwareKind,
    observed_at: Timestamp,
    extras: ReportExtras,
) -> ComplianceReport {
    ComplianceReport {
        device_id: device_id.clone(),
        seq,
        bundle_version: decision.bundle_version,
        effective_mode: decision.mode.name.clone(),
        capabilities: m.capabilities.clone(),
        network: m.network,
        hardware,
        observed_at,
        fallback_reason: decision.fallback_reason.clone(),
        zones: decision.zones.clone(),
        locked_by: decision.locked_by.clone(),
        commands_done: extras.commands_done,
        events: readable_events(extras.events),
        trusted_floor: extras.trusted_floor,
        clock_tampered: extras.clock_tampered,
        inventory: extras.inventory,
    }
}

/// The events whose wire form reads back as what was written. A report the server
/// cannot read would be refused as a whole, so an event that does not survive the
/// round trip is left out (and logged) rather than sinking the report. Today this
/// catches the command events: `DeviceEvent` flattens its kind next to its own `id`,
/// and `command-done`, `command-refused` and `zone-out` via a command carry an `id`
/// of their own, so the JSON holds the key twice.
pub fn readable_events(events: Vec<DeviceEvent>) -> Vec<DeviceEvent> {
    events
        .into_iter()
        .filter(|e| {
            let back = serde_json::to_vec(e)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<DeviceEvent>(&bytes).ok());
            let ok = back.as_ref() == Some(e);
            if !ok {
                tracing::warn!(
                    event_id = %e.id,
                    "an event cannot be encoded so that the server reads it back; it is left out of the report"
                );
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::sim::{SimChange, SimHardware, Switch};
    use redoubt_policy::{effective, preset};

    fn secure_site() -> Effective {
        effective(&[preset("secure-site").unwrap()])
    }

    #[test]
    fn applying_secure_site_turns_off_what_it_denies() {
        let tmp = tempfile::tempdir().unwrap();
        let mut hw = SimHardware::new(tmp.path());
        hw.reset().unwrap();
        assert!(apply(&mut hw, &secure_site(), &[], Scope::Full).is_empty());
        let m = measure(&hw);
        assert_eq!(violations(&secure_site(), &m), Vec::<String>::new());
        assert_eq!(m.capabilities[&Capability::Camera], CapabilityState::Off);
        assert_eq!(m.capabilities[&Capability::Wifi], CapabilityState::On);
        assert_eq!(m.network, NetworkState::OrganizationOnly);
    }

    #[test]
    fn repairing_restrictions_leaves_what_the_user_switched_off() {
        let tmp = tempfile::tempdir().unwrap();
        let mut hw = SimHardware::new(tmp.path());
        hw.reset().unwrap();
        apply(&mut hw, &secure_site(), &[], Scope::Full);
        hw.set(SimChange::Capability(Capability::Wifi, Switch::Off), false)
            .unwrap();
        hw.set(SimChange::Capability(Capability::Camera, Switch::On), false)
            .unwrap();
        assert_eq!(
            violations(&secure_site(), &measure(&hw)),
            vec!["camera must be off but is on"]
        );
        let drifted = measure(&hw);
        apply(&mut hw, &secure_site(), &[], Scope::Repair(&drifted));
        let m = measure(&hw);
        assert_eq!(m.capabilities[&Capability::Camera], CapabilityState::Off);
        assert_eq!(m.capabilities[&Capability::Wifi], CapabilityState::Off);
    }

    /// Records the enforce calls it passes on.
    struct Recording {
        inner: SimHardware,
        calls: Vec<(Capability, Rule)>,
        network_calls: usize,
    }

    impl Hardware for Recording {
        fn kind(&self) -> redoubt_proto::HardwareKind {
            self.inner.kind()
        }
        fn enforce(
            &mut self,
            cap: Capability,
            rule: Rule,
        ) -> Result<(), crate::hardware::HardwareError> {
            self.calls.push((cap, rule));
            self.inner.enforce(cap, rule)
        }
        fn verify(&self, cap: Capability) -> CapabilityState {
            self.inner.verify(cap)
        }
        fn enforce_network(
            &mut self,
            reach: NetworkReach,
            endpoints: &[String],
        ) -> Result<(), crate::hardware::HardwareError> {
            self.network_calls += 1;
            self.inner.enforce_network(reach, endpoints)
        }
        fn verify_network(&self) -> NetworkState {
            self.inner.verify_network()
        }
        fn inventory(&self, state_dir: &std::path::Path) -> redoubt_proto::Inventory {
            self.inner.inventory(state_dir)
        }
    }

    #[test]
    fn a_repair_rewrites_only_what_is_not_in_force() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = SimHardware::new(tmp.path());
        inner.reset().unwrap();
        let mut hw = Recording {
            inner,
            calls: Vec::new(),
            network_calls: 0,
        };
        apply(&mut hw, &secure_site(), &[], Scope::Full);
        assert_eq!(hw.calls.len(), Capability::ALL.len());
        assert_eq!(hw.network_calls, 1);
        hw.calls.clear();
        hw.network_calls = 0;

        // Everything holds: a repair writes nothing (on real hardware a rewrite is a
        // change the watcher would see, and wake the agent again).
        let m = measure(&hw);
        apply(&mut hw, &secure_site(), &[], Scope::Repair(&m));
        assert_eq!(hw.calls, Vec::new());
        assert_eq!(hw.network_calls, 0);

        // The camera drifted on: only the camera is rewritten.
        hw.inner
            .set(SimChange::Capability(Capability::Camera, Switch::On), false)
            .unwrap();
        let m = measure(&hw);
        apply(&mut hw, &secure_site(), &[], Scope::Repair(&m));
        assert_eq!(hw.calls, vec![(Capability::Camera, Rule::Deny)]);
        assert_eq!(hw.network_calls, 0);
    }

    #[test]
    fn reports_keep_only_events_that_read_back() {
        use redoubt_proto::{DeviceEventKind, Evidence};
        let zone_in = DeviceEvent {
            id: "01".into(),
            at: Timestamp(1),
            kind: DeviceEventKind::ZoneIn {
                zone: "lab".parse().unwrap(),
                evidence: Evidence::Wifi {
                    bssid: "02:00:00:00:00:01".parse().unwrap(),
                },
            },
        };
        let refused = DeviceEvent {
            id: "02".into(),
            at: Timestamp(2),
            kind: DeviceEventKind::CodeRefused {
                reason: "forged".into(),
            },
        };
        let done = DeviceEvent {
            id: "03".into(),
            at: Timestamp(3),
            kind: DeviceEventKind::CommandDone {
                command: CommandId::from_random([1; 12]),
                action: "lock".into(),
            },
        };
        let all = vec![zone_in.clone(), refused.clone(), done.clone()];
        let kept = readable_events(all);
        // Whatever is kept reads back exactly; zone and code events always are.
        assert!(kept.starts_with(&[zone_in, refused]));
        for e in &kept {
            let bytes = serde_json::to_vec(e).unwrap();
            assert_eq!(&serde_json::from_slice::<DeviceEvent>(&bytes).unwrap(), e);
        }
        let done_reads_back = serde_json::to_vec(&done)
            .ok()
            .and_then(|b| serde_json::from_slice::<DeviceEvent>(&b).ok())
            .is_some();
        assert_eq!(kept.len(), if done_reads_back { 3 } else { 2 });
    }

    #[test]
    fn unknown_is_a_violation() {
        let tmp = tempfile::tempdir().unwrap();
        let hw = SimHardware::new(tmp.path());
        let v = violations(&secure_site(), &measure(&hw));
        assert_eq!(v.len(), 7, "{v:?}");
        assert!(v[0].contains("unknown"));
    }
}
