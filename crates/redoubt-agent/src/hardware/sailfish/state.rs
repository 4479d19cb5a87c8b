//! What the Sailfish backend changed and must be able to undo, kept in
//! `sailfish-hardware.json` in the agent's state directory. Every change is recorded
//! *before* it is made, so `Allow` — after a restart too — puts back exactly what the
//! agent took and nothing else: a permission the person never granted stays
//! ungranted, a radio the person had switched off stays off.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redoubt_proto::Capability;
use serde::{Deserialize, Serialize};

use crate::hardware::HardwareError;
use crate::state::write_atomic;

/// File name of the backend's state, in the agent's state directory.
pub const SAILFISH_STATE_FILE: &str = "sailfish-hardware.json";

/// Sailjail permissions the agent removed from one application of one user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The user whose settings were changed.
    pub uid: u32,
    /// The application (sailjaild's name for it).
    pub app: String,
    /// The permissions taken away.
    pub permissions: BTreeSet<String>,
}

/// Everything the backend changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SailfishState {
    /// Permissions taken away, per capability.
    #[serde(default)]
    pub revoked: BTreeMap<Capability, Vec<Revocation>>,
    /// ConnMan technologies (by type: `wifi`, `bluetooth`, `gps`, `cellular`) the agent
    /// powered off.
    #[serde(default)]
    pub powered_off: BTreeSet<String>,
    /// oFono modems (object paths) whose packet data the agent switched off.
    #[serde(default)]
    pub data_off_modems: BTreeSet<String>,
    /// MCE radio bits the agent cleared.
    #[serde(default)]
    pub mce_cleared: u32,
}

impl SailfishState {
    /// Adds `permissions` of (`uid`, `app`) to what `cap` took.
    pub fn record(&mut self, cap: Capability, uid: u32, app: &str, permissions: &BTreeSet<String>) {
        let list = self.revoked.entry(cap).or_default();
        match list.iter_mut().find(|r| r.uid == uid && r.app == app) {
            Some(r) => r.permissions.extend(permissions.iter().cloned()),
            None => {
                list.push(Revocation {
                    uid,
                    app: app.to_owned(),
                    permissions: permissions.clone(),
                });
                list.sort();
            }
        }
    }
}

/// The state file and the lock that serializes its read-modify-write cycles.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    lock: Mutex<()>,
}

fn unavailable(what: impl std::fmt::Display) -> HardwareError {
    HardwareError::Unavailable(what.to_string())
}

impl StateFile {
    /// The state directory the file lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The state file in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        StateFile {
            path: state_dir.join(SAILFISH_STATE_FILE),
            lock: Mutex::new(()),
        }
    }

    /// The stored state; a missing file is nothing changed, an unreadable one an error
    /// (what it holds could not be undone otherwise).
    pub fn load(&self) -> Result<SailfishState, HardwareError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                unavailable(format!(
                    "{} is unreadable ({e}); move it away to start over",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SailfishState::default()),
            Err(e) => Err(unavailable(format!("reading {}: {e}", self.path.display()))),
        }
    }

    /// Changes the stored state with `f` (atomically: temporary file, fsync, rename).
    pub fn update<T>(&self, f: impl FnOnce(&mut SailfishState) -> T) -> Result<T, HardwareError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.load()?;
        let out = f(&mut state);
        let mut bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| unavailable(format!("serializing the state: {e}")))?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| unavailable(format!("writing {}: {e}", self.path.display())))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merge_and_survive_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(tmp.path());
        assert_eq!(file.load().unwrap(), SailfishState::default());
        let perms = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        file.update(|s| {
            s.record(Capability::Microphone, 100000, "b", &perms(&["Microphone"]));
            s.record(Capability::Microphone, 100000, "a", &perms(&["Audio"]));
            s.record(Capability::Microphone, 100000, "b", &perms(&["Audio"]));
            s.powered_off.insert("wifi".into());
        })
        .unwrap();
        let again = StateFile::in_dir(tmp.path()).load().unwrap();
        let mic = &again.revoked[&Capability::Microphone];
        assert_eq!(mic.len(), 2);
        assert_eq!(mic[0].app, "a");
        assert_eq!(mic[1].permissions, perms(&["Audio", "Microphone"]));
        assert!(again.powered_off.contains("wifi"));
        fs::write(tmp.path().join(SAILFISH_STATE_FILE), "{").unwrap();
        assert!(file.load().is_err());
    }
}
