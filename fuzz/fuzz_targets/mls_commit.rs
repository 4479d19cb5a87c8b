//! MLS commits as the delivery service receives them (`POST …/commits`): the TLS
//! deserialization of `openmls::framing::MlsMessageIn`, then the public framing a
//! server can read without a key (`ProtocolMessage`: group id, epoch, content type,
//! sender).
//!
//! Properties: nothing panics; whatever deserializes serializes back to bytes that
//! deserialize to the same message.
//!
//! The server's own check of a commit against its public view of the group
//! (`verify_commit`) is fuzzed by `server_commit`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls::framing::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use tls_codec::{DeserializeBytes, Serialize};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = MlsMessageIn::tls_deserialize_exact_bytes(data) else {
        return;
    };
    let bytes = msg
        .tls_serialize_detached()
        .expect("a parsed message serializes");
    let again = MlsMessageIn::tls_deserialize_exact_bytes(&bytes).expect("and deserializes again");
    assert_eq!(again, msg);

    let wire = msg.wire_format();
    match msg.clone().extract() {
        MlsMessageBodyIn::PublicMessage(_) | MlsMessageBodyIn::PrivateMessage(_) => {
            let pm = ProtocolMessage::try_from(msg).expect("a framed message");
            assert_eq!(pm.wire_format(), wire);
            let _ = (
                pm.group_id(),
                pm.epoch(),
                pm.content_type(),
                pm.is_external(),
            );
        }
        _ => assert!(ProtocolMessage::try_from(msg).is_err()),
    }
});
