//! Radios through the kernel's rfkill interface.
//!
//! **Enforce**: one `CHANGE_ALL` event per radio type written to `/dev/rfkill`, which
//! sets the soft block of every radio of that type *and* becomes the default for
//! radios of that type registered later. **Verify**: `/sys/class/rfkill/rfkill*/`
//! `type`, `soft` and `hard`. A type with no rfkill device at all is `unknown`: the
//! radio may exist without an rfkill switch, so its absence proves nothing.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use redoubt_proto::CapabilityState;

/// The rfkill radio types the agent acts on (`type` in sysfs, the event's type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RadioType {
    /// `wlan`, 1.
    Wlan,
    /// `bluetooth`, 2.
    Bluetooth,
    /// `wwan` (cellular modem), 5.
    Wwan,
    /// `gps`, 6.
    Gps,
    /// `nfc`, 8.
    Nfc,
}

impl RadioType {
    /// The kernel's number for the type (`enum rfkill_type`).
    pub fn code(self) -> u8 {
        match self {
            RadioType::Wlan => 1,
            RadioType::Bluetooth => 2,
            RadioType::Wwan => 5,
            RadioType::Gps => 6,
            RadioType::Nfc => 8,
        }
    }

    /// The name sysfs shows in `type`.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            RadioType::Wlan => "wlan",
            RadioType::Bluetooth => "bluetooth",
            RadioType::Wwan => "wwan",
            RadioType::Gps => "gps",
            RadioType::Nfc => "nfc",
        }
    }

    fn from_sysfs(name: &str) -> Option<RadioType> {
        [
            RadioType::Wlan,
            RadioType::Bluetooth,
            RadioType::Wwan,
            RadioType::Gps,
            RadioType::Nfc,
        ]
        .into_iter()
        .find(|t| t.sysfs_name() == name)
    }
}

/// One rfkill switch as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Radio {
    /// The `rfkillN` index.
    pub index: u32,
    /// Its type, when it is one the agent knows.
    pub radio_type: Option<RadioType>,
    /// The raw `type` text.
    pub type_name: String,
    /// Soft-blocked (by software, e.g. by us).
    pub soft: bool,
    /// Hard-blocked (a physical switch or the firmware).
    pub hard: bool,
}

/// Why the rfkill state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct RfkillError {
    what: String,
    #[source]
    source: std::io::Error,
}

fn read_trimmed(path: &Path) -> Result<String, RfkillError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| RfkillError {
            what: format!("reading {}", path.display()),
            source,
        })
}

fn read_flag(path: &Path) -> Result<bool, RfkillError> {
    match read_trimmed(path)?.as_str() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(RfkillError {
            what: format!("reading {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("expected 0 or 1, found {other:?}"),
            ),
        }),
    }
}

/// Lists the rfkill switches under `sys` (the root standing for `/sys`). A missing
/// `class/rfkill` directory is an empty list (no rfkill support, or no radios).
pub fn list(sys: &Path) -> Result<Vec<Radio>, RfkillError> {
    let dir = sys.join("class/rfkill");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RfkillError {
                what: format!("listing {}", dir.display()),
                source,
            });
        }
    };
    let mut radios = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RfkillError {
            what: format!("listing {}", dir.display()),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("rfkill")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let type_name = read_trimmed(&path.join("type"))?;
        radios.push(Radio {
            index,
            radio_type: RadioType::from_sysfs(&type_name),
            type_name,
            soft: read_flag(&path.join("soft"))?,
            hard: read_flag(&path.join("hard"))?,
        });
    }
    radios.sort_by_key(|r| r.index);
    Ok(radios)
}

/// The measured state of a radio type: `off` when every switch of that type is soft-
/// or hard-blocked, `on` when any is not, `unknown` when there is none or sysfs cannot
/// be read.
pub fn state(sys: &Path, t: RadioType) -> CapabilityState {
    match list(sys) {
        Ok(radios) => state_of(&radios, t),
        Err(_) => CapabilityState::Unknown,
    }
}

/// [`state`] over an already read list.
pub fn state_of(radios: &[Radio], t: RadioType) -> CapabilityState {
    let mut of_type = radios.iter().filter(|r| r.radio_type == Some(t)).peekable();
    if of_type.peek().is_none() {
        return CapabilityState::Unknown;
    }
    if of_type.all(|r| r.soft || r.hard) {
        CapabilityState::Off
    } else {
        CapabilityState::On
    }
}

