//! Cameras and capture (microphone) devices as the kernel shows them.
//!
//! **Camera** is `off` when `/sys/class/video4linux` lists no device and no process
//! holds a `/dev/video*` or `/dev/media*` open (an unbound driver can leave an open
//! file behind); `on` when a device is listed or held; `unknown` when sysfs or a
//! process's file table cannot be read.
//!
//! **Microphone** is `off` when no sound card has a capture PCM
//! (`/proc/asound/card*/pcm*c`); `on` when one has — whether or not a substream is
//! open right now, since a present capture device can record at any moment. Which
//! substreams are open (`status` other than `closed`) is reported separately, to name
//! who is recording.

use std::fs;
use std::path::{Path, PathBuf};

use redoubt_proto::CapabilityState;

/// Entries of `dir`, or `None` when it cannot be read; a missing directory is empty.
fn entries(dir: &Path) -> Option<Vec<(String, PathBuf)>> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut out = Vec::new();
            for e in rd {
                let e = e.ok()?;
                out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
            out.sort();
            Some(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
        Err(_) => None,
    }
}

/// The V4L2 devices sysfs lists (`video0`, `v4l-subdev1`, …), or `None` if unreadable
/// or absent: without the `video4linux` class (V4L2 not loaded, or a kernel that shows
/// cameras another way) the kernel says nothing about cameras, which is not "none".
pub fn video_devices(sys: &Path) -> Option<Vec<String>> {
    let dir = sys.join("class/video4linux");
    if !dir.is_dir() {
        return None;
    }
    entries(&dir).map(|v| v.into_iter().map(|(n, _)| n).collect())
}

fn is_camera_node(target: &Path, dev: &Path) -> bool {
    target.parent() == Some(dev)
        && target.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with("video") || n.starts_with("media")
        })
}

/// Processes (pid, device node) that hold a camera node (`video*`, `media*` under
/// `dev`) open, from `proc/*/fd`. `None` when a process's file table cannot be read
/// (other than the process having exited meanwhile).
pub fn camera_holders(proc: &Path, dev: &Path) -> Option<Vec<(u32, PathBuf)>> {
    let mut held = Vec::new();
    for (name, path) in entries(proc)? {
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let fds = match fs::read_dir(path.join("fd")) {
            Ok(fds) => fds,
            // Gone between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && is_camera_node(&target, dev)
            {
                held.push((pid, target));
            }
        }
    }
    held.sort();
    held.dedup();
    Some(held)
}

/// The measured camera state (see the module text).
pub fn camera_state(sys: &Path, proc: &Path, dev: &Path) -> CapabilityState {
    match (video_devices(sys), camera_holders(proc, dev)) {
        (Some(devices), Some(holders)) if devices.is_empty() && holders.is_empty() => {
            CapabilityState::Off
        }
        (Some(devices), _) if !devices.is_empty() => CapabilityState::On,
        (_, Some(holders)) if !holders.is_empty() => CapabilityState::On,
        _ => CapabilityState::Unknown,
    }
}

/// One capture substream: `cardN/pcmMc/subK` and its `status` first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSub {
    /// E.g. `card0/pcm0c/sub0`.
    pub name: String,
    /// `closed`, or the first line of an open stream's status (`state: RUNNING`).
    pub status: String,
}

/// Every capture substream under `proc/asound`, or `None` if unreadable or absent
/// (no ALSA, or procfs without it: nothing is known about capture then).
pub fn capture_substreams(proc: &Path) -> Option<Vec<CaptureSub>> {
    if !proc.join("asound").is_dir() {
        return None;
    }
    let mut subs = Vec::new();
    for (card, card_path) in entries(&proc.join("asound"))? {
        if !card.starts_with("card") || card[4..].parse::<u32>().is_err() {
            continue;
        }
        for (pcm, pcm_path) in entries(&card_path)? {
            if !(pcm.starts_with("pcm") && pcm.ends_with('c')) {
                continue;
            }
            for (sub, sub_path) in entries(&pcm_path)? {
                if !sub.starts_with("sub") {
                    continue;
                }
                let status = fs::read_to_string(sub_path.join("status")).ok()?;
                subs.push(CaptureSub {
                    name: format!("{card}/{pcm}/{sub}"),
                    status: status.lines().next().unwrap_or("").trim().to_owned(),
                });
            }
        }
    }
    Some(subs)
}

/// The measured microphone state (see the module text).
pub fn microphone_state(proc: &Path) -> CapabilityState {
    match capture_substreams(proc) {
        Some(subs) if subs.is_empty() => CapabilityState::Off,
        Some(_) => CapabilityState::On,
        None => CapabilityState::Unknown,
    }
}

/// Whether anything records now: `on` when a capture substream is open, `off` when
/// every one is `closed` (or there is none), `unknown` when `/proc/asound` is
/// unreadable. Weaker than [`microphone_state`]: a closed capture device can be opened
/// at any moment; for backends that cannot remove the device (Sailfish, where the card
/// also carries calls) and revoke access to it by other means.
pub fn capture_open_state(proc: &Path) -> CapabilityState {
    match capture_substreams(proc) {
        Some(subs) if subs.iter().all(|s| s.status == "closed") => CapabilityState::Off,
        Some(_) => CapabilityState::On,
        None => CapabilityState::Unknown,
    }
}

