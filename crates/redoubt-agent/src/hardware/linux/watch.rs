//! Watching the kernel for changes behind the agent's back, so that a radio switched
//! on or a camera plugged in is repaired within a second instead of at the next
//! periodic re-check.
//!
//! Two threads, each calling the wake-up on what it sees:
//! - `/dev/rfkill` read as a stream of 8-byte (or longer) events: one per radio
//!   added, removed or switched;
//! - the kernel's uevent netlink socket (`NETLINK_KOBJECT_UEVENT`, multicast group 1,
//!   open to unprivileged readers too): devices of the classes the backend governs
//!   appearing, disappearing, or a driver being bound.
//!
//! Either may be missing (no rfkill support, a sandbox without netlink); the watcher
//! then runs with what it has and says so, and the periodic re-check covers the rest.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, netlink};

use super::Roots;
use crate::hardware::{HardwareError, Wake};

/// The uevent subsystems whose devices the backend switches or measures.
const SUBSYSTEMS: [&str; 5] = ["rfkill", "video4linux", "sound", "net", "media"];

/// Whether a kernel uevent (`ACTION@DEVPATH\0KEY=VALUE\0…`) can change what the
/// backend measures: a device of a governed subsystem, or any driver bound.
pub fn relevant_uevent(msg: &[u8]) -> bool {
    let mut fields = msg.split(|b| *b == 0).map(String::from_utf8_lossy);
    let Some(header) = fields.next() else {
        return false;
    };
    if header.starts_with("bind@") {
        return true;
    }
    fields.any(|f| {
        f.strip_prefix("SUBSYSTEM=")
            .is_some_and(|s| SUBSYSTEMS.contains(&s))
    })
}

fn uevent_socket() -> std::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )?;
    rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 1))?;
    Ok(fd)
}

fn watch_uevents(fd: OwnedFd, wake: Wake) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => {
                let msg = &buf[..n];
                if relevant_uevent(msg) {
                    let header = msg.split(|b| *b == 0).next().unwrap_or_default();
                    tracing::debug!(uevent = %String::from_utf8_lossy(header), "device change seen");
                    wake();
                }
            }
            // ENOBUFS: events were lost while we were busy; re-check to be safe.
            Err(e) if e == rustix::io::Errno::NOBUFS => wake(),
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(e) => {
                tracing::warn!(error = %e, "the uevent watcher stopped; hot-plugged devices are found at the periodic re-check");
                return;
            }
        }
    }
}

fn watch_rfkill(mut dev: File, wake: Wake) {
    // Each read returns one event (8 bytes on old kernels, 9 since 5.11).
    let mut buf = [0u8; 64];
    loop {
        match dev.read(&mut buf) {
            Ok(0) => {
                tracing::warn!(
                    "/dev/rfkill closed; radio changes are found at the periodic re-check"
                );
                return;
            }
            Ok(n) => {
                if let [a, b, c, d, radio_type, op, soft, hard, ..] = buf[..n] {
                    tracing::debug!(
                        index = u32::from_ne_bytes([a, b, c, d]),
                        radio_type,
                        op,
                        soft,
                        hard,
                        "rfkill event"
                    );
                }
                wake();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "the rfkill watcher stopped; radio changes are found at the periodic re-check");
                return;
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), HardwareError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| HardwareError::Unavailable(format!("starting the {name} thread: {e}")))
}

/// Starts the watchers that can start. True when at least one runs.
///
/// The uevent socket is the kernel's, whatever the roots: with fake roots (tests) it
/// still reports the real machine's devices, which only causes extra re-checks.
pub fn start(roots: &Roots, wake: Wake) -> Result<bool, HardwareError> {
    let mut running = Vec::new();
    match open_rfkill(&roots.rfkill_dev()) {
        Ok(dev) => {
            let w = wake.clone();
            spawn("rfkill-watch", move || watch_rfkill(dev, w))?;
            running.push("rfkill events");
        }
        Err(e) => tracing::warn!(error = %e, "not watching rfkill events"),
    }
    match uevent_socket() {
        Ok(fd) => {
            spawn("uevent-watch", move || watch_uevents(fd, wake))?;
            running.push("device hot-plug");
        }
        Err(e) => tracing::warn!(error = %e, "not watching device hot-plug (uevent netlink)"),
    }
    if !running.is_empty() {
        tracing::info!(watching = %running.join(", "), "hardware watcher started");
    }
    Ok(!running.is_empty())
}

fn open_rfkill(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_governed_subsystems_and_driver_binds_wake_the_agent() {
        assert!(relevant_uevent(
            b"add@/devices/platform/vivid.0/video4linux/video0\0ACTION=add\0DEVPATH=/devices/platform/vivid.0/video4linux/video0\0SUBSYSTEM=video4linux\0SEQNUM=1\0"
        ));
        assert!(relevant_uevent(
            b"bind@/devices/platform/vivid.0\0ACTION=bind\0SUBSYSTEM=platform\0DRIVER=vivid\0"
        ));
        assert!(relevant_uevent(
            b"add@/devices/virtual/misc/vhci/hci1/rfkill3\0ACTION=add\0SUBSYSTEM=rfkill\0"
        ));
        assert!(!relevant_uevent(
            b"change@/devices/platform/battery/power_supply/BAT0\0ACTION=change\0SUBSYSTEM=power_supply\0"
        ));
        assert!(!relevant_uevent(b""));
        // A value that merely contains a subsystem name does not count.
        assert!(!relevant_uevent(b"change@/x\0SUBSYSTEM=sound_extra\0"));
    }

    #[test]
    fn rfkill_events_wake_and_a_closed_stream_stops_the_thread() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        // A regular file stands for /dev/rfkill: two events, then end of stream.
        let path = tmp.path().join("rfkill");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let wake: Wake = Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        // Reads of a regular file are not split per event: one read takes both.
        watch_rfkill(File::open(&path).unwrap(), wake);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
