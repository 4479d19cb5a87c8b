//! The backend against fake `/sys` `/dev` `/proc` trees, where a few lines of "kernel"
//! play the part of the real one (apply an rfkill event, drop an unbound device), and
//! against the real nftables in a network namespace of its own.

use std::net::ToSocketAddrs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;

use super::*;

struct Tree {
    _tmp: tempfile::TempDir,
    roots: Roots,
    state: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::under(tmp.path());
        for d in [&roots.sys, &roots.dev, &roots.proc] {
            fs::create_dir_all(d).unwrap();
        }
        let state = tmp.path().join("state");
        fs::create_dir_all(&state).unwrap();
        fs::write(roots.rfkill_dev(), []).unwrap();
        Tree {
            _tmp: tmp,
            roots,
            state,
        }
    }

    fn hw(&self) -> LinuxHardware {
        LinuxHardware::with(
            self.roots.clone(),
            &self.state,
            vec!["nft-is-not-here".into()],
        )
    }

    fn radio(&self, index: u32, kind: &str, soft: u8, hard: u8) {
        let d = self.roots.sys.join(format!("class/rfkill/rfkill{index}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        fs::write(d.join("soft"), format!("{soft}\n")).unwrap();
        fs::write(d.join("hard"), format!("{hard}\n")).unwrap();
    }

    /// The kernel's part: applies the CHANGE_ALL event last written to /dev/rfkill.
    fn kernel_applies_rfkill(&self) {
        let e = fs::read(self.roots.rfkill_dev()).unwrap();
        assert_eq!(e.len(), 8, "one 8-byte event");
        assert_eq!(e[5], 3, "CHANGE_ALL");
        for r in rfkill::list(&self.roots.sys).unwrap() {
            if r.radio_type.map(RadioType::code) == Some(e[4]) {
                let d = self
                    .roots
                    .sys
                    .join(format!("class/rfkill/rfkill{}", r.index));
                fs::write(d.join("soft"), format!("{}\n", e[6])).unwrap();
            }
        }
        fs::write(self.roots.rfkill_dev(), []).unwrap();
    }

    /// A class device hanging off `device` (under sys/devices/platform) bound to `driver`.
    fn bound(&self, class: &str, name: &str, device: &str, driver: &str) -> PathBuf {
        let dev = self.roots.sys.join("devices/platform").join(device);
        let drv = self.roots.sys.join("bus/platform/drivers").join(driver);
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(&drv).unwrap();
        for attr in ["bind", "unbind"] {
            fs::write(drv.join(attr), "").unwrap();
        }
        if fs::symlink_metadata(dev.join("driver")).is_err() {
            symlink(&drv, dev.join("driver")).unwrap();
        }
        let class_dev = self.roots.sys.join("class").join(class).join(name);
        fs::create_dir_all(&class_dev).unwrap();
        symlink(&dev, class_dev.join("device")).unwrap();
        drv
    }

    fn capture(&self, card: u32) {
        let sub = self
            .roots
            .proc
            .join(format!("asound/card{card}/pcm0c/sub0"));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("status"), "closed\n").unwrap();
    }
}

#[test]
fn radios_are_blocked_by_type_and_measured_from_sysfs() {
    let t = Tree::new();
    t.radio(0, "wlan", 0, 0);
    t.radio(1, "bluetooth", 0, 0);
    t.radio(2, "bluetooth", 0, 1);
    let mut hw = t.hw();
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::On);

    hw.enforce(Capability::Bluetooth, Rule::Deny).unwrap();
    assert_eq!(
        fs::read(t.roots.rfkill_dev()).unwrap(),
        [0, 0, 0, 0, 2, 3, 1, 0],
        "a CHANGE_ALL soft block of type bluetooth"
    );
    // Accepted is not done: nothing changed until the kernel acts.
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::On);
    t.kernel_applies_rfkill();
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::Off);
    assert_eq!(hw.verify(Capability::Wifi), CapabilityState::On);

    // No switch of a type: unknown, never off.
    assert_eq!(hw.verify(Capability::Nfc), CapabilityState::Unknown);
    assert_eq!(hw.verify(Capability::Location), CapabilityState::Unknown);
    // Hard-blocked counts as off.
    t.radio(3, "nfc", 0, 1);
    assert_eq!(hw.verify(Capability::Nfc), CapabilityState::Off);

    // Allowing a radio the agent never blocked leaves it as the person set it.
    hw.enforce(Capability::Wifi, Rule::Allow).unwrap();
    assert_eq!(fs::read(t.roots.rfkill_dev()).unwrap(), Vec::<u8>::new());

    // The block survives a restart of the agent; Allow then undoes it.
    drop(hw);
    let mut hw = t.hw();
    hw.enforce(Capability::Bluetooth, Rule::Allow).unwrap();
    assert_eq!(
        fs::read(t.roots.rfkill_dev()).unwrap(),
        [0, 0, 0, 0, 2, 3, 0, 0]
    );
    t.kernel_applies_rfkill();
    // rfkill2 stays hard-blocked; rfkill1 is back, so bluetooth is on.
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::On);
    assert!(hw.load_state().unwrap().blocked_radios.is_empty());
    // Once undone, allowing again writes nothing.
    hw.enforce(Capability::Bluetooth, Rule::Allow).unwrap();
    assert_eq!(fs::read(t.roots.rfkill_dev()).unwrap(), Vec::<u8>::new());
}