/// The capture substreams open now (recording), for `probe`.
pub fn recording_now(proc: &Path) -> Vec<CaptureSub> {
    capture_substreams(proc)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.status != "closed")
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Tree {
        _tmp: tempfile::TempDir,
        sys: PathBuf,
        proc: PathBuf,
        dev: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, proc, dev) = (
            tmp.path().join("sys"),
            tmp.path().join("proc"),
            tmp.path().join("dev"),
        );
        for d in [&sys, &proc, &dev] {
            fs::create_dir_all(d).unwrap();
        }
        Tree {
            _tmp: tmp,
            sys,
            proc,
            dev,
        }
    }

    fn open_fd(t: &Tree, pid: u32, fd: u32, target: &Path) {
        let dir = t.proc.join(format!("{pid}/fd"));
        fs::create_dir_all(&dir).unwrap();
        symlink(target, dir.join(fd.to_string())).unwrap();
    }

    #[test]
    fn camera_is_off_only_with_no_device_and_no_holder() {
        let t = tree();
        // No video4linux class: the kernel says nothing about cameras.
        assert_eq!(
            camera_state(&t.sys, &t.proc, &t.dev),
            CapabilityState::Unknown
        );
        fs::create_dir_all(t.sys.join("class/video4linux")).unwrap();
        assert_eq!(camera_state(&t.sys, &t.proc, &t.dev), CapabilityState::Off);
        // A listed device.
        fs::create_dir_all(t.sys.join("class/video4linux/video0")).unwrap();
        assert_eq!(camera_state(&t.sys, &t.proc, &t.dev), CapabilityState::On);
        fs::remove_dir(t.sys.join("class/video4linux/video0")).unwrap();
        // The driver is gone but a process still holds the node open.
        open_fd(&t, 42, 3, &t.dev.join("null"));
        open_fd(&t, 42, 7, &t.dev.join("video0"));
        open_fd(&t, 43, 4, &t.dev.join("media1"));
        assert_eq!(
            camera_holders(&t.proc, &t.dev).unwrap(),
            [(42, t.dev.join("video0")), (43, t.dev.join("media1"))]
        );
        assert_eq!(camera_state(&t.sys, &t.proc, &t.dev), CapabilityState::On);
        // A node of the same name elsewhere is not a camera.
        fs::remove_dir_all(t.proc.join("42")).unwrap();
        fs::remove_dir_all(t.proc.join("43")).unwrap();
        open_fd(&t, 44, 5, &t.proc.join("video0"));
        assert_eq!(camera_state(&t.sys, &t.proc, &t.dev), CapabilityState::Off);
    }

    #[test]
    fn unreadable_file_tables_make_the_camera_unknown() {
        let t = tree();
        // A process whose `fd` is not a directory stands for one we may not read.
        fs::create_dir_all(t.proc.join("99")).unwrap();
        fs::write(t.proc.join("99/fd"), "").unwrap();
        assert_eq!(camera_holders(&t.proc, &t.dev), None);
        assert_eq!(
            camera_state(&t.sys, &t.proc, &t.dev),
            CapabilityState::Unknown
        );
    }

    fn capture(t: &Tree, card: u32, pcm: &str, sub: u32, status: &str) {
        let dir = t.proc.join(format!("asound/card{card}/{pcm}/sub{sub}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("status"), status).unwrap();
    }

    #[test]
    fn microphone_follows_the_capture_pcms() {
        let t = tree();
        // No /proc/asound (no ALSA, or hidden): nothing is known.
        assert_eq!(microphone_state(&t.proc), CapabilityState::Unknown);
        assert_eq!(capture_open_state(&t.proc), CapabilityState::Unknown);
        fs::create_dir_all(t.proc.join("asound")).unwrap();
        assert_eq!(microphone_state(&t.proc), CapabilityState::Off);
        // Playback only: still off.
        capture(&t, 0, "pcm0p", 0, "closed\n");
        assert_eq!(microphone_state(&t.proc), CapabilityState::Off);
        // A capture PCM, idle: on (it can record), nobody recording.
        capture(&t, 1, "pcm0c", 0, "closed\n");
        assert_eq!(microphone_state(&t.proc), CapabilityState::On);
        assert!(recording_now(&t.proc).is_empty());
        // Recording.
        capture(&t, 1, "pcm0c", 1, "state: RUNNING\nowner_pid   : 77\n");
        assert_eq!(
            recording_now(&t.proc),
            [CaptureSub {
                name: "card1/pcm0c/sub1".into(),
                status: "state: RUNNING".into()
            }]
        );
        // An unreadable status: unknown.
        fs::remove_file(t.proc.join("asound/card1/pcm0c/sub0/status")).unwrap();
        assert_eq!(microphone_state(&t.proc), CapabilityState::Unknown);
    }
}
