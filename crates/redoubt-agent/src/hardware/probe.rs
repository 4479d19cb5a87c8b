//! What this device offers: which backend fits (`--hardware auto`) and, per
//! capability, whether the agent can switch it and whether it can measure it
//! (`redoubt-agent probe`). Probing reads; it changes nothing.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::process::Command;

use redoubt_proto::{Capability, HardwareKind};
use serde::Serialize;

use super::linux::{Roots, backend, binding, media, rfkill};
use super::sailfish::{self, BusProbe};

/// What the kernel exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelProbe {
    /// `/dev/rfkill` opens for writing (radios can be switched).
    pub rfkill_control: bool,
    /// rfkill switches per sysfs type name (`wlan`, `bluetooth`, `wwan`, `gps`, `nfc`, …).
    pub radios: BTreeMap<String, usize>,
    /// `/sys/class/video4linux` exists (without it cameras are not measurable).
    pub v4l2: bool,
    /// Devices in `/sys/class/video4linux`.
    pub cameras: Vec<String>,
    /// Drivers the cameras hang off (what unbinding detaches), as `driver:device`.
    pub camera_drivers: Vec<String>,
    /// `/proc/asound` exists (without it capture is not measurable).
    pub alsa: bool,
    /// Sound cards with a capture PCM (`card0`, …).
    pub capture_cards: Vec<String>,
    /// Their drivers, as `driver:device`.
    pub capture_drivers: Vec<String>,
    /// Capture cards with no driver the agent could unbind.
    pub capture_cards_stuck: Vec<String>,
    /// Capture substreams open now (someone records), e.g. `card0/pcm0c/sub0`.
    pub recording_now: Vec<String>,
    /// Network interfaces that carry mobile data.
    pub wwan_interfaces: Vec<String>,
    /// Why `nft` cannot run or list the rule set; `None` when it can.
    pub nftables_error: Option<String>,
}

/// What the agent can do about one capability here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapabilityProbe {
    /// The agent can switch it off (and on again).
    pub enforce: bool,
    /// The agent can measure it; when false it is reported `unknown`.
    pub verify: bool,
    /// How, or why not.
    pub how: String,
}

/// The probe's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The backend `--hardware auto` picks, if any.
    pub choice: Option<HardwareKind>,
    /// Why that one.
    pub reason: String,
    /// The kernel interfaces.
    pub kernel: KernelProbe,
    /// The Sailfish OS / Aurora OS services on the system bus.
    pub sailfish: BusProbe,
    /// Per capability, for the chosen backend (the linux one when none fits).
    pub capabilities: BTreeMap<Capability, CapabilityProbe>,
    /// Network reach: can the agent restrict it and read the restriction back.
    pub network: CapabilityProbe,
}

fn driver_names(bindings: &[binding::Binding]) -> Vec<String> {
    bindings
        .iter()
        .map(|b| {
            let driver = b
                .driver
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{driver}:{}", b.device)
        })
        .collect()
}

fn nft_usable(nft: &str) -> Result<(), String> {
    let mut cmd = Command::new(nft);
    cmd.args(["list", "tables"]);
    match super::linux::run_bounded(cmd, None, std::time::Duration::from_secs(10)) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("nft failed")
            .trim()
            .to_owned()),
        Err(e) => Err(format!("cannot run {nft}: {e}")),
    }
}

/// Reads what the kernel under `roots` exposes; `nft` is the nftables program.
pub fn kernel(roots: &Roots, nft: &str) -> KernelProbe {
    let mut radios = BTreeMap::new();
    for r in rfkill::list(&roots.sys).unwrap_or_default() {
        *radios.entry(r.type_name).or_insert(0) += 1;
    }
    let cameras = media::video_devices(&roots.sys).unwrap_or_default();
    let camera_bindings = binding::class_bindings(&roots.sys, "video4linux").unwrap_or_default();
    let (capture_bindings, stuck) = backend::capture_card_bindings(roots).unwrap_or_default();
    let mut capture_cards: Vec<String> = media::capture_substreams(&roots.proc)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.name.split('/').next().map(str::to_owned))
        .collect();
    capture_cards.dedup();
    KernelProbe {
        rfkill_control: OpenOptions::new()
            .write(true)
            .open(roots.rfkill_dev())
            .is_ok(),
        radios,
        v4l2: roots.sys.join("class/video4linux").is_dir(),
        cameras,
        camera_drivers: driver_names(&camera_bindings),
        alsa: roots.proc.join("asound").is_dir(),
        capture_cards,
        capture_drivers: driver_names(&capture_bindings),
        capture_cards_stuck: stuck,
        recording_now: media::recording_now(&roots.proc)
            .into_iter()
            .map(|s| s.name)
            .collect(),
        wwan_interfaces: backend::wwan_interfaces(roots).unwrap_or_default(),
        nftables_error: nft_usable(nft).err(),
    }
}

