//! Policy logic, pure and without IO: the built-in modes, effective-mode resolution
//! (most restrictive wins), strictness comparison, mode files, bundle verification,
//! secured zones (checkpoint codes, the phone's zone and lock state) and compliance
//! evaluation.
//!
//! The server and the agent call the same functions, so they cannot disagree about
//! what a set of modes means.

mod audit;
mod bundle;
mod compliance;
mod mode_file;
mod modes;
mod zone_file;
mod zones;

pub use audit::{
    AuditError, GENESIS, VerifiedLog, canonical_json, entry_hash, recompute_hash, verify_log,
};
pub use bundle::{BundleError, Decision, assigned_modes, decide, verify_bundle};
pub use compliance::{evaluate, evaluate_against};
pub use mode_file::{ModeFileError, parse_mode_toml};
pub use modes::{
    Effective, LOCKDOWN, SECURE_SITE, STANDARD, at_least_as_strict, effective, is_preset, lockdown,
    meets_clearance, preset, presets,
};
pub use zone_file::{ZoneFileError, parse_zone_toml};
pub use zones::{
    CODE_CLOCK_SKEW_SECS, CodeError, CommandEffect, DONE_COMMANDS_KEPT, DoneCommand, LockState,
    PhoneTime, Presence, ZoneChange, ZoneState, decide_with, expected_mode, verify_code,
};
