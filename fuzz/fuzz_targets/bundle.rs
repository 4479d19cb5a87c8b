//! Policy bundles as the agent receives them: `SignedEnvelope` JSON bytes through
//! `redoubt_policy::verify_bundle`, then `decide` / `decide_with`.
//!
//! Properties: nothing panics; an accepted bundle is for this device, not older than
//! the version held, not expired and names its base mode; a bundle the fuzzer writes
//! as JSON, once signed by the organization, is never refused for its signature, and
//! one flipped bit of its signed bytes always is.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use redoubt_fuzz::fixtures::{NOW, device, org_key};
use redoubt_fuzz::{choice, flip_bit};
use redoubt_policy::{BundleError, PhoneTime, ZoneState, decide, decide_with, verify_bundle};
use redoubt_proto::{PolicyBundle, SignedEnvelope};

fn check_accepted(bundle: &PolicyBundle, held: Option<u64>) {
    assert_eq!(bundle.device_id, device());
    if let Some(h) = held {
        assert!(bundle.version >= h);
    }
    assert!(bundle.expires_at > NOW);
    assert!(
        bundle
            .modes
            .iter()
            .any(|m| m.name == bundle.assignments.base_mode)
    );
    let d = decide(Some(bundle), NOW);
    assert_eq!(d.bundle_version, bundle.version);
    assert!(
        d.fallback_reason.is_none(),
        "a verified bundle is enforced as issued"
    );
    decide_with(Some(bundle), &ZoneState::default(), PhoneTime::trusted(NOW));
}

fuzz_target!(|data: &[u8]| {
    let key = org_key();
    let vk = key.verifying_key();
    let c = choice(data);
    let held = (!c.is_multiple_of(3)).then_some(c % 5);

    if let Ok(env) = serde_json::from_slice::<SignedEnvelope>(data)
        && let Ok(bundle) = verify_bundle(&env, &vk, &device(), held, NOW)
    {
        check_accepted(&bundle, held);
    }

    let Ok(bundle) = serde_json::from_slice::<PolicyBundle>(data) else {
        return;
    };
    let json = serde_json::to_vec(&bundle).expect("a bundle serializes");
    assert_eq!(
        serde_json::from_slice::<PolicyBundle>(&json).expect("and parses again"),
        bundle
    );
    let env = SignedEnvelope::sign(PolicyBundle::KIND, &bundle, &key);
    match verify_bundle(&env, &vk, &device(), held, NOW) {
        Ok(b) => {
            assert_eq!(b, bundle);
            check_accepted(&b, held);
        }
        Err(BundleError::BadSignature) => panic!("our own signature refused"),
        Err(_) => {}
    }
    let mut payload = STANDARD.decode(&env.payload).expect("base64");
    flip_bit(&mut payload, c);
    let tampered = SignedEnvelope {
        payload: STANDARD.encode(&payload),
        ..env
    };
    assert_eq!(
        verify_bundle(&tampered, &vk, &device(), held, NOW).err(),
        Some(BundleError::BadSignature)
    );
});
