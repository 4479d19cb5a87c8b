//! A private `dbus-daemon` and mock Sailfish system services written with zbus, for
//! the Sailfish backend's tests: ConnMan (`net.connman`), oFono (`org.ofono`),
//! sailjaild (`org.sailfishos.sailjaild1`) and MCE (`com.nokia.mce`), modelled on
//! their real interfaces. Their state is one [`World`] the test reads and changes; a
//! "stuck" technology, ConnectionManager or MCE accepts a change and ignores it, like
//! a driver that does not follow.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use zbus::fdo;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};

/// A private bus: `dbus-daemon` on a socket in a directory of its own, killed on drop.
pub struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    /// Starts the daemon and reads the address it listens on.
    pub fn start() -> Result<Bus> {
        let dir = tempfile::tempdir()?;
        let (child, address) = Self::spawn_daemon(dir.path())?;
        Ok(Bus {
            child,
            address,
            _dir: dir,
        })
    }

    /// Stops the daemon and starts a new one at the same address (every client loses
    /// its connection, as when the system bus restarts).
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self._dir.path().join("bus.sock"));
        let (child, address) = Self::spawn_daemon(self._dir.path())?;
        self.child = child;
        self.address = address;
        Ok(())
    }

    fn spawn_daemon(dir: &std::path::Path) -> Result<(Child, String)> {
        let socket = dir.join("bus.sock");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )?;
        let mut child = match Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "dbus-daemon is not installed: the Sailfish D-Bus tests need it \
                 (Debian: apt-get install dbus-daemon; .ci/run installs it)"
            ),
            Err(e) => return Err(e).context("starting dbus-daemon"),
        };
        let mut line = String::new();
        let stdout = child.stdout.take().context("dbus-daemon stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the bus address")?;
        // Without the daemon's guid, as a system bus address is given: a client may then
        // reconnect to a restarted daemon at the same path.
        let address = line.trim().split(",guid=").next().unwrap_or("").to_owned();
        if address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("dbus-daemon printed no address (bad configuration?)");
        }
        Ok((child, address))
    }

    /// The address clients connect to.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One ConnMan technology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tech {
    /// `Powered`.
    pub powered: bool,
    /// `Connected`.
    pub connected: bool,
    /// Accepts `Powered` changes without acting on them.
    pub stuck: bool,
}

/// One oFono modem's ConnectionManager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataManager {
    /// `Powered`.
    pub powered: bool,
    /// `Attached`.
    pub attached: bool,
    /// Accepts `Powered` changes without acting on them.
    pub stuck: bool,
}

/// One oFono modem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modem {
    /// `Online`.
    pub online: bool,
    /// Its ConnectionManager, when it has one.
    pub data: Option<DataManager>,
}

/// Everything the mock services hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// ConnMan's `OfflineMode`.
    pub offline_mode: bool,
    /// ConnMan technologies by type (`wifi`, `bluetooth`, `gps`, `cellular`).
    pub techs: BTreeMap<String, Tech>,
    /// oFono modems by object path.
    pub modems: BTreeMap<String, Modem>,
    /// Applications and the permissions their desktop files declare.
    pub apps: BTreeMap<String, Vec<String>>,
    /// The users sailjaild knows.
    pub users: BTreeSet<u32>,
    /// Granted permissions per (uid, app).
    pub granted: BTreeMap<(u32, String), BTreeSet<String>>,
    /// MCE's radio-state bits.
    pub radio_states: u32,
    /// MCE accepts changes without acting on them.
    pub mce_stuck: bool,
}

impl World {
    /// The packet-data manager of the modem at `path` (panics when it has none).
    pub fn data_mut(&mut self, path: &str) -> &mut DataManager {
        self.modems
            .get_mut(path)
            .and_then(|m| m.data.as_mut())
            .unwrap_or_else(|| panic!("no modem with packet data at {path}"))
    }
}

