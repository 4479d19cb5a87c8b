//! Policy logic, pure and without IO: the built-in modes, effective-mode resolution
//! (most restrictive wins), strictness comparison, mode files, bundle verification
//! and compliance evaluation.
//!
//! The server and the agent call the same functions, so they cannot disagree about
//! what a set of modes means.

mod bundle;
mod compliance;
mod mode_file;
mod modes;

pub use bundle::{BundleError, Decision, decide, verify_bundle};
pub use compliance::evaluate;
pub use mode_file::{ModeFileError, parse_mode_toml};
pub use modes::{
    Effective, LOCKDOWN, SECURE_SITE, STANDARD, at_least_as_strict, effective, is_preset, lockdown,
    meets_clearance, preset, presets,
};
