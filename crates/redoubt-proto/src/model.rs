//! The domain vocabulary on the wire: capabilities, modes, the policy bundle, the
//! compliance report, compliance states and the enrollment URL.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, Fingerprint, IdError, ModeName, UserName};
use crate::time_fmt::Timestamp;

/// Something a phone can do that a mode can forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Any camera.
    Camera,
    /// Voice recording / audio capture.
    Microphone,
    /// Bluetooth radio.
    Bluetooth,
    /// Wi-Fi radio.
    Wifi,
    /// Mobile data.
    CellularData,
    /// Geolocation (GNSS and network location).
    Location,
    /// NFC radio.
    Nfc,
    /// USB data (host or gadget), charging stays.
    UsbData,
    /// Screenshots and screen recording.
    Screenshots,
}

impl Capability {
    /// Every capability, in a fixed order.
    pub const ALL: [Capability; 9] = [
        Capability::Camera,
        Capability::Microphone,
        Capability::Bluetooth,
        Capability::Wifi,
        Capability::CellularData,
        Capability::Location,
        Capability::Nfc,
        Capability::UsbData,
        Capability::Screenshots,
    ];

    /// The wire name (`cellular_data`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Camera => "camera",
            Capability::Microphone => "microphone",
            Capability::Bluetooth => "bluetooth",
            Capability::Wifi => "wifi",
            Capability::CellularData => "cellular_data",
            Capability::Location => "location",
            Capability::Nfc => "nfc",
            Capability::UsbData => "usb_data",
            Capability::Screenshots => "screenshots",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| IdError {
                what: "capability",
                value: s.chars().take(64).collect(),
                rule: "one of camera, microphone, bluetooth, wifi, cellular_data, location, nfc, usb_data, screenshots",
            })
    }
}

/// What a mode says about one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The capability may be used.
    Allow,
    /// The capability must be off.
    Deny,
}

/// One rule per capability. Every capability must be named: a mode file that forgets
/// one is rejected rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CapabilityRules {
    pub camera: Rule,
    pub microphone: Rule,
    pub bluetooth: Rule,
    pub wifi: Rule,
    pub cellular_data: Rule,
    pub location: Rule,
    pub nfc: Rule,
    pub usb_data: Rule,
    pub screenshots: Rule,
}

impl CapabilityRules {
    /// The same rule for every capability.
    pub const fn all(rule: Rule) -> Self {
        CapabilityRules {
            camera: rule,
            microphone: rule,
            bluetooth: rule,
            wifi: rule,
            cellular_data: rule,
            location: rule,
            nfc: rule,
            usb_data: rule,
            screenshots: rule,
        }
    }

    /// The rule for `cap`.
    pub fn get(&self, cap: Capability) -> Rule {
        match cap {
            Capability::Camera => self.camera,
            Capability::Microphone => self.microphone,
            Capability::Bluetooth => self.bluetooth,
            Capability::Wifi => self.wifi,
            Capability::CellularData => self.cellular_data,
            Capability::Location => self.location,
            Capability::Nfc => self.nfc,
            Capability::UsbData => self.usb_data,
            Capability::Screenshots => self.screenshots,
        }
    }

    /// Sets the rule for `cap`.
    pub fn set(&mut self, cap: Capability, rule: Rule) {
        let slot = match cap {
            Capability::Camera => &mut self.camera,
            Capability::Microphone => &mut self.microphone,
            Capability::Bluetooth => &mut self.bluetooth,
            Capability::Wifi => &mut self.wifi,
            Capability::CellularData => &mut self.cellular_data,
            Capability::Location => &mut self.location,
            Capability::Nfc => &mut self.nfc,
            Capability::UsbData => &mut self.usb_data,
            Capability::Screenshots => &mut self.screenshots,
        };
        *slot = rule;
    }
}

/// How far the phone may reach over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkReach {
    /// Anywhere.
    Open,
    /// Only the organization's endpoints (and loopback).
    OrganizationOnly,
}

impl fmt::Display for NetworkReach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkReach::Open => "open",
            NetworkReach::OrganizationOnly => "organization-only",
        })
    }
}

