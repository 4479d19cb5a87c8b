//! [`MessengerDir`]: the messenger's own directory. The agent (root) writes it at
//! enrollment — the public identity, a fresh messenger key, the device key's delegation
//! of that key — and hands it to the user that runs the chat ([`Owner`]); the messenger
//! keeps its database there and never reads the agent's state directory. A wipe destroys
//! it wherever it is.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use redoubt_proto::SignedEnvelope;
use redoubt_proto::messaging::MessengerDelegation;

use crate::files::{read_json, sync_dir, write_json};
use crate::identity::PublicIdentity;
use crate::keys::{destroy_key, load_key, store_key};
use crate::layout::{agent, messenger};

/// The user (and group) a messenger directory is handed to: `UID[:GID]`, numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The group id; unchanged when absent.
    pub gid: Option<u32>,
}

impl FromStr for Owner {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Owner> {
        let number = |t: &str, what: &str| {
            t.parse::<u32>().map_err(|_| {
                anyhow!(
                    "{what} {t:?} is not a number (expected UID or UID:GID, e.g. 100000:100000)"
                )
            })
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(Owner {
                uid: number(u, "user id")?,
                gid: Some(number(g, "group id")?),
            }),
            None => Ok(Owner {
                uid: number(s, "user id")?,
                gid: None,
            }),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gid {
            Some(g) => write!(f, "{}:{g}", self.uid),
            None => write!(f, "{}", self.uid),
        }
    }
}

impl serde::Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the messenger proves itself with, read from its directory and checked: the
/// delegation is signed by the device key of the identity, for this device and for
/// this key.
#[derive(Clone)]
pub struct MessengerCredential {
    /// The public identity.
    pub identity: PublicIdentity,
    /// The messenger key.
    pub key: SigningKey,
    /// The device key's signed [`MessengerDelegation`] of `key`.
    pub delegation: SignedEnvelope,
}

impl fmt::Debug for MessengerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessengerCredential")
            .field("device_id", &self.identity.device_id)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The messenger directory of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessengerDir {
    root: PathBuf,
}

impl MessengerDir {
    /// A messenger directory at `root` (nothing is read or created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        MessengerDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The messenger's database.
    pub fn db_path(&self) -> PathBuf {
        self.path(messenger::DB_FILE)
    }

    /// Whether the directory holds a messenger key (it is a messenger directory).
    pub fn is_messenger_dir(path: &Path) -> bool {
        path.join(messenger::KEY_FILE).exists()
    }

    /// The messenger directory `given` names: `given` itself when it is one, or the
    /// `messenger/` directory of an agent state directory. Anything else is a clear
    /// error.
    pub fn resolve(given: &Path) -> Result<MessengerDir> {
        if Self::is_messenger_dir(given) {
            return Ok(MessengerDir::new(given));
        }
        let inner = given.join(agent::MESSENGER_DIR);
        if Self::is_messenger_dir(&inner) {
            return Ok(MessengerDir::new(inner));
        }
        if given.join(agent::KEY_FILE).exists() {
            bail!(
                "{} is an agent state directory without a messenger directory ({}/ is missing); `redoubt-agent run` creates it at its next start, or give the --messenger-dir chosen at enrollment",
                given.display(),
                inner.display()
            );
        }
        if !given.is_dir() {
            bail!("{} does not exist", given.display());
        }
        bail!(
            "{} is not a messenger directory (no {}); give the messenger directory written at enrollment (`redoubt-agent enroll --messenger-dir`, by default STATE/{}/)",
            given.display(),
            messenger::KEY_FILE,
            agent::MESSENGER_DIR
        )
    }

