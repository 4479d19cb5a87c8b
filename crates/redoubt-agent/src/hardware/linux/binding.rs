//! Driver bindings through sysfs: which driver a class device (a camera's
//! `video4linux/video0`, a sound card's `sound/card0`) hangs off, unbinding it, and
//! binding it back later.
//!
//! A [`Binding`] is what it takes to undo an unbind (the driver's directory and the
//! device's name on its bus); the agent keeps the list in its state directory so that
//! a restart or a phone reboot into `standard` can rebind what it unbound.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A device bound to a driver.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    /// The driver's sysfs directory (holds `bind` and `unbind`).
    pub driver: PathBuf,
    /// The device's name on its bus (what `unbind` takes), e.g. `vivid.0`, `1-1:1.0`.
    pub device: String,
}

/// Why a binding could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct BindingError {
    what: String,
    #[source]
    source: std::io::Error,
}

/// The bindings behind every device of `class` (`video4linux`, `sound`) under `sys`.
/// Class devices without a driver (virtual ones, e.g. `sound/timer`) are skipped; a
/// missing class directory is none.
pub fn class_bindings(sys: &Path, class: &str) -> Result<Vec<Binding>, BindingError> {
    let dir = sys.join("class").join(class);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BindingError {
                what: format!("listing {}", dir.display()),
                source,
            });
        }
    };
    let mut found = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| BindingError {
            what: format!("listing {}", dir.display()),
            source,
        })?;
        // `device` points at the parent device; its `driver` at the driver.
        let Ok(device) = fs::canonicalize(entry.path().join("device")) else {
            continue;
        };
        let Ok(driver) = fs::canonicalize(device.join("driver")) else {
            continue;
        };
        let Some(name) = device.file_name() else {
            continue;
        };
        found.insert(Binding {
            driver,
            device: name.to_string_lossy().into_owned(),
        });
    }
    Ok(found.into_iter().collect())
}

impl BindingError {
    /// The OS error number behind it (`EBUSY`: already bound, `ENODEV`: no such device).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn write_attr(path: &Path, value: &str) -> Result<(), BindingError> {
    fs::write(path, value).map_err(|source| BindingError {
        what: format!("writing {value:?} to {}", path.display()),
        source,
    })
}

/// Detaches the device from its driver (`echo DEVICE > DRIVER/unbind`).
pub fn unbind(b: &Binding) -> Result<(), BindingError> {
    write_attr(&b.driver.join("unbind"), &b.device)
}

/// Attaches the device to its driver again (`echo DEVICE > DRIVER/bind`).
pub fn rebind(b: &Binding) -> Result<(), BindingError> {
    write_attr(&b.driver.join("bind"), &b.device)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake sysfs with a class device → parent device → driver chain.
    fn attach(sys: &Path, class: &str, name: &str, device_path: &str, driver_path: &str) {
        let class_dev = sys.join("class").join(class).join(name);
        fs::create_dir_all(&class_dev).unwrap();
        let device = sys.join(device_path);
        fs::create_dir_all(&device).unwrap();
        let driver = sys.join(driver_path);
        fs::create_dir_all(&driver).unwrap();
        for attr in ["bind", "unbind"] {
            fs::write(driver.join(attr), "").unwrap();
        }
        symlink(&device, class_dev.join("device")).unwrap();
        if !device.join("driver").exists() {
            symlink(&driver, device.join("driver")).unwrap();
        }
    }

    #[test]
    fn finds_each_driver_once_and_writes_the_device_name() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        attach(
            sys,
            "video4linux",
            "video0",
            "devices/platform/vivid.0",
            "bus/platform/drivers/vivid",
        );
        // A second node of the same device (e.g. metadata capture).
        attach(
            sys,
            "video4linux",
            "video1",
            "devices/platform/vivid.0",
            "bus/platform/drivers/vivid",
        );
        attach(
            sys,
            "video4linux",
            "video2",
            "devices/pci0000:00/usb1/1-1/1-1:1.0",
            "bus/usb/drivers/uvcvideo",
        );
        // A class device without a driver is skipped.
        fs::create_dir_all(sys.join("class/video4linux/v4l-loopback")).unwrap();
        let found = class_bindings(sys, "video4linux").unwrap();
        let sys = fs::canonicalize(sys).unwrap();
        assert_eq!(
            found,
            [
                Binding {
                    driver: sys.join("bus/platform/drivers/vivid"),
                    device: "vivid.0".into()
                },
                Binding {
                    driver: sys.join("bus/usb/drivers/uvcvideo"),
                    device: "1-1:1.0".into()
                },
            ]
        );
        unbind(&found[0]).unwrap();
        assert_eq!(
            fs::read_to_string(sys.join("bus/platform/drivers/vivid/unbind")).unwrap(),
            "vivid.0"
        );
        rebind(&found[1]).unwrap();
        assert_eq!(
            fs::read_to_string(sys.join("bus/usb/drivers/uvcvideo/bind")).unwrap(),
            "1-1:1.0"
        );
        assert!(class_bindings(&sys, "sound").unwrap().is_empty());
    }

    #[test]
    fn a_driver_that_refuses_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let b = Binding {
            driver: tmp.path().join("bus/platform/drivers/gone"),
            device: "x.0".into(),
        };
        let e = unbind(&b).unwrap_err();
        assert!(e.to_string().contains("drivers/gone/unbind"), "{e}");
    }
}