/// A world shaped like a phone in normal use: Wi-Fi, Bluetooth, GPS and cellular
/// powered, one modem with packet data attached and one without a SIM, four apps.
pub fn phone() -> World {
    let tech = |powered| Tech {
        powered,
        connected: powered,
        stuck: false,
    };
    let mut w = World {
        radio_states: 0x1f,
        users: BTreeSet::from([100_000]),
        ..World::default()
    };
    for kind in ["wifi", "bluetooth", "gps", "cellular"] {
        w.techs.insert(kind.into(), tech(true));
    }
    w.modems.insert(
        "/ril_0".into(),
        Modem {
            online: true,
            data: Some(DataManager {
                powered: true,
                attached: true,
                stuck: false,
            }),
        },
    );
    w.modems.insert(
        "/ril_1".into(),
        Modem {
            online: false,
            data: None,
        },
    );
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (app, declared, granted) in [
        (
            "jolla-camera",
            &["Camera", "Microphone", "Audio", "Pictures"][..],
            &["Camera", "Microphone", "Audio", "Pictures"][..],
        ),
        (
            "harbour-recorder",
            &["Microphone", "Audio"][..],
            &["Microphone", "Audio"][..],
        ),
        (
            "harbour-maps",
            &["Location", "Internet"][..],
            &["Location", "Internet"][..],
        ),
        // Declares the camera, the person never granted it.
        (
            "harbour-notes",
            &["Camera", "Internet"][..],
            &["Internet"][..],
        ),
    ] {
        w.apps.insert(app.into(), strings(declared));
        w.granted.insert(
            (100_000, app.into()),
            granted.iter().map(|s| s.to_string()).collect(),
        );
    }
    w
}

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `net.connman`.
    Connman,
    /// `org.ofono`.
    Ofono,
    /// `org.sailfishos.sailjaild1`.
    Sailjaild,
    /// `com.nokia.mce`.
    Mce,
}

/// Every service.
pub const ALL: [Service; 4] = [
    Service::Connman,
    Service::Ofono,
    Service::Sailjaild,
    Service::Mce,
];

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

fn ov<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    OwnedVariant::try_from(v.into()).unwrap_or_else(|_| OwnedVariant::from(false))
}

fn tech_path(kind: &str) -> String {
    format!("/net/connman/technology/{kind}")
}

struct ConnmanManager {
    world: Shared,
}

#[zbus::interface(name = "net.connman.Manager")]
impl ConnmanManager {
    fn get_properties(&self) -> HashMap<String, OwnedVariant> {
        let w = lock(&self.world);
        HashMap::from([
            ("OfflineMode".to_owned(), ov(w.offline_mode)),
            ("State".to_owned(), ov("online")),
        ])
    }

    async fn set_property(
        &self,
        name: &str,
        value: OwnedVariant,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<()> {
        if name != "OfflineMode" {
            return Err(fdo::Error::InvalidArgs(format!("no property {name}")));
        }
        let on = bool::try_from(&value).map_err(|e| fdo::Error::InvalidArgs(e.to_string()))?;
        lock(&self.world).offline_mode = on;
        Self::property_changed(&emitter, name, &Variant::from(on))
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    fn get_technologies(&self) -> Vec<(OwnedObjectPath, HashMap<String, OwnedVariant>)> {
        let w = lock(&self.world);
        w.techs
            .iter()
            .filter_map(|(kind, t)| {
                let path = OwnedObjectPath::try_from(tech_path(kind)).ok()?;
                Some((path, tech_props(kind, t)))
            })
            .collect()
    }

    #[zbus(signal)]
    async fn property_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        value: &Variant<'_>,
    ) -> zbus::Result<()>;
}

fn tech_props(kind: &str, t: &Tech) -> HashMap<String, OwnedVariant> {
    HashMap::from([
        ("Powered".to_owned(), ov(t.powered)),
        ("Connected".to_owned(), ov(t.connected)),
        ("Name".to_owned(), ov(kind.to_uppercase())),
        ("Type".to_owned(), ov(kind.to_owned())),
    ])
}

struct ConnmanTechnology {
    world: Shared,
    kind: String,
}

#[zbus::interface(name = "net.connman.Technology")]
impl ConnmanTechnology {
    fn get_properties(&self) -> fdo::Result<HashMap<String, OwnedVariant>> {
        let w = lock(&self.world);
        let t = w
            .techs
            .get(&self.kind)
            .ok_or_else(|| fdo::Error::UnknownObject(self.kind.clone()))?;
        Ok(tech_props(&self.kind, t))
    }

