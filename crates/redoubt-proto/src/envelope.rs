//! The signed-envelope format: a JSON payload, its kind, and an Ed25519 signature over
//! `"redoubt-envelope-v1\0" || kind || "\0" || payload`.
//!
//! The payload travels as the exact bytes that were signed (base64), so verification
//! never depends on how a JSON library re-serializes a value.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"redoubt-envelope-v1\0";

/// A signed payload of a known kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedEnvelope {
    /// What the payload is, e.g. `policy-bundle/v1`.
    pub kind: String,
    /// Base64 of the signed JSON bytes.
    pub payload: String,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
}

/// Why an envelope was refused. Deliberately coarse: no oracle about which byte was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The kind is not the one expected here.
    #[error("envelope is a {found:?}, expected {expected:?}")]
    WrongKind {
        /// Expected kind.
        expected: &'static str,
        /// Kind found.
        found: String,
    },
    /// Signature missing, malformed or not made by the expected key.
    #[error("signature is not valid for this key")]
    BadSignature,
    /// The signed payload is not a valid document of its kind.
    #[error("signed payload is malformed: {0}")]
    Malformed(String),
}

fn signed_message(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN.len() + kind.len() + 1 + payload.len());
    msg.extend_from_slice(DOMAIN);
    msg.extend_from_slice(kind.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

impl SignedEnvelope {
    /// Serializes `value` and signs it as `kind`.
    pub fn sign<T: Serialize>(kind: &str, value: &T, key: &SigningKey) -> Self {
        // Serializing our own plain data types cannot fail.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        let signature = key.sign(&signed_message(kind, &payload));
        SignedEnvelope {
            kind: kind.to_owned(),
            payload: STANDARD.encode(&payload),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Parses the payload of an envelope this process signed and stored itself, without
    /// checking the signature again (the server's hot path re-reads its own bundles).
    /// Never for anything that came from outside.
    pub fn open_own<T: DeserializeOwned>(&self, kind: &'static str) -> Result<T, EnvelopeError> {
        let payload = self.payload_of(kind).map_err(|e| match e {
            EnvelopeError::BadSignature => EnvelopeError::Malformed("payload is not base64".into()),
            other => other,
        })?;
        serde_json::from_slice(&payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// The payload's bytes, once the kind is the one expected.
    fn payload_of(&self, kind: &'static str) -> Result<Vec<u8>, EnvelopeError> {
        if self.kind != kind {
            return Err(EnvelopeError::WrongKind {
                expected: kind,
                found: self.kind.chars().take(64).collect(),
            });
        }
        STANDARD
            .decode(&self.payload)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Checks kind and signature, then parses the payload.
    pub fn verify<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        key: &VerifyingKey,
    ) -> Result<T, EnvelopeError> {
        let payload = self.payload_of(kind)?;
        let sig_bytes: [u8; 64] = STANDARD
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(EnvelopeError::BadSignature)?;
        key.verify_strict(
            &signed_message(kind, &payload),
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| EnvelopeError::BadSignature)?;
        serde_json::from_slice(&payload).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }
}

/// Encodes a public key for the wire (base64 of its 32 bytes).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Decodes a public key from the wire.
pub fn decode_public_key(s: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(s).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Encodes a signature for the wire (base64 of its 64 bytes).
pub fn encode_signature(sig: &Signature) -> String {
    STANDARD.encode(sig.to_bytes())
}

/// Decodes a signature from the wire.
pub fn decode_signature(s: &str) -> Option<Signature> {
    let bytes: [u8; 64] = STANDARD.decode(s).ok()?.try_into().ok()?;
    Some(Signature::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn verifies_what_was_signed() {
        let env = SignedEnvelope::sign("t/v1", &vec![1u32, 2, 3], &key(1));
        let back: Vec<u32> = env.verify("t/v1", &key(1).verifying_key()).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }

    /// Found by the `envelope` fuzz target: a number with more digits than an `f64`
    /// holds was parsed (without exact rounding) to a value that, printed and parsed
    /// again, became a different `f64`, so a signed document did not verify back to
    /// what was signed. JSON numbers are now parsed with correct rounding.
    #[test]
    fn numbers_verify_back_to_exactly_what_was_signed() {
        let vk = key(1).verifying_key();
        let long = format!("{{\"a\":-{}}}", "3".repeat(104));
        for text in [
            long.as_str(),
            r#"{"a":0.30000000000000004}"#,
            r#"[1e-320,2.5e308]"#,
        ] {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            let env = SignedEnvelope::sign("t/v1", &value, &key(1));
            let back: serde_json::Value = env.verify("t/v1", &vk).unwrap();
            assert_eq!(back, value, "{text}");
        }
        for x in [
            0.1f64,
            1.0 / 3.0,
            -3.333_333_333_333_333e103,
            f64::MIN_POSITIVE,
        ] {
            let env = SignedEnvelope::sign("t/v1", &x, &key(1));
            assert_eq!(
                env.verify::<f64>("t/v1", &vk).unwrap().to_bits(),
                x.to_bits()
            );
        }
    }

    #[test]
    fn refuses_tampering_wrong_key_and_wrong_kind() {
        let env = SignedEnvelope::sign("t/v1", &vec![1u32], &key(1));
        let vk = key(1).verifying_key();
        let mut tampered = env.clone();
        tampered.payload = STANDARD.encode(b"[2]");
        assert_eq!(
            tampered.verify::<Vec<u32>>("t/v1", &vk),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            env.verify::<Vec<u32>>("t/v1", &key(2).verifying_key()),
            Err(EnvelopeError::BadSignature)
        );
        assert!(matches!(
            env.verify::<Vec<u32>>("u/v1", &vk),
            Err(EnvelopeError::WrongKind { .. })
        ));
        let mut garbage = env;
        garbage.signature = "!!".into();
        assert_eq!(
            garbage.verify::<Vec<u32>>("t/v1", &vk),
            Err(EnvelopeError::BadSignature)
        );
    }
}
