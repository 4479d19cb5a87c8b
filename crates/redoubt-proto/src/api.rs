//! Bodies of the HTTP API under [`crate::API_PREFIX`].
//!
//! | method, path | role | body → answer |
//! |---|---|---|
//! | `POST /enroll` | enrollment token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `GET /device/ws` | device key (challenge) | WebSocket, see [`crate::ws`] |
//! | `GET /whoami` | any admin | → [`WhoAmI`] |
//! | `POST /enrollments` | operator | [`CreateEnrollment`] → [`EnrollmentCreated`] |
//! | `GET /devices` | auditor | → `Vec<DeviceView>` |
//! | `GET /devices/{id}` | auditor | → [`DeviceView`] |
//! | `PUT /devices/{id}/mode` | operator | [`SetMode`] → [`DeviceView`] |
//! | `GET /modes` | auditor | → `Vec<ModeView>` |
//! | `GET /modes/{name}` | auditor | → [`ModeView`] |
//! | `PUT /modes/{name}` | officer | [`crate::Mode`] → [`ModeView`] |
//!
//! Errors are always [`ApiError`] with a 4xx/5xx status.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::SignedEnvelope;
use crate::ids::{DeviceId, IdError, ModeName, UserName};
use crate::model::{Capability, CapabilityState, Compliance, HardwareKind, Mode, NetworkState};
use crate::time_fmt::Timestamp;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable code, e.g. `forbidden`, `token_used`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// The role of an admin credential. Each includes the rights of the ones below it,
/// except that `officer` and `operator` are siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Owner,
    /// Modes and zones.
    Officer,
    /// Enrollment, assignment, lock/wipe.
    Operator,
    /// Read-only.
    Auditor,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Officer => "officer",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// Whether a credential of this role may do what `needed` allows.
    pub fn permits(self, needed: Role) -> bool {
        self == needed || self == Role::Owner || needed == Role::Auditor
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        [Role::Owner, Role::Officer, Role::Operator, Role::Auditor]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdError {
                what: "role",
                value: s.chars().take(64).collect(),
                rule: "one of owner, officer, operator, auditor",
            })
    }
}

/// `POST /enroll`: a phone presents its token and its new public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use enrollment token.
    pub token: String,
    /// Base64 of the device's Ed25519 public key.
    pub device_public_key: String,
    /// The hardware backend the agent will use.
    pub hardware: HardwareKind,
    /// Base64 signature with the device key over [`enroll_proof_message`].
    pub proof: String,
}

/// The bytes a device signs to prove it holds the key it enrolls.
pub fn enroll_proof_message(token: &str, device_public_key: &str) -> Vec<u8> {
    format!("redoubt-enroll-v1\0{token}\0{device_public_key}").into_bytes()
}

/// Answer to a successful enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The id the server assigned.
    pub device_id: DeviceId,
    /// The person the device belongs to.
    pub user: UserName,
    /// Base64 of the organization's bundle-signing public key.
    pub organization_key: String,
    /// The device's first policy bundle.
    pub bundle: SignedEnvelope,
}

/// `GET /whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The credential's name.
    pub name: String,
    /// The credential's role.
    pub role: Role,
}

/// `POST /enrollments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollment {
    /// The person the phone is for.
    pub user: UserName,
    /// The initial mode (default `standard`).
    #[serde(default)]
    pub mode: Option<ModeName>,
    /// Token lifetime in seconds (default from the server's configuration).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Answer to `POST /enrollments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentCreated {
    /// `redoubt://enroll?...`, to be shown as a QR code.
    pub url: String,
    /// When the token stops working.
    pub expires_at: Timestamp,
}

/// `PUT /devices/{id}/mode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMode {
    /// The new base mode.
    pub mode: ModeName,
}

/// One device as the console sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// Device id.
    pub id: DeviceId,
    /// Owner.
    pub user: UserName,
    /// Effective mode name.
    pub mode: String,
    /// The base mode an operator assigned.
    pub assigned_mode: ModeName,
    /// The server's verdict.
    pub compliance: Compliance,
    /// Why the verdict is not `compliant` (empty when it is).
    pub compliance_reasons: Vec<String>,
    /// Each capability as last reported (empty before the first report).
    pub capabilities: BTreeMap<Capability, CapabilityState>,
    /// Network reach as last reported.
    pub network: Option<NetworkState>,
    /// The newest bundle version issued to the device.
    pub bundle_version: u64,
    /// The bundle version of the latest report.
    pub reported_bundle_version: Option<u64>,
    /// When the latest report was received.
    pub last_report_at: Option<Timestamp>,
    /// The latest report's sequence number.
    pub last_report_seq: Option<u64>,
    /// The backend the agent uses.
    pub hardware: HardwareKind,
    /// Whether the device holds a push connection right now.
    pub connected: bool,
    /// When it enrolled.
    pub enrolled_at: Timestamp,
}

/// One mode as the console sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeView {
    /// The mode.
    #[serde(flatten)]
    pub mode: Mode,
    /// Whether it is a built-in preset (read-only).
    pub builtin: bool,
    /// Last change.
    pub updated_at: Timestamp,
}
