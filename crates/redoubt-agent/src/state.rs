//! The agent's state directory: the run lock, the device identity, the device key,
//! the held bundle, the report counter, the zone state, the record of where the
//! messenger directory is, and the wipe. Its layout, the atomic file writes and the
//! identity type live in `redoubt-device` (shared with the messenger) and are
//! re-exported here.
//!
//! ```text
//! DIR/                      0700
//!   identity.json           device id, user, server, pinned CA, organization key, hardware
//!   device-key.pem          0600, the device's Ed25519 key (PKCS#8 PEM); never leaves the device
//!   bundle.json             the held signed policy bundle (envelope, exactly as signed)
//!   seq                     the last report sequence number used
//!   outbox/<seq>.json       signed reports not yet acknowledged by the server
//!   status.json             written by `run`: connection state, last error, refused bundle
//!   zones.json              the zone and lock state (zones inside, used codes, lock, events to report)
//!   control.sock            0600, `run` takes checkpoint codes from `redoubt-agent checkpoint` here
//!   wipe-pending            a remote wipe was accepted and is not finished yet
//!   agent.lock              `run` holds an exclusive lock on it
//!   messenger-dir.json      where the messenger directory is and whom it was handed to
//!   messenger/              the messenger directory (unless `enroll --messenger-dir` put it elsewhere)
//!   sim-hardware.json       the SIMULATED hardware (only with `--hardware sim`)
//! ```
//!
//! Every file is written to a temporary file, synced, renamed over the old one, and
//! the directory is synced, so a crash leaves either the old or the new content.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use redoubt_device::keys;
use redoubt_policy::{ZoneState, verify_bundle};
use redoubt_proto::{CommandId, PolicyBundle, SignedEnvelope, Timestamp};
use serde::{Deserialize, Serialize};

pub use redoubt_device::files::read_json;
pub use redoubt_device::layout::agent::*;
pub use redoubt_device::{Identity, MessengerDir, Owner, sync_dir, write_atomic, write_json};

/// Where the messenger directory of this device is (`messenger-dir.json`), so that a
/// wipe finds it wherever enrollment put it and `run` can complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerRecord {
    /// The directory (absolute).
    pub dir: PathBuf,
    /// The user it was handed to; `None`: the agent's own user.
    pub owner: Option<Owner>,
}

/// Whether another process holds the run lock of a state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockProbe {
    /// An agent is running on this directory.
    Held,
    /// No agent is running.
    Free,
}

