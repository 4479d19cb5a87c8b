//! [`Record`]: what a real backend changed, kept in a JSON file of the state directory
//! so that `Allow` — after a restart too — undoes exactly that and nothing else.
//!
//! Written atomically (temporary file, fsync, rename), and only when it changed. A file
//! that does not parse is moved aside (`<name>.corrupt`, for the operator) when the
//! record is next changed, and the change goes on from an empty record: restricting
//! must never depend on it, and over-restricting is the safe side (what the lost record
//! held cannot be undone by `Allow`; a reboot restores drivers and radios).

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{HardwareError, unavailable};
use crate::state::write_json;

/// A backend's record file.
#[derive(Debug)]
pub struct Record<T> {
    path: PathBuf,
    /// Serializes read-modify-write cycles within the process.
    lock: Mutex<()>,
    _content: PhantomData<fn() -> T>,
}

/// A record file as read.
enum Read<T> {
    Missing,
    Parsed(T),
    Corrupt(serde_json::Error),
}

impl<T: Serialize + DeserializeOwned + Default + PartialEq + Clone> Record<T> {
    /// The record `name` in `state_dir`.
    pub fn in_dir(state_dir: &Path, name: &str) -> Self {
        Record {
            path: state_dir.join(name),
            lock: Mutex::new(()),
            _content: PhantomData,
        }
    }

    /// The state directory it lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn read(&self) -> Result<Read<T>, HardwareError> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
                Ok(v) => Read::Parsed(v),
                Err(e) => Read::Corrupt(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Missing),
            Err(e) => Err(unavailable(format!("reading {}: {e}", self.path.display()))),
        }
    }

    /// What is recorded; a missing file is nothing, an unreadable one an error.
    pub fn load(&self) -> Result<T, HardwareError> {
        match self.read()? {
            Read::Missing => Ok(T::default()),
            Read::Parsed(v) => Ok(v),
            Read::Corrupt(e) => Err(unavailable(format!(
                "{} is unreadable ({e}); it is moved aside at the next change",
                self.path.display()
            ))),
        }
    }

    /// Changes the record with `f`; written only when `f` changed it.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, HardwareError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored = match self.read()? {
            Read::Missing => None,
            Read::Parsed(v) => Some(v),
            Read::Corrupt(e) => {
                let aside = self.path.with_extension("json.corrupt");
                tracing::error!(
                    file = %self.path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "a hardware record is unreadable; moved aside, starting a new one"
                );
                fs::rename(&self.path, &aside).map_err(|e| {
                    unavailable(format!(
                        "moving the unreadable {} aside: {e}",
                        self.path.display()
                    ))
                })?;
                None
            }
        };
        let mut value = stored.clone().unwrap_or_default();
        let out = f(&mut value);
        if stored.as_ref() != Some(&value) {
            write_json(&self.path, &value).map_err(|e| unavailable(format!("{e:#}")))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn changes_are_kept_written_only_when_changed_and_a_corrupt_file_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let r: Record<BTreeSet<String>> = Record::in_dir(tmp.path(), "r.json");
        assert!(r.load().unwrap().is_empty());
        r.update(|s| s.insert("a".to_owned())).unwrap();
        assert_eq!(r.load().unwrap().len(), 1);
        // An update that changes nothing does not rewrite the file.
        let path = tmp.path().join("r.json");
        fs::write(&path, "[\"a\"]").unwrap();
        r.update(|s| s.contains("a")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "[\"a\"]");
        // Corrupt: loading says so; changing sets it aside and starts anew.
        fs::write(&path, "{oops").unwrap();
        assert!(r.load().is_err());
        r.update(|s| s.insert("b".to_owned())).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("r.json.corrupt")).unwrap(),
            "{oops"
        );
        assert_eq!(r.load().unwrap(), BTreeSet::from(["b".to_owned()]));
    }
}
