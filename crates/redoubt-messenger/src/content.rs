//! What travels inside the MLS application messages (the server never sees it): text,
//! file references with their keys, receipts, and conversation info.

use redoubt_proto::messaging::B64;
use redoubt_proto::{BlobId, ModeName, Timestamp};
use serde::{Deserialize, Serialize};

/// One application message's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppMessage {
    /// Format version (1).
    pub v: u32,
    /// The sender's id for this message (also the server's retry key).
    pub id: String,
    /// When the sender wrote it.
    pub sent_at: Timestamp,
    /// What it says.
    pub body: Body,
}

/// The kinds of content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A file, encrypted with its own key and uploaded as a blob.
    File(FileRef),
    /// Delivery or read receipts for messages of this conversation.
    Receipt {
        /// `delivered` or `read`.
        kind: ReceiptKind,
        /// The message ids.
        ids: Vec<String>,
    },
    /// The conversation's name and clearance, sent to new members.
    Info {
        /// Name.
        name: String,
        /// Required mode.
        clearance: Option<ModeName>,
    },
}

/// A receipt kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The message reached the device.
    Delivered,
    /// The message was shown to its reader.
    Read,
}

impl ReceiptKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

/// Where a file is and how to decrypt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The uploaded ciphertext.
    pub blob_id: BlobId,
    /// The file's name (no directories).
    pub name: String,
    /// Plaintext size.
    pub size: u64,
    /// AES-256-GCM key.
    pub key: B64,
    /// AES-GCM nonce.
    pub nonce: B64,
    /// SHA-256 of the plaintext (hex).
    pub sha256: String,
}