#[test]
fn without_rfkill_the_radios_are_unknown_and_enforcing_says_why() {
    let t = Tree::new();
    fs::remove_file(t.roots.rfkill_dev()).unwrap();
    let mut hw = t.hw();
    let err = hw.enforce(Capability::Wifi, Rule::Deny).unwrap_err();
    assert!(matches!(err, HardwareError::Unavailable(_)), "{err}");
    assert_eq!(hw.verify(Capability::Wifi), CapabilityState::Unknown);
    // An unreadable switch is unknown too.
    t.radio(0, "wlan", 1, 0);
    fs::write(t.roots.sys.join("class/rfkill/rfkill0/soft"), "maybe\n").unwrap();
    assert_eq!(hw.verify(Capability::Wifi), CapabilityState::Unknown);
}

#[test]
fn cameras_are_unbound_recorded_and_rebound_after_a_restart() {
    let t = Tree::new();
    let vivid = t.bound("video4linux", "video0", "vivid.0", "vivid");
    t.bound("video4linux", "v4l-subdev0", "vivid.0", "vivid");
    let mut hw = t.hw();
    assert_eq!(hw.verify(Capability::Camera), CapabilityState::On);

    hw.enforce(Capability::Camera, Rule::Deny).unwrap();
    assert_eq!(fs::read_to_string(vivid.join("unbind")).unwrap(), "vivid.0");
    let held = hw.load_state().unwrap();
    assert_eq!(held.unbound[&Capability::Camera].len(), 1, "{held:?}");
    // Still listed until the kernel drops the devices.
    assert_eq!(hw.verify(Capability::Camera), CapabilityState::On);
    for dev in ["video0", "v4l-subdev0"] {
        fs::remove_dir_all(t.roots.sys.join("class/video4linux").join(dev)).unwrap();
    }
    assert_eq!(hw.verify(Capability::Camera), CapabilityState::Off);
    // Without the class at all the kernel says nothing: unknown, not off.
    fs::remove_dir(t.roots.sys.join("class/video4linux")).unwrap();
    assert_eq!(hw.verify(Capability::Camera), CapabilityState::Unknown);
    fs::create_dir(t.roots.sys.join("class/video4linux")).unwrap();

    // A process that kept a camera node open keeps the camera on.
    let fd = t.roots.proc.join("4242/fd");
    fs::create_dir_all(&fd).unwrap();
    symlink(t.roots.dev.join("video0"), fd.join("7")).unwrap();
    assert_eq!(hw.verify(Capability::Camera), CapabilityState::On);
    fs::remove_dir_all(t.roots.proc.join("4242")).unwrap();

    // Another agent process (a restart) rebinds exactly what was unbound.
    drop(hw);
    let mut hw = t.hw();
    hw.enforce(Capability::Camera, Rule::Allow).unwrap();
    assert_eq!(fs::read_to_string(vivid.join("bind")).unwrap(), "vivid.0");
    assert!(hw.load_state().unwrap().unbound.is_empty());
    // Allowing again has nothing to rebind.
    fs::write(vivid.join("bind"), "").unwrap();
    hw.enforce(Capability::Camera, Rule::Allow).unwrap();
    assert_eq!(fs::read_to_string(vivid.join("bind")).unwrap(), "");
}

#[test]
fn a_failed_rebind_is_kept_for_the_next_attempt() {
    let t = Tree::new();
    let vivid = t.bound("video4linux", "video0", "vivid.0", "vivid");
    let mut hw = t.hw();
    hw.enforce(Capability::Camera, Rule::Deny).unwrap();
    // The driver's bind attribute is gone (module unloaded): the rebind fails.
    fs::remove_file(vivid.join("bind")).unwrap();
    fs::create_dir(vivid.join("bind")).unwrap();
    let err = hw.enforce(Capability::Camera, Rule::Allow).unwrap_err();
    assert!(err.to_string().contains("vivid.0"), "{err}");
    assert_eq!(
        hw.load_state().unwrap().unbound[&Capability::Camera].len(),
        1
    );
}

