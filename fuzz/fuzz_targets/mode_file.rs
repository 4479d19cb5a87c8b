//! Mode files as an operator (or whoever edits them) writes them:
//! `redoubt_policy::parse_mode_toml`.
//!
//! Properties: nothing panics (its error names a line and field from byte offsets); a
//! mode that parses writes back to TOML that parses to the same mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_policy::parse_mode_toml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_mode_toml(text) {
        Ok(mode) => {
            let written = toml::to_string(&mode).expect("a mode writes as TOML");
            let again = parse_mode_toml(&written)
                .unwrap_or_else(|e| panic!("{written:?} does not parse back: {e}"));
            assert_eq!(again, mode);
        }
        Err(e) => {
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.matches('\n').count() + 1);
            }
            let _ = e.to_string();
        }
    }
});
