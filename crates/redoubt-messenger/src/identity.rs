//! Member authentication: an MLS credential is the organization-signed
//! [`MemberCertificate`] (the JSON of its [`SignedEnvelope`]); a member is accepted only
//! when the certificate verifies under the organization key, names the key of the
//! member's MLS leaf, and its device is not revoked.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use openmls::prelude::{BasicCredential, Credential};
use redoubt_proto::messaging::MemberCertificate;
use redoubt_proto::{DeviceId, SignedEnvelope};

/// Why a member was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberRefused {
    /// Not a credential of ours.
    #[error("the member's credential is not an organization certificate")]
    NotACertificate,
    /// Signature does not verify.
    #[error("the member's certificate was not issued by this organization")]
    ForgedCertificate,
    /// The certificate names another key.
    #[error("the member's certificate is for another key than the one it signs with")]
    KeyMismatch,
    /// The device is revoked.
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
}

/// The credential bytes for a certificate.
pub fn credential_for(certificate: &SignedEnvelope) -> Credential {
    BasicCredential::new(serde_json::to_vec(certificate).unwrap_or_default()).into()
}

/// Reads a credential's certificate without checking it (for display of members
/// already verified).
pub fn read_certificate(credential: &Credential) -> Option<MemberCertificate> {
    let envelope: SignedEnvelope = serde_json::from_slice(credential.serialized_content()).ok()?;
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        envelope.payload.as_bytes(),
    )
    .ok()?;
    serde_json::from_slice(&payload).ok()
}

/// Checks a member: certificate signed by `org_key`, for `signature_key`, not revoked.
pub fn verify_member(
    credential: &Credential,
    signature_key: &[u8],
    org_key: &VerifyingKey,
    revoked: &BTreeSet<DeviceId>,
) -> Result<MemberCertificate, MemberRefused> {
    let envelope: SignedEnvelope = serde_json::from_slice(credential.serialized_content())
        .map_err(|_| MemberRefused::NotACertificate)?;
    let cert: MemberCertificate = envelope
        .verify(MemberCertificate::KIND, org_key)
        .map_err(|_| MemberRefused::ForgedCertificate)?;
    if cert.mls_key.0 != signature_key {
        return Err(MemberRefused::KeyMismatch);
    }
    if revoked.contains(&cert.device_id) {
        return Err(MemberRefused::Revoked(cert.device_id));
    }
    Ok(cert)
}
