//! The messaging (MLS delivery service) API under [`crate::API_PREFIX`]`/messenger`, the
//! device-session handshake it is reached through, and the documents the organization
//! signs for messaging: member certificates, the revocation list, removal requests.
//!
//! The server only ever sees MLS ciphertext (opaque [`B64`] bytes), group ids, epochs,
//! device ids, sizes and times.
//!
//! | method, path | who | body → answer |
//! |---|---|---|
//! | `POST /device/challenge` | anyone | → [`Challenge`] |
//! | `POST /device/session` | messenger key, delegated by the device key | [`SessionRequest`] → [`SessionGranted`] |
//! | `POST /messenger/certificate` | device session | [`CertificateRequest`] → [`CertificateIssued`] |
//! | `GET /messenger/revocations` | device session | → [`SignedEnvelope`] of a [`RevocationList`] |
//! | `POST /messenger/key-packages` | device session | [`UploadKeyPackages`] → [`KeyPackageStock`] |
//! | `POST /messenger/key-packages/claim` | device session | [`ClaimKeyPackages`] (each person once) → [`ClaimedKeyPackages`] |
//! | `POST /messenger/groups` | device session | [`CreateGroup`] → [`GroupState`] |
//! | `GET /messenger/groups/{id}` | member | → [`GroupState`] |
//! | `POST /messenger/groups/{id}/commit` | member | [`PostCommit`] → [`GroupState`]; 409 [`EpochConflict`] |
//! | `POST /messenger/groups/{id}/messages` | member | [`PostMessage`] → [`MessageAccepted`] |
//! | `GET /messenger/queue?limit=N` | device session | → [`QueueBatch`] |
//! | `POST /messenger/queue/ack` | device session | [`Ack`] → [`AckResult`] |
//! | `POST /messenger/groups/{id}/blobs` | member | raw bytes → [`BlobStored`]; 413 `quota_exceeded` past the device's storage quota |
//! | `GET /messenger/groups/{id}/blobs/{blob}` | member | → raw bytes (a file of another conversation: 404, as for none) |
//! | `GET /messenger/ws` | device session | WebSocket of [`MessengerPush`] frames |
//! | `POST /devices/{id}/commands` `{"action":"revoke"}` | operator (admin) | → `CommandView` (see `commands`) |

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::envelope::SignedEnvelope;
use crate::ids::{BlobId, DeviceId, GroupId, ModeName, UserName};
use crate::time_fmt::Timestamp;

/// Opaque bytes, base64 on the wire. `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| serde::de::Error::custom("not valid base64"))
    }
}

/// The bytes a device signs to open a session: domain, nonce, device id.
pub fn session_message(nonce: &str, device_id: &DeviceId) -> Vec<u8> {
    format!("redoubt-device-session-v1\0{nonce}\0{device_id}").into_bytes()
}

/// A fresh single-use nonce to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Random nonce (base64url), valid for a minute, usable once.
    pub nonce: String,
}

/// A device's messenger proves possession of its messenger key, and shows the device
/// key's delegation of that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// Who the device claims to be.
    pub device_id: DeviceId,
    /// The nonce from [`Challenge`].
    pub nonce: String,
    /// Base64 Ed25519 signature over [`session_message`], made with the messenger key
    /// that `delegation` names.
    pub signature: String,
    /// A [`MessengerDelegation`] signed by the device key.
    pub delegation: SignedEnvelope,
}

/// The device key's statement, made at enrollment, that a messenger key speaks for the
/// device's messenger. The messenger runs as the phone's user and never holds the
/// device key (root's); this key opens messenger sessions of this device and nothing
/// else (never the agent's WebSocket). Revoking the device ends both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerDelegation {
    /// The delegating device.
    pub device_id: DeviceId,
    /// The messenger's Ed25519 public key (32 bytes).
    pub messenger_key: B64,
    /// When the agent made it (the phone's time; informative).
    pub issued_at: Timestamp,
}

impl MessengerDelegation {
    /// Envelope kind.
    pub const KIND: &'static str = "messenger-delegation/v1";
}

/// A short-lived session credential, kept in memory only (`Authorization: Device …`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionGranted {
    /// The session token.
    pub token: String,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// The device's owner, as enrolled.
    pub user: UserName,
    /// The server's messaging limits.
    pub limits: MessengerLimits,
    /// The organization's server addresses (`https://` origins) a messenger fails over
    /// between; omitted by a single server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<url::Url>,
}

impl fmt::Debug for SessionGranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGranted")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .field("limits", &self.limits)
            .field("servers", &self.servers)
            .finish()
    }
}