#[test]
fn capture_cards_are_unbound_whole_and_a_card_without_driver_is_refused() {
    let t = Tree::new();
    let dummy = t.bound("sound", "card0", "snd_dummy.0", "snd_dummy");
    t.capture(0);
    // A playback-only card is left alone.
    let hdmi = t.bound("sound", "card1", "hdmi-audio", "hdmi");
    fs::create_dir_all(t.roots.proc.join("asound/card1/pcm0p/sub0")).unwrap();
    let mut hw = t.hw();
    assert_eq!(hw.verify(Capability::Microphone), CapabilityState::On);

    hw.enforce(Capability::Microphone, Rule::Deny).unwrap();
    assert_eq!(
        fs::read_to_string(dummy.join("unbind")).unwrap(),
        "snd_dummy.0"
    );
    assert_eq!(fs::read_to_string(hdmi.join("unbind")).unwrap(), "");
    fs::remove_dir_all(t.roots.proc.join("asound/card0")).unwrap();
    assert_eq!(hw.verify(Capability::Microphone), CapabilityState::Off);

    // A capture card whose device has no driver link cannot be unbound.
    let card2 = t.roots.sys.join("class/sound/card2");
    fs::create_dir_all(&card2).unwrap();
    t.capture(2);
    let err = hw.enforce(Capability::Microphone, Rule::Deny).unwrap_err();
    assert!(err.to_string().contains("card2 has no driver"), "{err}");
    assert_eq!(hw.verify(Capability::Microphone), CapabilityState::On);

    // Unreadable /proc/asound: unknown.
    fs::remove_dir_all(t.roots.proc.join("asound/card2/pcm0c/sub0")).unwrap();
    fs::create_dir_all(t.roots.proc.join("asound/card2/pcm0c/sub0/status")).unwrap();
    assert_eq!(hw.verify(Capability::Microphone), CapabilityState::Unknown);
}

#[test]
fn a_corrupt_state_file_is_set_aside_and_enforcement_goes_on() {
    let t = Tree::new();
    let vivid = t.bound("video4linux", "video0", "vivid.0", "vivid");
    fs::write(t.state.join(LINUX_STATE_FILE), "{not json").unwrap();
    let mut hw = t.hw();
    // Unreadable for the network read-back (it names the addresses to expect).
    assert_eq!(hw.verify_network(), NetworkState::Unknown);
    // Restricting does not depend on the record: the camera is unbound all the same.
    hw.enforce(Capability::Camera, Rule::Deny).unwrap();
    assert_eq!(fs::read_to_string(vivid.join("unbind")).unwrap(), "vivid.0");
    assert_eq!(
        fs::read_to_string(t.state.join("linux-hardware.json.corrupt")).unwrap(),
        "{not json",
        "kept for the operator"
    );
    assert_eq!(
        hw.load_state().unwrap().unbound[&Capability::Camera].len(),
        1
    );
}

#[test]
fn a_radio_the_person_switched_off_stays_off_after_the_mode() {
    let t = Tree::new();
    t.radio(0, "bluetooth", 1, 0);
    let mut hw = t.hw();
    hw.enforce(Capability::Bluetooth, Rule::Deny).unwrap();
    t.kernel_applies_rfkill();
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::Off);
    assert!(hw.load_state().unwrap().blocked_radios.is_empty());
    hw.enforce(Capability::Bluetooth, Rule::Allow).unwrap();
    assert_eq!(fs::read(t.roots.rfkill_dev()).unwrap(), Vec::<u8>::new());
    assert_eq!(hw.verify(Capability::Bluetooth), CapabilityState::Off);
}

#[test]
fn a_hard_blocked_radio_is_still_the_agents_to_unblock_when_it_soft_blocked_it() {
    let t = Tree::new();
    // A kill switch is on now; it may go off during the mode.
    t.radio(0, "wlan", 0, 1);
    let mut hw = t.hw();
    hw.enforce(Capability::Wifi, Rule::Deny).unwrap();
    t.kernel_applies_rfkill();
    assert!(
        hw.load_state()
            .unwrap()
            .blocked_radios
            .contains(&Capability::Wifi)
    );
    hw.enforce(Capability::Wifi, Rule::Allow).unwrap();
    assert_eq!(
        fs::read(t.roots.rfkill_dev()).unwrap(),
        [0, 0, 0, 0, 1, 3, 0, 0]
    );
}

