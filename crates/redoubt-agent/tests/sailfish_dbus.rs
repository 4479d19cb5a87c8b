//! The Sailfish backend against mock ConnMan, oFono, sailjaild and MCE services on a
//! private `dbus-daemon` (see `dbus_mock`), with a fake kernel tree: what enforcing
//! changes in the services, what verifying measures (a driver that ignores the
//! change, a missing service, the kernel contradicting the service), what `Allow`
//! gives back (across a restart too), stopping a running sandbox, and the watcher.
//!
//! These tests need `dbus-daemon` (Debian package `dbus-daemon`; `.ci/run` installs
//! it) and fail with that message without it.

// A test's helpers panic on purpose: the panic is the failure report.
#![allow(clippy::unwrap_used)]

mod dbus_mock;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbus_mock::{ALL, Bus, Service, Services, World, phone};
use redoubt_agent::hardware::linux::Roots;
use redoubt_agent::hardware::sailfish::{self, SailfishHardware, state::SAILFISH_STATE_FILE};
use redoubt_agent::hardware::{Hardware, HardwareError, Wake};
use redoubt_proto::Capability::{self, *};
use redoubt_proto::CapabilityState::{self, Off, On, Unknown};
use redoubt_proto::Rule::{Allow, Deny};

const UID: u32 = 100_000;

/// A bus, services, a fake kernel tree and a state directory.
struct Rig {
    services: Services,
    bus: Bus,
    roots: Roots,
    state_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn rig_with(world: World, which: &[Service]) -> Rig {
    let bus = Bus::start().unwrap();
    let services = Services::start(bus.address(), world, which).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let roots = Roots::under(&tmp.path().join("kernel"));
    for d in [&roots.sys, &roots.dev, &roots.proc] {
        fs::create_dir_all(d).unwrap();
    }
    let state_dir = tmp.path().join("state");
    fs::create_dir_all(&state_dir).unwrap();
    Rig {
        services,
        bus,
        roots,
        state_dir,
        _tmp: tmp,
    }
}

fn rig() -> Rig {
    rig_with(phone(), &ALL)
}

impl Rig {
    fn open(&self) -> SailfishHardware {
        sailfish::open_at(self.bus.address(), self.roots.clone(), &self.state_dir).unwrap()
    }

