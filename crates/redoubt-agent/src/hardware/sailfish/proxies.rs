//! Client-side bindings of the four Sailfish OS system-bus services the backend talks
//! to, as zbus proxies: ConnMan (`net.connman`), oFono (`org.ofono`), sailjaild
//! (`org.sailfishos.sailjaild1`) and MCE (`com.nokia.mce`).
//!
//! Only methods are declared: the backend reads state with explicit calls (no property
//! cache that could answer from memory) and subscribes to signals with match rules
//! (see `watch` in the parent module), so no two proxies share a generated signal type.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant, Variant};

/// A D-Bus `a{sv}` dictionary as the services return it.
pub type Properties = HashMap<String, OwnedVariant>;

/// ConnMan's bus name.
pub const CONNMAN: &str = "net.connman";
/// oFono's bus name.
pub const OFONO: &str = "org.ofono";
/// sailjaild's bus name.
pub const SAILJAILD: &str = "org.sailfishos.sailjaild1";
/// MCE's bus name.
pub const MCE: &str = "com.nokia.mce";

/// `net.connman.Manager` at `/`.
#[zbus::proxy(
    interface = "net.connman.Manager",
    default_service = "net.connman",
    default_path = "/"
)]
pub trait ConnmanManager {
    /// The manager's properties (`OfflineMode`, `State`, …).
    fn get_properties(&self) -> zbus::Result<Properties>;

    /// Sets one manager property (`OfflineMode`).
    fn set_property(&self, name: &str, value: &Variant<'_>) -> zbus::Result<()>;

    /// Every technology (`/net/connman/technology/<type>`) with its properties.
    fn get_technologies(&self) -> zbus::Result<Vec<(OwnedObjectPath, Properties)>>;
}

/// `net.connman.Technology` at `/net/connman/technology/<type>`.
#[zbus::proxy(
    interface = "net.connman.Technology",
    default_service = "net.connman",
    default_path = "/net/connman/technology/wifi"
)]
pub trait ConnmanTechnology {
    /// `Powered`, `Connected`, `Name`, `Type`, …
    fn get_properties(&self) -> zbus::Result<Properties>;

    /// Sets one technology property (`Powered`).
    fn set_property(&self, name: &str, value: &Variant<'_>) -> zbus::Result<()>;
}

/// `org.ofono.Manager` at `/`.
#[zbus::proxy(
    interface = "org.ofono.Manager",
    default_service = "org.ofono",
    default_path = "/"
)]
pub trait OfonoManager {
    /// Every modem with its `org.ofono.Modem` properties (`Powered`, `Online`,
    /// `Interfaces`, …).
    fn get_modems(&self) -> zbus::Result<Vec<(OwnedObjectPath, Properties)>>;
}

/// `org.ofono.ConnectionManager` at a modem's path (present while the modem can carry
/// packet data).
#[zbus::proxy(
    interface = "org.ofono.ConnectionManager",
    default_service = "org.ofono",
    default_path = "/"
)]
pub trait OfonoConnectionManager {
    /// `Powered` (packet data allowed), `Attached` (attached to the packet domain), …
    fn get_properties(&self) -> zbus::Result<Properties>;

    /// Sets one property (`Powered`).
    fn set_property(&self, name: &str, value: &Variant<'_>) -> zbus::Result<()>;
}

/// sailjaild's permission manager, `org.sailfishos.sailjaild1` at
/// `/org/sailfishos/sailjaild1`.
#[zbus::proxy(
    interface = "org.sailfishos.sailjaild1",
    default_service = "org.sailfishos.sailjaild1",
    default_path = "/org/sailfishos/sailjaild1"
)]
pub trait Sailjaild {
    /// The applications sailjaild knows (desktop file names without `.desktop`).
    fn get_applications(&self) -> zbus::Result<Vec<String>>;

    /// What the application's desktop file declares (`Exec`, `Permissions`, …).
    fn get_app_info(&self, application: &str) -> zbus::Result<Properties>;

    /// The permissions `uid` granted `application`.
    fn get_granted_permissions(&self, uid: u32, application: &str) -> zbus::Result<Vec<String>>;

    /// Replaces the whole granted set (privileged callers only).
    fn set_granted_permissions(
        &self,
        uid: u32,
        application: &str,
        permissions: &[&str],
    ) -> zbus::Result<()>;

    /// Whether `uid` allowed `application` to launch (0 unset, 1 always, 2 never).
    fn get_launch_allowed(&self, uid: u32, application: &str) -> zbus::Result<i32>;
}

/// MCE's request interface, `com.nokia.mce.request` at `/com/nokia/mce/request`.
#[zbus::proxy(
    interface = "com.nokia.mce.request",
    default_service = "com.nokia.mce",
    default_path = "/com/nokia/mce/request"
)]
pub trait MceRequest {
    /// The radio-state bits (see [`super::mce`]).
    #[zbus(name = "get_radio_states")]
    fn get_radio_states(&self) -> zbus::Result<u32>;

    /// Changes the bits selected by `mask` to their value in `states`.
    #[zbus(name = "req_radio_states_change")]
    fn req_radio_states_change(&self, states: u32, mask: u32) -> zbus::Result<()>;
}

/// A boolean property, `None` when missing or of another type.
pub fn bool_prop(props: &Properties, name: &str) -> Option<bool> {
    props.get(name).and_then(|v| bool::try_from(v).ok())
}

/// A string property, `None` when missing or of another type.
pub fn str_prop(props: &Properties, name: &str) -> Option<String> {
    props
        .get(name)
        .and_then(|v| <&str>::try_from(v).ok())
        .map(str::to_owned)
}

/// A string-array property, `None` when missing or of another type.
pub fn strings_prop(props: &Properties, name: &str) -> Option<Vec<String>> {
    let v = props.get(name)?.try_clone().ok()?;
    Vec::<String>::try_from(v).ok()
}

/// Whether a method call failed because the service (or the object) is not there.
pub fn is_absent(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownInterface"
        ),
        _ => false,
    }
}

/// Whether a method call failed because an argument named something the service does
/// not know (sailjaild: an unknown user or application).
pub fn is_invalid_args(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.DBus.Error.InvalidArgs")
}

/// The D-Bus error name of a failed call, when it is one.
pub fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}