#[test]
fn links_stacked_on_a_modem_link_are_mobile_data_too() {
    let t = Tree::new();
    let net = t.roots.sys.join("class/net");
    for name in ["wwan0", "qmimux0", "qmimux0.1", "wlan0"] {
        fs::create_dir_all(net.join(name)).unwrap();
    }
    // qmimux0 sits on wwan0, qmimux0.1 on qmimux0 (sysfs `lower_*` entries).
    symlink(net.join("wwan0"), net.join("qmimux0/lower_wwan0")).unwrap();
    symlink(net.join("qmimux0"), net.join("qmimux0.1/lower_qmimux0")).unwrap();
    assert_eq!(
        wwan_interfaces(&t.roots).unwrap(),
        ["qmimux0", "qmimux0.1", "wwan0"]
    );
}

#[test]
fn what_the_kernel_cannot_switch_is_unknown() {
    let t = Tree::new();
    let mut hw = t.hw();
    for cap in [Capability::UsbData, Capability::Screenshots] {
        assert!(hw.enforce(cap, Rule::Deny).is_err());
        hw.enforce(cap, Rule::Allow).unwrap();
        assert_eq!(hw.verify(cap), CapabilityState::Unknown);
    }
    // Without nft the network cannot be measured.
    assert_eq!(hw.verify_network(), NetworkState::Unknown);
    let err = hw
        .enforce_network(NetworkReach::OrganizationOnly, &["10.0.0.1".into()])
        .unwrap_err();
    assert!(matches!(err, HardwareError::Unavailable(_)), "{err}");
}

