//! The device WebSocket frames (`redoubt_proto::ws`): `AgentFrame` as the server reads
//! it, `ServerFrame` as the agent reads it, and the messenger's push frames
//! (`redoubt_proto::messaging::MessengerPush`).
//!
//! Properties: nothing panics; every frame that parses serializes and parses back to
//! the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_proto::messaging::MessengerPush;
use redoubt_proto::ws::{AgentFrame, ServerFrame};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(frame) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_string(&frame).expect("a frame serializes");
        let again: T = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
        assert_eq!(again, frame);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<AgentFrame>(data);
    round_trip::<ServerFrame>(data);
    round_trip::<MessengerPush>(data);
});
