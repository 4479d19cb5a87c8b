//! The Redoubt messenger, running on the phone next to the agent: end-to-end encrypted
//! conversations over MLS (RFC 9420, `openmls`), with the organization's server as the
//! delivery and authentication service.
//!
//! - It runs as the phone's user and works from its own directory
//!   ([`redoubt_device::MessengerDir`], written by the agent at enrollment): a messenger
//!   key that the device key delegated opens its sessions; it never reads the agent's
//!   state directory nor the device key, and does not link the agent.
//! - Each enrolled device is one MLS member; its MLS signature key is certified by the
//!   organization (`member-certificate/v1`), and every member's certificate is checked
//!   against the organization key before a Welcome or a commit is accepted.
//! - [`mls_store`]: the OpenMLS storage provider; every MLS operation's state change is
//!   written to the local SQLite database ([`db`]) in the same transaction as the
//!   application rows it implies.

pub mod content;
pub mod db;
pub mod files;
pub mod identity;
pub mod messenger;
pub mod mls_store;
pub mod net;
pub mod testpoint;

pub use messenger::{ConversationView, MessageView, Messenger, Queued, SyncReport};
pub use redoubt_device::MessengerDir;
