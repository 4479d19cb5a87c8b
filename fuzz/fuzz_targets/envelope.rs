//! Signed envelopes: `SignedEnvelope` from JSON, then `verify`.
//!
//! Properties: nothing panics; an envelope re-serializes to the same value; `verify`
//! with the organization key accepts only what that key signed; a JSON value signed
//! by us verifies back to itself, and one flipped bit of its payload or signature is
//! refused as a bad signature.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use redoubt_fuzz::fixtures::org_key;
use redoubt_fuzz::{choice, flip_bit};
use redoubt_proto::{EnvelopeError, SignedEnvelope};

const KIND: &str = "fuzz/v1";

fuzz_target!(|data: &[u8]| {
    let key = org_key();
    let vk = key.verifying_key();

    if let Ok(env) = serde_json::from_slice::<SignedEnvelope>(data) {
        let json = serde_json::to_vec(&env).expect("an envelope serializes");
        let back: SignedEnvelope = serde_json::from_slice(&json).expect("and parses again");
        assert_eq!(back, env);
        // The fuzzer cannot forge the organization's signature, nor pass a second
        // (malleated) signature for the same bytes: Ed25519 signing is deterministic,
        // so whatever verifies is exactly what the key makes over the documented
        // message `"redoubt-envelope-v1\0" || kind || "\0" || payload`.
        if env.verify::<serde_json::Value>(KIND, &vk).is_ok() {
            let payload = STANDARD
                .decode(&env.payload)
                .expect("verified payload is base64");
            let mut msg = b"redoubt-envelope-v1\0".to_vec();
            msg.extend_from_slice(KIND.as_bytes());
            msg.push(0);
            msg.extend_from_slice(&payload);
            let ours = STANDARD.encode(key.sign(&msg).to_bytes());
            assert_eq!(
                STANDARD.decode(&env.signature).ok(),
                STANDARD.decode(&ours).ok(),
                "accepted a signature the key did not make"
            );
        }
    }

    // Sign what the input is as JSON, verify it, then tamper.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let env = SignedEnvelope::sign(KIND, &value, &key);
    let back: serde_json::Value = env.verify(KIND, &vk).expect("our own signature verifies");
    assert_eq!(back, value);

    let c = choice(data);
    let mut payload = STANDARD.decode(&env.payload).expect("base64");
    flip_bit(&mut payload, c);
    let tampered = SignedEnvelope {
        payload: STANDARD.encode(&payload),
        ..env.clone()
    };
    assert_eq!(
        tampered.verify::<serde_json::Value>(KIND, &vk).err(),
        Some(EnvelopeError::BadSignature)
    );
    let mut sig = STANDARD.decode(&env.signature).expect("base64");
    flip_bit(&mut sig, c);
    let tampered = SignedEnvelope {
        signature: STANDARD.encode(&sig),
        ..env
    };
    assert_eq!(
        tampered.verify::<serde_json::Value>(KIND, &vk).err(),
        Some(EnvelopeError::BadSignature)
    );
});
