//! The device WebSocket protocol (`GET /api/v1/device/ws`), JSON text frames.
//!
//! 1. server → `Challenge { nonce }`;
//! 2. agent → `Hello { device_id, signature }`, the signature over
//!    [`hello_message`] made with the device key;
//! 3. server → `Welcome`, then `Bundle` whenever a newer bundle exists;
//! 4. agent → `Report` (signed compliance reports, in sequence order);
//!    server → `ReportAck { seq }` once a report is stored durably.

use serde::{Deserialize, Serialize};

use crate::envelope::SignedEnvelope;
use crate::ids::DeviceId;
use crate::time_fmt::Timestamp;

/// The bytes a device signs to answer a challenge.
pub fn hello_message(nonce: &str, device_id: &DeviceId) -> Vec<u8> {
    format!("redoubt-device-hello-v1\0{nonce}\0{device_id}").into_bytes()
}

/// A frame from the server to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerFrame {
    /// Prove possession of the device key by signing this nonce.
    Challenge {
        /// Fresh random nonce (base64url).
        nonce: String,
    },
    /// Authentication succeeded.
    Welcome {
        /// The server's clock, for diagnostics.
        server_time: Timestamp,
    },
    /// A policy bundle signed by the organization key.
    Bundle {
        /// The signed bundle.
        bundle: SignedEnvelope,
    },
    /// The report with this sequence number (and all before it) is stored.
    ReportAck {
        /// Sequence number acknowledged.
        seq: u64,
    },
    /// The agent should measure and report now.
    ReportRequest,
    /// An operator's command, signed by the organization key
    /// ([`crate::zones::DeviceCommand`]); sent again on every connection until acknowledged.
    Command {
        /// The signed command.
        command: SignedEnvelope,
    },
    /// Something went wrong; the server closes the connection after this frame when `fatal`.
    Error {
        /// Machine-readable code.
        code: String,
        /// Human-readable message.
        message: String,
        /// Whether the connection ends.
        fatal: bool,
    },
}

/// A frame from the agent to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentFrame {
    /// Answer to `Challenge`.
    Hello {
        /// Who the device claims to be.
        device_id: DeviceId,
        /// Base64 Ed25519 signature over [`hello_message`].
        signature: String,
    },
    /// A signed compliance report.
    Report {
        /// The signed report.
        report: SignedEnvelope,
    },
    /// A command was verified and stored durably (`accepted`), or refused with `reason`.
    /// Its effect shows in the next report.
    CommandAck {
        /// The command.
        id: crate::zones::CommandId,
        /// Whether the phone carries it out.
        accepted: bool,
        /// Why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}