/// `RFKILL_OP_CHANGE_ALL`.
const OP_CHANGE_ALL: u8 = 3;

/// The 8-byte `struct rfkill_event` (version 1, accepted by every kernel since 2.6.31):
/// `idx: u32` (native endian, ignored for CHANGE_ALL), `type: u8`, `op: u8`,
/// `soft: u8`, `hard: u8` (ignored on write).
pub fn change_all_event(t: RadioType, block: bool) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[4] = t.code();
    e[5] = OP_CHANGE_ALL;
    e[6] = u8::from(block);
    e
}

/// Soft-blocks (or unblocks) every radio of type `t`, present and future, by writing a
/// `CHANGE_ALL` event to `rfkill_dev` (the path standing for `/dev/rfkill`).
pub fn set_all(rfkill_dev: &Path, t: RadioType, block: bool) -> Result<(), RfkillError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(rfkill_dev)
        .map_err(|source| RfkillError {
            what: format!("opening {}", rfkill_dev.display()),
            source,
        })?;
    f.write_all(&change_all_event(t, block))
        .map_err(|source| RfkillError {
            what: format!(
                "writing a {} event to {}",
                t.sysfs_name(),
                rfkill_dev.display()
            ),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn radio(sys: &Path, n: u32, kind: &str, soft: &str, hard: &str) -> PathBuf {
        let dir = sys.join(format!("class/rfkill/rfkill{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        fs::write(dir.join("soft"), format!("{soft}\n")).unwrap();
        fs::write(dir.join("hard"), format!("{hard}\n")).unwrap();
        dir
    }

    #[test]
    fn a_type_is_off_only_when_every_switch_of_it_is_blocked() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        radio(sys, 0, "wlan", "1", "0");
        radio(sys, 1, "wlan", "0", "1");
        radio(sys, 2, "bluetooth", "0", "0");
        radio(sys, 3, "bluetooth", "1", "0");
        radio(sys, 4, "fm", "0", "0");
        assert_eq!(state(sys, RadioType::Wlan), CapabilityState::Off);
        assert_eq!(state(sys, RadioType::Bluetooth), CapabilityState::On);
        // No switch of that type: nothing is proven.
        assert_eq!(state(sys, RadioType::Gps), CapabilityState::Unknown);
        let all = list(sys).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].radio_type, None);
        assert_eq!(all[4].type_name, "fm");
    }

    #[test]
    fn unreadable_or_odd_sysfs_is_unknown_never_off() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        // No rfkill class at all.
        assert!(list(sys).unwrap().is_empty());
        assert_eq!(state(sys, RadioType::Wlan), CapabilityState::Unknown);
        // A blocked radio next to one whose `soft` says something unexpected.
        radio(sys, 0, "wlan", "1", "0");
        let odd = radio(sys, 1, "wlan", "1", "0");
        fs::write(odd.join("soft"), "maybe\n").unwrap();
        assert!(list(sys).is_err());
        assert_eq!(state(sys, RadioType::Wlan), CapabilityState::Unknown);
        // A missing `hard` file.
        fs::write(odd.join("soft"), "1\n").unwrap();
        fs::remove_file(odd.join("hard")).unwrap();
        assert_eq!(state(sys, RadioType::Wlan), CapabilityState::Unknown);
    }

    #[test]
    fn change_all_events_have_the_kernel_layout() {
        assert_eq!(
            change_all_event(RadioType::Wlan, true),
            [0, 0, 0, 0, 1, 3, 1, 0]
        );
        assert_eq!(
            change_all_event(RadioType::Bluetooth, false),
            [0, 0, 0, 0, 2, 3, 0, 0]
        );
        assert_eq!(change_all_event(RadioType::Wwan, true)[4], 5);
        assert_eq!(change_all_event(RadioType::Gps, true)[4], 6);
        assert_eq!(change_all_event(RadioType::Nfc, true)[4], 8);
    }

    #[test]
    fn set_all_writes_one_event_and_names_a_missing_device() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("rfkill");
        fs::write(&dev, b"").unwrap();
        set_all(&dev, RadioType::Wlan, true).unwrap();
        assert_eq!(fs::read(&dev).unwrap(), [0, 0, 0, 0, 1, 3, 1, 0]);
        let missing = tmp.path().join("absent");
        let e = set_all(&missing, RadioType::Bluetooth, true).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }
}