/// A named set of capability rules, a network reach and an app allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mode {
    /// The mode's name.
    pub name: ModeName,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Network reach allowed in this mode.
    pub network: NetworkReach,
    /// One rule per capability.
    pub capabilities: CapabilityRules,
    /// Apps that may run; `None` means any app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_allowlist: Option<Vec<String>>,
}

/// What was measured about one capability. `Off` is a measurement of real state,
/// never an assumption because a call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityState {
    /// Measured off.
    Off,
    /// Measured on.
    On,
    /// Could not be measured.
    Unknown,
}

impl fmt::Display for CapabilityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapabilityState::Off => "off",
            CapabilityState::On => "on",
            CapabilityState::Unknown => "unknown",
        })
    }
}

/// What was measured about network reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkState {
    /// Unrestricted.
    Open,
    /// Verified restricted to the organization's endpoints.
    OrganizationOnly,
    /// Could not be measured.
    Unknown,
}

impl fmt::Display for NetworkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkState::Open => "open",
            NetworkState::OrganizationOnly => "organization-only",
            NetworkState::Unknown => "unknown",
        })
    }
}

/// The device's assignments that the server decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignments {
    /// The person's base mode, set by an operator.
    pub base_mode: ModeName,
    /// The modes assigned to the device groups the device belongs to. The strictest of
    /// these and `base_mode` applies (most restrictive wins); a bundle without groups
    /// omits the field, so it reads exactly as before groups existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_modes: Vec<ModeName>,
}

/// Everything a phone needs to decide its mode offline; travels signed by the
/// organization key inside a [`crate::SignedEnvelope`] of kind [`PolicyBundle::KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBundle {
    /// The only device this bundle is for.
    pub device_id: DeviceId,
    /// Grows with every bundle issued to this device.
    pub version: u64,
    /// When the server signed it.
    pub issued_at: Timestamp,
    /// After this the agent falls back to `lockdown`.
    pub expires_at: Timestamp,
    /// The modes the assignments refer to.
    pub modes: Vec<Mode>,
    /// What applies to this device.
    pub assignments: Assignments,
    /// Seconds between check-ins when no push connection is held.
    pub check_in_interval_secs: u32,
    /// The organization's IP addresses, the only ones a phone may reach under
    /// `organization-only`. The agent never resolves a name for this (the phone's
    /// resolver is the network's, possibly hostile); an entry that is not an IP
    /// literal opens nothing.
    pub organization_endpoints: Vec<String>,
    /// The secured zones this device may enter, with their checkpoint keys, so the
    /// agent decides offline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<crate::zones::ZonePolicy>,
    /// The organization's server addresses (`https://` origins), in the order a phone
    /// tries them when the one it uses stops answering. The enrollment code carries one
    /// address; this list, signed with the rest, carries them all. Omitted when the
    /// organization runs a single server, so such bundles read exactly as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<url::Url>,
}

impl PolicyBundle {
    /// Envelope kind of a signed policy bundle.
    pub const KIND: &'static str = "policy-bundle/v1";
}

/// Which hardware backend produced a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HardwareKind {
    /// SIMULATED hardware whose state lives in a file.
    Sim,
    /// Mainline Linux kernel interfaces.
    Linux,
    /// Sailfish OS / Aurora OS services over the system D-Bus, plus the kernel checks.
    Sailfish,
}

impl HardwareKind {
    /// True when the measurements come from simulated hardware.
    pub fn is_simulated(self) -> bool {
        matches!(self, HardwareKind::Sim)
    }
}

impl fmt::Display for HardwareKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardwareKind::Sim => "sim (SIMULATED)",
            HardwareKind::Linux => "linux",
            HardwareKind::Sailfish => "sailfish",
        })
    }
}

