//! [`SailfishHardware`]: the backend for Sailfish OS / Aurora OS phones, through the
//! system services on the system D-Bus, with the kernel checks of the linux backend
//! where the device exposes them (see [`measure`] for how the two are combined: `on`
//! wins, `off` needs the service's word).
//!
//! | capability | enforced by | verified by |
//! |---|---|---|
//! | wifi, bluetooth | ConnMan technology `wifi` / `bluetooth`: `Powered` = false | `Powered` read back (no such technology = `unknown`); rfkill `wlan` / `bluetooth` when the kernel has such a switch |
//! | location | ConnMan technology `gps` powered off **and** the sailjail `Location` permission revoked from every app | both: `gps` not powered, no app granted `Location`, no sandbox running with it; rfkill `gps` |
//! | cellular data | ConnMan technology `cellular` powered off **and** oFono `ConnectionManager.Powered` = false on every modem | [`measure::cellular`]: oFono's `Powered`/`Attached` of every ConnectionManager and ConnMan's `cellular`; rfkill `wwan` |
//! | camera | sailjail `Camera` revoked from every app of the device users, running sandboxes holding it stopped; V4L2 cameras, where the kernel shows them, unbound as on a mainline phone | no app granted `Camera`, no sandbox running with it; `/sys/class/video4linux` and `/dev/video*` holders when that class exists |
//! | microphone | sailjail `Microphone` **and `Audio`** revoked (see [`limitations`]), sandboxes holding either stopped | no app granted either, none running with either; and where `/proc/asound` exists, no capture device open (the card is not unbound: it carries calls; a call in progress measures `on`) |
//! | nfc | MCE radio bit NFC (`req_radio_states_change`) | MCE's NFC bit **and** rfkill `nfc` (the bit alone is a setting: without the switch, `unknown`) |
//! | usb data, screenshots | no Sailfish interface is driven | always `unknown` |
//! | network reach | the linux backend's nftables table, where `nft` runs | read back with `nft -j`; without `nft`: `unknown` |
//!
//! What the backend changed is kept in [`state::SAILFISH_STATE_FILE`] (recorded before
//! the change), so `Allow` restores exactly that. The backend never sets ConnMan's
//! `OfflineMode`: it would also cut voice calls, which no capability covers, and each
//! radio is already switched on its own.
//!
//! **Which users.** Sailjail keeps granted permissions per user. The backend acts for
//! the configured users (default: `100000`, the Sailfish device owner) and for every
//! other user of the Sailfish range (100000–199999) that has a process running, read
//! from the proc root; a uid sailjaild does not know is skipped.
//!
//! The trait is synchronous and zbus 6 is async-only: the D-Bus connection lives on the
//! backend's own thread ([`bus`]); every call waits a few seconds at most, and a
//! service that does not answer in time is measured `unknown`.

pub mod bus;
pub mod measure;
pub mod proxies;
pub mod sandbox;
pub mod state;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use redoubt_proto::{Capability, CapabilityState, HardwareKind, NetworkReach, NetworkState, Rule};
use serde::Serialize;
use zbus::{Connection, Variant};

use self::bus::{BusError, BusThread, Target};
use self::measure::{ModemData, Technology, all_off, mce, with_kernel};
use self::proxies::{
    ConnmanManagerProxy, ConnmanTechnologyProxy, MceRequestProxy, OfonoConnectionManagerProxy,
    OfonoManagerProxy, SailjaildProxy, bool_prop, error_name, is_absent, is_invalid_args, str_prop,
    strings_prop,
};
use self::state::{Revocation, StateFile};
use super::linux::rfkill;
use super::linux::{LinuxHardware, Roots, media};
use crate::hardware::{Hardware, HardwareError, Wake, refused, refused_if, unavailable};

/// The Sailfish device owner's uid.
pub const DEFAULT_USER: u32 = 100_000;
/// The uids Sailfish gives its users (owner, additional users, guest).
pub const USER_RANGE: std::ops::RangeInclusive<u32> = 100_000..=199_999;

/// The sailjail permissions behind a capability. Microphone includes `Audio`: see
/// [`limitations`].
pub fn permissions_of(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::Camera => &["Camera"],
        // PulseAudio cannot give an app playback without recording: an app with the
        // `Audio` permission reaches the same sound server the `Microphone` one does.
        Capability::Microphone => &["Microphone", "Audio"],
        Capability::Location => &["Location"],
        _ => &[],
    }
}

/// The ConnMan technology type behind a capability.
pub fn technology_of(cap: Capability) -> Option<&'static str> {
    match cap {
        Capability::Wifi => Some("wifi"),
        Capability::Bluetooth => Some("bluetooth"),
        Capability::Location => Some("gps"),
        Capability::CellularData => Some("cellular"),
        _ => None,
    }
}

