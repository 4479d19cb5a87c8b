//! Bodies of the HTTP API under [`crate::API_PREFIX`].
//!
//! | method, path | role | body → answer |
//! |---|---|---|
//! | `POST /enroll` | enrollment token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `GET /device/ws` | device key (challenge) | WebSocket, see [`crate::ws`] |
//! | `GET /whoami` | any admin | → [`WhoAmI`] |
//! | `POST /enrollments` | operator | [`CreateEnrollment`] → [`EnrollmentCreated`] |
//! | `GET /enrollments?`[`EnrollmentQuery`] | auditor | → [`EnrollmentPage`] |
//! | `GET /devices?`[`DeviceQuery`] | auditor | → [`DevicePage`] |
//! | `GET /devices/count?`[`DeviceQuery`] | auditor | → [`DeviceCount`] |
//! | `GET /devices/counts` | auditor | → [`DeviceCounts`] |
//! | `POST /devices/bulk` | operator (wipe: owner) | [`BulkRequest`] → [`BulkDone`] |
//! | `GET /commands?`[`CommandQuery`] | auditor | → [`CommandPage`] |
//! | `GET /devices/{id}` | auditor | → [`DeviceView`] |
//! | `PUT /devices/{id}/mode` | operator | [`SetMode`] → [`DeviceView`] |
//! | `POST /devices/{id}/approve` | owner (not the one who created its enrollment code) | → [`DeviceView`] |
//! | `GET /modes` | auditor | → `Vec<ModeView>` |
//! | `GET /modes/{name}` | auditor | → [`ModeView`] |
//! | `PUT /modes/{name}` | officer | [`crate::Mode`] → [`ModeView`] |
//! | `GET /admin-tokens` | owner, auditor | → `Vec<AdminTokenView>` |
//! | `POST /admin-tokens/{id}/revoke` | owner | → [`AdminTokenView`] |
//! | `POST /zones/{name}/checkpoints/{cp}/gate-credentials` | officer | [`CreateGateCredential`] → [`GateCredentialCreated`] |
//! | `GET /zones/{name}/gate-credentials` | officer, auditor | → `Vec<GateCredentialView>` |
//! | `POST /zones/{name}/gate-credentials/{id}/revoke` | officer | → [`GateCredentialView`] |
//! | `GET /metrics` (outside the prefix) | any admin | Prometheus text |
//!
//! Errors are always [`ApiError`] with a 4xx/5xx status.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::SignedEnvelope;
use crate::ids::{DeviceGroupName, DeviceId, IdError, ModeName, UserName};
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
    /// The credential's public id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<CredentialId>,
    /// When the credential stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
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
    /// Device groups the phone joins when it enrolls (each must exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<DeviceGroupName>,
}

/// Answer to `POST /enrollments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentCreated {
    /// `redoubt://enroll?...`, to be shown as a QR code.
    pub url: String,
    /// When the token stops working.
    pub expires_at: Timestamp,
    /// The code's public id, as `GET /enrollments` lists it (absent from servers
    /// before the list existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<CredentialId>,
}

/// Where an enrollment code is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollmentState {
    /// Not used yet and not expired: a phone can still enroll with it.
    Open,
    /// A phone enrolled with it.
    Used,
    /// Expired unused.
    Expired,
}

impl EnrollmentState {
    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentState::Open => "open",
            EnrollmentState::Used => "used",
            EnrollmentState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for EnrollmentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /enrollments?…`: the enrollment codes made, oldest first, in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentQuery {
    /// Only in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EnrollmentState>,
    /// Only for this person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    /// Only those created by this admin (`admin:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The page starts after this cursor (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default [`DeviceQuery::DEFAULT_LIMIT`], at most
    /// [`DeviceQuery::MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// An enrollment code as listed: never the code itself (the server keeps only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentView {
    /// Its public id.
    pub id: CredentialId,
    /// The person the phone is for.
    pub user: UserName,
    /// The phone's initial mode.
    pub mode: ModeName,
    /// The groups the phone joins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<crate::DeviceGroupName>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// When it stops (or stopped) working.
    pub expires_at: Timestamp,
    /// Where it is in its life, judged by the server's clock when listed.
    pub state: EnrollmentState,
    /// When a phone enrolled with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<Timestamp>,
    /// The phone that enrolled with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
}

/// Answer to `GET /enrollments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentPage {
    /// The codes of this page.
    pub enrollments: Vec<EnrollmentView>,
    /// The cursor of the next page, when more follow.
    pub next: Option<String>,
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
    /// The effective mode the phone last reported (zones and locks included).
    #[serde(default)]
    pub reported_mode: Option<String>,
    /// The zones the phone last reported being inside.
    #[serde(default)]
    pub zones: Vec<crate::zones::ZoneName>,
    /// The lock command in force on the phone, as last reported.
    #[serde(default)]
    pub locked_by: Option<crate::zones::CommandId>,
    /// When the device was revoked.
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    /// Whether it may take part in conversations: a person's additional device waits
    /// for an owner's approval.
    pub approval: Approval,
    /// Who approved it: `admin:NAME`, `first-device` (its person had no other live
    /// device when it enrolled) or `migration` (enrolled before approvals existed).
    #[serde(default)]
    pub approved_by: Option<String>,
    /// When it was approved.
    #[serde(default)]
    pub approved_at: Option<Timestamp>,
    /// Who created the enrollment code it enrolled with (`admin:NAME`); that admin
    /// cannot approve it.
    #[serde(default)]
    pub enrolled_by: Option<String>,
    /// The device groups it belongs to.
    #[serde(default)]
    pub groups: Vec<DeviceGroupName>,
    /// What the phone is (model, system, storage, battery), as the newest report that
    /// carried it said; the phone's holder writes it, so it is shown, never judged.
    /// Absent before such a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::Inventory>,
    /// When the report carrying `inventory` was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_at: Option<Timestamp>,
}

