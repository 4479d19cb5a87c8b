//! Enrollment URLs as a phone scans them from a QR code: `EnrollmentUrl::from_str`.
//!
//! Properties: nothing panics; what parses has an https server, a well-formed token and
//! prints to a URL that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_proto::EnrollmentUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = text.parse::<EnrollmentUrl>() else {
        return;
    };
    assert_eq!(url.server.scheme(), "https");
    assert!(!url.token.is_empty() && url.token.len() <= 128);
    let printed = url.to_string();
    let again: EnrollmentUrl = printed
        .parse()
        .unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
    assert_eq!(again, url);
});
