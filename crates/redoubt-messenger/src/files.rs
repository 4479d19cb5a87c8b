//! Files: encrypted on the phone with a fresh AES-256-GCM key each, uploaded as an
//! opaque blob; the key, nonce and plaintext hash travel inside the MLS message
//! ([`crate::content::FileRef`]), so the server holds only ciphertext it cannot open.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Bound into every file's ciphertext, so a blob cannot be passed off as another format.
const AAD: &[u8] = b"redoubt-file/v1";
/// Bytes AES-GCM adds to the plaintext.
pub const TAG_BYTES: u64 = 16;

/// A file sealed for upload.
#[derive(Debug)]
pub struct Sealed {
    /// What is uploaded.
    pub ciphertext: Vec<u8>,
    /// The AES-256 key.
    pub key: [u8; 32],
    /// The 96-bit nonce.
    pub nonce: [u8; 12],
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
}

/// Why a file could not be sealed, or a downloaded one was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FileError {
    /// The cipher refused to encrypt (the file is beyond AES-GCM's limit).
    #[error("the file could not be encrypted (too large for AES-GCM)")]
    Seal,
    /// The key or nonce in the message has the wrong length.
    #[error("the file's key in the message is malformed")]
    BadKey,
    /// The blob does not decrypt with the key from the message.
    #[error("the downloaded file does not decrypt with its key (tampered or the wrong blob)")]
    Tampered,
    /// It decrypts but is not the file the sender hashed.
    #[error("the downloaded file does not match the sender's hash")]
    HashMismatch,
    /// The blob's length is not what the message announced (checked before decrypting).
    #[error("the downloaded file is {got} bytes, not the {expected} its message announced")]
    WrongSize {
        /// Bytes downloaded.
        got: u64,
        /// Bytes the message implies (plaintext size + the tag).
        expected: u64,
    },
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Encrypts `plaintext` under a fresh key.
pub fn seal(plaintext: &[u8]) -> Result<Sealed, FileError> {
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut key);
    rand_core::OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(&key.into());
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: AAD,
            },
        )
        .map_err(|_| FileError::Seal)?;
    Ok(Sealed {
        ciphertext,
        key,
        nonce,
        sha256: sha256_hex(plaintext),
    })
}

/// Decrypts a downloaded blob and checks it against the sender's hash.
pub fn open(
    ciphertext: &[u8],
    key: &[u8],
    nonce: &[u8],
    sha256: &str,
    size: u64,
) -> Result<Vec<u8>, FileError> {
    let expected = size.saturating_add(TAG_BYTES);
    if ciphertext.len() as u64 != expected {
        return Err(FileError::WrongSize {
            got: ciphertext.len() as u64,
            expected,
        });
    }
    let key: [u8; 32] = key.try_into().map_err(|_| FileError::BadKey)?;
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| FileError::BadKey)?;
    let plaintext = Aes256Gcm::new(&key.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: AAD,
            },
        )
        .map_err(|_| FileError::Tampered)?;
    if sha256_hex(&plaintext) != sha256 {
        return Err(FileError::HashMismatch);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_files_open_only_with_their_key_and_untampered() {
        let data = b"the plan for tuesday".to_vec();
        let s = seal(&data).unwrap();
        let n = data.len() as u64;
        assert_eq!(s.ciphertext.len() as u64, n + TAG_BYTES);
        assert!(!s.ciphertext.windows(8).any(|w| w == b"the plan"));
        assert_eq!(
            open(&s.ciphertext, &s.key, &s.nonce, &s.sha256, n),
            Ok(data.clone())
        );

        let other = seal(&data).unwrap();
        assert_ne!(other.key, s.key, "every file gets a fresh key");
        assert_eq!(
            open(&s.ciphertext, &other.key, &s.nonce, &s.sha256, n),
            Err(FileError::Tampered)
        );
        let mut flipped = s.ciphertext.clone();
        flipped[3] ^= 1;
        assert_eq!(
            open(&flipped, &s.key, &s.nonce, &s.sha256, n),
            Err(FileError::Tampered)
        );
        assert_eq!(
            open(&s.ciphertext, &s.key, &s.nonce, &sha256_hex(b"other"), n),
            Err(FileError::HashMismatch)
        );
        assert_eq!(
            open(&s.ciphertext, &s.key[..16], &s.nonce, &s.sha256, n),
            Err(FileError::BadKey)
        );
        // A blob of another length is refused before any decryption.
        let mut longer = s.ciphertext.clone();
        longer.push(0);
        assert_eq!(
            open(&longer, &s.key, &s.nonce, &s.sha256, n),
            Err(FileError::WrongSize {
                got: n + TAG_BYTES + 1,
                expected: n + TAG_BYTES
            })
        );
        assert!(matches!(
            open(&s.ciphertext, &s.key, &s.nonce, &s.sha256, n + 1),
            Err(FileError::WrongSize { .. })
        ));
        let empty = seal(b"").unwrap();
        assert_eq!(
            open(
                &empty.ciphertext,
                &empty.key,
                &empty.nonce,
                &empty.sha256,
                0
            ),
            Ok(vec![])
        );
    }
}