/// Which devices `GET /devices` lists, `GET /devices/count` counts and a bulk action
/// acts on. Every field given narrows; none at all means every live device. In a
/// query string the fields are `compliance=stale&group=unit-7&…`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// The verdict (`stale` is computed at the time of the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Compliance>,
    /// The effective mode of the newest bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The operator's own assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_mode: Option<ModeName>,
    /// The owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    /// The hardware backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareKind>,
    /// Members of this device group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<DeviceGroupName>,
    /// Inside this zone, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<crate::zones::ZoneName>,
    /// Latest report before this time, or none at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_before: Option<Timestamp>,
    /// Latest report at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_after: Option<Timestamp>,
    /// Revoked devices too (lists only; a bulk action never touches them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Lists only: the page starts after this cursor (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Lists only: at most this many devices (default [`DeviceQuery::DEFAULT_LIMIT`],
    /// at most [`DeviceQuery::MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl DeviceQuery {
    /// Devices in a page when `limit` is not given.
    pub const DEFAULT_LIMIT: u32 = 1_000;
    /// Most devices in a page.
    pub const MAX_LIMIT: u32 = 5_000;
}

/// What a bulk action does to every device its filter covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Assign the request's `mode` as base mode (each device gets a new bundle).
    SetMode,
    /// Lock each phone (a signed command each).
    Lock,
    /// Lift each phone's lock.
    Unlock,
    /// Wipe each phone (owners only).
    Wipe,
}

impl BulkAction {
    /// The wire name (`set_mode`, `lock`, …).
    pub fn name(self) -> &'static str {
        match self {
            BulkAction::SetMode => "set_mode",
            BulkAction::Lock => "lock",
            BulkAction::Unlock => "unlock",
            BulkAction::Wipe => "wipe",
        }
    }
}

/// `POST /devices/bulk`: one action on every live device a filter covers, done only if
/// they are exactly `expected_count` (what the operator saw and confirmed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// Which devices (`after`, `limit` and `revoked` are refused here).
    pub filter: DeviceQuery,
    /// What to do.
    pub action: BulkAction,
    /// The mode, for `set_mode` (and only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeName>,
    /// How many devices the operator confirmed; another number now is a 409 that
    /// names the current count, and nothing is done.
    pub expected_count: u64,
    /// For commands: seconds until each expires (server default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// Answer to `POST /devices/bulk`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkDone {
    /// The bulk action's id (in the audit entry, and in the note of each command).
    pub id: String,
    /// What was done.
    pub action: String,
    /// How many devices it covers: each gets its own signed bundle or command, issued
    /// in batches right after this answer and pushed to those connected.
    pub devices: u64,
}

/// Answer to `GET /devices/count?`[`DeviceQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCount {
    /// How many devices the filter covers now.
    pub count: u64,
}

/// Answer to `GET /devices`: one page, in enrollment order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePage {
    /// The devices of this page.
    pub devices: Vec<DeviceView>,
    /// The cursor of the next page (`after=`), when more follow.
    pub next: Option<String>,
}