    async fn set_property(
        &self,
        name: &str,
        value: OwnedVariant,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<()> {
        if name != "Powered" {
            return Err(fdo::Error::InvalidArgs(format!(
                "no writable property {name}"
            )));
        }
        let on = bool::try_from(&value).map_err(|e| fdo::Error::InvalidArgs(e.to_string()))?;
        let changed = {
            let mut w = lock(&self.world);
            let t = w
                .techs
                .get_mut(&self.kind)
                .ok_or_else(|| fdo::Error::UnknownObject(self.kind.clone()))?;
            if t.stuck || t.powered == on {
                false
            } else {
                t.powered = on;
                if !on {
                    t.connected = false;
                }
                true
            }
        };
        if changed {
            Self::property_changed(&emitter, "Powered", &Variant::from(on))
                .await
                .map_err(|e| fdo::Error::Failed(e.to_string()))?;
        }
        Ok(())
    }

    #[zbus(signal)]
    async fn property_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        value: &Variant<'_>,
    ) -> zbus::Result<()>;
}

struct OfonoManager {
    world: Shared,
}

#[zbus::interface(name = "org.ofono.Manager")]
impl OfonoManager {
    fn get_modems(&self) -> Vec<(OwnedObjectPath, HashMap<String, OwnedVariant>)> {
        let w = lock(&self.world);
        w.modems
            .iter()
            .filter_map(|(path, m)| {
                let mut interfaces = vec!["org.ofono.SimManager".to_owned()];
                if m.data.is_some() {
                    interfaces.push("org.ofono.ConnectionManager".to_owned());
                }
                let props = HashMap::from([
                    ("Powered".to_owned(), ov(true)),
                    ("Online".to_owned(), ov(m.online)),
                    ("Interfaces".to_owned(), ov(interfaces)),
                ]);
                Some((OwnedObjectPath::try_from(path.clone()).ok()?, props))
            })
            .collect()
    }
}

struct OfonoConnectionManager {
    world: Shared,
    path: String,
}

impl OfonoConnectionManager {
    fn with<T>(&self, f: impl FnOnce(&mut DataManager) -> T) -> fdo::Result<T> {
        let mut w = lock(&self.world);
        let data = w
            .modems
            .get_mut(&self.path)
            .and_then(|m| m.data.as_mut())
            .ok_or_else(|| fdo::Error::UnknownObject(self.path.clone()))?;
        Ok(f(data))
    }
}

#[zbus::interface(name = "org.ofono.ConnectionManager")]
impl OfonoConnectionManager {
    fn get_properties(&self) -> fdo::Result<HashMap<String, OwnedVariant>> {
        self.with(|d| {
            HashMap::from([
                ("Powered".to_owned(), ov(d.powered)),
                ("Attached".to_owned(), ov(d.attached)),
                ("RoamingAllowed".to_owned(), ov(false)),
            ])
        })
    }

    fn set_property(&self, name: &str, value: OwnedVariant) -> fdo::Result<()> {
        if name != "Powered" {
            return Err(fdo::Error::InvalidArgs(format!(
                "no writable property {name}"
            )));
        }
        let on = bool::try_from(&value).map_err(|e| fdo::Error::InvalidArgs(e.to_string()))?;
        self.with(|d| {
            if !d.stuck {
                d.powered = on;
                // Packet data off detaches from the packet domain.
                d.attached = on;
            }
        })
    }
}

struct Sailjaild {
    world: Shared,
}

fn check_user_app(w: &World, uid: u32, app: &str) -> fdo::Result<()> {
    if !w.users.contains(&uid) {
        return Err(fdo::Error::InvalidArgs(format!("Invalid user id: {uid}")));
    }
    if !w.apps.contains_key(app) {
        return Err(fdo::Error::InvalidArgs(format!(
            "Invalid application name: {app}"
        )));
    }
    Ok(())
}

#[zbus::interface(name = "org.sailfishos.sailjaild1")]
impl Sailjaild {
    fn get_applications(&self) -> Vec<String> {
        lock(&self.world).apps.keys().cloned().collect()
    }

    fn get_app_info(&self, application: &str) -> fdo::Result<HashMap<String, OwnedVariant>> {
        let w = lock(&self.world);
        let declared = w.apps.get(application).ok_or_else(|| {
            fdo::Error::InvalidArgs(format!("Invalid application name: {application}"))
        })?;
        Ok(HashMap::from([
            ("Id".to_owned(), ov(application.to_owned())),
            (
                "Exec".to_owned(),
                ov(format!(
                    "/usr/bin/sailjail -p {application}.desktop /usr/bin/{application}"
                )),
            ),
            ("Permissions".to_owned(), ov(declared.clone())),
        ]))
    }