/// What an agent observed, signed by the device key inside a [`crate::SignedEnvelope`]
/// of kind [`ComplianceReport::KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceReport {
    /// The reporting device.
    pub device_id: DeviceId,
    /// Grows by one with every report the device makes.
    pub seq: u64,
    /// The bundle the agent was enforcing (0 when it holds none).
    pub bundle_version: u64,
    /// The effective mode the agent enforced.
    pub effective_mode: String,
    /// Measured state of every capability.
    pub capabilities: BTreeMap<Capability, CapabilityState>,
    /// Measured network reach.
    pub network: NetworkState,
    /// The backend that measured.
    pub hardware: HardwareKind,
    /// When the measurement was taken.
    pub observed_at: Timestamp,
    /// Why the agent is not enforcing its bundle as issued (expired, refused, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The zones the phone is inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<crate::zones::ZoneName>,
    /// The lock command in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_by: Option<crate::zones::CommandId>,
    /// Commands carried out recently (the server verifies their effect with this report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands_done: Vec<crate::zones::CommandId>,
    /// What happened since the previous report (zone transitions, refused codes,
    /// commands), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<crate::zones::DeviceEvent>,
    /// The agent's trusted time floor when it made the report (a lower bound on real
    /// time from the server's own times; `observed_at` is the phone's wall clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_floor: Option<Timestamp>,
    /// The phone's wall clock was behind its trusted floor: it was set back (check-out
    /// codes are refused until it is right again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_tampered: bool,
    /// What the phone is (model, system, storage, battery) when it made the report.
    /// Omitted by agents that predate it, so their reports read exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
}

impl ComplianceReport {
    /// Envelope kind of a signed compliance report.
    pub const KIND: &'static str = "compliance-report/v1";
}

/// Longest text an [`Inventory`] field may hold, in characters. The phone's holder
/// writes the report: a longer one is refused rather than stored.
pub const MAX_INVENTORY_TEXT: usize = 128;

/// What a phone is, as its agent read it when it made a report: informative, never
/// judged (the phone's holder could write anything here). Text fields hold at most
/// [`MAX_INVENTORY_TEXT`] characters and no control character, and `battery_percent`
/// is at most 100: anything else is refused when the report is read. A field this
/// version does not know is ignored, so a newer agent may report more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The phone's model (device tree `model`, DMI `product_name`, Sailfish
    /// `hw-release`); for the simulated backend, a name that says SIMULATED.
    #[serde(default, deserialize_with = "inventory_text_opt")]
    pub model: Option<String>,
    /// The operating system's name (`NAME` of `os-release`).
    #[serde(default, deserialize_with = "inventory_text_opt")]
    pub os_name: Option<String>,
    /// The operating system's version (`VERSION_ID`, else `VERSION` of `os-release`).
    #[serde(default, deserialize_with = "inventory_text_opt")]
    pub os_version: Option<String>,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    #[serde(default, deserialize_with = "inventory_text_opt")]
    pub kernel: Option<String>,
    /// The agent's own version (its package version).
    #[serde(deserialize_with = "inventory_text")]
    pub agent_version: String,
    /// The hardware backend the agent runs: `simulated`, `linux` or `sailfish`.
    #[serde(deserialize_with = "inventory_text")]
    pub hardware_backend: String,
    /// Size of the file system holding the agent's state, in bytes.
    #[serde(default)]
    pub storage_total_bytes: Option<u64>,
    /// Bytes of that file system still available to applications.
    #[serde(default)]
    pub storage_free_bytes: Option<u64>,
    /// Charge of the battery, 0 to 100.
    #[serde(default, deserialize_with = "inventory_percent")]
    pub battery_percent: Option<u8>,
    /// Whether the battery is on a charger (charging, or full).
    #[serde(default)]
    pub battery_charging: Option<bool>,
}

impl Inventory {
    /// `raw` made fit for an inventory text field: trimmed, each control character
    /// replaced by a space, cut to [`MAX_INVENTORY_TEXT`] characters; `None` when
    /// nothing is left. What it returns is always accepted when a report is read.
    pub fn clean_text(raw: &str) -> Option<String> {
        let spaced: String = raw
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_INVENTORY_TEXT)
            .collect();
        let text = spaced.trim_end();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Why an inventory text is refused, if it is.
fn inventory_text_problem(s: &str) -> Option<String> {
    let chars = s.chars().count();
    if chars > MAX_INVENTORY_TEXT {
        Some(format!(
            "an inventory field holds {chars} characters (at most {MAX_INVENTORY_TEXT})"
        ))
    } else if s.chars().any(char::is_control) {
        Some("an inventory field holds a control character".into())
    } else {
        None
    }
}

fn inventory_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match inventory_text_problem(&s) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(s),
    }
}

