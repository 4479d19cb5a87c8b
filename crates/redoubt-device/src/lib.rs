//! What the Redoubt device agent (root) and the messenger (the phone's user) share on a
//! phone, and nothing more: a phone app links this crate, never the agent with its
//! hardware backends.
//!
//! | module | what lives there |
//! |---|---|
//! | [`layout`] | file names of the agent's state directory and of the messenger directory |
//! | [`files`] | atomic writes ([`write_atomic`], [`sync_dir`], [`write_json`]) and JSON reads |
//! | [`keys`] | Ed25519 key files (PKCS#8 PEM, 0600, refused when others can read them) |
//! | [`identity`] | [`Identity`] (the agent's `identity.json`) and [`PublicIdentity`] (the messenger's) |
//! | [`messenger_dir`] | [`MessengerDir`]: the messenger's own directory, its key and delegation, hand-over to the phone's user, destruction at a wipe |
//!
//! Invariant: the messenger directory never holds the device key. The messenger proves
//! itself with a key of its own, delegated by the device key at enrollment
//! (`messenger-delegation/v1`).

pub mod files;
pub mod identity;
pub mod keys;
pub mod layout;
pub mod messenger_dir;

pub use files::{read_json, sync_dir, write_atomic, write_json};
pub use identity::{Identity, PublicIdentity};
pub use messenger_dir::{MessengerDir, Owner};