/// `GET /devices/counts`: live (not revoked) devices counted several ways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// Every live device.
    pub total: u64,
    /// Holding a push connection to the node that answered.
    pub connected: u64,
    /// By verdict (`stale` computed now).
    pub by_compliance: BTreeMap<String, u64>,
    /// By effective mode.
    pub by_mode: BTreeMap<String, u64>,
    /// By the operator's own assignment.
    pub by_assigned_mode: BTreeMap<String, u64>,
    /// By hardware backend.
    pub by_hardware: BTreeMap<String, u64>,
    /// By device group (a device in two groups counts in both).
    pub by_group: BTreeMap<String, u64>,
    /// By zone the device last reported being inside (a device in two counts in both).
    #[serde(default)]
    pub by_zone: BTreeMap<String, u64>,
}

/// `POST /groups`: a new device group (a unit, a department, a site).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDeviceGroup {
    /// Its name.
    pub name: DeviceGroupName,
    /// What it is, for people.
    #[serde(default)]
    pub description: String,
    /// The mode assigned to its devices (none by default).
    #[serde(default)]
    pub mode: Option<ModeName>,
}

/// One device group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGroupView {
    /// Its name.
    pub name: DeviceGroupName,
    /// What it is.
    pub description: String,
    /// The mode assigned to its devices, if any.
    pub mode: Option<ModeName>,
    /// How many devices (not revoked) belong to it.
    pub devices: u64,
    /// Who created it (`admin:NAME`).
    pub created_by: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed (mode, description or members).
    pub updated_at: Timestamp,
}

/// `POST /groups/{name}/devices` (add) and `POST /groups/{name}/devices/remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDevices {
    /// The devices (at most [`GroupDevices::MAX`] per request).
    pub devices: Vec<DeviceId>,
}

impl GroupDevices {
    /// Most devices one request may name.
    pub const MAX: usize = 10_000;
}

/// `PUT /groups/{name}/mode`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGroupMode {
    /// The mode for the group's devices; `null` takes the group's mode away.
    pub mode: Option<ModeName>,
}

/// What a change of a group did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupChange {
    /// The group after the change.
    pub group: DeviceGroupView,
    /// Devices added or removed (those already in, or not in, are not counted).
    pub changed: u64,
    /// Devices that get a new bundle because of the change (issued in batches right
    /// after the answer, and pushed to those connected).
    pub reissued: u64,
}

/// A device's approval state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// It may certify its MLS key, publish KeyPackages and be added to conversations.
    Approved,
    /// It awaits an owner's approval: no MLS certificate, no KeyPackages, never
    /// handed out by a claim.
    Pending,
}

impl Approval {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::Approved => "approved",
            Approval::Pending => "pending",
        }
    }
}

impl fmt::Display for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// A zone as an operator defines it (`redoubt zones apply FILE.toml`). Checkpoint keys
/// are the server's; they are not part of the definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneDefinition {
    /// The zone's name.
    pub name: crate::zones::ZoneName,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// The mode that holds inside.
    pub mode: ModeName,
    /// Its checkpoints (at least one).
    pub checkpoints: Vec<crate::zones::CheckpointName>,
    /// Access points whose presence means "inside".
    #[serde(default)]
    pub wifi_bssids: Vec<crate::zones::Bssid>,
}

/// A zone as the server shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneView {
    /// The definition.
    #[serde(flatten)]
    pub definition: ZoneDefinition,
    /// The checkpoints with the public keys their codes verify with.
    pub checkpoint_keys: Vec<crate::zones::CheckpointKey>,
    /// Live gate credentials per checkpoint.
    pub gate_credentials: BTreeMap<String, u64>,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Ask for a checkpoint code (`POST /zones/{zone}/codes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueCode {
    /// In or out.
    pub direction: crate::zones::Direction,
    /// Which checkpoint signs it; the zone's first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::zones::CheckpointName>,
    /// Validity in seconds (the server's default when absent; 5–300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_secs: Option<u32>,
}

/// A checkpoint code, encoded and spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    /// What the phone's scanner hands to the agent (`RDZ1.…`).
    pub code: String,
    /// The zone.
    pub zone: crate::zones::ZoneName,
    /// The checkpoint that signed it.
    pub checkpoint: crate::zones::CheckpointName,
    /// In or out.
    pub direction: crate::zones::Direction,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until.
    pub not_after: Timestamp,
}

/// A new gate-terminal credential (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCredentialCreated {
    /// The zone.
    pub zone: crate::zones::ZoneName,
    /// The checkpoint.
    pub checkpoint: crate::zones::CheckpointName,
    /// The URL to open on the gate's tablet; it carries the credential once and the
    /// server turns it into a cookie.
    pub url: String,
    /// Its public id (for `gate-list` and `gate-revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<CredentialId>,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// Ask for a device command (`POST /devices/{id}/commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCommand {
    /// What to do.
    #[serde(flatten)]
    pub action: crate::zones::DeviceAction,
    /// Seconds until the command expires (server default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// `GET /commands?…`: the fleet's commands, oldest first, in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandQuery {
    /// Only in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::zones::CommandState>,
    /// Only this action (`lock`, `unlock`, `wipe`, `revoke`, `exit-zone`, `enter-zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only this device's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// The page starts after this cursor (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default [`DeviceQuery::DEFAULT_LIMIT`], at most
    /// [`DeviceQuery::MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Answer to `GET /commands`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandPage {
    /// The commands of this page.
    pub commands: Vec<CommandView>,
    /// The cursor of the next page, when more follow.
    pub next: Option<String>,
}

