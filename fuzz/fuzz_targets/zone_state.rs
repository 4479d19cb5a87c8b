//! The agent's state files: `zones.json` (`redoubt_policy::ZoneState`, read at every
//! start; an unreadable one means `lockdown`) and `bundle.json` / `outbox/*.json`
//! (`SignedEnvelope`, covered by the `envelope` and `bundle` targets).
//!
//! Properties: nothing panics; a state that parses writes back to JSON that parses to
//! the same state; deciding, a Wi-Fi scan and a valid check-in code applied to any
//! readable state neither panic nor leave a state that no longer round-trips; a phone
//! inside a zone of the bundle is never decided less strict than that zone's mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_fuzz::fixtures::{NOW, bundle, checkpoint_key};
use redoubt_policy::{PhoneTime, ZoneState, at_least_as_strict, decide_with, effective};
use redoubt_proto::zones::{CheckpointCode, Direction};

fn round_trips(state: &ZoneState) {
    let json = serde_json::to_vec(state).expect("a zone state serializes");
    let again: ZoneState = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} does not parse back: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&again, state);
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut state) = serde_json::from_slice::<ZoneState>(data) else {
        return;
    };
    round_trips(&state);
    let bundle = bundle();
    let decision = decide_with(Some(&bundle), &state, PhoneTime::trusted(NOW));
    for zone in &bundle.zones {
        if state.inside().contains_key(&zone.name) {
            let mode = bundle
                .modes
                .iter()
                .find(|m| m.name == zone.mode)
                .expect("fixture zone mode");
            assert!(at_least_as_strict(
                &decision.mode,
                &effective(std::slice::from_ref(mode))
            ));
        }
    }
    state.recent_commands(8);
    let n = state.unreported().len();
    assert_eq!(n, state.unreported_len());

    let mut ids = 0u32;
    let mut id_gen = || {
        ids += 1;
        format!("e{ids}")
    };
    let visible: Vec<_> = bundle.zones[0].wifi_bssids.clone();
    state.observe_wifi(
        &visible,
        Some(&bundle),
        PhoneTime::trusted(NOW),
        &mut id_gen,
    );
    round_trips(&state);

    let code = CheckpointCode {
        zone: "lab".parse().expect("zone"),
        checkpoint: "north-gate".parse().expect("checkpoint"),
        direction: Direction::In,
        not_before: NOW.plus_secs(-10),
        not_after: NOW.plus_secs(50),
        nonce: format!("fuzz-{}", data.len()),
    }
    .encode(&checkpoint_key());
    let _ = state.apply_code(&code, &bundle, PhoneTime::trusted(NOW), "e-code".into());
    round_trips(&state);
    decide_with(Some(&bundle), &state, PhoneTime::trusted(NOW));
});
