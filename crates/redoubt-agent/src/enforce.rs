//! Applying an effective mode through a [`Hardware`] backend, measuring what the
//! hardware really does, and building the compliance report from that measurement.
//!
//! Enforcement and measurement are separate on purpose: a report is built only from
//! what [`measure`] read back, whatever the enforce calls answered.

use std::collections::BTreeMap;

use redoubt_policy::{Decision, Effective};
use redoubt_proto::{
    Capability, CapabilityState, ComplianceReport, DeviceId, NetworkReach, NetworkState, Rule,
    Timestamp,
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
pub enum Scope {
    /// Every rule: denied capabilities off, allowed ones on, the network reach.
    /// Used when a mode starts to hold (start-up, new bundle, fallback).
    Full,
    /// Only the restrictions: denied capabilities off and an organization-only
    /// network. Used to repair drift without undoing what the user switched off.
    Restrictions,
}

/// Asks the hardware to enforce `mode`. Returns the errors the backend gave (the
/// caller logs them); success or failure, only [`measure`] says what holds.
pub fn apply(
    hw: &mut dyn Hardware,
    mode: &Effective,
    endpoints: &[String],
    scope: Scope,
) -> Vec<String> {
    let mut errors = Vec::new();
    for cap in Capability::ALL {
        let rule = mode.capabilities.get(cap);
        if scope == Scope::Restrictions && rule == Rule::Allow {
            continue;
        }
        if let Err(e) = hw.enforce(cap, rule) {
            errors.push(format!("{cap}: {e}"));
        }
    }
    if (scope == Scope::Full || mode.network == NetworkReach::OrganizationOnly)
        && let Err(e) = hw.enforce_network(mode.network, endpoints)
    {
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

/// The compliance report for a measurement taken under `decision`.
pub fn build_report(
    device_id: &DeviceId,
    seq: u64,
    decision: &Decision,
    m: &Measurement,
    hardware: redoubt_proto::HardwareKind,
    observed_at: Timestamp,
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
        zones: Vec::new(),
        locked_by: None,
        commands_done: Vec::new(),
        events: Vec::new(),
    }
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
        apply(&mut hw, &secure_site(), &[], Scope::Restrictions);
        let m = measure(&hw);
        assert_eq!(m.capabilities[&Capability::Camera], CapabilityState::Off);
        assert_eq!(m.capabilities[&Capability::Wifi], CapabilityState::Off);
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
