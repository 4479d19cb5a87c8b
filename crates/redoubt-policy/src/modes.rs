//! Built-in presets and effective-mode resolution.

use redoubt_proto::{CapabilityRules, Mode, ModeName, NetworkReach, Rule};

/// Name of the unrestricted preset.
pub const STANDARD: &str = "standard";
/// Name of the preset for secured sites.
pub const SECURE_SITE: &str = "secure-site";
/// Name of the push-button-phone preset; also the fail-closed fallback.
pub const LOCKDOWN: &str = "lockdown";

/// The app that stays allowed in `lockdown`: the organization's messenger.
pub const MESSENGER_APP: &str = "org.redoubt.messenger";

fn name(s: &str) -> ModeName {
    s.parse().expect("preset names are valid")
}

/// The built-in presets: `standard`, `secure-site`, `lockdown`.
pub fn presets() -> Vec<Mode> {
    use Rule::{Allow, Deny};
    vec![
        Mode {
            name: name(STANDARD),
            description: "Everything allowed; open network.".into(),
            network: NetworkReach::Open,
            capabilities: CapabilityRules::all(Allow),
            app_allowlist: None,
        },
        Mode {
            name: name(SECURE_SITE),
            description: "Inside a secured site: camera, microphone, bluetooth, location, USB data and screenshots off; network only to the organization.".into(),
            network: NetworkReach::OrganizationOnly,
            capabilities: CapabilityRules {
                camera: Deny,
                microphone: Deny,
                bluetooth: Deny,
                wifi: Allow,
                cellular_data: Allow,
                location: Deny,
                nfc: Allow,
                usb_data: Deny,
                screenshots: Deny,
            },
            app_allowlist: None,
        },
        lockdown(),
    ]
}

/// The push-button-phone profile: every capability off except the data links that carry
/// the organization's messaging, network only to the organization, only the messenger app.
pub fn lockdown() -> Mode {
    use Rule::{Allow, Deny};
    Mode {
        name: name(LOCKDOWN),
        description: "Push-button phone: everything off but the organization's messaging.".into(),
        network: NetworkReach::OrganizationOnly,
        capabilities: CapabilityRules {
            camera: Deny,
            microphone: Deny,
            bluetooth: Deny,
            wifi: Allow,
            cellular_data: Allow,
            location: Deny,
            nfc: Deny,
            usb_data: Deny,
            screenshots: Deny,
        },
        app_allowlist: Some(vec![MESSENGER_APP.into()]),
    }
}

/// The preset called `name`, if there is one.
pub fn preset(name: &str) -> Option<Mode> {
    presets().into_iter().find(|m| m.name.as_str() == name)
}

/// Whether `name` is one of the built-in presets.
pub fn is_preset(name: &str) -> bool {
    [STANDARD, SECURE_SITE, LOCKDOWN].contains(&name)
}

/// The result of combining several modes: what actually holds on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The single mode's name, or the sorted names joined by `+`.
    pub name: String,
    /// Network reach.
    pub network: NetworkReach,
    /// Capability rules.
    pub capabilities: CapabilityRules,
    /// Allowed apps; `None` means any.
    pub app_allowlist: Option<Vec<String>>,
}

impl Effective {
    fn of(mode: &Mode) -> Self {
        Effective {
            name: mode.name.to_string(),
            network: mode.network,
            capabilities: mode.capabilities,
            app_allowlist: mode
                .app_allowlist
                .as_ref()
                .map(|apps| normalize(apps.clone())),
        }
    }

    fn same_rules(&self, other: &Effective) -> bool {
        self.network == other.network
            && self.capabilities == other.capabilities
            && self.app_allowlist == other.app_allowlist
    }
}

fn normalize(mut apps: Vec<String>) -> Vec<String> {
    apps.sort();
    apps.dedup();
    apps
}

