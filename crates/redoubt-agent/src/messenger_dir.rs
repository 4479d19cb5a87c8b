//! The messenger's credential, made by the agent: a fresh Ed25519 *messenger key*, the
//! device key's `messenger-delegation/v1` of it, and the messenger directory that holds
//! them with the public identity, handed to the user that runs the chat.
//!
//! Made at enrollment ([`provision`]); an agent enrolled before the messenger had a
//! directory of its own makes it at its next start ([`ensure`]) and moves the old
//! `messenger.db*` of its state directory into it. The device key never leaves the
//! state directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use redoubt_proto::messaging::{B64, MessengerDelegation};
use redoubt_proto::{SignedEnvelope, Timestamp};

use crate::state::{Identity, LEGACY_MESSENGER_DB, MessengerDir, MessengerRecord, StateDir};

/// `path` made absolute with its existing part resolved (links followed), so that the
/// placement checks compare real locations; `..` is refused.
pub fn resolve_target(path: &Path) -> Result<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        bail!(
            "give the messenger directory without `..` (got {})",
            path.display()
        );
    }
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(existing) {
            Ok(real) => {
                let mut out = real;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(_) => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Ok(absolute);
                };
                rest.push(name.to_owned());
                existing = parent;
            }
        }
    }
}

/// Checks where the messenger directory goes, before anything is spent: not the state
/// directory nor one that contains it (the messenger must never see the device key, and
/// a wipe deletes the whole messenger directory); not inside the state directory (0700)
/// when handed to another user, who could not enter it; a new or empty directory, or one
/// holding only a messenger's files (created here, 0700).
pub fn check_placement(state: &StateDir, record: &MessengerRecord) -> Result<()> {
    let root = resolve_target(state.root())?;
    if root.starts_with(resolve_target(&record.dir)?) {
        bail!(
            "the messenger directory {} must not be the agent's state directory nor contain it",
            record.dir.display()
        );
    }
    if let Some(owner) = record.owner {
        let state_uid = fs::metadata(&root)
            .with_context(|| format!("reading {}", root.display()))?
            .uid();
        if owner.uid != state_uid && resolve_target(&record.dir)?.starts_with(&root) {
            bail!(
                "the messenger directory {} is inside the agent's state directory, which user {} cannot enter; give --messenger-dir outside it (e.g. /var/lib/redoubt-messenger)",
                record.dir.display(),
                owner.uid
            );
        }
    }
    MessengerDir::new(&record.dir).create()
}

/// Makes a new messenger key and its delegation and writes the messenger directory
/// `record.dir`; hands it to `record.owner` and records where it is. `fresh` (at
/// enrollment) first deletes what an earlier device left there.
pub fn provision(
    state: &StateDir,
    identity: &Identity,
    device_key: &SigningKey,
    record: &MessengerRecord,
    issued_at: Timestamp,
    fresh: bool,
) -> Result<MessengerDir> {
    check_placement(state, record)?;
    let dir = MessengerDir::new(&record.dir);
    // Recorded first: whatever happens next, a wipe finds the directory.
    state.store_messenger_record(record)?;
    if fresh {
        dir.clear()?;
    }
    let key = SigningKey::generate(&mut OsRng);
    let delegation = SignedEnvelope::sign(
        MessengerDelegation::KIND,
        &MessengerDelegation {
            device_id: identity.device_id.clone(),
            messenger_key: B64(key.verifying_key().as_bytes().to_vec()),
            issued_at,
        },
        device_key,
    );
    dir.store_identity(&identity.public(device_key.verifying_key()))?;
    dir.store_key(&key)?;
    dir.store_delegation(&delegation)?;
    if let Some(owner) = record.owner {
        dir.hand_over(owner)?;
    }
    tracing::info!(device = %identity.device_id, dir = %record.dir.display(), "messenger credential written");
    Ok(dir)
}

/// At `run`: makes sure the messenger directory holds a credential this device
/// delegated; makes one when it is missing, incomplete or not this device's (an agent
/// enrolled before this existed), and moves the messenger database an older agent kept
/// in its state directory into it. Returns whether it wrote anything.
pub fn ensure(state: &StateDir, identity: &Identity, now: Timestamp) -> Result<bool> {
    let device_key = state.load_key()?;
    let record = state.messenger_record()?;
    let dir = MessengerDir::new(&record.dir);
    // `load_credential` checks the delegation against the directory's identity; that
    // identity must be this device's, with this device key.
    let fits = dir
        .load_credential()
        .is_ok_and(|c| c.identity == identity.public(device_key.verifying_key()));
    let legacy = legacy_db_files(state);
    if fits && legacy.is_empty() {
        return Ok(false);
    }
    if !fits {
        provision(state, identity, &device_key, &record, now, false)?;
    }
    if !legacy.is_empty() {
        if dir.db_path().exists() {
            tracing::warn!(
                dir = %record.dir.display(),
                "the messenger directory already has a database; leaving the old one in the state directory"
            );
        } else {
            for name in &legacy {
                let to = dir.path(name);
                fs::rename(state.path(name), &to)
                    .with_context(|| format!("moving {name} into {}", record.dir.display()))?;
                if let Some(owner) = record.owner {
                    std::os::unix::fs::lchown(&to, Some(owner.uid), owner.gid)
                        .with_context(|| format!("handing {} to {owner}", to.display()))?;
                }
            }
            redoubt_device::sync_dir(dir.root())?;
            redoubt_device::sync_dir(state.root())?;
            tracing::info!(dir = %record.dir.display(), "moved the messenger database into the messenger directory");
        }
    }
    Ok(true)
}

/// `messenger.db*` files an older agent's messenger left in the state directory.
fn legacy_db_files(state: &StateDir) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(state.root())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(LEGACY_MESSENGER_DB))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