/// The organization's statement that an MLS signature key belongs to a device of a
/// person. Clients accept a member only with a valid certificate whose key is the key
/// of the member's MLS leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberCertificate {
    /// The device.
    pub device_id: DeviceId,
    /// Its owner.
    pub user: UserName,
    /// The MLS signature public key (Ed25519, 32 bytes).
    pub mls_key: B64,
    /// When the organization issued it.
    pub issued_at: Timestamp,
}

impl MemberCertificate {
    /// Envelope kind.
    pub const KIND: &'static str = "member-certificate/v1";
}

/// Ask the organization to certify a new MLS signature key for the calling device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// The MLS signature public key.
    pub mls_key: B64,
    /// Base64 signature over [`certificate_proof_message`] made with the MLS key, so
    /// a device cannot have someone else's key certified as its own.
    pub proof: B64,
}

/// What the MLS key signs to prove possession when it is certified.
pub fn certificate_proof_message(device_id: &DeviceId, mls_key: &[u8]) -> Vec<u8> {
    let mut m = format!("redoubt-mls-key-proof-v1\0{device_id}\0").into_bytes();
    m.extend_from_slice(mls_key);
    m
}

/// A certificate, signed by the organization key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateIssued {
    /// The signed [`MemberCertificate`].
    pub certificate: SignedEnvelope,
}

/// Devices whose membership must end: clients refuse them as members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// When this list was signed.
    pub issued_at: Timestamp,
    /// Revoked devices.
    pub revoked: Vec<DeviceId>,
}

impl RevocationList {
    /// Envelope kind.
    pub const KIND: &'static str = "revocation-list/v1";
}

/// The organization asks the members of a group to remove a device (revocation or
/// wipe). Any member may commit the removal; the server re-sends the request until a
/// commit without the device is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalRequest {
    /// The group.
    pub group_id: GroupId,
    /// The device to remove.
    pub device_id: DeviceId,
    /// Why, for people.
    pub reason: String,
    /// When it was issued.
    pub issued_at: Timestamp,
}

impl RemovalRequest {
    /// Envelope kind.
    pub const KIND: &'static str = "removal-request/v1";
}

/// A device's KeyPackages (TLS-serialized MLS `KeyPackage`s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadKeyPackages {
    /// One-time KeyPackages.
    pub key_packages: Vec<B64>,
    /// A last-resort KeyPackage, handed out (and kept) when the one-time ones are gone;
    /// replaces the previous one.
    #[serde(default)]
    pub last_resort: Option<B64>,
}

/// How many KeyPackages the server holds for the calling device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPackageStock {
    /// One-time KeyPackages left.
    pub remaining: u64,
    /// Whether a last-resort KeyPackage is held.
    pub last_resort: bool,
    /// Below this, the device should upload more.
    pub low_watermark: u64,
}

/// Claim one KeyPackage for every enrolled device of these people. Each person is
/// named once (a repeated name is refused with 400). A device hands out a limited
/// number of one-time KeyPackages per hour to all claimers together; past that the
/// claim gets its last-resort KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimKeyPackages {
    /// The people.
    pub users: Vec<UserName>,
}

/// One claimed KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimedKeyPackage {
    /// The device.
    pub device_id: DeviceId,
    /// Its owner.
    pub user: UserName,
    /// The KeyPackage.
    pub key_package: B64,
    /// Whether this is the device's last-resort KeyPackage.
    pub last_resort: bool,
}

/// A device that could not be claimed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unclaimable {
    /// The person.
    pub user: UserName,
    /// The device, when there is one.
    pub device_id: Option<DeviceId>,
    /// Why.
    pub reason: String,
}

/// Result of a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimedKeyPackages {
    /// Claimed KeyPackages, one per device.
    pub key_packages: Vec<ClaimedKeyPackage>,
    /// Devices or people without a KeyPackage.
    pub missing: Vec<Unclaimable>,
}

/// Register a new group; the caller is its only member at epoch 0. The server builds
/// its public view of the group (no secrets) from the GroupInfo and ratchet tree, and
/// from then on verifies every commit against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// The group id.
    pub group_id: GroupId,
    /// The mode a device must comply with to receive the group's messages.
    #[serde(default)]
    pub clearance: Option<ModeName>,
    /// The creator's signed GroupInfo of epoch 0 (TLS-serialized `MlsMessageOut`).
    pub group_info: B64,
    /// The ratchet tree of epoch 0 (TLS-serialized `RatchetTree`).
    pub ratchet_tree: B64,
}

/// A group as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupState {
    /// The group id.
    pub group_id: GroupId,
    /// Current epoch.
    pub epoch: u64,
    /// Required mode, if any.
    pub clearance: Option<ModeName>,
    /// Member devices, derived by the server from the verified commits (the
    /// organization certificates of the group's leaves).
    pub members: Vec<DeviceId>,
    /// The latest GroupInfo (TLS-serialized MLS message), verified to be of the
    /// current epoch, when the last committer sent one.
    pub group_info: Option<B64>,
}

