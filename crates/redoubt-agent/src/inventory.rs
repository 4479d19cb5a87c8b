//! The phone's inventory that every compliance report carries: model, operating
//! system, kernel, agent version, backend, storage and battery, read under the
//! backend's [`Roots`]. What cannot be read is `None`, never an error.
//!
//! | what | where |
//! |---|---|
//! | model | `sys/firmware/devicetree/base/model` (trailing NUL stripped), else `sys/class/dmi/id/product_name`; on Sailfish OS first `NAME` of `etc/hw-release` |
//! | system | `NAME` and `VERSION_ID` (else `VERSION`) of `etc/os-release` |
//! | kernel | `proc/sys/kernel/osrelease` |
//! | storage | `statvfs` of the agent's state directory (free: what applications may still use) |
//! | battery | the first `sys/class/power_supply/*` whose `type` is `Battery` (not a peripheral's): `capacity`, `status` |
//!
//! The simulated backend says so: backend `simulated`, model [`SIMULATED_MODEL`], no
//! battery; system, kernel and storage are those of the machine it runs on.

use std::io::Read;
use std::path::Path;

use redoubt_proto::{HardwareKind, Inventory};

use crate::hardware::linux::Roots;

/// The model the simulated phone reports.
pub const SIMULATED_MODEL: &str = "Simulated phone (SIMULATED)";

/// The most a file read for the inventory is read of (sysfs values and `os-release`
/// are far smaller).
const MAX_FILE: u64 = 64 * 1024;

/// The name an inventory gives a backend: `simulated`, `linux`, `sailfish`.
pub fn backend_name(kind: HardwareKind) -> &'static str {
    match kind {
        HardwareKind::Sim => "simulated",
        HardwareKind::Linux => "linux",
        HardwareKind::Sailfish => "sailfish",
    }
}

/// The inventory of a real phone run by the backend `kind`, read under `roots`, with
/// the storage of the file system holding `state_dir`.
pub fn collect(roots: &Roots, state_dir: &Path, kind: HardwareKind) -> Inventory {
    let (os_name, os_version) = os_release(&roots.etc);
    let (storage_total_bytes, storage_free_bytes) = storage(state_dir);
    let (battery_percent, battery_charging) = battery(&roots.sys);
    let model = match kind {
        // Sailfish OS names the phone in `hw-release`; its device tree model is often
        // the SoC's reference board.
        HardwareKind::Sailfish => hw_release_name(&roots.etc).or_else(|| model(&roots.sys)),
        HardwareKind::Linux | HardwareKind::Sim => model(&roots.sys),
    };
    Inventory {
        model,
        os_name,
        os_version,
        kernel: read_text(&roots.proc.join("sys/kernel/osrelease")),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hardware_backend: backend_name(kind).into(),
        storage_total_bytes,
        storage_free_bytes,
        battery_percent,
        battery_charging,
    }
}

/// The inventory of the simulated phone: it says it is simulated and has no battery;
/// system, kernel and storage are read as on a real phone, from the machine it runs on.
pub fn simulated(roots: &Roots, state_dir: &Path) -> Inventory {
    Inventory {
        model: Some(SIMULATED_MODEL.into()),
        battery_percent: None,
        battery_charging: None,
        ..collect(roots, state_dir, HardwareKind::Sim)
    }
}

