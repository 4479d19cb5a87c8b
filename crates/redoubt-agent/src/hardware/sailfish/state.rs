//! What the Sailfish backend changed and must be able to undo, kept in
//! `sailfish-hardware.json` in the agent's state directory. Every change is recorded
//! *before* it is made, so `Allow` — after a restart too — puts back exactly what the
//! agent took and nothing else: a permission the person never granted stays
//! ungranted, a radio the person had switched off stays off.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redoubt_proto::Capability;
use serde::{Deserialize, Serialize};

use crate::hardware::record::Record;

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

/// The sailfish backend's record file.
pub type StateFile = Record<SailfishState>;

/// The record in `state_dir`.
pub fn state_file(state_dir: &Path) -> StateFile {
    Record::in_dir(state_dir, SAILFISH_STATE_FILE)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn records_merge_and_survive_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let file = state_file(tmp.path());
        assert_eq!(file.load().unwrap(), SailfishState::default());
        let perms = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        file.update(|s| {
            s.record(Capability::Microphone, 100000, "b", &perms(&["Microphone"]));
            s.record(Capability::Microphone, 100000, "a", &perms(&["Audio"]));
            s.record(Capability::Microphone, 100000, "b", &perms(&["Audio"]));
            s.powered_off.insert("wifi".into());
        })
        .unwrap();
        let again = state_file(tmp.path()).load().unwrap();
        let mic = &again.revoked[&Capability::Microphone];
        assert_eq!(mic.len(), 2);
        assert_eq!(mic[0].app, "a");
        assert_eq!(mic[1].permissions, perms(&["Audio", "Microphone"]));
        assert!(again.powered_off.contains("wifi"));
        fs::write(tmp.path().join(SAILFISH_STATE_FILE), "{").unwrap();
        assert!(file.load().is_err());
    }
}