/// The exclusive lock that `run` (and `enroll`) hold on a state directory; released
/// when dropped or when the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The state directory of one device.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (nothing is read or created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether the directory holds a completed enrollment.
    pub fn is_enrolled(&self) -> bool {
        self.path(IDENTITY_FILE).exists()
    }

    /// Fails with a clear message when the directory is not enrolled.
    pub fn require_enrolled(&self) -> Result<()> {
        if !self.root.is_dir() {
            bail!(
                "{} does not exist; enroll first with `redoubt-agent enroll URL --state {}`",
                self.root.display(),
                self.root.display()
            );
        }
        if !self.is_enrolled() {
            bail!(
                "{} is not an enrolled Redoubt state directory (no {IDENTITY_FILE}); enroll first with `redoubt-agent enroll URL --state {}`",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }

    /// Creates the directory (mode 0700) if needed and makes sure only the owner can enter it.
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", self.root.display()))
    }

    /// Takes the exclusive run lock, failing at once if another agent holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.path(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A `status` probe holds a shared lock for an instant; retry briefly before
        // concluding that another agent runs here.
        for attempt in 0..20 {
            match file.try_lock() {
                Ok(()) => return Ok(RunLock { _file: file }),
                Err(TryLockError::WouldBlock) if attempt < 19 => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(TryLockError::WouldBlock) => break,
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        bail!(
            "another redoubt-agent is already running on {} (it holds {})",
            self.root.display(),
            path.display()
        )
    }

    /// Whether a running agent holds the lock, without disturbing it.
    pub fn probe_lock(&self) -> Result<LockProbe> {
        let path = self.path(LOCK_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockProbe::Free),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(LockProbe::Free),
            Err(TryLockError::WouldBlock) => Ok(LockProbe::Held),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("probing {}", path.display()))
            }
        }
    }

    /// Reads the identity.
    pub fn load_identity(&self) -> Result<Identity> {
        self.require_enrolled()?;
        Identity::load(&self.path(IDENTITY_FILE))
    }

    /// Writes the identity (the last step of enrollment).
    pub fn store_identity(&self, identity: &Identity) -> Result<()> {
        identity.store(&self.path(IDENTITY_FILE))
    }

    /// Writes the device key, readable by the owner only.
    pub fn store_key(&self, key: &SigningKey) -> Result<()> {
        keys::store_key(&self.path(KEY_FILE), key, "the device key")
    }

    /// Reads the device key; refuses a key file that others can read.
    pub fn load_key(&self) -> Result<SigningKey> {
        keys::load_key(&self.path(KEY_FILE))
    }

    /// Where the messenger directory is: as recorded at enrollment, else (an agent
    /// enrolled before the messenger had a directory of its own) `messenger/` inside
    /// this directory, handed to nobody.
    pub fn messenger_record(&self) -> Result<MessengerRecord> {
        Ok(
            read_json(&self.path(MESSENGER_RECORD))?.unwrap_or_else(|| MessengerRecord {
                dir: self.path(MESSENGER_DIR),
                owner: None,
            }),
        )
    }

    /// Records where the messenger directory is.
    pub fn store_messenger_record(&self, record: &MessengerRecord) -> Result<()> {
        write_json(&self.path(MESSENGER_RECORD), record)
    }

    /// Writes the held bundle.
    pub fn store_bundle(&self, envelope: &SignedEnvelope) -> Result<()> {
        write_json(&self.path(BUNDLE_FILE), envelope)
    }

    /// Reads the held bundle and checks again that the organization signed it for
    /// this device. Its expiry is not checked here: an expired bundle is still the
    /// newest instruction, and the decision falls back to lockdown on its own.
    ///
    /// `Ok(None)` when there is no bundle; `Err` when the file is there but unusable
    /// (the caller falls back to lockdown and says why).
    pub fn load_bundle(
        &self,
        identity: &Identity,
    ) -> Result<Option<(PolicyBundle, SignedEnvelope)>> {
        let path = self.path(BUNDLE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let envelope: SignedEnvelope = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        let bundle = verify_bundle(
            &envelope,
            &identity.organization_key,
            &identity.device_id,
            None,
            Timestamp(i64::MIN),
        )
        .with_context(|| format!("held bundle {} does not verify", path.display()))?;
        Ok(Some((bundle, envelope)))
    }

    /// The last report sequence number used (0 before the first report).
    pub fn load_seq(&self) -> Result<u64> {
        let path = self.path(SEQ_FILE);
        match fs::read_to_string(&path) {
            Ok(t) => t
                .trim()
                .parse()
                .with_context(|| format!("{} is corrupt", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Records `seq` as the last sequence number used.
    pub fn store_seq(&self, seq: u64) -> Result<()> {
        write_atomic(&self.path(SEQ_FILE), format!("{seq}\n").as_bytes(), 0o600)
            .context("writing the report counter")
    }
}

impl StateDir {
    /// Reads the zone state. `Ok(None)` when there is none yet (outside every zone,
    /// unlocked); `Err` when the file is there but unreadable: the caller must fail
    /// closed and never take that for "outside".
    pub fn load_zones(&self) -> Result<Option<ZoneState>> {
        redoubt_device::read_json(&self.path(ZONES_FILE))
    }

    /// Writes the zone state (atomically, before anything is enforced from it).
    pub fn store_zones(&self, zones: &ZoneState) -> Result<()> {
        write_json(&self.path(ZONES_FILE), zones)
    }

    /// The command id of an accepted wipe that is not finished, if any.
    pub fn wipe_pending(&self) -> Result<Option<String>> {
        let path = self.path(WIPE_MARKER);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Records durably that wipe `id` was accepted, so that a crash before it is
    /// finished cannot leave the keys behind: `run` finishes it at the next start.
    pub fn mark_wipe_pending(&self, id: &CommandId) -> Result<()> {
        write_atomic(&self.path(WIPE_MARKER), format!("{id}\n").as_bytes(), 0o600)
            .context("recording the pending wipe")
    }

    /// Wipe, first part: destroys the messenger directory wherever it is (its key, its
    /// delegation, its database), then deletes the outbox, the bundle, the zone state,
    /// the report counter, the status file, the simulated hardware and leftover
    /// temporary files. The key, the identity and the wipe marker stay (see
    /// [`StateDir::destroy_key_and_identity`]). Returns what could not be deleted.
    pub fn destroy_local_data(&self) -> Vec<String> {
        let mut failures = Vec::new();
        // The record goes only once its directory is gone, so a wipe interrupted or
        // failed here still finds it at the next start.
        let messenger = match self.messenger_record() {
            Ok(r) => MessengerDir::new(r.dir).destroy(),
            // An unreadable record: the default place is still destroyed, and the
            // record kept for whoever looks into the failure.
            Err(e) => {
                if let Err(d) = MessengerDir::new(self.path(MESSENGER_DIR)).destroy() {
                    failures.push(format!("the messenger directory: {d:#}"));
                }
                Err(e)
            }
        };
        match messenger {
            Ok(()) => {
                if let Err(e) = fs::remove_file(self.path(MESSENGER_RECORD))
                    && e.kind() != io::ErrorKind::NotFound
                {
                    failures.push(format!("{MESSENGER_RECORD}: {e}"));
                }
            }
            Err(e) => failures.push(format!("the messenger directory: {e:#}")),
        }
        let mut remove = |path: PathBuf| {
            let result = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        };
        let names: Vec<String> = fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in &names {
            let temporary = name.starts_with('.') && name.ends_with(".tmp");
            if name.starts_with(LEGACY_MESSENGER_DB) || temporary {
                remove(self.path(name));
            }
        }
        for name in [
            OUTBOX_DIR,
            BUNDLE_FILE,
            ZONES_FILE,
            SEQ_FILE,
            STATUS_FILE,
            crate::clock::TIME_FLOOR_FILE,
            crate::hardware::sim::SIM_FILE,
            crate::hardware::sim::SIM_LOCK_FILE,
        ] {
            remove(self.path(name));
        }
        if let Err(e) = sync_dir(&self.root) {
            failures.push(format!("syncing {}: {e}", self.root.display()));
        }
        failures
    }

    /// Wipe, last part: overwrites the device key with zeros, syncs and deletes it,
    /// then deletes the identity (the directory is no longer enrolled) and the wipe
    /// marker.
    pub fn destroy_key_and_identity(&self) -> Result<()> {
        keys::destroy_key(&self.path(KEY_FILE))?;
        for name in [IDENTITY_FILE, WIPE_MARKER] {
            match fs::remove_file(self.path(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {name}")),
            }
        }
        sync_dir(&self.root).context("syncing the state directory")
    }
}

#[cfg(test)]
mod tests {
    use redoubt_proto::{DeviceId, Fingerprint, HardwareKind};

    use super::*;

    fn identity() -> Identity {
        Identity {
            device_id: DeviceId::from_random([1; 12]),
            user: "alice".parse().unwrap(),
            server: url::Url::parse("https://127.0.0.1:8443").unwrap(),
            ca_fingerprint: Fingerprint::of_der(b"ca"),
            organization_key: SigningKey::from_bytes(&[7; 32]).verifying_key(),
            hardware: HardwareKind::Sim,
            enrolled_at: Timestamp(1_800_000_000),
        }
    }

    #[test]
    fn identity_and_key_round_trip_and_key_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("s"));
        dir.create().unwrap();
        assert_eq!(
            fs::metadata(dir.root()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        dir.store_identity(&identity()).unwrap();
        assert_eq!(dir.load_identity().unwrap(), identity());
        let key = SigningKey::from_bytes(&[3; 32]);
        dir.store_key(&key).unwrap();
        assert_eq!(
            fs::metadata(dir.path(KEY_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(dir.load_key().unwrap().to_bytes(), key.to_bytes());
        fs::set_permissions(dir.path(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            dir.load_key()
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
    }

    #[test]
    fn seq_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(dir.load_seq().unwrap(), 0);
        dir.store_seq(41).unwrap();
        assert_eq!(StateDir::new(tmp.path()).load_seq().unwrap(), 41);
    }

    #[test]
    fn the_run_lock_is_exclusive_and_probed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(dir.probe_lock().unwrap(), LockProbe::Free);
        let held = dir.lock().unwrap();
        assert_eq!(dir.probe_lock().unwrap(), LockProbe::Held);
        assert!(
            dir.lock()
                .unwrap_err()
                .to_string()
                .contains("already running")
        );
        drop(held);
        assert_eq!(dir.probe_lock().unwrap(), LockProbe::Free);
    }

    #[test]
    fn zone_state_round_trips_and_a_corrupt_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(dir.load_zones().unwrap(), None);
        dir.store_zones(&ZoneState::default()).unwrap();
        assert_eq!(dir.load_zones().unwrap(), Some(ZoneState::default()));
        fs::write(dir.path(ZONES_FILE), b"{\"inside\": [").unwrap();
        let err = format!("{:#}", dir.load_zones().unwrap_err());
        assert!(err.contains("zones.json is corrupt"), "{err}");
    }

    #[test]
    fn a_wipe_leaves_no_key_material() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.store_identity(&identity()).unwrap();
        dir.store_key(&SigningKey::from_bytes(&[3; 32])).unwrap();
        for name in [
            "messenger.db",
            "messenger.db-wal",
            "messenger.db-shm",
            BUNDLE_FILE,
            SEQ_FILE,
            ZONES_FILE,
            ".zones.json.1.tmp",
        ] {
            fs::write(dir.path(name), b"x").unwrap();
        }
        fs::create_dir(dir.path(OUTBOX_DIR)).unwrap();
        fs::write(dir.path(OUTBOX_DIR).join("1.json"), b"x").unwrap();
        dir.mark_wipe_pending(&CommandId::from_random([1; 12]))
            .unwrap();
        assert!(dir.wipe_pending().unwrap().unwrap().starts_with("cmd_"));
        assert_eq!(dir.destroy_local_data(), Vec::<String>::new());
        let left = |dir: &StateDir| {
            let mut names: Vec<String> = fs::read_dir(dir.root())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(left(&dir), [KEY_FILE, IDENTITY_FILE, WIPE_MARKER]);
        dir.destroy_key_and_identity().unwrap();
        assert_eq!(left(&dir), Vec::<String>::new());
        assert!(!dir.is_enrolled());
        assert_eq!(dir.wipe_pending().unwrap(), None);
    }

    #[test]
    fn a_wipe_destroys_the_messenger_directory_wherever_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        dir.create().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        dir.store_key(&key).unwrap();
        let record = MessengerRecord {
            dir: tmp.path().join("elsewhere").join("messenger"),
            owner: None,
        };
        let m = crate::messenger_dir::provision(
            &dir,
            &identity(),
            &key,
            &record,
            Timestamp(1_800_000_000),
            true,
        )
        .unwrap();
        assert_eq!(dir.messenger_record().unwrap(), record);
        m.load_credential().unwrap();
        fs::write(m.db_path(), b"conversations").unwrap();
        fs::write(m.path("messenger.db-wal"), b"conversations").unwrap();
        assert_eq!(dir.destroy_local_data(), Vec::<String>::new());
        assert!(!record.dir.exists(), "the messenger directory is gone");
        assert!(tmp.path().join("elsewhere").exists(), "its parent stays");
        assert!(!dir.path(MESSENGER_RECORD).exists());
        // Without a record (an agent enrolled before): `messenger/` in the state dir.
        let inner = MessengerDir::new(dir.path(MESSENGER_DIR));
        inner.create().unwrap();
        fs::write(inner.db_path(), b"conversations").unwrap();
        assert_eq!(dir.destroy_local_data(), Vec::<String>::new());
        assert!(!inner.root().exists());
        // A corrupt record is reported, and the default place is destroyed anyway.
        inner.create().unwrap();
        fs::write(inner.db_path(), b"conversations").unwrap();
        fs::write(dir.path(MESSENGER_RECORD), b"{").unwrap();
        let failures = dir.destroy_local_data();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("messenger-dir.json is corrupt"),
            "{failures:?}"
        );
        assert!(!inner.root().exists());
    }

    #[test]
    fn the_messenger_directory_never_holds_the_device_key_nor_the_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        dir.create().unwrap();
        for bad in [dir.root().to_path_buf(), tmp.path().to_path_buf()] {
            let record = MessengerRecord {
                dir: bad,
                owner: None,
            };
            let err = format!(
                "{:#}",
                crate::messenger_dir::check_placement(&dir, &record).unwrap_err()
            );
            assert!(
                err.contains("must not be the agent's state directory"),
                "{err}"
            );
        }
        let key = SigningKey::from_bytes(&[3; 32]);
        let record = MessengerRecord {
            dir: std::path::absolute(dir.path(MESSENGER_DIR)).unwrap(),
            owner: None,
        };
        let m = crate::messenger_dir::provision(
            &dir,
            &identity(),
            &key,
            &record,
            Timestamp(1_800_000_000),
            true,
        )
        .unwrap();
        let pem = fs::read_to_string(dir.path(KEY_FILE)).unwrap_or_default();
        for e in fs::read_dir(m.root()).unwrap() {
            let p = e.unwrap().path();
            let text = fs::read_to_string(&p).unwrap();
            assert!(
                pem.is_empty() || !text.contains(pem.trim()),
                "{}",
                p.display()
            );
            assert_ne!(p.file_name().unwrap(), KEY_FILE);
        }
        assert_ne!(
            m.load_credential().unwrap().key.to_bytes(),
            key.to_bytes(),
            "the messenger key is its own"
        );
    }

    #[test]
    fn not_enrolled_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = StateDir::new(tmp.path())
            .load_identity()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an enrolled"), "{err}");
    }
}
