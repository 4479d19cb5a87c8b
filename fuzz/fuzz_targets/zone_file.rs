//! Zone files as an operator writes them: `redoubt_policy::parse_zone_toml` (what
//! `redoubt zones apply FILE` reads).
//!
//! Properties: nothing panics; a zone that parses has a checkpoint and writes back to
//! TOML that parses to the same zone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_policy::parse_zone_toml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(zone) = parse_zone_toml(text) else {
        return;
    };
    assert!(!zone.checkpoints.is_empty());
    let written = toml::to_string(&zone).expect("a zone writes as TOML");
    let again = parse_zone_toml(&written)
        .unwrap_or_else(|e| panic!("{written:?} does not parse back: {e}"));
    assert_eq!(again, zone);
});
