//! File names of the two directories a phone holds: the agent's state directory (root's)
//! and the messenger directory (the chat user's).

/// The agent's state directory.
///
/// ```text
/// DIR/                      0700
///   identity.json           device id, user, server, pinned CA, organization key, hardware
///   device-key.pem          0600, the device's Ed25519 key (PKCS#8 PEM); never leaves the device
///   bundle.json             the held signed policy bundle (envelope, exactly as signed)
///   seq                     the last report sequence number used
///   outbox/<seq>.json       signed reports not yet acknowledged by the server
///   status.json             written by `run`: connection state, last error, refused bundle
///   zones.json              the zone and lock state (zones inside, used codes, lock, events to report)
///   control.sock            0600, `run` takes checkpoint codes from `redoubt-agent checkpoint` here
///   wipe-pending            a remote wipe was accepted and is not finished yet
///   agent.lock              `run` holds an exclusive lock on it
///   messenger-dir.json      where the messenger directory is and whom it was handed to
///   messenger/              the messenger directory unless `enroll --messenger-dir` put it elsewhere
///   sim-hardware.json       the SIMULATED hardware (only with `--hardware sim`)
/// ```
pub mod agent {
    /// File name of the identity.
    pub const IDENTITY_FILE: &str = "identity.json";
    /// File name of the device key.
    pub const KEY_FILE: &str = "device-key.pem";
    /// File name of the held bundle.
    pub const BUNDLE_FILE: &str = "bundle.json";
    /// File name of the report counter.
    pub const SEQ_FILE: &str = "seq";
    /// Directory of unacknowledged reports.
    pub const OUTBOX_DIR: &str = "outbox";
    /// File name of the run status.
    pub const STATUS_FILE: &str = "status.json";
    /// File name of the run lock.
    pub const LOCK_FILE: &str = "agent.lock";
    /// File name of the zone and lock state.
    pub const ZONES_FILE: &str = "zones.json";
    /// The running agent's control socket.
    pub const CONTROL_SOCKET: &str = "control.sock";
    /// Present while an accepted remote wipe is not finished.
    pub const WIPE_MARKER: &str = "wipe-pending";
    /// Where the agent put the messenger directory (see [`crate::MessengerDir`]).
    pub const MESSENGER_RECORD: &str = "messenger-dir.json";
    /// The default messenger directory inside the state directory.
    pub const MESSENGER_DIR: &str = "messenger";
    /// Where an agent enrolled before the messenger had a directory of its own kept the
    /// messenger's database (moved into the messenger directory at the next start, and
    /// deleted by a wipe).
    pub const LEGACY_MESSENGER_DB: &str = super::messenger::DB_FILE;
}

/// The messenger directory, written by the agent at enrollment and handed to the user
/// that runs the chat; the messenger keeps its database there.
///
/// ```text
/// DIR/                          0700, owned by the chat's user
///   identity.json               device id, user, server, pinned CA, organization key, device public key
///   messenger-key.pem           0600, the messenger's Ed25519 key (PKCS#8 PEM)
///   messenger-delegation.json   the device key's signed `messenger-delegation/v1` for that key
///   messenger.db*               the messenger's database (written by redoubt-messenger)
/// ```
pub mod messenger {
    /// File name of the public identity.
    pub const IDENTITY_FILE: &str = "identity.json";
    /// File name of the messenger key.
    pub const KEY_FILE: &str = "messenger-key.pem";
    /// File name of the delegation.
    pub const DELEGATION_FILE: &str = "messenger-delegation.json";
    /// The messenger's database and, by prefix, its `-wal`, `-shm` and `-journal`
    /// companions.
    pub const DB_FILE: &str = "messenger.db";
}
