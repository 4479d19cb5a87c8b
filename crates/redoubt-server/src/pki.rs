//! The data directory's key material: the organization CA (ECDSA P-256, signs the
//! server's TLS certificate), the organization signing key (Ed25519, signs policy
//! bundles) and the server's TLS certificate, re-issued from the CA at every start.
//!
//! Private key files are written with mode 0600, atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use redoubt_proto::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const ORG_KEY: &str = "org-signing.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// File name of the embedded database.
pub const DATABASE: &str = "redoubt.db";

/// The organization's keys, loaded from the data directory.
pub struct Keys {
    /// Signs policy bundles.
    pub org_signing: SigningKey,
    /// The CA certificate (DER).
    pub ca_der: Vec<u8>,
    ca_key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("ca", &self.fingerprint())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

/// Writes `contents` to `path` atomically with the given permission bits.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

impl Keys {
    /// The signing key of a zone's checkpoint, derived from the organization key (so
    /// no further secret is stored): SHA-256 over a domain string, the organization
    /// key and the two names.
    pub fn checkpoint_key(
        &self,
        zone: &redoubt_proto::ZoneName,
        checkpoint: &redoubt_proto::CheckpointName,
    ) -> SigningKey {
        use sha2::{Digest, Sha256};
        let mut seed = zeroize::Zeroizing::new(self.org_signing.to_bytes());
        let mut h = Sha256::new();
        h.update(b"redoubt-checkpoint-key-v1\0");
        h.update(seed.as_slice());
        h.update(zone.as_str().as_bytes());
        h.update([0]);
        h.update(checkpoint.as_str().as_bytes());
        let derived = zeroize::Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        zeroize::Zeroize::zeroize(&mut *seed);
        SigningKey::from_bytes(&derived)
    }

    /// Loads the keys, creating the data directory and every missing key on first use.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Keys> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing data directory {}", dir.display()))?;
        // The certificate is written last, so a key without a certificate is an
        // interrupted first start (nothing was ever enrolled with it): start over.
        let (ca_exists, key_exists) = (dir.join(CA_CERT).exists(), dir.join(CA_KEY).exists());
        if ca_exists && !key_exists {
            bail!(
                "{} holds {CA_CERT} but not {CA_KEY}: restore the key from backup (a new CA would cut off every enrolled phone)",
                dir.display()
            );
        }
        if !ca_exists {
            create_ca(dir)?;
        }
        if !dir.join(ORG_KEY).exists() {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| anyhow::anyhow!("encoding signing key: {e}"))?;
            write_atomic(&dir.join(ORG_KEY), pem.as_bytes(), 0o600)?;
        }
        Keys::open(dir)
    }

    /// Loads existing keys; fails when the directory was never initialized.
    pub fn open(dir: &Path) -> anyhow::Result<Keys> {
        if !dir.join(CA_CERT).exists() {
            bail!(
                "{} holds no Redoubt CA: start the server once with `redoubt-server serve --data {}`",
                dir.display(),
                dir.display()
            );
        }
        let ca_pem = read(dir, CA_CERT)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{CA_CERT} is not a PEM certificate: {e}"))?
            .to_vec();
        let ca_key_pem = zeroize::Zeroizing::new(read(dir, CA_KEY)?);
        let org_pem = zeroize::Zeroizing::new(read(dir, ORG_KEY)?);
        let org_signing = SigningKey::from_pkcs8_pem(&org_pem)
            .map_err(|e| anyhow::anyhow!("{ORG_KEY} is not an Ed25519 key: {e}"))?;
        Ok(Keys {
            org_signing,
            ca_der,
            ca_key_pem,
        })
    }

    /// The CA fingerprint phones pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.ca_der)
    }

    /// Issues a fresh TLS certificate for `names` from the CA, writes it to the data
    /// directory, and returns the chain `[leaf, ca]` and the leaf's key.
    pub fn issue_tls_cert(
        &self,
        dir: &Path,
        names: &[String],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).context("ca.key is not a usable key")?;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(self.ca_der.clone()), ca_key)
            .context("ca.crt is not a usable CA certificate")?;
        let leaf_key = KeyPair::generate().context("generating TLS key")?;
        let mut params = CertificateParams::new(names.to_vec()).context("server names")?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Redoubt server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365);
        let leaf = params
            .signed_by(&leaf_key, &issuer)
            .context("signing TLS certificate")?;
        write_atomic(&dir.join(TLS_CERT), leaf.pem().as_bytes(), 0o644)?;
        write_atomic(
            &dir.join(TLS_KEY),
            leaf_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        let chain = vec![
            leaf.der().clone(),
            CertificateDer::from(self.ca_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        Ok((chain, key))
    }
}

fn create_ca(dir: &Path) -> anyhow::Result<()> {
    let key = KeyPair::generate().context("generating CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Redoubt organization CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * 20);
    let cert = params.self_signed(&key).context("self-signing CA")?;
    // Key first: a CA certificate without its key would be unusable.
    write_atomic(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Path of the embedded database in `dir`.
pub fn database_path(dir: &Path) -> PathBuf {
    dir.join(DATABASE)
}