    fn granted(&self, app: &str) -> BTreeSet<String> {
        self.services
            .world()
            .granted
            .get(&(UID, app.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    fn powered(&self, kind: &str) -> bool {
        self.services.world().techs[kind].powered
    }

    /// A process entry in the fake proc tree (the pid may be a real process's).
    fn fake_process(&self, pid: u32, argv: &[&str]) {
        let dir = self.roots.proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cmdline"), argv.join("\0") + "\0").unwrap();
        fs::write(dir.join("stat"), format!("{pid} (x) S 1 0 0")).unwrap();
        fs::write(
            dir.join("status"),
            "Name:\tx\nUid:\t100000\t100000\t100000\t100000\n",
        )
        .unwrap();
    }

    fn rfkill(&self, n: u32, kind: &str, soft: u8) {
        let dir = self.roots.sys.join(format!("class/rfkill/rfkill{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        fs::write(dir.join("soft"), format!("{soft}\n")).unwrap();
        fs::write(dir.join("hard"), "0\n").unwrap();
    }
}

fn set(perms: &[&str]) -> BTreeSet<String> {
    perms.iter().map(|s| s.to_string()).collect()
}

fn check(hw: &SailfishHardware, expect: &[(Capability, CapabilityState)]) {
    for (cap, state) in expect {
        assert_eq!(hw.verify(*cap), *state, "{cap}");
    }
}

/// A child process killed when the test ends, whatever happens.
struct Kid(Child);

impl Kid {
    fn sleeper() -> Kid {
        Kid(Command::new("sleep").arg("60").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn exited_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn secure_site_denials_reach_the_services_and_measure_off() {
    let rig = rig();
    let mut hw = rig.open();
    check(
        &hw,
        &[
            (Camera, On),
            (Microphone, On),
            (Bluetooth, On),
            (Location, On),
            (Wifi, On),
        ],
    );
    for cap in [Camera, Microphone, Bluetooth, Location] {
        hw.enforce(cap, Deny).unwrap();
    }
    assert_eq!(rig.granted("jolla-camera"), set(&["Pictures"]));
    assert_eq!(rig.granted("harbour-recorder"), set(&[]));
    assert_eq!(rig.granted("harbour-maps"), set(&["Internet"]));
    assert!(!rig.powered("bluetooth"));
    assert!(!rig.powered("gps"));
    check(
        &hw,
        &[
            (Camera, Off),
            (Microphone, Off),
            (Bluetooth, Off),
            (Location, Off),
            // Not asked for: untouched.
            (Wifi, On),
            (CellularData, On),
            (Nfc, On),
            // No Sailfish interface.
            (UsbData, Unknown),
            (Screenshots, Unknown),
        ],
    );
    assert!(rig.powered("wifi"));
    assert!(matches!(
        hw.enforce(UsbData, Deny),
        Err(HardwareError::Unavailable(_))
    ));
    assert_eq!(hw.verify_network(), redoubt_proto::NetworkState::Unknown);
}

#[test]
fn allow_gives_back_exactly_what_was_taken() {
    let rig = rig();
    // The person had switched Bluetooth off already.
    rig.services
        .world()
        .techs
        .get_mut("bluetooth")
        .unwrap()
        .powered = false;
    let mut hw = rig.open();
    for cap in [Camera, Microphone, Bluetooth, Wifi] {
        hw.enforce(cap, Deny).unwrap();
    }
    // Someone grants the recorder something else meanwhile: kept.
    rig.services
        .world()
        .granted
        .get_mut(&(UID, "harbour-recorder".into()))
        .unwrap()
        .insert("Internet".into());
    hw.enforce(Camera, Allow).unwrap();
    assert_eq!(rig.granted("jolla-camera"), set(&["Camera", "Pictures"]));
    // Never granted the camera: does not get it now.
    assert_eq!(rig.granted("harbour-notes"), set(&["Internet"]));
    check(&hw, &[(Camera, On), (Microphone, Off)]);
    hw.enforce(Microphone, Allow).unwrap();
    assert_eq!(
        rig.granted("jolla-camera"),
        set(&["Audio", "Camera", "Microphone", "Pictures"])
    );
    assert_eq!(
        rig.granted("harbour-recorder"),
        set(&["Audio", "Internet", "Microphone"])
    );
    for cap in [Bluetooth, Wifi] {
        hw.enforce(cap, Allow).unwrap();
    }
    assert!(rig.powered("wifi"));
    // Off before the mode: stays off.
    assert!(!rig.powered("bluetooth"));
    // Nothing left to undo.
    let state = hw.load_state().unwrap();
    assert!(
        state.revoked.is_empty() && state.powered_off.is_empty(),
        "{state:?}"
    );
    // Allow with nothing recorded changes nothing.
    hw.enforce(Location, Allow).unwrap();
    assert_eq!(rig.granted("harbour-maps"), set(&["Internet", "Location"]));
}

#[test]
fn a_stuck_driver_is_measured_on_not_off() {
    let mut world = phone();
    world.techs.get_mut("wifi").unwrap().stuck = true;
    world.data_mut("/ril_0").stuck = true;
    world.mce_stuck = true;
    let rig = rig_with(world, &ALL);
    let mut hw = rig.open();
    // The services accept the requests...
    for cap in [Wifi, CellularData, Nfc] {
        hw.enforce(cap, Deny).unwrap();
    }
    // ...and nothing changed: measured on.
    assert!(rig.powered("wifi"));
    check(&hw, &[(Wifi, On), (CellularData, On), (Nfc, On)]);
    // ConnMan's cellular technology did go off; the modem still carries data.
    assert!(!rig.powered("cellular"));
}

#[test]
fn a_missing_service_is_unknown_never_off() {
    let mut world = phone();
    world.techs.remove("bluetooth");
    let rig = rig_with(world, &[Service::Connman]);
    let mut hw = rig.open();
    check(
        &hw,
        &[
            (Camera, Unknown),
            (Microphone, Unknown),
            (Nfc, Unknown),
            // ConnMan's cellular technology is powered: on, whatever oFono would say.
            (CellularData, On),
            // ConnMan runs but has no Bluetooth technology: proves nothing.
            (Bluetooth, Unknown),
            (Wifi, On),
        ],
    );
    assert!(matches!(
        hw.enforce(Camera, Deny),
        Err(HardwareError::Unavailable(_))
    ));
    assert!(matches!(
        hw.enforce(Bluetooth, Deny),
        Err(HardwareError::Unavailable(_))
    ));
    assert!(hw.enforce(Nfc, Deny).is_err());
    // Cellular: ConnMan's part is done, oFono's is missing: still unknown.
    assert!(hw.enforce(CellularData, Deny).is_err());
    assert!(!rig.powered("cellular"));
    // Location: GPS goes off, the permissions cannot be read: still unknown.
    assert!(hw.enforce(Location, Deny).is_err());
    assert!(!rig.powered("gps"));
    check(&hw, &[(CellularData, Unknown), (Location, Unknown)]);
}

#[test]
fn the_kernel_saying_on_wins_over_the_service() {
    let mut world = phone();
    world.techs.get_mut("wifi").unwrap().powered = false;
    let rig = rig_with(world, &ALL);
    let hw = rig.open();
    // No rfkill switch for Wi-Fi: ConnMan alone decides.
    check(&hw, &[(Wifi, Off)]);
    rig.rfkill(0, "wlan", 0);
    check(&hw, &[(Wifi, On)]);
    rig.rfkill(0, "wlan", 1);
    check(&hw, &[(Wifi, Off)]);
    // A camera the kernel shows keeps the camera on whatever sailjail says.
    let mut hw = hw;
    hw.enforce(Camera, Deny).unwrap();
    check(&hw, &[(Camera, Off)]);
    fs::create_dir_all(rig.roots.sys.join("class/video4linux/video0")).unwrap();
    check(&hw, &[(Camera, On)]);
    // A capture device that is open (someone records) keeps the microphone on; one
    // that is present but closed does not (the card stays: it carries calls).
    hw.enforce(Microphone, Deny).unwrap();
    check(&hw, &[(Microphone, Off)]);
    let pcm = rig.roots.proc.join("asound/card0/pcm0c/sub0");
    fs::create_dir_all(&pcm).unwrap();
    fs::write(pcm.join("status"), "closed\n").unwrap();
    check(&hw, &[(Microphone, Off)]);
    fs::write(pcm.join("status"), "state: RUNNING\nowner_pid   : 4242\n").unwrap();
    check(&hw, &[(Microphone, On)]);
    // Unreadable: unknown.
    fs::remove_file(pcm.join("status")).unwrap();
    check(&hw, &[(Microphone, Unknown)]);
}

#[test]
fn revocations_survive_reopening_the_backend() {
    let rig = rig();
    {
        let mut hw = rig.open();
        hw.enforce(Location, Deny).unwrap();
        hw.enforce(CellularData, Deny).unwrap();
        hw.enforce(Nfc, Deny).unwrap();
    }
    assert!(rig.state_dir.join(SAILFISH_STATE_FILE).exists());
    assert_eq!(rig.granted("harbour-maps"), set(&["Internet"]));
    let mut hw = rig.open();
    // MCE's bit alone is a setting: unknown until the kernel's nfc switch confirms it.
    check(&hw, &[(Location, Off), (CellularData, Off), (Nfc, Unknown)]);
    rig.rfkill(7, "nfc", 1);
    check(&hw, &[(Nfc, Off)]);
    for cap in [Location, CellularData, Nfc] {
        hw.enforce(cap, Allow).unwrap();
    }
    assert_eq!(rig.granted("harbour-maps"), set(&["Internet", "Location"]));
    assert!(rig.powered("gps") && rig.powered("cellular"));
    let w = rig.services.world();
    assert!(w.modems["/ril_0"].data.as_ref().unwrap().powered);
    assert_eq!(w.radio_states & 0x10, 0x10);
}

#[test]
fn cellular_data_goes_through_connman_and_every_modem() {
    let rig = rig();
    let mut hw = rig.open();
    hw.enforce(CellularData, Deny).unwrap();
    assert!(!rig.powered("cellular"));
    {
        let w = rig.services.world();
        let data = w.modems["/ril_0"].data.as_ref().unwrap();
        assert!(!data.powered && !data.attached);
    }
    check(&hw, &[(CellularData, Off)]);
    // Someone powers packet data back on behind the agent's back.
    rig.services.world().data_mut("/ril_0").powered = true;
    check(&hw, &[(CellularData, On)]);
    // A modem driver that keeps the kernel's wwan switch on: on.
    hw.enforce(CellularData, Deny).unwrap();
    check(&hw, &[(CellularData, Off)]);
    rig.rfkill(3, "wwan", 0);
    check(&hw, &[(CellularData, On)]);
}

#[test]
fn a_running_sandbox_holding_the_camera_is_stopped() {
    let rig = rig();
    let mut hw = rig.open();
    // Real processes; their command lines, as sailjail and firejail leave them, are in
    // the fake proc tree under their real pids.
    let mut camera = Kid::sleeper();
    let mut launching = Kid::sleeper();
    let mut recorder = Kid::sleeper();
    let perm = |p: &str| format!("--profile=/etc/sailjail/permissions/{p}.permission");
    rig.fake_process(
        camera.pid(),
        &[
            "/usr/bin/firejail",
            "--quiet",
            "--private-bin=jolla-camera",
            "--whitelist=/usr/share/applications/jolla-camera.desktop",
            &perm("Camera"),
            &perm("Audio"),
            &perm("Base"),
            "--",
            "/usr/bin/jolla-camera",
        ],
    );
    rig.fake_process(
        launching.pid(),
        &[
            "/usr/bin/sailjail",
            "-p",
            "jolla-camera.desktop",
            "/usr/bin/jolla-camera",
        ],
    );
    rig.fake_process(
        recorder.pid(),
        &[
            "/usr/bin/firejail",
            "--quiet",
            &perm("Microphone"),
            &perm("Audio"),
            "--",
            "/usr/bin/harbour-recorder",
        ],
    );
    check(&hw, &[(Camera, On)]);
    hw.enforce(Camera, Deny).unwrap();
    assert!(camera.exited_within(Duration::from_secs(10)));
    assert!(launching.exited_within(Duration::from_secs(10)));
    // Holds no camera: left alone.
    assert!(recorder.0.try_wait().unwrap().is_none());
    // While the kernel still lists the stopped sandbox, it counts.
    check(&hw, &[(Camera, On)]);
    for kid in [&camera, &launching] {
        fs::remove_dir_all(rig.roots.proc.join(kid.pid().to_string())).unwrap();
    }
    check(&hw, &[(Camera, Off)]);
}

#[test]
fn watch_wakes_on_a_property_change() {
    let rig = rig();
    let mut hw = rig.open();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    let wake: Wake = Arc::new(move || {
        let _ = tx.lock().unwrap().send(());
    });
    assert!(hw.watch(wake).unwrap());
    // Wi-Fi switched off behind the agent's back (ConnMan signals PropertyChanged).
    rig.services.set_powered("wifi", false).unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no wake-up after ConnMan's PropertyChanged");
    while rx.try_recv().is_ok() {}
    // sailjaild's ApplicationChanged wakes too (here caused by the agent itself).
    hw.enforce(Camera, Deny).unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no wake-up after sailjaild's ApplicationChanged");
    while rx.try_recv().is_ok() {}
    // And MCE's radio_states_ind.
    hw.enforce(Nfc, Deny).unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no wake-up after MCE's radio_states_ind");
}

#[test]
fn probe_names_the_services_that_run() {
    let rig = rig_with(phone(), &[Service::Connman, Service::Mce]);
    let p = sailfish::probe(Some(rig.bus.address()));
    assert!(p.bus && p.connman && p.mce, "{p:?}");
    assert!(!p.ofono && !p.sailjaild, "{p:?}");
    assert_eq!(p.technologies, ["bluetooth", "cellular", "gps", "wifi"]);
    assert!(p.is_sailfish());
    let gone = Path::new(rig.bus.address()).to_path_buf();
    drop(rig);
    let p = sailfish::probe(gone.to_str());
    assert!(!p.bus && !p.connman && p.error.is_some(), "{p:?}");
}

#[test]
fn the_agent_probe_picks_sailfish_where_its_services_answer() {
    let rig = rig();
    let out = Command::new(env!("CARGO_BIN_EXE_redoubt-agent"))
        .args(["probe", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", rig.bus.address())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["choice"], "sailfish", "{p}");
    let caps = &p["capabilities"];
    for cap in [
        "wifi",
        "bluetooth",
        "camera",
        "microphone",
        "location",
        "cellular_data",
        "nfc",
    ] {
        assert_eq!(caps[cap]["enforce"], true, "{cap}: {p}");
    }
    assert_eq!(caps["usb_data"]["verify"], false);
    assert!(
        caps["microphone"]["how"]
            .as_str()
            .is_some_and(|h| h.contains("without all audio")),
        "the limitation is said: {p}"
    );
    // Network reach goes through nftables where `nft` runs (it does on the test machine).
    assert_eq!(p["network"]["enforce"], true, "{p}");
}

#[test]
fn a_v4l2_camera_the_kernel_shows_is_unbound_too() {
    use std::os::unix::fs::symlink;
    let rig = rig();
    let dev = rig.roots.sys.join("devices/platform/cam.0");
    let drv = rig.roots.sys.join("bus/platform/drivers/cam");
    fs::create_dir_all(&dev).unwrap();
    fs::create_dir_all(&drv).unwrap();
    fs::write(drv.join("bind"), "").unwrap();
    fs::write(drv.join("unbind"), "").unwrap();
    symlink(&drv, dev.join("driver")).unwrap();
    let video = rig.roots.sys.join("class/video4linux/video0");
    fs::create_dir_all(&video).unwrap();
    symlink(&dev, video.join("device")).unwrap();

    let mut hw = rig.open();
    hw.enforce(Camera, Deny).unwrap();
    assert_eq!(fs::read_to_string(drv.join("unbind")).unwrap(), "cam.0");
    // Revoked in sailjail, but the kernel still lists the device: on.
    check(&hw, &[(Camera, On)]);
    // The kernel drops the unbound device: off.
    fs::remove_dir_all(&video).unwrap();
    check(&hw, &[(Camera, Off)]);
    hw.enforce(Camera, Allow).unwrap();
    assert_eq!(fs::read_to_string(drv.join("bind")).unwrap(), "cam.0");
}

#[test]
fn while_android_appsupport_runs_sailjail_proves_nothing() {
    let rig = rig();
    let mut hw = rig.open();
    for cap in [Camera, Microphone, Location] {
        hw.enforce(cap, Deny).unwrap();
    }
    check(&hw, &[(Camera, Off), (Microphone, Off), (Location, Off)]);
    // Android's system server, seen from the host (the container shares the kernel).
    rig.fake_process(4711, &["system_server"]);
    check(
        &hw,
        &[
            (Camera, Unknown),
            (Microphone, Unknown),
            (Location, Unknown),
        ],
    );
    fs::remove_dir_all(rig.roots.proc.join("4711")).unwrap();
    check(&hw, &[(Camera, Off), (Microphone, Off), (Location, Off)]);
}

#[test]
fn a_bus_that_does_not_answer_is_not_taken_for_mainline_linux() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("hung-bus");
    // Accepts connections (the kernel queues them) and never speaks.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let address = format!("unix:path={}", socket.display());
    let p = sailfish::probe(Some(&address));
    assert!(p.hung && !p.bus && !p.is_sailfish(), "{p:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_redoubt-agent"))
        .args(["probe", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choice"], serde_json::Value::Null, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("name the backend with --hardware")),
        "{v}"
    );
}

#[test]
fn the_watcher_subscribes_again_after_the_bus_restarts() {
    let mut rig = rig();
    let hw = rig.open();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    let wake: Wake = Arc::new(move || {
        let _ = tx.lock().unwrap().send(());
    });
    assert!(hw.watch(wake).unwrap());
    // The system bus restarts: every connection is lost; the services come back.
    rig.bus.restart().unwrap();
    rig.services = Services::start(rig.bus.address(), phone(), &ALL).unwrap();
    // The lost connection itself wakes the agent.
    rx.recv_timeout(Duration::from_secs(5))
        .expect("no wake-up when the bus connection was lost");
    // Then the watcher subscribes again on a new connection: a change is seen again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut powered = true;
    loop {
        while rx.try_recv().is_ok() {}
        powered = !powered;
        rig.services.set_powered("wifi", powered).unwrap();
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no wake-up from a property change after the bus restarted"
        );
    }
    drop(hw);
}