/// Combines the active modes: a capability is allowed only if every mode allows it,
/// the network reach is the narrowest, and the app allowlist is the intersection.
///
/// Deterministic and independent of the order of `modes`. With no mode at all the
/// answer is `lockdown` (fail closed).
pub fn effective(modes: &[Mode]) -> Effective {
    let mut inputs: Vec<Effective> = modes.iter().map(Effective::of).collect();
    if inputs.is_empty() {
        return Effective::of(&lockdown());
    }
    inputs.sort_by(|a, b| a.name.cmp(&b.name));
    inputs.dedup_by(|a, b| a.name == b.name && a.same_rules(b));

    let mut caps = CapabilityRules::all(Rule::Allow);
    for cap in redoubt_proto::Capability::ALL {
        if inputs.iter().any(|m| m.capabilities.get(cap) == Rule::Deny) {
            caps.set(cap, Rule::Deny);
        }
    }
    let network = inputs
        .iter()
        .map(|m| m.network)
        .max()
        .unwrap_or(NetworkReach::OrganizationOnly);
    let app_allowlist = inputs
        .iter()
        .filter_map(|m| m.app_allowlist.clone())
        .reduce(|acc, next| acc.into_iter().filter(|a| next.contains(a)).collect());

    let mut result = Effective {
        name: String::new(),
        network,
        capabilities: caps,
        app_allowlist,
    };
    // Name it after the input it equals (the strictest one), else after all of them.
    result.name = match inputs.iter().find(|m| m.same_rules(&result)) {
        Some(m) => m.name.clone(),
        None => {
            let mut names: Vec<&str> = inputs.iter().map(|m| m.name.as_str()).collect();
            names.dedup();
            names.join("+")
        }
    };
    result
}

/// Whether `a` restricts at least everything `b` restricts: every capability `b`
/// denies is denied by `a`, its network reach is no wider, and its app allowlist is
/// no larger.
pub fn at_least_as_strict(a: &Effective, b: &Effective) -> bool {
    let caps = redoubt_proto::Capability::ALL
        .into_iter()
        .all(|c| b.capabilities.get(c) == Rule::Allow || a.capabilities.get(c) == Rule::Deny);
    let apps = match (&a.app_allowlist, &b.app_allowlist) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a.iter().all(|x| b.contains(x)),
    };
    caps && a.network >= b.network && apps
}

