//! Compliance evaluation: does a report show the effective mode of the newest bundle?

use redoubt_proto::{
    Capability, CapabilityState, ComplianceReport, NetworkReach, NetworkState, Rule,
};

use crate::modes::Effective;

/// Compares a report with what the server expects. Returns the reasons the device is
/// not compliant; an empty list means compliant.
///
/// A denied capability must be measured `off` (`unknown` does not count); an
/// `organization-only` network must be measured so; the report must be for the newest
/// bundle and name the expected effective mode.
pub fn evaluate(
    expected: &Effective,
    expected_bundle_version: u64,
    report: &ComplianceReport,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if report.bundle_version != expected_bundle_version {
        reasons.push(format!(
            "reported bundle version {} but the newest is {}",
            report.bundle_version, expected_bundle_version
        ));
    }
    if report.effective_mode != expected.name {
        reasons.push(format!(
            "reported mode {} but the effective mode is {}",
            report.effective_mode, expected.name
        ));
    }
    if let Some(reason) = &report.fallback_reason {
        reasons.push(format!("agent fell back: {reason}"));
    }
    for cap in Capability::ALL {
        if expected.capabilities.get(cap) == Rule::Deny {
            match report
                .capabilities
                .get(&cap)
                .copied()
                .unwrap_or(CapabilityState::Unknown)
            {
                CapabilityState::Off => {}
                state => reasons.push(format!("{cap} must be off but is {state}")),
            }
        }
    }
    if expected.network == NetworkReach::OrganizationOnly
        && report.network != NetworkState::OrganizationOnly
    {
        reasons.push(format!(
            "network must be organization-only but is {}",
            report.network
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::{effective, preset};
    use redoubt_proto::{DeviceId, HardwareKind, Timestamp};

    fn report(
        mode: &str,
        version: u64,
        camera: CapabilityState,
        network: NetworkState,
    ) -> ComplianceReport {
        let mut caps: std::collections::BTreeMap<_, _> = Capability::ALL
            .into_iter()
            .map(|c| (c, CapabilityState::Off))
            .collect();
        caps.insert(Capability::Camera, camera);
        ComplianceReport {
            device_id: DeviceId::from_random([1; 12]),
            seq: 1,
            bundle_version: version,
            effective_mode: mode.into(),
            capabilities: caps,
            network,
            hardware: HardwareKind::Sim,
            observed_at: Timestamp(0),
            fallback_reason: None,
            zones: Vec::new(),
            locked_by: None,
            commands_done: Vec::new(),
            events: Vec::new(),
        }
    }

    fn check(r: ComplianceReport, expect_reasons: usize) {
        let secure = effective(&[preset("secure-site").unwrap()]);
        let reasons = evaluate(&secure, 3, &r);
        assert_eq!(reasons.len(), expect_reasons, "{reasons:?}");
    }

    #[test]
    fn matching_report_is_compliant() {
        check(
            report(
                "secure-site",
                3,
                CapabilityState::Off,
                NetworkState::OrganizationOnly,
            ),
            0,
        );
    }

    #[test]
    fn mismatches_are_named() {
        check(
            report(
                "secure-site",
                3,
                CapabilityState::On,
                NetworkState::OrganizationOnly,
            ),
            1,
        );
        check(
            report(
                "secure-site",
                3,
                CapabilityState::Unknown,
                NetworkState::OrganizationOnly,
            ),
            1,
        );
        check(
            report(
                "secure-site",
                3,
                CapabilityState::Off,
                NetworkState::Unknown,
            ),
            1,
        );
        check(
            report(
                "standard",
                2,
                CapabilityState::Off,
                NetworkState::OrganizationOnly,
            ),
            2,
        );
    }
}
