//! How the backend turns what each source says into one measurement: pure functions,
//! so the rules are written (and tested) once.
//!
//! The rule everywhere: **`on` wins, `off` needs proof.** A capability is `off` only
//! when the D-Bus service that governs it answered `off`; the kernel, where it exposes
//! the device at all, can only contradict (an rfkill switch of that type not blocked, a
//! V4L2 device, a capture PCM), and a kernel interface that exists but cannot be read
//! makes the answer `unknown`. Where the kernel has no such device (no rfkill switch of
//! the type, no `/sys/class/video4linux` because the camera goes through the Android
//! HAL), the D-Bus measurement alone decides.

use redoubt_proto::CapabilityState::{self, Off, On, Unknown};

/// What ConnMan says about one technology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Technology {
    /// ConnMan did not answer (not running, not readable).
    Unknown,
    /// ConnMan answered and has no technology of that type (no such device now).
    Absent,
    /// `Powered` as ConnMan reports it.
    Powered(bool),
}

impl Technology {
    /// The technology alone as a measurement: absent proves nothing.
    pub fn state(self) -> CapabilityState {
        match self {
            Technology::Powered(true) => On,
            Technology::Powered(false) => Off,
            Technology::Absent | Technology::Unknown => Unknown,
        }
    }
}

/// Adds the kernel's view (`None`: the kernel exposes no such device).
pub fn with_kernel(dbus: CapabilityState, kernel: Option<CapabilityState>) -> CapabilityState {
    match (dbus, kernel) {
        (On, _) | (_, Some(On)) => On,
        (_, Some(Unknown)) => Unknown,
        (measured, _) => measured,
    }
}

/// Several conditions that must all be off: `on` if any is, `off` only if all are.
pub fn all_off(parts: impl IntoIterator<Item = CapabilityState>) -> CapabilityState {
    let mut out = Off;
    for p in parts {
        match p {
            On => return On,
            Unknown => out = Unknown,
            Off => {}
        }
    }
    out
}

/// One oFono modem as read: whether it has a `ConnectionManager` (it can carry packet
/// data now) and that interface's `Powered` and `Attached`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModemData {
    /// The modem's object path.
    pub path: String,
    /// `(Powered, Attached)` of its ConnectionManager; `None` without one.
    pub connection_manager: Option<(Option<bool>, Option<bool>)>,
}

/// What oFono says about packet data: `None` when no modem has a ConnectionManager
/// (none can carry data now: no modem, modems offline or without a SIM).
pub fn ofono_data(modems: &[ModemData]) -> Option<CapabilityState> {
    let managers: Vec<_> = modems.iter().filter_map(|m| m.connection_manager).collect();
    if managers.is_empty() {
        return None;
    }
    Some(all_off(managers.into_iter().map(|cm| match cm {
        (Some(false), Some(false)) => Off,
        (Some(true), _) | (_, Some(true)) => On,
        _ => Unknown,
    })))
}

/// Cellular data from ConnMan's `cellular` technology and oFono (`None` inside `Ok`:
/// no modem with a ConnectionManager; `Err`: oFono did not answer).
///
/// - `on` when either says on (ConnMan may bring a context up, or a modem is attached);
/// - `off` when oFono answered and every ConnectionManager has `Powered` and
///   `Attached` false — or no modem has one — **and** ConnMan's cellular technology is
///   powered off or absent;
/// - `unknown` otherwise (either service silent).
pub fn cellular(
    connman: Technology,
    ofono: Result<Option<CapabilityState>, ()>,
) -> CapabilityState {
    let ofono = match ofono {
        Ok(Some(s)) => s,
        Ok(None) => Off,
        Err(()) => Unknown,
    };
    let connman = match connman {
        Technology::Absent => Off,
        other => other.state(),
    };
    all_off([connman, ofono])
}

/// MCE's radio-state bits (`get_radio_states`, `radio_states_ind`).
pub mod mce {
    /// Master switch: the inverse of ConnMan's `OfflineMode`.
    pub const MASTER: u32 = 0x01;
    /// Cellular radio.
    pub const CELLULAR: u32 = 0x02;
    /// WLAN radio.
    pub const WLAN: u32 = 0x04;
    /// Bluetooth radio.
    pub const BLUETOOTH: u32 = 0x08;
    /// NFC radio.
    pub const NFC: u32 = 0x10;
    /// FM transmitter.
    pub const FMTX: u32 = 0x20;
}

/// The NFC state from MCE's bits: the NFC bit alone (whether offline mode also
/// stops NFC depends on the device's nfcd, so the master bit proves nothing here).
pub fn nfc_from_mce(bits: u32) -> CapabilityState {
    if bits & mce::NFC == 0 { Off } else { On }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: std::fmt::Debug, S: PartialEq + std::fmt::Debug>(input: T, got: S, expect: S) {
        assert_eq!(got, expect, "{input:?}");
    }

    #[test]
    fn the_kernel_only_contradicts() {
        for (dbus, kernel, expect) in [
            (Off, None, Off),
            (Off, Some(Off), Off),
            (Off, Some(On), On),
            (Off, Some(Unknown), Unknown),
            (Unknown, Some(Off), Unknown),
            (Unknown, None, Unknown),
            (On, Some(Off), On),
            (On, Some(Unknown), On),
        ] {
            check((dbus, kernel), with_kernel(dbus, kernel), expect);
        }
    }

    #[test]
    fn an_absent_technology_proves_nothing() {
        check("absent", Technology::Absent.state(), Unknown);
        check("unknown", Technology::Unknown.state(), Unknown);
        check("off", Technology::Powered(false).state(), Off);
        check("on", Technology::Powered(true).state(), On);
        check("empty", all_off([]), Off);
        check("mixed", all_off([Off, Unknown]), Unknown);
        check("on wins", all_off([Unknown, On]), On);
    }

    fn modem(cm: Option<(Option<bool>, Option<bool>)>) -> ModemData {
        ModemData {
            path: "/ril_0".into(),
            connection_manager: cm,
        }
    }

    #[test]
    fn cellular_data_needs_both_services() {
        let off = modem(Some((Some(false), Some(false))));
        let attached = modem(Some((Some(false), Some(true))));
        let powered = modem(Some((Some(true), Some(false))));
        let odd = modem(Some((None, Some(false))));
        let offline = modem(None);
        check(
            "off",
            ofono_data(&[off.clone(), offline.clone()]),
            Some(Off),
        );
        check("attached", ofono_data(&[off.clone(), attached]), Some(On));
        check("powered", ofono_data(&[powered]), Some(On));
        check("odd", ofono_data(&[odd]), Some(Unknown));
        assert_eq!(ofono_data(&[offline]), None);
        assert_eq!(ofono_data(&[]), None);
        let t = Technology::Powered;
        for (connman, ofono, expect) in [
            (t(false), Ok(Some(Off)), Off),
            (Technology::Absent, Ok(Some(Off)), Off),
            (t(false), Ok(None), Off),
            (Technology::Absent, Ok(None), Off),
            (t(true), Ok(Some(Off)), On),
            (t(false), Ok(Some(On)), On),
            (t(false), Err(()), Unknown),
            (Technology::Unknown, Ok(Some(Off)), Unknown),
            (Technology::Unknown, Ok(None), Unknown),
        ] {
            check((connman, ofono), cellular(connman, ofono), expect);
        }
    }

    #[test]
    fn nfc_follows_its_bit_only() {
        check("on", nfc_from_mce(mce::MASTER | mce::NFC), On);
        check("bit off", nfc_from_mce(mce::MASTER | mce::WLAN), Off);
        check("offline", nfc_from_mce(mce::NFC), On);
    }
}