/// Whether a device may receive the messages of a conversation that requires
/// `clearance`: its latest report must be `compliant`, and the mode it complies with
/// must be at least as strict as the clearance mode. `Err` says why not, for people.
pub fn meets_clearance(
    device_mode: &Effective,
    compliance: redoubt_proto::Compliance,
    clearance: &Mode,
) -> Result<(), String> {
    if compliance != redoubt_proto::Compliance::Compliant {
        return Err(format!(
            "the device is {} and this conversation requires a compliant device in {}",
            compliance.as_str(),
            clearance.name
        ));
    }
    let required = effective(std::slice::from_ref(clearance));
    if !at_least_as_strict(device_mode, &required) {
        return Err(format!(
            "the device is in {}, which is less strict than {} that this conversation requires",
            device_mode.name, clearance.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redoubt_proto::{Capability, Compliance};

    #[test]
    fn clearance_needs_compliance_and_a_mode_as_strict() {
        let secure = preset(SECURE_SITE).unwrap();
        let standard = preset(STANDARD).unwrap();
        let lock = lockdown();
        let in_secure = effective(std::slice::from_ref(&secure));
        let in_standard = effective(std::slice::from_ref(&standard));
        let in_lockdown = effective(std::slice::from_ref(&lock));
        assert!(meets_clearance(&in_secure, Compliance::Compliant, &secure).is_ok());
        assert!(meets_clearance(&in_lockdown, Compliance::Compliant, &secure).is_ok());
        let why = meets_clearance(&in_standard, Compliance::Compliant, &secure).unwrap_err();
        assert!(why.contains("less strict"), "{why}");
        for c in [
            Compliance::NonCompliant,
            Compliance::Stale,
            Compliance::Pending,
        ] {
            let why = meets_clearance(&in_secure, c, &secure).unwrap_err();
            assert!(why.contains(c.as_str()), "{why}");
        }
    }

    fn arb_mode() -> impl Strategy<Value = Mode> {
        (
            prop::sample::select(vec!["a", "b", "c", "standard", "lockdown"]),
            any::<[bool; 9]>(),
            any::<bool>(),
            prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["x", "y", "z"]),
                0..3,
            )),
        )
            .prop_map(|(n, denies, org_only, apps)| {
                let mut caps = CapabilityRules::all(Rule::Allow);
                for (c, d) in Capability::ALL.into_iter().zip(denies) {
                    if d {
                        caps.set(c, Rule::Deny);
                    }
                }
                Mode {
                    name: n.parse().unwrap(),
                    description: String::new(),
                    network: if org_only {
                        NetworkReach::OrganizationOnly
                    } else {
                        NetworkReach::Open
                    },
                    capabilities: caps,
                    app_allowlist: apps.map(|v| v.into_iter().map(String::from).collect()),
                }
            })
    }

    proptest! {
        #[test]
        fn order_independent(mut modes in prop::collection::vec(arb_mode(), 1..6), seed in any::<u64>()) {
            let before = effective(&modes);
            // A deterministic shuffle driven by the seed.
            let n = modes.len();
            for i in (1..n).rev() {
                let j = (seed.rotate_left(i as u32) as usize) % (i + 1);
                modes.swap(i, j);
            }
            prop_assert_eq!(before, effective(&modes));
        }

        #[test]
        fn idempotent(modes in prop::collection::vec(arb_mode(), 1..6)) {
            let once = effective(&modes);
            let mut doubled = modes.clone();
            doubled.extend(modes.iter().cloned());
            prop_assert_eq!(&once, &effective(&doubled));
            let as_mode = Mode {
                name: "a".parse().unwrap(),
                description: String::new(),
                network: once.network,
                capabilities: once.capabilities,
                app_allowlist: once.app_allowlist.clone(),
            };
            let again = effective(&[as_mode]);
            prop_assert!(again.same_rules(&once));
        }

        #[test]
        fn never_more_permissive_than_any_input(modes in prop::collection::vec(arb_mode(), 1..6)) {
            let eff = effective(&modes);
            for m in &modes {
                prop_assert!(at_least_as_strict(&eff, &Effective::of(m)), "{:?} looser than {:?}", eff, m);
            }
        }
    }

    #[test]
    fn no_mode_means_lockdown() {
        assert_eq!(effective(&[]).name, LOCKDOWN);
    }

    #[test]
    fn strictest_preset_names_the_result() {
        let all = presets();
        assert_eq!(effective(&all).name, LOCKDOWN);
        assert_eq!(effective(&all[..2]).name, SECURE_SITE);
        assert_eq!(effective(&all[..1]).name, STANDARD);
    }

    #[test]
    fn incomparable_modes_get_a_combined_name() {
        let mut a = preset(STANDARD).unwrap();
        a.name = "no-camera".parse().unwrap();
        a.capabilities.camera = Rule::Deny;
        let mut b = preset(STANDARD).unwrap();
        b.name = "no-bt".parse().unwrap();
        b.capabilities.bluetooth = Rule::Deny;
        let eff = effective(&[b, a]);
        assert_eq!(eff.name, "no-bt+no-camera");
        assert_eq!(eff.capabilities.camera, Rule::Deny);
        assert_eq!(eff.capabilities.bluetooth, Rule::Deny);
    }

    #[test]
    fn presets_are_ordered_by_strictness() {
        let [s, ss, l]: [Mode; 3] = presets().try_into().unwrap();
        let (s, ss, l) = (Effective::of(&s), Effective::of(&ss), Effective::of(&l));
        assert!(at_least_as_strict(&ss, &s) && !at_least_as_strict(&s, &ss));
        assert!(at_least_as_strict(&l, &ss) && !at_least_as_strict(&ss, &l));
    }
}