/// A network namespace of its own (`ip netns`), removed on drop, in which the real
/// `nft` runs. Needs root and nftables (`.ci/run` installs it).
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("redoubt-test-{}-{}", std::process::id(), rand_suffix());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("running `ip` (iproute2)");
        assert!(
            out.status.success(),
            "`ip netns add` failed (root and iproute2 are needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn nft(&self) -> Vec<OsString> {
        ["ip", "netns", "exec", self.0.as_str(), "nft"]
            .into_iter()
            .map(OsString::from)
            .collect()
    }

    /// Runs `COMMAND…` inside the namespace; whether it succeeded.
    fn exec(&self, command: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(command)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Two linked interfaces: `v0` (10.0.0.1/16) and `wwan0` (100.64.0.1/16), both up,
    /// so that packets to those networks leave through them.
    fn with_links(self) -> Self {
        for cmd in [
            "ip link set lo up",
            "ip link add v0 type veth peer name wwan0",
            "ip addr add 10.0.0.1/16 dev v0",
            "ip addr add 100.64.0.1/16 dev wwan0",
            "ip link set v0 up",
            "ip link set wwan0 up",
        ] {
            assert!(
                self.exec(&cmd.split(' ').collect::<Vec<_>>()),
                "in the test namespace: {cmd}"
            );
        }
        self
    }

    /// Whether a UDP datagram to `addr` leaves (a drop in an output chain makes the
    /// send itself fail with EPERM).
    fn can_send(&self, addr: &str) -> bool {
        self.exec(&["bash", "-c", &format!("echo x > /dev/udp/{addr}/9")])
    }

    fn run_nft(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[test]
fn the_reach_table_takes_only_the_bundles_addresses_never_a_dns_answer() {
    // The system resolver answers "localhost" with loopback; a hostile hotspot answers
    // the server's name with its own gateway. Neither may open the table.
    assert!(
        ("localhost", 443)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.next().is_some()),
        "the test needs a resolver that answers for localhost"
    );
    let endpoints = [
        "localhost".to_owned(),
        "redoubt.example".to_owned(),
        "192.0.2.10".to_owned(),
        "[2001:db8::1]".to_owned(),
        "192.0.2.10".to_owned(),
    ];
    assert_eq!(
        reach_addresses(&endpoints),
        addrs(&["192.0.2.10", "2001:db8::1"])
    );
    assert!(reach_addresses(&["localhost".into()]).is_empty());
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn organization_only_is_loaded_into_nftables_and_read_back() {
    let t = Tree::new();
    let ns = Netns::new().with_links();
    let mut hw = LinuxHardware::with(t.roots.clone(), &t.state, ns.nft());
    assert_eq!(hw.verify_network(), NetworkState::Open);
    assert!(ns.can_send("10.0.9.9") && ns.can_send("10.0.1.1"));

    hw.enforce_network(
        NetworkReach::OrganizationOnly,
        &["10.0.1.1".into(), "2001:db8::1".into(), "localhost".into()],
    )
    .unwrap();
    assert_eq!(hw.verify_network(), NetworkState::OrganizationOnly);
    // Traffic, not only the read-back: the organization's address and loopback pass,
    // anything else is dropped.
    assert!(ns.can_send("10.0.1.1"), "an organization endpoint");
    assert!(ns.can_send("127.0.0.1"), "loopback");
    assert!(!ns.can_send("10.0.9.9"), "any other address");
    let held = hw.load_state().unwrap();
    assert!(held.reach_allowed.contains(&"10.0.1.1".parse().unwrap()));

    // A rule added behind the agent's back opens the network: measured open.
    ns.run_nft(&["add", "rule", "inet", REACH_TABLE, "output", "accept"]);
    assert_eq!(hw.verify_network(), NetworkState::Open);
    // Re-applying replaces the whole table.
    hw.enforce_network(NetworkReach::OrganizationOnly, &["10.1.2.3".into()])
        .unwrap();
    assert_eq!(hw.verify_network(), NetworkState::OrganizationOnly);

    // An address the agent did not choose is not organization-only either.
    hw.update_state(|s| s.reach_allowed = vec!["10.9.9.9".parse().unwrap()])
        .unwrap();
    assert_eq!(hw.verify_network(), NetworkState::Open);

    // Host names are never resolved: "localhost" (which every resolver answers with
    // loopback) adds nothing, and a bundle with no address cuts all but loopback.
    hw.enforce_network(
        NetworkReach::OrganizationOnly,
        &["localhost".into(), "10.1.2.3".into()],
    )
    .unwrap();
    assert_eq!(
        hw.load_state().unwrap().reach_allowed,
        ["10.1.2.3".parse::<IpAddr>().unwrap()]
    );
    assert!(
        hw.enforce_network(NetworkReach::OrganizationOnly, &["localhost".into()])
            .is_err()
    );
    assert!(hw.load_state().unwrap().reach_allowed.is_empty());
    assert!(!ns.can_send("10.1.2.3"), "nothing but loopback");
    assert!(ns.can_send("127.0.0.1"), "loopback");

    hw.enforce_network(NetworkReach::Open, &[]).unwrap();
    assert_eq!(hw.verify_network(), NetworkState::Open);
    assert!(ns.can_send("10.0.9.9"), "open again");
}

#[test]
fn cellular_data_is_cut_by_rfkill_or_by_dropping_mobile_data_interfaces() {
    let t = Tree::new();
    let ns = Netns::new().with_links();
    // A modem interface sysfs types as wwan but named unlike one.
    let iface = t.roots.sys.join("class/net/qmi0");
    fs::create_dir_all(&iface).unwrap();
    fs::write(iface.join("uevent"), "DEVTYPE=wwan\nINTERFACE=qmi0\n").unwrap();
    // No wwan rfkill switch: only the table can cut data.
    fs::remove_file(t.roots.rfkill_dev()).unwrap();
    let mut hw = LinuxHardware::with(t.roots.clone(), &t.state, ns.nft());
    assert_eq!(
        hw.verify(Capability::CellularData),
        CapabilityState::Unknown
    );

    assert!(ns.can_send("100.64.9.9"));
    hw.enforce(Capability::CellularData, Rule::Deny).unwrap();
    assert_eq!(hw.verify(Capability::CellularData), CapabilityState::Off);
    // Traffic: nothing leaves through the mobile-data interface; other links still work.
    assert!(!ns.can_send("100.64.9.9"), "through wwan0");
    assert!(ns.can_send("10.0.9.9"), "through v0");

    // A mobile-data interface the table does not cover: not off any more.
    let other = t.roots.sys.join("class/net/mbim7");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("uevent"), "DEVTYPE=wwan\n").unwrap();
    assert_eq!(
        hw.verify(Capability::CellularData),
        CapabilityState::Unknown
    );
    hw.enforce(Capability::CellularData, Rule::Deny).unwrap();
    assert_eq!(hw.verify(Capability::CellularData), CapabilityState::Off);

    hw.enforce(Capability::CellularData, Rule::Allow).unwrap();
    assert_eq!(
        hw.verify(Capability::CellularData),
        CapabilityState::Unknown
    );
    assert!(ns.can_send("100.64.9.9"), "mobile data back");

    // With a wwan rfkill switch, its state decides when the table is not loaded.
    fs::write(t.roots.rfkill_dev(), []).unwrap();
    t.radio(0, "wwan", 0, 0);
    assert_eq!(hw.verify(Capability::CellularData), CapabilityState::On);
}
