//! Ed25519 key files: PKCS#8 PEM, written atomically with mode 0600, refused when other
//! users can read them, destroyed by overwriting and deleting.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

use crate::files::write_atomic;

/// Writes `key` to `path`, readable by the owner only. `what` names the key in errors
/// ("the device key").
pub fn store_key(path: &Path, key: &SigningKey, what: &str) -> Result<()> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| anyhow::anyhow!("cannot encode {what}"))?;
    write_atomic(path, pem.as_bytes(), 0o600).with_context(|| format!("writing {what}"))
}

/// Reads the key at `path`; refuses a key file that others can read.
pub fn load_key(path: &Path) -> Result<SigningKey> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is accessible by other users (mode {mode:o}); fix it with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let pem = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|_| anyhow::anyhow!("{} is not a valid Ed25519 PKCS#8 key", path.display()))
}

/// Overwrites the key file at `path` with zeros, syncs and deletes it. Absent is fine.
///
/// The zeros are written only into the file that is the entry's one and only name (a
/// regular file with one link, the same inode as the directory entry), so a symbolic or
/// hard link planted under the key's name in a directory another user controls never
/// makes the caller (root, during a wipe) overwrite another file; such an entry is just
/// deleted.
pub fn destroy_key(path: &Path) -> Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(mut f) => {
            let opened = f
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            let entry = fs::symlink_metadata(path).ok();
            let own = opened.is_file()
                && opened.nlink() == 1
                && entry.is_some_and(|e| e.dev() == opened.dev() && e.ino() == opened.ino());
            if own {
                let zeros = vec![0u8; usize::try_from(opened.len()).unwrap_or(0).max(1)];
                f.write_all(&zeros)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("overwriting {}", path.display()))?;
            }
            drop(f);
            fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::remove_file(path) {
            // A dangling link.
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {}", path.display())),
        },
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_round_trips_is_private_and_is_destroyed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("k.pem");
        let key = SigningKey::from_bytes(&[3; 32]);
        store_key(&p, &key, "the key").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_key(&p).unwrap().to_bytes(), key.to_bytes());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key(&p).unwrap_err().to_string().contains("chmod 600"));
        destroy_key(&p).unwrap();
        assert!(!p.exists());
        destroy_key(&p).unwrap();
    }

    #[test]
    fn destroying_a_planted_link_leaves_its_target_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let sym = tmp.path().join("sym.pem");
        std::os::unix::fs::symlink(&victim, &sym).unwrap();
        destroy_key(&sym).unwrap();
        assert!(fs::symlink_metadata(&sym).is_err(), "the link is gone");
        let hard = tmp.path().join("hard.pem");
        fs::hard_link(&victim, &hard).unwrap();
        destroy_key(&hard).unwrap();
        assert!(!hard.exists());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }
}
