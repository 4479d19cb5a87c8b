//! Wire types shared by the server, the agent and the CLI: identifiers, capabilities,
//! modes, the policy bundle, compliance reports, the device WebSocket protocol, the
//! admin API bodies and the signed-envelope format.
//!
//! Everything that crosses a process boundary is defined here, once. Raw strings are
//! parsed into the validated types of [`ids`] at the edge.

pub mod api;
pub mod envelope;
pub mod ids;
pub mod messaging;
pub mod model;
pub mod time_fmt;
pub mod ws;
pub mod zones;

pub use envelope::{EnvelopeError, SignedEnvelope};
pub use ids::{
    BlobId, DeviceGroupName, DeviceId, Fingerprint, GroupId, IdError, ModeName, UserName,
};
pub use model::*;
pub use time_fmt::Timestamp;
pub use zones::{
    AuditEntry, AuditExport, AuditHead, Bssid, CheckpointCode, CheckpointKey, CheckpointName,
    CommandId, CommandState, DeviceAction, DeviceCommand, DeviceEvent, DeviceEventKind, Direction,
    Evidence, ZoneName, ZonePolicy,
};

/// Version prefix of every HTTP API path.
pub const API_PREFIX: &str = "/api/v1";