/// The start of the file at `path` (at most [`MAX_FILE`] bytes), `None` when it cannot
/// be read.
fn read_raw(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The file at `path` as one inventory text (trailing NULs of device tree strings and
/// surrounding white space removed).
fn read_text(path: &Path) -> Option<String> {
    Inventory::clean_text(read_raw(path)?.trim_end_matches('\0'))
}

/// The phone's model: the device tree's, else the firmware's (DMI).
fn model(sys: &Path) -> Option<String> {
    read_text(&sys.join("firmware/devicetree/base/model"))
        .or_else(|| read_text(&sys.join("class/dmi/id/product_name")))
}

/// `NAME` and `VERSION_ID` (else `VERSION`) of `etc/os-release`.
fn os_release(etc: &Path) -> (Option<String>, Option<String>) {
    let Some(text) = read_raw(&etc.join("os-release")) else {
        return (None, None);
    };
    let name = shell_var(&text, "NAME");
    let version = shell_var(&text, "VERSION_ID").or_else(|| shell_var(&text, "VERSION"));
    (name, version)
}

/// `NAME` of Sailfish OS's `etc/hw-release` (the phone's name).
fn hw_release_name(etc: &Path) -> Option<String> {
    shell_var(&read_raw(&etc.join("hw-release"))?, "NAME")
}

/// The value of `key` in an `os-release` style file (`KEY=value` lines, the value
/// possibly in double or single quotes, backslash escapes inside double quotes); the
/// last assignment wins, as when the shell sources it.
fn shell_var(text: &str, key: &str) -> Option<String> {
    let raw = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()?;
    let value = if let Some(inner) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    } else if let Some(inner) = raw.strip_prefix('\'') {
        inner.split('\'').next().unwrap_or_default().to_owned()
    } else {
        raw.to_owned()
    };
    Inventory::clean_text(&value)
}

/// Total and available bytes of the file system holding `dir`.
fn storage(dir: &Path) -> (Option<u64>, Option<u64>) {
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return (None, None);
    };
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    (st.f_blocks.checked_mul(unit), st.f_bavail.checked_mul(unit))
}