    fn get_granted_permissions(&self, uid: u32, application: &str) -> fdo::Result<Vec<String>> {
        let w = lock(&self.world);
        check_user_app(&w, uid, application)?;
        Ok(w.granted
            .get(&(uid, application.to_owned()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn set_granted_permissions(
        &self,
        uid: u32,
        application: &str,
        permissions: Vec<String>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> fdo::Result<()> {
        {
            let mut w = lock(&self.world);
            check_user_app(&w, uid, application)?;
            w.granted.insert(
                (uid, application.to_owned()),
                permissions.into_iter().collect(),
            );
        }
        Self::application_changed(&emitter, application)
            .await
            .map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    fn get_launch_allowed(&self, uid: u32, application: &str) -> fdo::Result<i32> {
        check_user_app(&lock(&self.world), uid, application)?;
        Ok(1)
    }

    #[zbus(signal)]
    async fn application_added(emitter: &SignalEmitter<'_>, application: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn application_changed(
        emitter: &SignalEmitter<'_>,
        application: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn application_removed(
        emitter: &SignalEmitter<'_>,
        application: &str,
    ) -> zbus::Result<()>;
}

struct MceRequest {
    world: Shared,
}

#[zbus::interface(name = "com.nokia.mce.request")]
impl MceRequest {
    #[zbus(name = "get_radio_states")]
    fn get_radio_states(&self) -> u32 {
        lock(&self.world).radio_states
    }

    #[zbus(name = "req_radio_states_change")]
    async fn req_radio_states_change(
        &self,
        states: u32,
        mask: u32,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<()> {
        let bits = {
            let mut w = lock(&self.world);
            if !w.mce_stuck {
                w.radio_states = (w.radio_states & !mask) | (states & mask);
            }
            w.radio_states
        };
        conn.emit_signal(
            None::<&str>,
            "/com/nokia/mce/signal",
            "com.nokia.mce.signal",
            "radio_states_ind",
            &(bits,),
        )
        .await
        .map_err(|e| fdo::Error::Failed(e.to_string()))
    }
}

/// The running mock services; dropping it takes their names off the bus.
pub struct Services {
    conns: Vec<(Service, Connection)>,
    world: Shared,
    rt: tokio::runtime::Runtime,
}

impl Services {
    /// Serves `which` of the services over `world` on the bus at `address`; returns
    /// once every name is owned.
    pub fn start(address: &str, world: World, which: &[Service]) -> Result<Services> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let world: Shared = Arc::new(Mutex::new(world));
        let mut conns = Vec::new();
        for &service in which {
            let conn = rt.block_on(serve(address, service, world.clone()))?;
            conns.push((service, conn));
        }
        Ok(Services { conns, world, rt })
    }

    /// The services' state, to read or change behind their back (no signal is sent).
    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    fn conn(&self, service: Service) -> Result<&Connection> {
        self.conns
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, c)| c)
            .context("that service is not running")
    }

    /// Sets a technology's `Powered` as if the person had, and signals it as ConnMan does.
    pub fn set_powered(&self, kind: &str, on: bool) -> Result<()> {
        self.world()
            .techs
            .get_mut(kind)
            .context("no such technology")?
            .powered = on;
        let conn = self.conn(Service::Connman)?;
        self.rt.block_on(conn.emit_signal(
            None::<&str>,
            tech_path(kind).as_str(),
            "net.connman.Technology",
            "PropertyChanged",
            &("Powered", Variant::from(on)),
        ))?;
        Ok(())
    }
}

async fn serve(address: &str, service: Service, world: Shared) -> Result<Connection> {
    let builder = zbus::connection::Builder::address(address);
    let builder = match service {
        Service::Connman => {
            let techs: Vec<String> = lock(&world).techs.keys().cloned().collect();
            let mut b = builder.name("net.connman").serve_at(
                "/",
                ConnmanManager {
                    world: world.clone(),
                },
            );
            for kind in techs {
                b = b.serve_at(
                    tech_path(&kind),
                    ConnmanTechnology {
                        world: world.clone(),
                        kind,
                    },
                );
            }
            b
        }
        Service::Ofono => {
            let with_data: Vec<String> = lock(&world)
                .modems
                .iter()
                .filter(|(_, m)| m.data.is_some())
                .map(|(p, _)| p.clone())
                .collect();
            let mut b = builder.name("org.ofono").serve_at(
                "/",
                OfonoManager {
                    world: world.clone(),
                },
            );
            for path in with_data {
                b = b.serve_at(
                    path.clone(),
                    OfonoConnectionManager {
                        world: world.clone(),
                        path,
                    },
                );
            }
            b
        }
        Service::Sailjaild => builder
            .name("org.sailfishos.sailjaild1")
            .serve_at("/org/sailfishos/sailjaild1", Sailjaild { world }),
        Service::Mce => builder
            .name("com.nokia.mce")
            .serve_at("/com/nokia/mce/request", MceRequest { world }),
    };
    builder
        .build()
        .await
        .with_context(|| format!("serving {service:?}"))
}