fn inventory_text_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s.as_deref().and_then(inventory_text_problem) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(s),
    }
}

fn inventory_percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<u8>::deserialize(d)? {
        Some(p) if p > 100 => Err(serde::de::Error::custom(format!(
            "battery_percent is {p} (at most 100)"
        ))),
        p => Ok(p),
    }
}

/// The server's verdict on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compliance {
    /// The latest report matches the effective mode and bundle.
    Compliant,
    /// The latest report does not match.
    NonCompliant,
    /// No report within the configured number of check-in intervals.
    Stale,
    /// No report yet.
    Pending,
}

impl Compliance {
    /// Every state, for metrics.
    pub const ALL: [Compliance; 4] = [
        Compliance::Compliant,
        Compliance::NonCompliant,
        Compliance::Stale,
        Compliance::Pending,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Compliant => "compliant",
            Compliance::NonCompliant => "non_compliant",
            Compliance::Stale => "stale",
            Compliance::Pending => "pending",
        }
    }
}

impl fmt::Display for Compliance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of an enrollment QR code:
/// `redoubt://enroll?server=URL&token=TOKEN&ca=sha256:HEX`.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentUrl {
    /// The server's base URL (`https://host:port`).
    pub server: url::Url,
    /// The single-use enrollment token.
    pub token: String,
    /// Fingerprint of the organization CA the phone must pin.
    pub ca: Fingerprint,
}

impl fmt::Debug for EnrollmentUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentUrl")
            .field("server", &self.server.as_str())
            .field("token", &"<redacted>")
            .field("ca", &self.ca)
            .finish()
    }
}

/// Why an enrollment URL could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed enrollment URL: {0}")]
pub struct EnrollmentUrlError(pub &'static str);

impl FromStr for EnrollmentUrl {
    type Err = EnrollmentUrlError;
    fn from_str(s: &str) -> Result<Self, EnrollmentUrlError> {
        let u = url::Url::parse(s.trim()).map_err(|_| EnrollmentUrlError("not a URL"))?;
        if u.scheme() != "redoubt" || u.host_str() != Some("enroll") {
            return Err(EnrollmentUrlError("must start with redoubt://enroll?"));
        }
        let (mut server, mut token, mut ca) = (None, None, None);
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "server" => server = Some(v.into_owned()),
                "token" => token = Some(v.into_owned()),
                "ca" => ca = Some(v.into_owned()),
                _ => return Err(EnrollmentUrlError("unknown parameter")),
            }
        }
        let server = url::Url::parse(&server.ok_or(EnrollmentUrlError("server is missing"))?)
            .map_err(|_| EnrollmentUrlError("server is not a URL"))?;
        if server.scheme() != "https" {
            return Err(EnrollmentUrlError("server must be an https:// URL"));
        }
        // The phone talks to the server's origin; a path, query, fragment or credentials
        // would not survive printing the code again (and mean nothing to the phone).
        if server.path() != "/"
            || server.query().is_some()
            || server.fragment().is_some()
            || !server.username().is_empty()
            || server.password().is_some()
        {
            return Err(EnrollmentUrlError(
                "server must be https://HOST[:PORT] without a path",
            ));
        }
        let token = token.ok_or(EnrollmentUrlError("token is missing"))?;
        if token.is_empty()
            || token.len() > 128
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(EnrollmentUrlError("token is malformed"));
        }
        let ca = ca
            .ok_or(EnrollmentUrlError("ca is missing"))?
            .parse()
            .map_err(|_| EnrollmentUrlError("ca is not a sha256: fingerprint"))?;
        Ok(EnrollmentUrl { server, token, ca })
    }
}

