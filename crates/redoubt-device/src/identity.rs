//! Who a device is and whom it trusts, fixed at enrollment: [`Identity`] (the agent's
//! `identity.json`) and [`PublicIdentity`] (the messenger's `identity.json`, which adds
//! the device's public key and leaves out the hardware).

use std::path::Path;

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use redoubt_proto::envelope::{decode_public_key, encode_public_key};
use redoubt_proto::{DeviceId, Fingerprint, HardwareKind, Timestamp, UserName};
use serde::{Deserialize, Serialize};

use crate::files::{read_json, write_json};

/// Who this device is and whom it trusts, fixed at enrollment (the agent's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The id the server assigned.
    pub device_id: DeviceId,
    /// The person the device belongs to.
    pub user: UserName,
    /// The server's base URL.
    pub server: url::Url,
    /// The pinned organization CA.
    pub ca_fingerprint: Fingerprint,
    /// The organization's bundle-signing key.
    pub organization_key: VerifyingKey,
    /// The hardware backend in use.
    pub hardware: HardwareKind,
    /// When the device enrolled.
    pub enrolled_at: Timestamp,
}

impl Identity {
    /// What the messenger of this device may know: everything public, and the public
    /// half of the device key (to check its delegation), never the key itself.
    pub fn public(&self, device_key: VerifyingKey) -> PublicIdentity {
        PublicIdentity {
            device_id: self.device_id.clone(),
            user: self.user.clone(),
            server: self.server.clone(),
            ca_fingerprint: self.ca_fingerprint,
            organization_key: self.organization_key,
            device_key,
        }
    }

    /// Reads `identity.json` at `path`.
    pub fn load(path: &Path) -> Result<Identity> {
        let raw: IdentityFile =
            read_json(path)?.with_context(|| format!("{} does not exist", path.display()))?;
        raw.resolve()
            .with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes `identity.json` at `path`.
    pub fn store(&self, path: &Path) -> Result<()> {
        write_json(path, &IdentityFile::from(self))
    }
}

/// The identity the messenger works with, from its own directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The id the server assigned.
    pub device_id: DeviceId,
    /// The person the device belongs to.
    pub user: UserName,
    /// The server's base URL.
    pub server: url::Url,
    /// The pinned organization CA.
    pub ca_fingerprint: Fingerprint,
    /// The organization's signing key.
    pub organization_key: VerifyingKey,
    /// The public half of the device key, which signed the messenger's delegation.
    pub device_key: VerifyingKey,
}

impl PublicIdentity {
    /// Reads the messenger's `identity.json` at `path`.
    pub fn load(path: &Path) -> Result<PublicIdentity> {
        let raw: PublicIdentityFile =
            read_json(path)?.with_context(|| format!("{} does not exist", path.display()))?;
        raw.resolve()
            .with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes the messenger's `identity.json` at `path`.
    pub fn store(&self, path: &Path) -> Result<()> {
        write_json(path, &PublicIdentityFile::from(self))
    }
}

fn url_of(s: &str) -> Result<url::Url> {
    url::Url::parse(s).context("server is not a URL")
}

fn key_of(s: &str, what: &str) -> Result<VerifyingKey> {
    decode_public_key(s).with_context(|| format!("{what} is not an Ed25519 public key"))
}

fn server_text(u: &url::Url) -> String {
    u.as_str().trim_end_matches('/').to_owned()
}

/// The agent's `identity.json` as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    device_id: DeviceId,
    user: UserName,
    server: String,
    ca_fingerprint: Fingerprint,
    organization_key: String,
    hardware: HardwareKind,
    enrolled_at: Timestamp,
}

impl IdentityFile {
    fn resolve(self) -> Result<Identity> {
        Ok(Identity {
            device_id: self.device_id,
            user: self.user,
            server: url_of(&self.server)?,
            ca_fingerprint: self.ca_fingerprint,
            organization_key: key_of(&self.organization_key, "organization_key")?,
            hardware: self.hardware,
            enrolled_at: self.enrolled_at,
        })
    }
}

impl From<&Identity> for IdentityFile {
    fn from(i: &Identity) -> Self {
        IdentityFile {
            device_id: i.device_id.clone(),
            user: i.user.clone(),
            server: server_text(&i.server),
            ca_fingerprint: i.ca_fingerprint,
            organization_key: encode_public_key(&i.organization_key),
            hardware: i.hardware,
            enrolled_at: i.enrolled_at,
        }
    }
}

/// The messenger's `identity.json` as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicIdentityFile {
    device_id: DeviceId,
    user: UserName,
    server: String,
    ca_fingerprint: Fingerprint,
    organization_key: String,
    device_key: String,
}

impl PublicIdentityFile {
    fn resolve(self) -> Result<PublicIdentity> {
        Ok(PublicIdentity {
            device_id: self.device_id,
            user: self.user,
            server: url_of(&self.server)?,
            ca_fingerprint: self.ca_fingerprint,
            organization_key: key_of(&self.organization_key, "organization_key")?,
            device_key: key_of(&self.device_key, "device_key")?,
        })
    }
}

impl From<&PublicIdentity> for PublicIdentityFile {
    fn from(i: &PublicIdentity) -> Self {
        PublicIdentityFile {
            device_id: i.device_id.clone(),
            user: i.user.clone(),
            server: server_text(&i.server),
            ca_fingerprint: i.ca_fingerprint,
            organization_key: encode_public_key(&i.organization_key),
            device_key: encode_public_key(&i.device_key),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use ed25519_dalek::SigningKey;

    use super::*;

    /// An identity for tests.
    pub(crate) fn identity() -> Identity {
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
    fn both_identities_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("identity.json");
        identity().store(&p).unwrap();
        assert_eq!(Identity::load(&p).unwrap(), identity());
        let public = identity().public(SigningKey::from_bytes(&[2; 32]).verifying_key());
        public.store(&p).unwrap();
        assert_eq!(PublicIdentity::load(&p).unwrap(), public);
        let err = format!("{:#}", Identity::load(&p).unwrap_err());
        assert!(err.contains("is corrupt"), "{err}");
    }
}