/// A commit for the group's current epoch, in public framing. The server verifies it
/// against its public view of the group and derives the epoch, the new member list
/// and the Welcome's recipients from it; nothing about them is declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostCommit {
    /// The commit (TLS-serialized `MlsMessageOut` carrying a `PublicMessage`).
    pub commit: B64,
    /// The Welcome for the added members: required when the commit adds, refused
    /// otherwise; queued to the added devices only if the commit is accepted.
    #[serde(default)]
    pub welcome: Option<B64>,
    /// The GroupInfo of the new epoch, signed by the committer.
    #[serde(default)]
    pub group_info: Option<B64>,
}

/// 409 answer to a member's commit for an old epoch: catch up, then retry (a
/// non-member gets the same 404 as for a group that does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochConflict {
    /// Always `epoch_conflict`.
    pub code: String,
    /// For people.
    pub message: String,
    /// The group's current epoch.
    pub current_epoch: u64,
}

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The epoch the message was encrypted in.
    pub epoch: u64,
    /// The MLS `PrivateMessage` (TLS-serialized `MlsMessageOut`).
    pub message: B64,
    /// The sender's id for this message (1-64 characters); a retry with the same id is
    /// accepted once.
    pub client_id: String,
}

/// A message was queued for the group's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageAccepted {
    /// Whether this was a retry of a message already accepted.
    pub duplicate: bool,
    /// Number of devices it was queued for.
    pub recipients: u64,
}

/// What a queued item carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// An MLS commit.
    Commit,
    /// An MLS Welcome.
    Welcome,
    /// An MLS application message.
    Application,
    /// A signed [`RemovalRequest`] (payload: JSON of the [`SignedEnvelope`]).
    RemovalRequest,
}

impl ItemKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Commit => "commit",
            ItemKind::Welcome => "welcome",
            ItemKind::Application => "application",
            ItemKind::RemovalRequest => "removal_request",
        }
    }
}

impl std::str::FromStr for ItemKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "commit" => Ok(ItemKind::Commit),
            "welcome" => Ok(ItemKind::Welcome),
            "application" => Ok(ItemKind::Application),
            "removal_request" => Ok(ItemKind::RemovalRequest),
            other => Err(format!("unknown item kind {other:?}")),
        }
    }
}

/// One item of a device's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueItem {
    /// Position in the device's queue (grows; acknowledge with it).
    pub seq: u64,
    /// The group.
    pub group_id: GroupId,
    /// What it is.
    pub kind: ItemKind,
    /// The epoch the sender declared.
    pub epoch: u64,
    /// The sending device (`None` for the organization).
    pub sender: Option<DeviceId>,
    /// The payload.
    pub payload: B64,
    /// When the server accepted it.
    pub enqueued_at: Timestamp,
}

/// Messages the server holds back because the device lacks a group's clearance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldGroup {
    /// The group.
    pub group_id: GroupId,
    /// The mode it requires.
    pub clearance: ModeName,
    /// How many items are held.
    pub count: u64,
    /// Why, for people.
    pub reason: String,
}

/// The next items of the calling device's queue, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBatch {
    /// Deliverable items, oldest first.
    pub items: Vec<QueueItem>,
    /// Whether more deliverable items wait after these.
    pub more: bool,
    /// Groups whose items are held back.
    pub held: Vec<HeldGroup>,
    /// Items for this device that expired undelivered, since enrollment.
    pub expired_total: u64,
    /// The device's KeyPackage stock.
    pub key_packages: KeyPackageStock,
}

/// Acknowledge processed items; they leave the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// Sequence numbers processed.
    pub seqs: Vec<u64>,
}

/// Result of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckResult {
    /// How many items were removed.
    pub removed: u64,
}

/// An uploaded encrypted file. It belongs to the conversation it was uploaded into:
/// only that conversation's current members fetch it, and it counts against the
/// uploading device's storage quota until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStored {
    /// Its id.
    pub blob_id: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// When the server deletes it.
    pub expires_at: Timestamp,
}

/// A frame the server pushes on `GET /messenger/ws`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MessengerPush {
    /// The connection is authenticated and ready.
    Ready,
    /// New items may be waiting in the queue: fetch.
    QueueChanged,
    /// The device's KeyPackage stock is low: upload more.
    KeyPackagesLow {
        /// One-time KeyPackages left.
        remaining: u64,
    },
}

/// Limits clients need to know (sent with [`SessionGranted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessengerLimits {
    /// Largest file a client may upload (bytes, before encryption overhead).
    pub max_file_bytes: u64,
    /// Largest MLS message accepted.
    pub max_message_bytes: u64,
    /// How long undelivered items are kept.
    pub message_ttl_secs: u64,
}