/// What the linux backend can do with what `k` found.
pub fn linux_capabilities(k: &KernelProbe) -> BTreeMap<Capability, CapabilityProbe> {
    let mut out = BTreeMap::new();
    let nft = k.nftables_error.is_none();
    for cap in Capability::ALL {
        let p = match cap {
            Capability::Camera => {
                let unbindable = k.camera_drivers.len();
                CapabilityProbe {
                    enforce: k.cameras.is_empty() || unbindable > 0,
                    verify: k.v4l2,
                    how: if !k.v4l2 {
                        "no video4linux class: the kernel shows no camera (V4L2 not loaded, or a camera behind a vendor HAL); measured unknown".into()
                    } else if k.cameras.is_empty() {
                        "no V4L2 camera present (off means none listed and none held open; a camera the kernel does not list, e.g. behind a vendor HAL, is invisible here)".into()
                    } else {
                        format!(
                            "{} V4L2 device(s); unbinding {}",
                            k.cameras.len(),
                            k.camera_drivers.join(", ")
                        )
                    },
                }
            }
            Capability::Microphone => CapabilityProbe {
                enforce: k.capture_cards_stuck.is_empty(),
                verify: k.alsa,
                how: if !k.alsa {
                    "no /proc/asound: no ALSA here; measured unknown".into()
                } else if k.capture_cards.is_empty() {
                    "no ALSA capture device present".into()
                } else if !k.capture_cards_stuck.is_empty() {
                    format!(
                        "cannot unbind {} (no driver link)",
                        k.capture_cards_stuck.join(", ")
                    )
                } else {
                    format!(
                        "unbinding the whole sound card ({}): playback goes too, ALSA cannot cut capture alone",
                        k.capture_drivers.join(", ")
                    )
                },
            },
            Capability::UsbData | Capability::Screenshots => CapabilityProbe {
                enforce: false,
                verify: false,
                how: "no kernel interface for this; reported unknown".into(),
            },
            Capability::CellularData => {
                let radios = k.radios.get("wwan").copied().unwrap_or(0);
                CapabilityProbe {
                    enforce: k.rfkill_control || nft,
                    verify: radios > 0 || nft,
                    how: format!(
                        "rfkill wwan ({radios} switch(es)){}; mobile-data interfaces: {}",
                        if nft {
                            " and an nftables drop on mobile-data interfaces"
                        } else {
                            ", no nftables"
                        },
                        if k.wwan_interfaces.is_empty() {
                            "none".to_owned()
                        } else {
                            k.wwan_interfaces.join(", ")
                        }
                    ),
                }
            }
            radio => {
                let t = backend::radio_of(radio)
                    .map(rfkill::RadioType::sysfs_name)
                    .unwrap_or("?");
                let n = k.radios.get(t).copied().unwrap_or(0);
                CapabilityProbe {
                    enforce: k.rfkill_control,
                    verify: n > 0,
                    how: match (n, k.rfkill_control) {
                        (0, true) => format!(
                            "no rfkill {t} switch now: blocked for when one appears, measured unknown"
                        ),
                        (0, false) => format!("no rfkill {t} switch and no /dev/rfkill control"),
                        (n, true) => format!("rfkill {t} ({n} switch(es))"),
                        (n, false) => format!(
                            "rfkill {t} ({n} switch(es)) readable, but /dev/rfkill cannot be written (not root?)"
                        ),
                    },
                }
            }
        };
        out.insert(cap, p);
    }
    out
}

/// The network row for the linux backend.
pub fn linux_network(k: &KernelProbe) -> CapabilityProbe {
    match &k.nftables_error {
        None => CapabilityProbe {
            enforce: true,
            verify: true,
            how: "nftables table inet redoubt_reach, read back with nft -j".into(),
        },
        Some(e) => CapabilityProbe {
            enforce: false,
            verify: false,
            how: format!("nftables unusable: {e}"),
        },
    }
}