    /// Creates the directory (mode 0700) if needed. Refuses a symbolic link, and a
    /// directory holding anything that is not the messenger's: a wipe destroys the
    /// whole directory, so it must never be one that holds other data.
    pub fn create(&self) -> Result<()> {
        match fs::symlink_metadata(&self.root) {
            Ok(m) if m.file_type().is_symlink() => bail!(
                "{} is a symbolic link; give the messenger directory itself",
                self.root.display()
            ),
            Ok(m) if !m.is_dir() => bail!("{} is not a directory", self.root.display()),
            Ok(_) => {
                let foreign: Vec<String> = fs::read_dir(&self.root)
                    .with_context(|| format!("reading {}", self.root.display()))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !is_messenger_file(n))
                    .collect();
                if !foreign.is_empty() {
                    bail!(
                        "{} already holds files that are not the messenger's ({}); a wipe deletes the whole messenger directory, so give a new or empty one",
                        self.root.display(),
                        foreign.join(", ")
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", self.root.display()))
    }

    /// Deletes what an earlier device left in the directory (its key, delegation,
    /// identity and database): none of it may be taken for the new device's.
    pub fn clear(&self) -> Result<()> {
        let names: Vec<String> = match fs::read_dir(&self.root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
        };
        for name in names.iter().filter(|n| is_messenger_file(n)) {
            let path = self.path(name);
            if name == messenger::KEY_FILE {
                destroy_key(&path)?;
            } else {
                fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Writes the public identity.
    pub fn store_identity(&self, identity: &PublicIdentity) -> Result<()> {
        identity.store(&self.path(messenger::IDENTITY_FILE))
    }

    /// Writes the messenger key, readable by the owner only.
    pub fn store_key(&self, key: &SigningKey) -> Result<()> {
        store_key(&self.path(messenger::KEY_FILE), key, "the messenger key")
    }

    /// Writes the delegation.
    pub fn store_delegation(&self, delegation: &SignedEnvelope) -> Result<()> {
        write_json(&self.path(messenger::DELEGATION_FILE), delegation)
    }

    /// Reads the delegation as stored (not checked).
    pub fn load_delegation(&self) -> Result<Option<SignedEnvelope>> {
        read_json(&self.path(messenger::DELEGATION_FILE))
    }

    /// Reads the public identity.
    pub fn load_identity(&self) -> Result<PublicIdentity> {
        PublicIdentity::load(&self.path(messenger::IDENTITY_FILE))
    }

    /// Reads identity, key and delegation, and checks that the delegation is signed by
    /// the identity's device key, for this device, and names this key.
    pub fn load_credential(&self) -> Result<MessengerCredential> {
        if !Self::is_messenger_dir(&self.root) {
            // Names the agent's directory case and the missing one clearly.
            Self::resolve(&self.root)?;
        }
        let identity = self.load_identity()?;
        let key = load_key(&self.path(messenger::KEY_FILE))?;
        let path = self.path(messenger::DELEGATION_FILE);
        let delegation = self
            .load_delegation()?
            .with_context(|| format!("{} is missing", path.display()))?;
        check_delegation(&delegation, &identity, &key.verifying_key())
            .with_context(|| format!("{} does not fit this directory", path.display()))?;
        Ok(MessengerCredential {
            identity,
            key,
            delegation,
        })
    }

    /// Hands the directory to `owner`: the files written at enrollment, then the
    /// directory itself.
    ///
    /// Each is opened, checked to be the one and only name of what was opened (a regular
    /// file with one link, or the directory, at the same inode as the entry) and changed
    /// through that handle (`fchown`), so a link planted under one of the names never
    /// gives the caller's (root's) files away.
    pub fn hand_over(&self, owner: Owner) -> Result<()> {
        for name in [
            messenger::IDENTITY_FILE,
            messenger::KEY_FILE,
            messenger::DELEGATION_FILE,
        ] {
            let path = self.path(name);
            match fs::File::open(&path) {
                Ok(f) => fchown_own(&f, &path, false, owner)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            }
        }
        let f = fs::File::open(&self.root)
            .with_context(|| format!("opening {}", self.root.display()))?;
        fchown_own(&f, &self.root, true, owner)
    }

    /// The owner of the directory as it is now.
    pub fn current_owner(&self) -> Result<Owner> {
        let m = fs::symlink_metadata(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?;
        Ok(Owner {
            uid: m.uid(),
            gid: Some(m.gid()),
        })
    }

    /// Wipe: overwrites the messenger key, then deletes the directory with everything
    /// in it (links are deleted, never followed). Absent is fine.
    pub fn destroy(&self) -> Result<()> {
        match fs::symlink_metadata(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
            Ok(m) if m.is_dir() => destroy_key(&self.path(messenger::KEY_FILE))?,
            Ok(_) => {}
        }
        let removed = if fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&self.root)
        } else {
            fs::remove_file(&self.root)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting {}", self.root.display()));
            }
        }
        if let Some(parent) = self.root.parent() {
            sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
        }
        Ok(())
    }
}

/// Changes the owner of `f`, opened from `path`, if it is what the entry names.
fn fchown_own(f: &fs::File, path: &Path, dir: bool, owner: Owner) -> Result<()> {
    let opened = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    let entry =
        fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let kind_ok = if dir {
        opened.is_dir()
    } else {
        opened.is_file() && opened.nlink() == 1
    };
    if !kind_ok || entry.dev() != opened.dev() || entry.ino() != opened.ino() {
        bail!(
            "{} is not the file the agent wrote (a link?); not handing it over",
            path.display()
        );
    }
    std::os::unix::fs::fchown(f, Some(owner.uid), owner.gid)
        .with_context(|| format!("handing {} to {owner}", path.display()))
}

/// Whether `name` is one of the files the messenger directory holds.
fn is_messenger_file(name: &str) -> bool {
    name == messenger::IDENTITY_FILE
        || name == messenger::KEY_FILE
        || name == messenger::DELEGATION_FILE
        || name.starts_with(messenger::DB_FILE)
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Checks a delegation against the identity (signed by its device key, for its device)
/// and returns the messenger key it names.
pub fn check_delegation(
    delegation: &SignedEnvelope,
    identity: &PublicIdentity,
    key: &VerifyingKey,
) -> Result<MessengerDelegation> {
    let d: MessengerDelegation = delegation
        .verify(MessengerDelegation::KIND, &identity.device_key)
        .context("the delegation is not signed by this device's key")?;
    if d.device_id != identity.device_id {
        bail!("the delegation is for device {}", d.device_id);
    }
    if d.messenger_key.0 != key.as_bytes() {
        bail!("the delegation names another messenger key");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use redoubt_proto::Timestamp;
    use redoubt_proto::messaging::B64;

    use super::*;
    use crate::identity::tests::identity;

    fn provisioned(root: &Path) -> (MessengerDir, SigningKey) {
        let device = SigningKey::from_bytes(&[5; 32]);
        let key = SigningKey::from_bytes(&[6; 32]);
        let dir = MessengerDir::new(root);
        dir.create().unwrap();
        let public = identity().public(device.verifying_key());
        dir.store_identity(&public).unwrap();
        dir.store_key(&key).unwrap();
        let d = MessengerDelegation {
            device_id: public.device_id.clone(),
            messenger_key: B64(key.verifying_key().as_bytes().to_vec()),
            issued_at: Timestamp(1_800_000_000),
        };
        dir.store_delegation(&SignedEnvelope::sign(
            MessengerDelegation::KIND,
            &d,
            &device,
        ))
        .unwrap();
        (dir, device)
    }

    #[test]
    fn a_provisioned_directory_is_private_and_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = provisioned(&tmp.path().join("m"));
        assert_eq!(
            fs::metadata(dir.root()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(dir.path(messenger::KEY_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let c = dir.load_credential().unwrap();
        assert_eq!(c.key.to_bytes(), [6; 32]);
        assert_eq!(
            MessengerDir::resolve(tmp.path().join("m").as_path()).unwrap(),
            dir
        );
    }

    #[test]
    fn a_delegation_by_another_key_or_for_another_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, device) = provisioned(&tmp.path().join("m"));
        let other = SigningKey::from_bytes(&[9; 32]);
        let d = MessengerDelegation {
            device_id: identity().device_id,
            messenger_key: B64(other.verifying_key().as_bytes().to_vec()),
            issued_at: Timestamp(1_800_000_000),
        };
        dir.store_delegation(&SignedEnvelope::sign(
            MessengerDelegation::KIND,
            &d,
            &device,
        ))
        .unwrap();
        let err = format!("{:#}", dir.load_credential().unwrap_err());
        assert!(err.contains("another messenger key"), "{err}");
        let mut d = d;
        d.messenger_key = B64(SigningKey::from_bytes(&[6; 32])
            .verifying_key()
            .as_bytes()
            .to_vec());
        dir.store_delegation(&SignedEnvelope::sign(MessengerDelegation::KIND, &d, &other))
            .unwrap();
        let err = format!("{:#}", dir.load_credential().unwrap_err());
        assert!(err.contains("not signed by this device's key"), "{err}");
    }

    #[test]
    fn an_agent_state_directory_resolves_to_its_messenger_directory_or_says_why_not() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::write(state.join(agent::KEY_FILE), b"k").unwrap();
        let err = format!("{:#}", MessengerDir::resolve(&state).unwrap_err());
        assert!(
            err.contains("agent state directory without a messenger directory"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            MessengerDir::new(&state).load_credential().unwrap_err()
        );
        assert!(err.contains("agent state directory"), "{err}");
        let (dir, _) = provisioned(&state.join(agent::MESSENGER_DIR));
        assert_eq!(MessengerDir::resolve(&state).unwrap(), dir);
        let err = format!("{:#}", MessengerDir::resolve(tmp.path()).unwrap_err());
        assert!(err.contains("is not a messenger directory"), "{err}");
    }

    #[test]
    fn a_directory_with_other_data_or_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::write(home.join("thesis.odt"), b"years of work").unwrap();
        let err = format!("{:#}", MessengerDir::new(&home).create().unwrap_err());
        assert!(err.contains("not the messenger's (thesis.odt)"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&home, &link).unwrap();
        let err = format!("{:#}", MessengerDir::new(&link).create().unwrap_err());
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn clear_and_destroy_leave_no_key_material() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = provisioned(&tmp.path().join("m"));
        for name in ["messenger.db", "messenger.db-wal", "messenger.db-shm"] {
            fs::write(dir.path(name), b"conversations").unwrap();
        }
        dir.clear().unwrap();
        assert_eq!(fs::read_dir(dir.root()).unwrap().count(), 0);
        let (dir, _) = provisioned(&tmp.path().join("m"));
        fs::write(dir.db_path(), b"conversations").unwrap();
        fs::create_dir(dir.path("cache")).unwrap();
        dir.destroy().unwrap();
        assert!(!dir.root().exists());
        dir.destroy().unwrap();
    }

    #[test]
    fn hand_over_changes_the_owner_of_the_directory_and_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = provisioned(&tmp.path().join("m"));
        let me = dir.current_owner().unwrap();
        // Root (as on the phone, where the agent runs) hands it to another user; anyone
        // else can only hand it to themselves, which must work too.
        let target = if me.uid == 0 {
            Owner {
                uid: 65534,
                gid: Some(65534),
            }
        } else {
            me
        };
        dir.hand_over(target).unwrap();
        for p in [
            dir.root().to_path_buf(),
            dir.path(messenger::KEY_FILE),
            dir.path(messenger::DELEGATION_FILE),
            dir.path(messenger::IDENTITY_FILE),
        ] {
            let m = fs::metadata(&p).unwrap();
            assert_eq!(
                (m.uid(), Some(m.gid())),
                (target.uid, target.gid),
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn hand_over_refuses_a_planted_link() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = provisioned(&tmp.path().join("m"));
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"root's").unwrap();
        let before = fs::metadata(&victim).unwrap();
        fs::remove_file(dir.path(messenger::IDENTITY_FILE)).unwrap();
        fs::hard_link(&victim, dir.path(messenger::IDENTITY_FILE)).unwrap();
        let me = dir.current_owner().unwrap();
        let err = format!("{:#}", dir.hand_over(me).unwrap_err());
        assert!(err.contains("not the file the agent wrote"), "{err}");
        fs::remove_file(dir.path(messenger::IDENTITY_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path(messenger::IDENTITY_FILE)).unwrap();
        let err = format!("{:#}", dir.hand_over(me).unwrap_err());
        assert!(err.contains("not the file the agent wrote"), "{err}");
        let after = fs::metadata(&victim).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    }

    #[test]
    fn owners_parse() {
        assert_eq!(
            "100000:100001".parse::<Owner>().unwrap(),
            Owner {
                uid: 100000,
                gid: Some(100001)
            }
        );
        assert_eq!("7".parse::<Owner>().unwrap().gid, None);
        let err = "nemo".parse::<Owner>().unwrap_err().to_string();
        assert!(err.contains("not a number"), "{err}");
    }
}