/// What this backend cannot do, per capability (`redoubt-agent probe` prints it).
pub fn limitations() -> Vec<(Capability, &'static str)> {
    vec![
        (
            Capability::Microphone,
            "sailjail cannot take the microphone without all audio: PulseAudio does not \
             separate recording from playback, so denying the microphone also revokes the \
             Audio permission (sound playback) from every sandboxed app that had it",
        ),
        (
            Capability::Microphone,
            "the sound card is not unbound (on these phones it also carries calls): off \
             means no sandboxed app holds Microphone or Audio and no capture device in \
             /proc/asound is open; a system process outside sailjail could still open one, \
             and a voice call in progress measures on",
        ),
        (
            Capability::Camera,
            "sailjail governs sandboxed apps only: apps that opted out of sandboxing are not \
             restricted, nor is Android AppSupport, so while AppSupport runs camera, \
             microphone and location measure unknown; a V4L2 camera, where the kernel shows \
             one, is unbound and must be gone for the camera to measure off",
        ),
        (
            Capability::Camera,
            "an app never launched before asks for its permissions at its next launch; if \
             the person grants them, the next check sees it, revokes again and stops the app \
             (the same holds for microphone and location)",
        ),
        (
            Capability::Location,
            "measured off only with ConnMan's gps technology present and off and no app \
             holding the Location permission",
        ),
        (
            Capability::Nfc,
            "switched through MCE's NFC radio bit; the NFC chip follows it only where the \
             device's nfcd honours MCE, so off is measured only where the kernel has an nfc \
             rfkill switch that confirms it (otherwise unknown)",
        ),
        (
            Capability::UsbData,
            "not switched on Sailfish by this backend (usb_moded is not driven): always unknown",
        ),
        (
            Capability::Screenshots,
            "Sailfish has no interface to forbid screenshots: always unknown",
        ),
    ]
}

/// Folds several failures of one enforcement into one error.
fn combine(cap: Capability, errors: Vec<HardwareError>) -> Result<(), HardwareError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors
            .into_iter()
            .next()
            .unwrap_or_else(|| unavailable(cap))),
        _ => {
            let all_unavailable = errors
                .iter()
                .all(|e| matches!(e, HardwareError::Unavailable(_)));
            let text = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if all_unavailable {
                Err(unavailable(text))
            } else {
                Err(refused(cap, text))
            }
        }
    }
}

fn bus_error(e: BusError) -> HardwareError {
    unavailable(e)
}

/// A ConnMan technology as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tech {
    path: zbus::OwnedObjectPath,
    kind: String,
    powered: Option<bool>,
}

async fn technologies(conn: &Connection) -> zbus::Result<Vec<Tech>> {
    let manager = ConnmanManagerProxy::new(conn).await?;
    Ok(manager
        .get_technologies()
        .await?
        .into_iter()
        .map(|(path, props)| {
            let kind = str_prop(&props, "Type").unwrap_or_else(|| {
                path.as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            });
            Tech {
                powered: bool_prop(&props, "Powered"),
                path,
                kind,
            }
        })
        .collect())
}

