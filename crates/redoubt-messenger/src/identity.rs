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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::SigningKey;
    use redoubt_proto::Timestamp;
    use redoubt_proto::messaging::B64;

    fn cert(org: &SigningKey, device: u8, mls_key: &[u8]) -> SignedEnvelope {
        SignedEnvelope::sign(
            MemberCertificate::KIND,
            &MemberCertificate {
                device_id: DeviceId::from_random([device; 12]),
                user: "bob".parse().unwrap(),
                mls_key: B64(mls_key.to_vec()),
                issued_at: Timestamp(1_800_000_000),
            },
            org,
        )
    }

    #[test]
    fn only_certificates_of_the_organization_for_the_leaf_key_pass() {
        let org = SigningKey::from_bytes(&[1; 32]);
        let forger = SigningKey::from_bytes(&[2; 32]);
        let key = [7u8; 32];
        let none = BTreeSet::new();
        let good = credential_for(&cert(&org, 5, &key));
        let ok = verify_member(&good, &key, &org.verifying_key(), &none).unwrap();
        assert_eq!(ok.user.as_str(), "bob");
        // A key the organization never certified.
        let forged = credential_for(&cert(&forger, 5, &key));
        assert_eq!(
            verify_member(&forged, &key, &org.verifying_key(), &none),
            Err(MemberRefused::ForgedCertificate)
        );
        // A real certificate on someone else's leaf key.
        assert_eq!(
            verify_member(&good, &[8u8; 32], &org.verifying_key(), &none),
            Err(MemberRefused::KeyMismatch)
        );
        // A revoked device.
        let revoked: BTreeSet<DeviceId> = [DeviceId::from_random([5; 12])].into();
        assert!(matches!(
            verify_member(&good, &key, &org.verifying_key(), &revoked),
            Err(MemberRefused::Revoked(_))
        ));
        // Not a certificate at all.
        let junk: Credential = BasicCredential::new(b"mallory".to_vec()).into();
        assert_eq!(
            verify_member(&junk, &key, &org.verifying_key(), &none),
            Err(MemberRefused::NotACertificate)
        );
    }
}
