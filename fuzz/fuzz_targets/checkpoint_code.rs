//! Checkpoint codes as a phone scans them: `CheckpointCode::decode` and
//! `redoubt_policy::zones::verify_code` against the fixture bundle.
//!
//! Properties: nothing panics; whatever decodes re-encodes (signed by the checkpoint
//! key) to a code that decodes to the same content and verifies; `verify_code` accepts
//! only codes the checkpoint key signed; one flipped character of a valid code is
//! never accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_fuzz::fixtures::{NOW, bundle, checkpoint_key};
use redoubt_fuzz::{choice, flip_bit};
use redoubt_policy::verify_code;
use redoubt_proto::zones::CheckpointCode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bundle = bundle();
    let key = checkpoint_key();
    let verified = verify_code(text, &bundle, NOW);
    let Ok(unverified) = CheckpointCode::decode(text) else {
        assert!(
            verified.is_err(),
            "verify_code accepted what decode refuses"
        );
        return;
    };
    if let Ok(code) = &verified {
        assert!(
            unverified.signed_by(&key.verifying_key()),
            "verify_code accepted a code the checkpoint key did not sign"
        );
        assert_eq!(code, &unverified.code);
    }

    // Round trip: re-sign what was decoded.
    let encoded = unverified.code.encode(&key);
    let again = CheckpointCode::decode(&encoded).expect("a code we encoded decodes");
    assert_eq!(again.code, unverified.code);
    assert!(again.signed_by(&key.verifying_key()));

    // Tamper with one bit of the valid encoding: never accepted.
    let mut bytes = encoded.clone().into_bytes();
    flip_bit(&mut bytes, choice(data));
    if let Ok(tampered) = String::from_utf8(bytes)
        && tampered.trim() != encoded
        && let Ok(t) = CheckpointCode::decode(&tampered)
    {
        assert!(
            !t.signed_by(&key.verifying_key()),
            "a tampered code still verifies: {tampered:?}"
        );
    }
});