/// A command and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandView {
    /// Its id.
    pub id: crate::zones::CommandId,
    /// The device.
    pub device_id: DeviceId,
    /// What it does.
    #[serde(flatten)]
    pub action: crate::zones::DeviceAction,
    /// Where it is.
    pub state: crate::zones::CommandState,
    /// Who asked.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
    /// Sent to the phone.
    pub delivered_at: Option<Timestamp>,
    /// The phone stored it.
    pub acknowledged_at: Option<Timestamp>,
    /// The phone's report showed the effect.
    pub verified_at: Option<Timestamp>,
    /// Why it failed, or what verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// True when the request matched a command already pending (idempotency).
    #[serde(default)]
    pub existing: bool,
}

/// The public name of a credential (admin token or gate credential): the first 16 hex
/// digits of the SHA-256 of its secret. It identifies the credential in lists, the
/// audit log and revocation, and reveals nothing of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialId(String);

impl CredentialId {
    /// Number of hex digits.
    pub const LEN: usize = 16;

    /// The id of the credential whose secret hashes to `hash`.
    pub fn from_hash(hash: &[u8; 32]) -> CredentialId {
        CredentialId(
            hash[..Self::LEN / 2]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// The lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first bytes of the hash this id names (the digits decoded).
    pub fn hash_prefix(&self) -> Vec<u8> {
        self.0
            .as_bytes()
            .chunks(2)
            .map(|pair| {
                let digit = |c: u8| char::from(c).to_digit(16).unwrap_or(0) as u8;
                digit(pair[0]) << 4 | digit(pair.get(1).copied().unwrap_or(b'0'))
            })
            .collect()
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CredentialId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() == Self::LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(CredentialId(s.to_ascii_lowercase()))
        } else {
            Err(IdError {
                what: "credential id",
                value: s.chars().take(64).collect(),
                rule: "16 hex digits, as listed",
            })
        }
    }
}

impl TryFrom<String> for CredentialId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<CredentialId> for String {
    fn from(id: CredentialId) -> String {
        id.0
    }
}

/// Where a credential stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// It opens what it was made for.
    Live,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl std::fmt::Display for CredentialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CredentialState::Live => "live",
            CredentialState::Expired => "expired",
            CredentialState::Revoked => "revoked",
        })
    }
}

impl CredentialState {
    /// The state at `now` of a credential with these times.
    pub fn at(now: Timestamp, expires_at: Timestamp, revoked_at: Option<Timestamp>) -> Self {
        if revoked_at.is_some() {
            CredentialState::Revoked
        } else if expires_at <= now {
            CredentialState::Expired
        } else {
            CredentialState::Live
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Live => "live",
            CredentialState::Expired => "expired",
            CredentialState::Revoked => "revoked",
        }
    }
}

/// An admin credential as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenView {
    /// Its public id.
    pub id: CredentialId,
    /// Who holds it.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Live, expired or revoked, now.
    pub state: CredentialState,
}

/// Ask for a gate credential (`POST /zones/{name}/checkpoints/{cp}/gate-credentials`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGateCredential {
    /// Lifetime in seconds (the server's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A gate credential as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCredentialView {
    /// Its public id.
    pub id: CredentialId,
    /// The zone.
    pub zone: crate::zones::ZoneName,
    /// The checkpoint whose gate it opens.
    pub checkpoint: crate::zones::CheckpointName,
    /// Who made it.
    pub created_by: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Live, expired or revoked, now.
    pub state: CredentialState,
}

/// A lifetime as written on a command line: `90d`, `12h`, `30m`, `45s` or bare seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub u64);

impl FromStr for Ttl {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError {
            what: "lifetime",
            value: s.chars().take(64).collect(),
            rule: "a number with an optional unit s, m, h or d (e.g. 90d)",
        };
        let s = s.trim();
        let (digits, unit) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
            _ => (s, 's'),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .filter(|v| *v > 0)
            .map(Ttl)
            .ok_or_else(bad)
    }
}
