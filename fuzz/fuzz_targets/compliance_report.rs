//! Compliance reports as the server receives them on a device session: an
//! `AgentFrame` JSON text frame, the report envelope verified with the device key
//! (`SignedEnvelope::verify::<ComplianceReport>`), then judged with
//! `redoubt_policy::evaluate` against the device's bundle — the pure part of
//! `redoubt-server`'s `App::accept_report` (storage and command judging aside).
//!
//! Properties: nothing panics; only reports the device key signed are accepted; a
//! report the fuzzer writes as JSON, signed by the device, verifies back to itself,
//! is judged without panicking, and one flipped bit of it is refused.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use redoubt_fuzz::fixtures::{NOW, bundle, device_key};
use redoubt_fuzz::{choice, flip_bit};
use redoubt_proto::ws::AgentFrame;
use redoubt_proto::{ComplianceReport, EnvelopeError, SignedEnvelope};

fuzz_target!(|data: &[u8]| {
    let key = device_key();
    let vk = key.verifying_key();
    let bundle = bundle();

    if let Ok(AgentFrame::Report { report }) = serde_json::from_slice::<AgentFrame>(data)
        && let Ok(r) = report.verify::<ComplianceReport>(ComplianceReport::KIND, &vk)
    {
        // Only the device key makes this (deterministic Ed25519): re-signing the same
        // report must give the same bytes.
        let resigned = SignedEnvelope::sign(ComplianceReport::KIND, &r, &key);
        if resigned.payload == report.payload {
            assert_eq!(resigned.signature, report.signature);
        }
        redoubt_policy::evaluate(&bundle, &r, NOW);
    }

    let Ok(report) = serde_json::from_slice::<ComplianceReport>(data) else {
        return;
    };
    let env = SignedEnvelope::sign(ComplianceReport::KIND, &report, &key);
    let frame = serde_json::to_string(&AgentFrame::Report {
        report: env.clone(),
    })
    .expect("a frame serializes");
    let Ok(AgentFrame::Report { report: received }) = serde_json::from_str(&frame) else {
        panic!("a report frame we wrote does not parse: {frame}");
    };
    let back: ComplianceReport = received
        .verify(ComplianceReport::KIND, &vk)
        .expect("the device's own signature verifies");
    assert_eq!(back, report);
    let reasons = redoubt_policy::evaluate(&bundle, &back, NOW);
    if back.bundle_version != bundle.version || back.fallback_reason.is_some() {
        assert!(
            !reasons.is_empty(),
            "a report for another bundle judged compliant"
        );
    }

    let mut payload = STANDARD.decode(&env.payload).expect("base64");
    flip_bit(&mut payload, choice(data));
    let tampered = SignedEnvelope {
        payload: STANDARD.encode(&payload),
        ..env
    };
    assert_eq!(
        tampered
            .verify::<ComplianceReport>(ComplianceReport::KIND, &vk)
            .err(),
        Some(EnvelopeError::BadSignature)
    );
});