/// Sets a technology's `Powered`; "already" answers count as done.
async fn set_powered(conn: &Connection, path: zbus::OwnedObjectPath, on: bool) -> zbus::Result<()> {
    let tech = ConnmanTechnologyProxy::builder(conn)
        .path(path)
        .build()
        .await?;
    match tech.set_property("Powered", &Variant::from(on)).await {
        Err(e)
            if matches!(
                error_name(&e),
                Some("net.connman.Error.AlreadyEnabled" | "net.connman.Error.AlreadyDisabled")
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn modems(conn: &Connection) -> zbus::Result<Vec<ModemData>> {
    let manager = OfonoManagerProxy::new(conn).await?;
    let mut out = Vec::new();
    for (path, props) in manager.get_modems().await? {
        let has_cm = strings_prop(&props, "Interfaces")
            .is_some_and(|i| i.iter().any(|i| i == "org.ofono.ConnectionManager"));
        let connection_manager = if has_cm {
            let cm = OfonoConnectionManagerProxy::builder(conn)
                .path(path.clone())
                .build()
                .await?;
            let props = cm.get_properties().await?;
            Some((bool_prop(&props, "Powered"), bool_prop(&props, "Attached")))
        } else {
            None
        };
        out.push(ModemData {
            path: path.as_str().to_owned(),
            connection_manager,
        });
    }
    Ok(out)
}

async fn set_modem_data(conn: &Connection, path: String, on: bool) -> zbus::Result<()> {
    let cm = OfonoConnectionManagerProxy::builder(conn)
        .path(path)
        .build()
        .await?;
    cm.set_property("Powered", &Variant::from(on)).await
}

/// What sailjaild says about some permissions.
#[derive(Debug, Clone, Default)]
struct Grants {
    /// Applications sailjaild knows.
    apps: usize,
    /// Users who answered for at least one application.
    users_answered: usize,
    /// (uid, app, the permissions among those asked for that it holds).
    holding: Vec<(u32, String, BTreeSet<String>)>,
}

async fn grants(conn: &Connection, users: &[u32], wanted: &[&str]) -> zbus::Result<Grants> {
    let jail = SailjaildProxy::new(conn).await?;
    let apps = jail.get_applications().await?;
    let mut out = Grants {
        apps: apps.len(),
        ..Grants::default()
    };
    for &uid in users {
        let mut answered = false;
        for app in &apps {
            match jail.get_granted_permissions(uid, app).await {
                Ok(granted) => {
                    answered = true;
                    let held: BTreeSet<String> = granted
                        .into_iter()
                        .filter(|p| wanted.contains(&p.as_str()))
                        .collect();
                    if !held.is_empty() {
                        out.holding.push((uid, app.clone(), held));
                    }
                }
                // An unknown user, or an application removed meanwhile.
                Err(e) if is_invalid_args(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if answered {
            out.users_answered += 1;
        }
    }
    Ok(out)
}

/// Removes `take` from the granted set of each (uid, app); the errors by application.
async fn revoke_all(conn: &Connection, targets: Vec<Revocation>) -> zbus::Result<Vec<String>> {
    let jail = SailjaildProxy::new(conn).await?;
    let mut errors = Vec::new();
    for t in targets {
        let result = async {
            let current = jail.get_granted_permissions(t.uid, &t.app).await?;
            let kept: Vec<&str> = current
                .iter()
                .map(String::as_str)
                .filter(|p| !t.permissions.contains(*p))
                .collect();
            if kept.len() == current.len() {
                return Ok(());
            }
            jail.set_granted_permissions(t.uid, &t.app, &kept).await
        }
        .await;
        match result {
            Ok(()) => {}
            Err(e) if is_invalid_args(&e) => {}
            Err(e) => errors.push(format!("{} (uid {}): {e}", t.app, t.uid)),
        }
    }
    Ok(errors)
}

/// What happened to one recorded revocation when restoring it.
#[derive(Debug)]
enum Restored {
    /// Given back (or the user or app is gone: nothing left to give back).
    Done,
    /// Still to do.
    Failed(String),
}

async fn restore_all(conn: &Connection, records: Vec<Revocation>) -> zbus::Result<Vec<Restored>> {
    let jail = SailjaildProxy::new(conn).await?;
    let mut out = Vec::new();
    for r in records {
        let result = async {
            let mut granted = jail.get_granted_permissions(r.uid, &r.app).await?;
            let missing: Vec<String> = r
                .permissions
                .iter()
                .filter(|p| !granted.contains(*p))
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            granted.extend(missing);
            let refs: Vec<&str> = granted.iter().map(String::as_str).collect();
            jail.set_granted_permissions(r.uid, &r.app, &refs).await
        }
        .await;
        out.push(match result {
            Ok(()) => Restored::Done,
            Err(e) if is_invalid_args(&e) => Restored::Done,
            Err(e) => Restored::Failed(format!("{} (uid {}): {e}", r.app, r.uid)),
        });
    }
    Ok(out)
}

async fn radio_states(conn: &Connection) -> zbus::Result<u32> {
    MceRequestProxy::new(conn).await?.get_radio_states().await
}

async fn change_radio_states(conn: &Connection, states: u32, mask: u32) -> zbus::Result<()> {
    MceRequestProxy::new(conn)
        .await?
        .req_radio_states_change(states, mask)
        .await
}

/// The signals that can change a measurement (each wakes the run loop).
const WATCH_RULES: &[&str] = &[
    "type='signal',interface='net.connman.Manager',member='PropertyChanged'",
    "type='signal',interface='net.connman.Manager',member='TechnologyAdded'",
    "type='signal',interface='net.connman.Manager',member='TechnologyRemoved'",
    "type='signal',interface='net.connman.Technology',member='PropertyChanged'",
    "type='signal',interface='org.ofono.Manager'",
    "type='signal',interface='org.ofono.Modem',member='PropertyChanged'",
    "type='signal',interface='org.ofono.ConnectionManager',member='PropertyChanged'",
    "type='signal',interface='com.nokia.mce.signal',member='radio_states_ind'",
    "type='signal',interface='org.sailfishos.sailjaild1'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='net.connman'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.ofono'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.sailfishos.sailjaild1'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='com.nokia.mce'",
];

/// How long to wait before subscribing again after the bus connection was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// One stream per [`WATCH_RULES`] entry on `conn`.
async fn subscribe(conn: &Connection) -> zbus::Result<Vec<zbus::MessageStream>> {
    let mut streams = Vec::new();
    for rule in WATCH_RULES {
        streams.push(zbus::MessageStream::for_match_rule(*rule, conn, None).await?);
    }
    Ok(streams)
}

/// Calls `wake` for every signal of `streams`; when they end (the connection closed),
/// wakes once more and subscribes again on a new connection, until the backend is gone.
async fn follow(streams: Vec<zbus::MessageStream>, handle: bus::BusHandle, wake: Wake) {
    let mut all = futures_util::stream::select_all(streams);
    while all.next().await.is_some() {
        wake();
    }
    wake();
    resubscribe(handle, wake);
}

fn resubscribe(handle: bus::BusHandle, wake: Wake) {
    let again = handle.clone();
    let submitted = handle.spawn(move |conn| async move {
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        let streams = match conn {
            Ok(conn) => subscribe(&conn).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match streams {
            Ok(streams) => {
                tracing::info!("D-Bus signals subscribed again after the bus connection was lost");
                follow(streams, again, wake).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to D-Bus signals yet; retrying");
                resubscribe(again, wake);
            }
        }
    });
    if !submitted {
        tracing::debug!("the sailfish backend is gone; its D-Bus watcher stops");
    }
}

/// The Sailfish OS / Aurora OS backend.
#[derive(Debug)]
pub struct SailfishHardware {
    bus: BusThread,
    /// The linux backend on the same kernel, for what the kernel exposes on this phone:
    /// V4L2 cameras (unbound as on mainline phones) and nftables (network reach).
    kernel: LinuxHardware,
    roots: Roots,
    state: StateFile,
    users: Vec<u32>,
}

/// Opens the backend on the system bus and this phone's kernel, as a [`Hardware`].
pub fn open(state_dir: &Path) -> anyhow::Result<Box<dyn Hardware>> {
    let hw = SailfishHardware::start(Target::System, Roots::system(), state_dir)?
        .with_nft(vec!["nft".into()]);
    Ok(Box::new(hw))
}

/// Opens the backend on the bus at `address` and the kernel tree at `roots` (tests: a
/// private `dbus-daemon` and a fake tree). No `nft` command is set (network reach
/// measures `unknown`) until [`SailfishHardware::with_nft`] names one.
pub fn open_at(address: &str, roots: Roots, state_dir: &Path) -> anyhow::Result<SailfishHardware> {
    SailfishHardware::start(Target::Address(address.to_owned()), roots, state_dir)
}

impl SailfishHardware {
    fn start(target: Target, roots: Roots, state_dir: &Path) -> anyhow::Result<Self> {
        Ok(SailfishHardware {
            bus: BusThread::start(target)?,
            kernel: LinuxHardware::with(roots.clone(), state_dir, Vec::new()),
            roots,
            state: state::state_file(state_dir),
            users: vec![DEFAULT_USER],
        })
    }

    /// Uses this `nft` command line (program and leading arguments) for network reach.
    pub fn with_nft(mut self, nft: Vec<std::ffi::OsString>) -> Self {
        self.kernel = LinuxHardware::with(self.roots.clone(), self.state.dir(), nft);
        self
    }

    /// Acts for these users (instead of the default, [`DEFAULT_USER`]); users of the
    /// Sailfish range with a running process are added in any case.
    pub fn with_users(mut self, users: Vec<u32>) -> Self {
        self.users = users;
        self
    }

    /// The users whose sailjail settings the backend reads and changes.
    pub fn users(&self) -> Vec<u32> {
        self.users_of(sandbox::scan(&self.roots.proc).ok().as_deref())
    }

    /// [`Self::users`] from an already read process list.
    fn users_of(&self, procs: Option<&[sandbox::Process]>) -> Vec<u32> {
        let mut users: BTreeSet<u32> = self.users.iter().copied().collect();
        users.extend(
            procs
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.uid)
                .filter(|u| USER_RANGE.contains(u)),
        );
        users.into_iter().collect()
    }

    /// What the backend changed, as stored.
    pub fn load_state(&self) -> Result<state::SailfishState, HardwareError> {
        self.state.load()
    }

    /// The kernel's word on a radio: `None` when it has no switch of that type.
    fn kernel_radio(&self, cap: Capability) -> Option<CapabilityState> {
        let t = super::linux::backend::radio_of(cap)?;
        match rfkill::list(&self.roots.sys) {
            Ok(radios) if radios.iter().any(|r| r.radio_type == Some(t)) => {
                Some(rfkill::state_of(&radios, t))
            }
            Ok(_) => None,
            Err(_) => Some(CapabilityState::Unknown),
        }
    }

    /// The kernel's word on the camera: `None` without a video4linux class (an
    /// Android-HAL camera is invisible to it).
    fn kernel_camera(&self) -> Option<CapabilityState> {
        let r = &self.roots;
        r.sys
            .join("class/video4linux")
            .exists()
            .then(|| media::camera_state(&r.sys, &r.proc, &r.dev))
    }

    /// The kernel's word on the microphone: `None` without `/proc/asound`; otherwise
    /// whether a capture device is open now (the card itself stays: it carries calls).
    fn kernel_microphone(&self) -> Option<CapabilityState> {
        let proc = &self.roots.proc;
        proc.join("asound")
            .exists()
            .then(|| media::capture_open_state(proc))
    }

    fn technology(&self, kind: &'static str) -> Technology {
        match self.bus.call(|c| async move { technologies(&c).await }) {
            Ok(Ok(techs)) => match techs.iter().find(|t| t.kind == kind) {
                Some(Tech {
                    powered: Some(p), ..
                }) => Technology::Powered(*p),
                Some(_) => Technology::Unknown,
                None => Technology::Absent,
            },
            _ => Technology::Unknown,
        }
    }

    /// Sailjail's part of a measurement: granted anywhere, or held by a running sandbox.
    fn sailjail_state(&self, cap: Capability) -> CapabilityState {
        let wanted = permissions_of(cap);
        // One look at the processes: who the users are, which sandboxes run, and
        // whether Android AppSupport (which sailjail does not govern) runs.
        let procs = sandbox::scan(&self.roots.proc);
        let users = self.users_of(procs.as_deref().ok());
        let dbus = match self
            .bus
            .call(move |c| async move { grants(&c, &users, wanted).await })
        {
            Ok(Ok(g)) if g.users_answered > 0 || g.apps == 0 => {
                if g.holding.is_empty() {
                    CapabilityState::Off
                } else {
                    CapabilityState::On
                }
            }
            _ => CapabilityState::Unknown,
        };
        let running = match &procs {
            Ok(procs) if !sandbox::holding(procs, wanted).is_empty() => CapabilityState::On,
            // While AppSupport runs, a revoked permission proves nothing.
            Ok(procs) if sandbox::android_running(procs) => CapabilityState::Unknown,
            Ok(_) => CapabilityState::Off,
            Err(_) => CapabilityState::Unknown,
        };
        all_off([dbus, running])
    }

    /// Stops the sandboxes holding `cap`'s permissions, and launches in progress of the
    /// apps it was revoked from.
    fn stop_running(&self, cap: Capability) -> Result<(), HardwareError> {
        let procs = sandbox::scan(&self.roots.proc).map_err(|e| {
            unavailable(format!(
                "cannot list processes under {}: {e}",
                self.roots.proc.display()
            ))
        })?;
        let apps: BTreeSet<String> = self
            .state
            .load()?
            .revoked
            .get(&cap)
            .map(|list| list.iter().map(|r| r.app.clone()).collect())
            .unwrap_or_default();
        let mut roots: Vec<u32> = sandbox::holding(&procs, permissions_of(cap))
            .iter()
            .map(|p| p.pid)
            .collect();
        roots.extend(sandbox::launching(&procs, &apps).iter().map(|p| p.pid));
        let pids = sandbox::with_descendants(&procs, &roots);
        if !pids.is_empty() {
            tracing::info!(capability = %cap, ?pids, "stopping sandboxed apps holding a revoked permission");
        }
        let targets: Vec<(u32, Option<u64>)> = pids
            .iter()
            .map(|pid| {
                let start = procs.iter().find(|p| p.pid == *pid).and_then(|p| p.start);
                (*pid, start)
            })
            .collect();
        sandbox::terminate(&self.roots.proc, &targets)
            .map_err(|e| refused(cap, format!("stopping apps: {e}")))
    }

    /// Revokes (`deny`) or gives back `cap`'s sailjail permissions.
    fn jail(&self, cap: Capability, deny: bool) -> Result<(), HardwareError> {
        if deny {
            self.revoke(cap)
        } else {
            self.restore(cap)
        }
    }

    fn revoke(&self, cap: Capability) -> Result<(), HardwareError> {
        let wanted = permissions_of(cap);
        let users = self.users();
        let found = self
            .bus
            .call(move |c| async move { grants(&c, &users, wanted).await })
            .map_err(bus_error)?
            .map_err(|e| unavailable(format!("sailjaild: {e}")))?;
        let targets: Vec<Revocation> = found
            .holding
            .into_iter()
            .map(|(uid, app, permissions)| Revocation {
                uid,
                app,
                permissions,
            })
            .collect();
        // Recorded first: a crash after the change still lets `Allow` give it back.
        self.state.update(|s| {
            for t in &targets {
                s.record(cap, t.uid, &t.app, &t.permissions);
            }
        })?;
        let mut errors = Vec::new();
        if !targets.is_empty() {
            match self
                .bus
                .call(move |c| async move { revoke_all(&c, targets).await })
            {
                Ok(Ok(failed)) if failed.is_empty() => {}
                Ok(Ok(failed)) => errors.push(refused(cap, failed.join("; "))),
                Ok(Err(e)) => errors.push(unavailable(format!("sailjaild: {e}"))),
                Err(e) => errors.push(bus_error(e)),
            }
        }
        // A revocation applies at the next launch: stop what runs with it now.
        if let Err(e) = self.stop_running(cap) {
            errors.push(e);
        }
        combine(cap, errors)
    }

    fn restore(&self, cap: Capability) -> Result<(), HardwareError> {
        let records = self
            .state
            .load()?
            .revoked
            .get(&cap)
            .cloned()
            .unwrap_or_default();
        if records.is_empty() {
            return Ok(());
        }
        let sent = records.clone();
        let results = self
            .bus
            .call(move |c| async move { restore_all(&c, sent).await })
            .map_err(bus_error)?
            .map_err(|e| unavailable(format!("sailjaild: {e}")))?;
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        for (record, result) in records.into_iter().zip(results) {
            if let Restored::Failed(e) = result {
                errors.push(e);
                kept.push(record);
            }
        }
        self.state.update(|s| {
            if kept.is_empty() {
                s.revoked.remove(&cap);
            } else {
                s.revoked.insert(cap, kept);
            }
        })?;
        refused_if(cap, &errors)
    }

    /// Powers a ConnMan technology off (recording it when it was on) or back on (only
    /// when the agent powered it off). `required`: a missing technology is an error.
    fn set_technology(
        &self,
        cap: Capability,
        kind: &'static str,
        off: bool,
        required: bool,
    ) -> Result<(), HardwareError> {
        if !off && !self.state.load()?.powered_off.contains(kind) {
            return Ok(());
        }
        let techs = self
            .bus
            .call(|c| async move { technologies(&c).await })
            .map_err(bus_error)?
            .map_err(|e| unavailable(format!("ConnMan: {e}")))?;
        let Some(tech) = techs.into_iter().find(|t| t.kind == kind) else {
            return if required || !off {
                Err(unavailable(format!("ConnMan has no {kind} technology")))
            } else {
                Ok(())
            };
        };
        if off {
            if tech.powered == Some(false) {
                return Ok(());
            }
            self.state.update(|s| {
                s.powered_off.insert(kind.to_owned());
            })?;
        }
        let path = tech.path;
        self.bus
            .call(move |c| async move { set_powered(&c, path, !off).await })
            .map_err(bus_error)?
            .map_err(|e| refused(cap, format!("ConnMan {kind}: {e}")))?;
        if !off {
            self.state.update(|s| {
                s.powered_off.remove(kind);
            })?;
        }
        Ok(())
    }

    /// Packet data on every oFono modem off (recording each switched), or back on for
    /// those the agent switched off.
    fn set_modems(&self, off: bool) -> Result<(), HardwareError> {
        let cap = Capability::CellularData;
        let targets: Vec<String> = if off {
            let found = self
                .bus
                .call(|c| async move { modems(&c).await })
                .map_err(bus_error)?
                .map_err(|e| unavailable(format!("oFono: {e}")))?;
            let on: Vec<String> = found
                .into_iter()
                .filter(|m| {
                    m.connection_manager
                        .is_some_and(|(powered, _)| powered != Some(false))
                })
                .map(|m| m.path)
                .collect();
            self.state
                .update(|s| s.data_off_modems.extend(on.iter().cloned()))?;
            on
        } else {
            self.state.load()?.data_off_modems.into_iter().collect()
        };
        let mut errors = Vec::new();
        let mut done = Vec::new();
        for path in targets {
            let p = path.clone();
            match self
                .bus
                .call(move |c| async move { set_modem_data(&c, p, !off).await })
            {
                Ok(Ok(())) => done.push(path),
                // The modem (or its ConnectionManager) is gone: nothing left to restore.
                Ok(Err(e)) if !off && is_absent(&e) => done.push(path),
                Ok(Err(e)) => errors.push(refused(cap, format!("oFono {path}: {e}"))),
                Err(e) => errors.push(bus_error(e)),
            }
        }
        if !off && !done.is_empty() {
            self.state.update(|s| {
                for p in &done {
                    s.data_off_modems.remove(p);
                }
            })?;
        }
        combine(cap, errors)
    }

    fn set_nfc(&self, off: bool) -> Result<(), HardwareError> {
        let cap = Capability::Nfc;
        if off {
            let bits = self
                .bus
                .call(|c| async move { radio_states(&c).await })
                .map_err(bus_error)?
                .map_err(|e| unavailable(format!("MCE: {e}")))?;
            if bits & mce::NFC != 0 {
                self.state.update(|s| s.mce_cleared |= mce::NFC)?;
            }
        } else if self.state.load()?.mce_cleared & mce::NFC == 0 {
            return Ok(());
        }
        let states = if off { 0 } else { mce::NFC };
        self.bus
            .call(move |c| async move { change_radio_states(&c, states, mce::NFC).await })
            .map_err(bus_error)?
            .map_err(|e| refused(cap, format!("MCE: {e}")))?;
        if !off {
            self.state.update(|s| s.mce_cleared &= !mce::NFC)?;
        }
        Ok(())
    }

    fn verify_cellular(&self) -> CapabilityState {
        let connman = self.technology("cellular");
        let ofono = match self.bus.call(|c| async move { modems(&c).await }) {
            Ok(Ok(found)) => Ok(measure::ofono_data(&found)),
            _ => Err(()),
        };
        measure::cellular(connman, ofono)
    }

    fn verify_nfc(&self) -> CapabilityState {
        match self.bus.call(|c| async move { radio_states(&c).await }) {
            Ok(Ok(bits)) => measure::nfc_from_mce(bits),
            _ => CapabilityState::Unknown,
        }
    }
}

impl Hardware for SailfishHardware {
    fn kind(&self) -> HardwareKind {
        HardwareKind::Sailfish
    }

    fn inventory(&self, state_dir: &Path) -> redoubt_proto::Inventory {
        crate::inventory::collect(&self.roots, state_dir, HardwareKind::Sailfish)
    }

    fn enforce(&mut self, cap: Capability, rule: Rule) -> Result<(), HardwareError> {
        let deny = rule == Rule::Deny;
        // Every way a capability is switched is tried; the failures are reported together.
        let results = match cap {
            Capability::Wifi | Capability::Bluetooth => {
                vec![self.set_technology(cap, technology_of(cap).unwrap_or_default(), deny, true)]
            }
            Capability::Location => vec![
                self.set_technology(cap, "gps", deny, true),
                self.jail(cap, deny),
            ],
            Capability::CellularData => vec![
                self.set_technology(cap, "cellular", deny, false),
                self.set_modems(deny),
            ],
            // Where the kernel shows V4L2 cameras, they are unbound as on a mainline
            // phone (and what was unbound is bound back on Allow, whatever the kernel
            // shows now): no app outside sailjail reaches them either.
            Capability::Camera => vec![self.jail(cap, deny), self.kernel.enforce(cap, rule)],
            Capability::Microphone => vec![self.jail(cap, deny)],
            Capability::Nfc => vec![self.set_nfc(deny)],
            Capability::UsbData | Capability::Screenshots if deny => vec![Err(unavailable(
                format!("{cap} cannot be switched off through Sailfish interfaces"),
            ))],
            Capability::UsbData | Capability::Screenshots => Vec::new(),
        };
        combine(cap, results.into_iter().filter_map(Result::err).collect())
    }

    fn verify(&self, cap: Capability) -> CapabilityState {
        let dbus = match cap {
            Capability::Wifi | Capability::Bluetooth => technology_of(cap)
                .map(|k| self.technology(k).state())
                .unwrap_or(CapabilityState::Unknown),
            Capability::Location => {
                all_off([self.technology("gps").state(), self.sailjail_state(cap)])
            }
            Capability::CellularData => self.verify_cellular(),
            Capability::Camera | Capability::Microphone => self.sailjail_state(cap),
            Capability::Nfc => self.verify_nfc(),
            Capability::UsbData | Capability::Screenshots => return CapabilityState::Unknown,
        };
        let kernel = match cap {
            Capability::Camera => self.kernel_camera(),
            Capability::Microphone => self.kernel_microphone(),
            other => self.kernel_radio(other),
        };
        // MCE's NFC bit is a setting, not a reading of the chip (nfcd may not follow
        // it): off only where the kernel's nfc switch confirms it.
        if cap == Capability::Nfc && kernel.is_none() && dbus == CapabilityState::Off {
            return CapabilityState::Unknown;
        }
        with_kernel(dbus, kernel)
    }

    /// Network reach through the kernel's nftables, as on a mainline phone, where `nft`
    /// runs (Sailfish's ConnMan keeps its own iptables rules; a drop in any nftables
    /// base chain is final whatever they say). Without `nft`: refused and `unknown`.
    fn enforce_network(
        &mut self,
        reach: NetworkReach,
        endpoints: &[String],
    ) -> Result<(), HardwareError> {
        self.kernel.enforce_network(reach, endpoints)
    }

    fn verify_network(&self) -> NetworkState {
        self.kernel.verify_network()
    }

    fn watch(&self, wake: Wake) -> Result<bool, HardwareError> {
        // What the kernel shows (rfkill events, V4L2 hot-plug) is watched as on a
        // mainline phone; a failure there leaves the D-Bus signals.
        if let Err(e) = self.kernel.watch(wake.clone()) {
            tracing::warn!(error = %e, "not watching kernel events");
        }
        // The first subscription is made before returning, so no signal after this
        // call is missed; later ones follow a reconnection of the bus.
        let handle = self.bus.handle();
        self.bus
            .call(move |conn| async move {
                let streams = subscribe(&conn).await?;
                tokio::spawn(follow(streams, handle, wake));
                Ok::<(), zbus::Error>(())
            })
            .map_err(bus_error)?
            .map_err(|e| unavailable(format!("subscribing to D-Bus signals: {e}")))?;
        Ok(true)
    }
}

/// Which Sailfish services own their names on a bus (`redoubt-agent probe`,
/// `--hardware auto`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BusProbe {
    /// The bus answered.
    pub bus: bool,
    /// `net.connman` has an owner.
    pub connman: bool,
    /// `org.ofono` has an owner.
    pub ofono: bool,
    /// `org.sailfishos.sailjaild1` has an owner.
    pub sailjaild: bool,
    /// `com.nokia.mce` has an owner.
    pub mce: bool,
    /// ConnMan's technology types (`wifi`, `bluetooth`, `cellular`, `gps`, …).
    pub technologies: Vec<String>,
    /// Why the bus could not be probed, when it could not.
    pub error: Option<String>,
    /// The bus exists but did not answer in time (connecting, or asking for names):
    /// whether this is Sailfish cannot be told.
    pub hung: bool,
}

impl BusProbe {
    /// Whether this looks like Sailfish OS: sailjaild runs, or ConnMan and MCE both do.
    pub fn is_sailfish(&self) -> bool {
        self.sailjaild || (self.connman && self.mce)
    }
}

async fn probe_bus(target: Target) -> BusProbe {
    let conn = match bus::connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            return BusProbe {
                hung: e.starts_with(bus::CONNECT_TIMED_OUT),
                error: Some(e),
                ..BusProbe::default()
            };
        }
    };
    let mut out = BusProbe {
        bus: true,
        ..BusProbe::default()
    };
    let dbus = match zbus::fdo::DBusProxy::new(&conn).await {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    for (name, slot) in [
        (proxies::CONNMAN, &mut out.connman),
        (proxies::OFONO, &mut out.ofono),
        (proxies::SAILJAILD, &mut out.sailjaild),
        (proxies::MCE, &mut out.mce),
    ] {
        if let Ok(bus_name) = zbus::names::BusName::try_from(name) {
            *slot = dbus.name_has_owner(bus_name).await.unwrap_or(false);
        }
    }
    if out.connman
        && let Ok(techs) = technologies(&conn).await
    {
        out.technologies = techs.into_iter().map(|t| t.kind).collect();
        out.technologies.sort();
    }
    out
}

/// Probes the system bus (`None`) or the bus at `address`. Never hangs: without an
/// answer within a few seconds everything is false and `error` says why.
pub fn probe(address: Option<&str>) -> BusProbe {
    let target = match address {
        Some(a) => Target::Address(a.to_owned()),
        None => Target::System,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("redoubt-dbus-probe".into())
        .spawn(move || {
            let out = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(probe_bus(target)),
                Err(e) => BusProbe {
                    error: Some(format!("starting a Tokio runtime: {e}")),
                    ..BusProbe::default()
                },
            };
            let _ = tx.send(out);
        });
    if let Err(e) = spawned {
        return BusProbe {
            error: Some(format!("starting the probe thread: {e}")),
            ..BusProbe::default()
        };
    }
    let wait = bus::CONNECT_TIMEOUT + bus::METHOD_TIMEOUT + Duration::from_secs(1);
    rx.recv_timeout(wait).unwrap_or_else(|_| BusProbe {
        error: Some(format!("no answer from the bus within {wait:?}")),
        hung: true,
        ..BusProbe::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_its_sources() {
        for cap in Capability::ALL {
            let jailed = !permissions_of(cap).is_empty();
            let radio = technology_of(cap).is_some() || cap == Capability::Nfc;
            let none = matches!(cap, Capability::UsbData | Capability::Screenshots);
            assert!(jailed || radio || none, "{cap}");
        }
        assert!(permissions_of(Capability::Microphone).contains(&"Audio"));
        assert!(
            limitations()
                .iter()
                .any(|(c, _)| *c == Capability::Microphone)
        );
    }

    #[test]
    fn probing_without_a_bus_does_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", tmp.path().join("none").display());
        let started = std::time::Instant::now();
        let p = probe(Some(&address));
        assert!(!p.bus && !p.connman && !p.is_sailfish(), "{p:?}");
        assert!(p.error.is_some());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