impl fmt::Display for EnrollmentUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut u = url::Url::parse("redoubt://enroll").map_err(|_| fmt::Error)?;
        u.query_pairs_mut()
            .append_pair("server", self.server.as_str().trim_end_matches('/'))
            .append_pair("token", &self.token)
            .append_pair("ca", &self.ca.to_string());
        f.write_str(u.as_str())
    }
}

/// The user an enrollment token is issued for, and the mode their device starts in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentGrant {
    /// The person.
    pub user: UserName,
    /// The device's initial base mode.
    pub mode: ModeName,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_url_round_trips() {
        let u = EnrollmentUrl {
            server: url::Url::parse("https://127.0.0.1:8443").unwrap(),
            token: "abc_DEF-123".into(),
            ca: Fingerprint::of_der(b"x"),
        };
        let s = u.to_string();
        assert!(s.starts_with(
            "redoubt://enroll?server=https%3A%2F%2F127.0.0.1%3A8443&token=abc_DEF-123&ca=sha256%3A"
        ));
        assert_eq!(s.parse::<EnrollmentUrl>().unwrap(), u);
        assert!(!format!("{u:?}").contains("abc_DEF"));
    }

    #[test]
    fn malformed_enrollment_urls_are_refused() {
        for bad in [
            "",
            "https://enroll?token=x",
            "redoubt://enroll?server=http%3A%2F%2Fx&token=a&ca=sha256%3A00",
            "redoubt://enroll?server=https%3A%2F%2Fx&token=a",
            "redoubt://enroll?server=https%3A%2F%2Fx&token=a%20b&ca=sha256%3A00",
        ] {
            assert!(bad.parse::<EnrollmentUrl>().is_err(), "{bad}");
        }
    }

    /// Found by the `enrollment_url` fuzz target: a server URL with a path ending in
    /// `/` printed (trailing `/` trimmed) to a code that parsed back to another server.
    /// The server of a code is an origin; anything more is refused.
    #[test]
    fn enrollment_server_is_an_origin() {
        let code = |server: &str| {
            format!(
                "redoubt://enroll?server={}&token=t&ca=sha256%3A{}",
                url::form_urlencoded::byte_serialize(server.as_bytes()).collect::<String>(),
                "00".repeat(32)
            )
        };
        for good in ["https://h", "https://h:8443/", "https://[::1]:1"] {
            let u: EnrollmentUrl = code(good).parse().unwrap();
            assert_eq!(u.to_string().parse::<EnrollmentUrl>().unwrap(), u, "{good}");
        }
        for bad in [
            "https://h/a/",
            "https://h/x",
            "https://h/?q=1",
            "https://h/#f",
            "https://user:pw@h/",
        ] {
            assert!(code(bad).parse::<EnrollmentUrl>().is_err(), "{bad}");
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            model: Some("PinePhone".into()),
            os_name: Some("postmarketOS".into()),
            os_version: Some("v24.06".into()),
            kernel: Some("6.6.30".into()),
            agent_version: "0.1.0".into(),
            hardware_backend: "linux".into(),
            storage_total_bytes: Some(32_000_000_000),
            storage_free_bytes: Some(12_000_000_000),
            battery_percent: Some(81),
            battery_charging: Some(false),
        }
    }

    /// A report as an agent older than the inventory writes it (no `inventory` key).
    fn older_report() -> serde_json::Value {
        serde_json::json!({
            "device_id": "dev_0123456789abcdef01234567",
            "seq": 3,
            "bundle_version": 1,
            "effective_mode": "standard",
            "capabilities": {"camera": "on"},
            "network": "open",
            "hardware": "linux",
            "observed_at": "2026-09-21T14:13:20Z",
        })
    }

    fn signed_report(value: &serde_json::Value) -> Result<ComplianceReport, String> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        crate::SignedEnvelope::sign(ComplianceReport::KIND, value, &key)
            .verify(ComplianceReport::KIND, &key.verifying_key())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn older_reports_read_and_write_exactly_as_before() {
        let old = older_report();
        let r: ComplianceReport = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.inventory, None);
        assert_eq!(serde_json::to_value(&r).unwrap(), old);
        assert_eq!(signed_report(&old).unwrap(), r);
    }

    #[test]
    fn a_report_carries_its_inventory() {
        let mut r: ComplianceReport = serde_json::from_value(older_report()).unwrap();
        r.inventory = Some(inventory());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["inventory"],
            serde_json::json!({
                "model": "PinePhone",
                "os_name": "postmarketOS",
                "os_version": "v24.06",
                "kernel": "6.6.30",
                "agent_version": "0.1.0",
                "hardware_backend": "linux",
                "storage_total_bytes": 32_000_000_000u64,
                "storage_free_bytes": 12_000_000_000u64,
                "battery_percent": 81,
                "battery_charging": false,
            })
        );
        assert_eq!(signed_report(&json).unwrap(), r);
        // Fields left out read as unknown; fields of a newer agent are ignored.
        let mut sparse = older_report();
        sparse["inventory"] = serde_json::json!({
            "agent_version": "0.2.0",
            "hardware_backend": "sailfish",
            "imei": "not known here",
        });
        let back = signed_report(&sparse).unwrap().inventory.unwrap();
        assert_eq!((back.model, back.battery_percent), (None, None));
        assert_eq!(back.hardware_backend, "sailfish");
    }

    /// The phone's holder writes the report: a hostile one must not get megabytes or
    /// terminal escapes stored. Such a report is refused as a whole, saying why.
    #[test]
    fn oversized_or_control_inventory_text_is_refused() {
        let long = "x".repeat(MAX_INVENTORY_TEXT + 1);
        let at_most = "x".repeat(MAX_INVENTORY_TEXT);
        for (field, value, expect) in [
            (
                "model",
                serde_json::json!(long),
                Some("129 characters (at most 128)"),
            ),
            (
                "os_name",
                serde_json::json!("x".repeat(1 << 20)),
                Some("at most 128"),
            ),
            ("os_version", serde_json::json!(long), Some("at most 128")),
            ("kernel", serde_json::json!(long), Some("at most 128")),
            (
                "agent_version",
                serde_json::json!(long),
                Some("at most 128"),
            ),
            (
                "hardware_backend",
                serde_json::json!(long),
                Some("at most 128"),
            ),
            (
                "model",
                serde_json::json!("a\u{1b}[2Jb"),
                Some("control character"),
            ),
            (
                "kernel",
                serde_json::json!("6.6\n"),
                Some("control character"),
            ),
            (
                "battery_percent",
                serde_json::json!(101),
                Some("at most 100"),
            ),
            ("battery_percent", serde_json::json!(-1), Some("")),
            ("model", serde_json::json!(at_most), None),
            ("model", serde_json::json!("Ünïcødé ✓".repeat(12)), None),
            ("battery_percent", serde_json::json!(100), None),
        ] {
            let mut r = older_report();
            let mut inv = serde_json::to_value(inventory()).unwrap();
            inv[field] = value;
            r["inventory"] = inv;
            match (signed_report(&r), expect) {
                (Ok(_), None) => {}
                (Err(e), Some(why)) => assert!(e.contains(why), "{field}: {e}"),
                (got, _) => panic!("{field}: {got:?}, expected {expect:?}"),
            }
        }
    }

    #[test]
    fn cleaned_inventory_text_is_always_accepted() {
        let long = "é".repeat(3 * MAX_INVENTORY_TEXT);
        for (raw, expect) in [
            ("  Xperia 10 III\n", Some("Xperia 10 III".to_owned())),
            ("a\u{1b}[31mb\tc", Some("a [31mb c".to_owned())),
            (" \n\t ", None),
            ("", None),
            (long.as_str(), Some("é".repeat(MAX_INVENTORY_TEXT))),
        ] {
            let got = Inventory::clean_text(raw);
            assert_eq!(got, expect, "{raw:?}");
            if let Some(text) = got {
                let mut inv = inventory();
                inv.model = Some(text);
                let json = serde_json::to_string(&inv).unwrap();
                assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
            }
        }
    }

    #[test]
    fn capability_names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>().unwrap(), c);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
    }
}