/// What the sailfish backend can do with the services `b` found (and the kernel `k`).
pub fn sailfish_capabilities(
    b: &BusProbe,
    k: &KernelProbe,
) -> BTreeMap<Capability, CapabilityProbe> {
    let limits = sailfish::limitations();
    let mut out = BTreeMap::new();
    for cap in Capability::ALL {
        let tech = sailfish::technology_of(cap);
        let has_tech = tech.is_some_and(|t| b.connman && b.technologies.iter().any(|x| x == t));
        let (able, how) = match cap {
            Capability::Wifi | Capability::Bluetooth => (
                has_tech,
                format!("ConnMan technology {} Powered", tech.unwrap_or("?")),
            ),
            Capability::Location => (
                has_tech && b.sailjaild,
                "ConnMan technology gps Powered and the sailjail Location permission".to_owned(),
            ),
            Capability::CellularData => (
                b.ofono,
                "oFono ConnectionManager Powered on every modem, and ConnMan cellular".to_owned(),
            ),
            Capability::Camera => (
                b.sailjaild,
                "sailjail Camera permission; running sandboxes holding it stopped".to_owned(),
            ),
            Capability::Microphone => (
                b.sailjaild,
                format!(
                    "sailjail Microphone and Audio permissions; capture devices open in /proc/asound ({} card(s) with capture)",
                    k.capture_cards.len()
                ),
            ),
            Capability::Nfc => (b.mce, "MCE radio state NFC bit".to_owned()),
            _ => (
                false,
                "no Sailfish interface is driven for this; reported unknown".to_owned(),
            ),
        };
        let notes: Vec<&str> = limits
            .iter()
            .filter(|(c, _)| *c == cap)
            .map(|(_, n)| *n)
            .collect();
        let how = if notes.is_empty() {
            how
        } else {
            format!("{how}. {}", notes.join(". "))
        };
        out.insert(
            cap,
            CapabilityProbe {
                enforce: able,
                verify: able,
                how,
            },
        );
    }
    out
}

/// Probes this device: the kernel under `roots` and the system bus, and picks a
/// backend: `sailfish` where its services answer, else `linux` where sysfs is mounted.
pub fn probe(roots: &Roots) -> Probe {
    let kernel = kernel(roots, "nft");
    let bus = sailfish::probe(None);
    let sysfs = roots.sys.join("class").is_dir();
    let (choice, reason) = if bus.hung {
        (
            None,
            format!(
                "the system bus does not answer ({}): Sailfish cannot be told from mainline Linux; name the backend with --hardware",
                bus.error.as_deref().unwrap_or("no answer")
            ),
        )
    } else if bus.is_sailfish() {
        (
            Some(HardwareKind::Sailfish),
            "Sailfish OS / Aurora OS services answer on the system bus".to_owned(),
        )
    } else if sysfs {
        (
            Some(HardwareKind::Linux),
            "sysfs is mounted and no Sailfish services answer: mainline kernel interfaces"
                .to_owned(),
        )
    } else {
        (
            None,
            format!(
                "no {} and no Sailfish services: not a Linux device",
                roots.sys.join("class").display()
            ),
        )
    };
    let (capabilities, network) = if choice == Some(HardwareKind::Sailfish) {
        (sailfish_capabilities(&bus, &kernel), linux_network(&kernel))
    } else {
        (linux_capabilities(&kernel), linux_network(&kernel))
    };
    Probe {
        choice,
        reason,
        capabilities,
        network,
        kernel,
        sailfish: bus,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_fake_phone_is_probed_without_changing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::under(tmp.path());
        let r = roots.sys.join("class/rfkill/rfkill0");
        fs::create_dir_all(&r).unwrap();
        fs::write(r.join("type"), "bluetooth\n").unwrap();
        fs::write(r.join("soft"), "0\n").unwrap();
        fs::write(r.join("hard"), "0\n").unwrap();
        fs::create_dir_all(&roots.dev).unwrap();
        fs::write(roots.rfkill_dev(), []).unwrap();
        let dev = roots.sys.join("devices/platform/cam.0");
        let drv = roots.sys.join("bus/platform/drivers/cam");
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(&drv).unwrap();
        symlink(&drv, dev.join("driver")).unwrap();
        let v = roots.sys.join("class/video4linux/video0");
        fs::create_dir_all(&v).unwrap();
        symlink(&dev, v.join("device")).unwrap();
        let sub = roots.proc.join("asound/card0/pcm0c/sub0");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("status"), "closed\n").unwrap();

        let p = probe(&roots);
        assert_eq!(p.choice, Some(HardwareKind::Linux));
        assert_eq!(p.kernel.radios.get("bluetooth"), Some(&1));
        assert_eq!(p.kernel.camera_drivers, ["cam:cam.0"]);
        assert_eq!(p.kernel.capture_cards_stuck, ["card0"]);
        assert!(p.kernel.recording_now.is_empty(), "the substream is closed");
        let caps = &p.capabilities;
        assert!(caps[&Capability::Bluetooth].enforce && caps[&Capability::Bluetooth].verify);
        assert!(caps[&Capability::Wifi].enforce && !caps[&Capability::Wifi].verify);
        assert!(caps[&Capability::Camera].enforce);
        assert!(!caps[&Capability::Microphone].enforce);
        assert!(!caps[&Capability::Screenshots].verify);
        // Nothing was written.
        assert_eq!(fs::read(roots.rfkill_dev()).unwrap(), Vec::<u8>::new());

        let none = probe(&Roots::under(&tmp.path().join("empty")));
        assert_eq!(none.choice, None);
    }
}
