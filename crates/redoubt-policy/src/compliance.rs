//! Compliance evaluation: does a report show the effective mode of the newest bundle,
//! given the zones it says the phone is inside and the lock it names?

use redoubt_proto::{
    Capability, CapabilityState, ComplianceReport, NetworkReach, NetworkState, PolicyBundle, Rule,
    Timestamp,
};

use crate::modes::Effective;
use crate::zones::expected_mode;

/// Judges a report against the newest bundle. What is expected is [`expected_mode`]:
/// the base mode, the mode of every zone the report says the phone is inside
/// (`lockdown` for a zone the bundle does not list) and `lockdown` under a lock. Returns
/// the reasons the device is not compliant; an empty list means compliant.
pub fn evaluate(bundle: &PolicyBundle, report: &ComplianceReport, now: Timestamp) -> Vec<String> {
    let expected = expected_mode(bundle, report, now);
    evaluate_against(&expected, bundle.version, report)
}

/// Compares a report with an effective mode already decided. Returns the reasons the
/// device is not compliant; an empty list means compliant.
///
/// A denied capability must be measured `off` (`unknown` does not count); an
/// `organization-only` network must be measured so; the report must be for the newest
/// bundle and name the expected effective mode; a phone whose wall clock was set back
/// behind its trusted time floor is not compliant either (the report says so).
pub fn evaluate_against(
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
    if report.clock_tampered {
        let floor = report
            .trusted_floor
            .map_or_else(|| "unknown".to_owned(), |f| f.to_string());
        reasons.push(format!(
            "the phone's clock ({}) is behind the time it knows has passed ({floor}): it was set back; check-out codes are refused until it is right",
            report.observed_at
        ));
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
    use crate::modes::{effective, preset, presets};
    use redoubt_proto::{
        Assignments, CheckpointKey, CommandId, DeviceId, HardwareKind, ZonePolicy,
    };

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
            trusted_floor: None,
            clock_tampered: false,
            inventory: None,
        }
    }

    fn check(r: ComplianceReport, expect_reasons: usize) {
        let secure = effective(&[preset("secure-site").unwrap()]);
        let reasons = evaluate_against(&secure, 3, &r);
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

    fn zoned_bundle(base: &str) -> PolicyBundle {
        PolicyBundle {
            device_id: DeviceId::from_random([1; 12]),
            version: 3,
            issued_at: Timestamp(0),
            expires_at: Timestamp(1_000),
            modes: presets(),
            assignments: Assignments {
                base_mode: base.parse().unwrap(),
                group_modes: Vec::new(),
            },
            check_in_interval_secs: 60,
            organization_endpoints: vec![],
            servers: Vec::new(),
            zones: vec![ZonePolicy {
                name: "lab".parse().unwrap(),
                mode: "secure-site".parse().unwrap(),
                checkpoints: vec![CheckpointKey {
                    name: "north-gate".parse().unwrap(),
                    public_key: String::new(),
                }],
                wifi_bssids: vec![],
            }],
        }
    }

    #[test]
    fn a_report_is_judged_by_its_own_zones_and_lock() {
        let b = zoned_bundle("standard");
        let now = Timestamp(500);
        let secure = |zones: &[&str]| {
            let mut r = report(
                "secure-site",
                3,
                CapabilityState::Off,
                NetworkState::OrganizationOnly,
            );
            r.zones = zones.iter().map(|z| z.parse().unwrap()).collect();
            r
        };
        // Inside lab: secure-site is what holds.
        assert_eq!(evaluate(&b, &secure(&["lab"]), now), Vec::<String>::new());
        assert_eq!(
            expected_mode(&b, &secure(&["lab"]), now).name,
            "secure-site"
        );
        // Outside every zone, secure-site is not the effective mode (standard is).
        assert_eq!(evaluate(&b, &secure(&[]), now).len(), 1);
        // Inside lab but claiming standard: fewer restrictions than required.
        let mut loose = report("standard", 3, CapabilityState::On, NetworkState::Open);
        loose.zones = vec!["lab".parse().unwrap()];
        let reasons = evaluate(&b, &loose, now);
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("effective mode is secure-site")),
            "{reasons:?}"
        );
        assert!(reasons.len() >= 3, "{reasons:?}");
        // A zone the bundle does not list: lockdown (fail closed).
        let r = secure(&["vault"]);
        assert_eq!(expected_mode(&b, &r, now).name, "lockdown");
        assert!(!evaluate(&b, &r, now).is_empty());
        // Locked: lockdown.
        let mut locked = secure(&["lab"]);
        locked.locked_by = Some(CommandId::from_random([4; 12]));
        assert_eq!(expected_mode(&b, &locked, now).name, "lockdown");
        locked.effective_mode = "lockdown".into();
        assert_eq!(evaluate(&b, &locked, now), Vec::<String>::new());
        // An expired bundle: lockdown whatever the report says.
        assert_eq!(
            expected_mode(&b, &secure(&["lab"]), Timestamp(1_000)).name,
            "lockdown"
        );
    }
}