/// Charge and charging of the phone's battery: the first power supply (by name) of
/// type `Battery` that is present and not a peripheral's (`scope` `Device`: a
/// keyboard's, a stylus').
fn battery(sys: &Path) -> (Option<u8>, Option<bool>) {
    let Ok(entries) = std::fs::read_dir(sys.join("class/power_supply")) else {
        return (None, None);
    };
    let mut supplies: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    supplies.sort();
    let field = |dir: &Path, name: &str| read_text(&dir.join(name));
    let Some(dir) = supplies.iter().find(|dir| {
        field(dir, "type").as_deref() == Some("Battery")
            && field(dir, "scope").as_deref() != Some("Device")
            && field(dir, "present").as_deref() != Some("0")
    }) else {
        return (None, None);
    };
    let percent = field(dir, "capacity")
        .and_then(|c| c.parse::<u8>().ok())
        .map(|c| c.min(100));
    let charging = match field(dir, "status").as_deref() {
        Some("Charging" | "Full") => Some(true),
        Some("Discharging" | "Not charging") => Some(false),
        _ => None,
    };
    (percent, charging)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Writes `files` (path under `root`, contents) into a fake tree.
    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
    }

    fn pinephone(root: &Path) {
        tree(
            root,
            &[
                (
                    "etc/os-release",
                    "# comment\nNAME=\"postmarketOS\"\nVERSION=\"v24.06\"\nVERSION_ID=v24.06\nPRETTY_NAME=\"postmarketOS v24.06\"\n",
                ),
                ("proc/sys/kernel/osrelease", "6.6.30-sunxi64\n"),
                (
                    "sys/firmware/devicetree/base/model",
                    "Pine64 PinePhone (1.2)\0",
                ),
                (
                    "sys/class/dmi/id/product_name",
                    "ignored: the tree has one\n",
                ),
                ("sys/class/power_supply/axp20x-ac/type", "Mains\n"),
                ("sys/class/power_supply/axp20x-battery/type", "Battery\n"),
                ("sys/class/power_supply/axp20x-battery/capacity", "81\n"),
                ("sys/class/power_supply/axp20x-battery/status", "Charging\n"),
                ("sys/class/power_supply/axp20x-battery/present", "1\n"),
                ("sys/class/power_supply/hid-keyboard/type", "Battery\n"),
                ("sys/class/power_supply/hid-keyboard/scope", "Device\n"),
                ("sys/class/power_supply/hid-keyboard/capacity", "5\n"),
            ],
        );
    }

    #[test]
    fn a_real_phone_reads_its_tree() {
        let tmp = tempfile::tempdir().unwrap();
        pinephone(tmp.path());
        let inv = collect(&Roots::under(tmp.path()), tmp.path(), HardwareKind::Linux);
        assert_eq!(inv.model.as_deref(), Some("Pine64 PinePhone (1.2)"));
        assert_eq!(inv.os_name.as_deref(), Some("postmarketOS"));
        assert_eq!(inv.os_version.as_deref(), Some("v24.06"));
        assert_eq!(inv.kernel.as_deref(), Some("6.6.30-sunxi64"));
        assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(inv.hardware_backend, "linux");
        assert_eq!(
            (inv.battery_percent, inv.battery_charging),
            (Some(81), Some(true))
        );
        // The state directory's file system (the temporary directory's).
        let total = inv.storage_total_bytes.unwrap();
        assert!(
            total > 0 && inv.storage_free_bytes.unwrap() <= total,
            "{inv:?}"
        );
    }

    #[test]
    fn missing_files_are_unknown_never_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        let inv = collect(&Roots::under(&empty), &empty, HardwareKind::Linux);
        assert_eq!(
            inv,
            Inventory {
                model: None,
                os_name: None,
                os_version: None,
                kernel: None,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                hardware_backend: "linux".into(),
                storage_total_bytes: None,
                storage_free_bytes: None,
                battery_percent: None,
                battery_charging: None,
            }
        );
    }

    #[test]
    fn fallbacks_and_odd_values() {
        let tmp = tempfile::tempdir().unwrap();
        tree(
            tmp.path(),
            &[
                // VERSION when there is no VERSION_ID; escapes in double quotes.
                (
                    "etc/os-release",
                    "NAME='Sailfish OS'\nVERSION=\"4.6.0.13 (Sipoonkorpi) \\\"beta\\\"\"\n",
                ),
                (
                    "etc/hw-release",
                    "NAME=\"Xperia 10 III\"\nMER_HA_DEVICE=pdx213\n",
                ),
                ("sys/class/dmi/id/product_name", "ThinkPad X13\n"),
                ("sys/class/power_supply/BAT0/type", "Battery\n"),
                ("sys/class/power_supply/BAT0/capacity", "104\n"),
                ("sys/class/power_supply/BAT0/status", "Not charging\n"),
                ("sys/class/power_supply/BAT1/type", "Battery\n"),
                ("sys/class/power_supply/BAT1/capacity", "50\n"),
            ],
        );
        let roots = Roots::under(tmp.path());
        let linux = collect(&roots, tmp.path(), HardwareKind::Linux);
        assert_eq!(
            linux.model.as_deref(),
            Some("ThinkPad X13"),
            "DMI without a device tree"
        );
        assert_eq!(linux.os_name.as_deref(), Some("Sailfish OS"));
        assert_eq!(
            linux.os_version.as_deref(),
            Some("4.6.0.13 (Sipoonkorpi) \"beta\"")
        );
        assert_eq!(
            (linux.battery_percent, linux.battery_charging),
            (Some(100), Some(false)),
            "the first battery, capacity at most 100"
        );
        let sailfish = collect(&roots, tmp.path(), HardwareKind::Sailfish);
        assert_eq!(sailfish.model.as_deref(), Some("Xperia 10 III"));
        assert_eq!(sailfish.hardware_backend, "sailfish");
    }

    #[test]
    fn hostile_or_huge_values_are_made_to_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let long = format!("\u{1b}[2J{}", "M".repeat(10_000));
        tree(
            tmp.path(),
            &[
                ("sys/firmware/devicetree/base/model", long.as_str()),
                ("etc/os-release", "NAME=\"a\\\nb\"\nVERSION_ID=\n"),
                ("proc/sys/kernel/osrelease", "\n"),
            ],
        );
        let inv = collect(&Roots::under(tmp.path()), tmp.path(), HardwareKind::Linux);
        let model = inv.model.clone().unwrap();
        assert_eq!(model.chars().count(), redoubt_proto::MAX_INVENTORY_TEXT);
        assert!(!model.chars().any(char::is_control), "{model:?}");
        assert_eq!(inv.os_version, None, "an empty value is unknown");
        assert_eq!(inv.kernel, None);
        // What the agent sends, the server reads back.
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
    }

    #[test]
    fn the_simulated_phone_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        pinephone(tmp.path());
        let inv = simulated(&Roots::under(tmp.path()), tmp.path());
        assert_eq!(inv.hardware_backend, "simulated");
        assert_eq!(inv.model.as_deref(), Some(SIMULATED_MODEL));
        assert_eq!((inv.battery_percent, inv.battery_charging), (None, None));
        assert_eq!(inv.kernel.as_deref(), Some("6.6.30-sunxi64"), "the host's");
    }
}
