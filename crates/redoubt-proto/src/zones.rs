//! Secured zones, checkpoint codes, device commands, device events and audit entries:
//! the vocabulary of issue 4 (zones, lock and wipe, tamper-evident audit).
//!
//! A **checkpoint code** is what a gate shows as a QR code and a phone's scanner hands
//! to the agent: `RDZ1.<base64url(JSON payload)>.<base64url(Ed25519 signature)>`, the
//! signature made with the checkpoint's own key over
//! `"redoubt-checkpoint-code-v1\0" || payload`. The checkpoint's public key travels in
//! the device's signed policy bundle, so the agent verifies a code offline.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{DeviceId, IdError, ModeName, id_error, string_id};
use crate::time_fmt::Timestamp;

fn slug_ok(s: &str) -> bool {
    (1..=48).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

const SLUG_RULE: &str = "use 1-48 characters a-z, 0-9 and '-', starting with a letter";

string_id!(
    /// A secured zone's name: 1–48 characters `a-z`, `0-9`, `-`, starting with a letter.
    ZoneName,
    "zone name",
    |s| if slug_ok(s) { Ok(()) } else { Err(SLUG_RULE) }
);
string_id!(
    /// A checkpoint's name within its zone (same rules as a zone name).
    CheckpointName,
    "checkpoint name",
    |s| if slug_ok(s) { Ok(()) } else { Err(SLUG_RULE) }
);

/// A Wi-Fi access point's BSSID, normalized to lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bssid(String);

impl Bssid {
    /// The BSSID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Bssid {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(id_error(
                "BSSID",
                s,
                "six hex octets separated by ':' (aa:bb:cc:dd:ee:ff)",
            ));
        }
        Ok(Bssid(parts.join(":").to_ascii_lowercase()))
    }
}

impl fmt::Display for Bssid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Bssid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bssid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A checkpoint as the phone knows it: its name and the public key its codes verify with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointKey {
    /// The checkpoint's name.
    pub name: CheckpointName,
    /// Base64 of its Ed25519 public key.
    pub public_key: String,
}

/// A zone as it travels in a policy bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonePolicy {
    /// The zone.
    pub name: ZoneName,
    /// The mode that holds inside (must be one of the bundle's modes).
    pub mode: ModeName,
    /// Its checkpoints and their verification keys.
    pub checkpoints: Vec<CheckpointKey>,
    /// Access points whose presence means "inside"; empty means codes only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wifi_bssids: Vec<Bssid>,
}

/// Which way a checkpoint code lets a phone pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Entering the zone.
    In,
    /// Leaving the zone.
    Out,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

impl FromStr for Direction {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s {
            "in" => Ok(Direction::In),
            "out" => Ok(Direction::Out),
            _ => Err(id_error("direction", s, "in or out")),
        }
    }
}

/// What a checkpoint code says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCode {
    /// The zone.
    pub zone: ZoneName,
    /// The checkpoint that issued it (whose key signed it).
    pub checkpoint: CheckpointName,
    /// In or out.
    pub direction: Direction,
    /// Valid from.
    pub not_before: Timestamp,
    /// Valid until (inclusive).
    pub not_after: Timestamp,
    /// Random, base64url; a code is accepted once.
    pub nonce: String,
}

/// Prefix of an encoded checkpoint code.
pub const CODE_PREFIX: &str = "RDZ1.";
const CODE_DOMAIN: &[u8] = b"redoubt-checkpoint-code-v1\0";
/// Longest encoded code accepted (a QR code's worth).
pub const MAX_CODE_LEN: usize = 1024;

fn code_message(payload: &[u8]) -> Vec<u8> {
    let mut m = CODE_DOMAIN.to_vec();
    m.extend_from_slice(payload);
    m
}

/// Why a code could not even be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a checkpoint code: {0}")]
pub struct CodeFormatError(pub &'static str);

/// A code taken apart but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedCode {
    /// What it claims.
    pub code: CheckpointCode,
    payload: Vec<u8>,
    signature: Signature,
}

impl UnverifiedCode {
    /// Whether `key` made the signature.
    pub fn signed_by(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(&code_message(&self.payload), &self.signature)
            .is_ok()
    }
}

impl CheckpointCode {
    /// Signs and encodes the code with the checkpoint's key.
    pub fn encode(&self, key: &SigningKey) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let sig = key.sign(&code_message(&payload));
        format!(
            "{CODE_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }

    /// Takes an encoded code apart (no signature check yet).
    pub fn decode(s: &str) -> Result<UnverifiedCode, CodeFormatError> {
        let s = s.trim();
        if s.len() > MAX_CODE_LEN {
            return Err(CodeFormatError("too long"));
        }
        let rest = s
            .strip_prefix(CODE_PREFIX)
            .ok_or(CodeFormatError("it does not start with RDZ1."))?;
        let (p, sig) = rest
            .split_once('.')
            .ok_or(CodeFormatError("the signature part is missing"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| CodeFormatError("the payload is not base64url"))?;
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CodeFormatError("the signature is malformed"))?;
        let code: CheckpointCode = serde_json::from_slice(&payload)
            .map_err(|_| CodeFormatError("the payload is not a checkpoint code"))?;
        Ok(UnverifiedCode {
            code,
            payload,
            signature: Signature::from_bytes(&sig),
        })
    }
}

/// A command's random id: `cmd_` + 24 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(String);

impl CommandId {
    /// Builds a command id from 12 random bytes.
    pub fn from_random(bytes: [u8; 12]) -> Self {
        CommandId(format!("cmd_{}", hex::encode(bytes)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommandId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok = s.strip_prefix("cmd_").is_some_and(|h| {
            h.len() == 24
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(CommandId(s.to_owned()))
        } else {
            Err(id_error(
                "command id",
                s,
                "must be cmd_ followed by 24 lowercase hex digits",
            ))
        }
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for CommandId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an operator asks of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum DeviceAction {
    /// Force `lockdown` until an `unlock` issued later.
    Lock,
    /// Lift a lock issued earlier.
    Unlock,
    /// Destroy the device's keys and local data; the server then revokes it.
    Wipe,
    /// Stop the device's credentials at once and remove it from every conversation
    /// (server side; needs nothing from the phone).
    Revoke,
    /// Take the device out of a zone it entered before this command was issued.
    ExitZone {
        /// The zone.
        zone: ZoneName,
    },
    /// Put the device into a zone (as if it had checked in), e.g. for a phone that came
    /// in without scanning a code. Restricts, so it is never refused for its age.
    EnterZone {
        /// The zone.
        zone: ZoneName,
    },
}

impl DeviceAction {
    /// Short name for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceAction::Lock => "lock",
            DeviceAction::Unlock => "unlock",
            DeviceAction::Wipe => "wipe",
            DeviceAction::Revoke => "revoke",
            DeviceAction::ExitZone { .. } => "exit-zone",
            DeviceAction::EnterZone { .. } => "enter-zone",
        }
    }
}

/// A command as the phone receives it, signed by the organization key inside a
/// [`crate::SignedEnvelope`] of kind [`DeviceCommand::KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]

pub struct DeviceCommand {
    /// The command's id.
    pub id: CommandId,
    /// The only device it is for.
    pub device_id: DeviceId,
    /// What to do.
    #[serde(flatten)]
    pub action: DeviceAction,
    /// When the operator issued it; orders lock against unlock.
    pub issued_at: Timestamp,
    /// The phone refuses it after this.
    pub expires_at: Timestamp,
}

impl DeviceCommand {
    /// Envelope kind of a signed device command.
    pub const KIND: &'static str = "device-command/v1";
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Stored; not yet sent to the phone.
    Queued,
    /// Sent over the phone's session.
    Delivered,
    /// The phone verified it and stored it durably.
    Acknowledged,
    /// The phone's next signed report shows the effect.
    Verified,
    /// Not acknowledged before its expiry.
    Expired,
    /// The phone refused it, or it was superseded.
    Failed,
}

impl CommandState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Delivered => "delivered",
            CommandState::Acknowledged => "acknowledged",
            CommandState::Verified => "verified",
            CommandState::Expired => "expired",
            CommandState::Failed => "failed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            CommandState::Queued,
            CommandState::Delivered,
            CommandState::Acknowledged,
            CommandState::Verified,
            CommandState::Expired,
            CommandState::Failed,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// Whether nothing more will happen to the command.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Verified | CommandState::Expired | CommandState::Failed
        )
    }
}

impl fmt::Display for CommandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the phone learned it is inside or outside a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum Evidence {
    /// A signed checkpoint code.
    Code {
        /// The checkpoint that signed it.
        checkpoint: CheckpointName,
        /// The code's nonce.
        nonce: String,
        /// When the code became valid (the signed time of the instruction).
        not_before: Timestamp,
    },
    /// A listed access point was seen.
    Wifi {
        /// The access point.
        bssid: Bssid,
    },
    /// An operator's signed `exit-zone` or `enter-zone` command.
    Command {
        /// The command.
        command: CommandId,
    },
}

/// Something that happened on the phone, carried in its next signed report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum DeviceEventKind {
    /// The phone entered a zone.
    ZoneIn {
        /// The zone.
        zone: ZoneName,
        /// How.
        #[serde(flatten)]
        evidence: Evidence,
    },
    /// The phone left a zone.
    ZoneOut {
        /// The zone.
        zone: ZoneName,
        /// How.
        #[serde(flatten)]
        evidence: Evidence,
    },
    /// A checkpoint code was refused (nothing changed).
    CodeRefused {
        /// Why, for people.
        reason: String,
    },
    /// A command was carried out.
    CommandDone {
        /// The command.
        command: CommandId,
        /// Its action's name.
        action: String,
    },
    /// A command was refused (nothing changed).
    CommandRefused {
        /// The command, when it could be read.
        command: Option<CommandId>,
        /// Why.
        reason: String,
    },
}

/// One event, with an id the server de-duplicates on and the phone's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]

pub struct DeviceEvent {
    /// Random, hex; unique per device.
    pub id: String,
    /// When it happened (the phone's clock).
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: DeviceEventKind,
}

/// One row of the tamper-evident audit log as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the server recorded it.
    pub at: Timestamp,
    /// Who: `admin:NAME`, `device:ID`, or `server`.
    pub actor: String,
    /// From where: the client's address, or empty.
    pub source: String,
    /// What, e.g. `device.lock`, `zone.in`, `compliance.changed`.
    pub action: String,
    /// The device concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Details (JSON object, compact).
    pub detail: serde_json::Value,
    /// Hex SHA-256 of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

/// The newest entry of the log, signed by the organization key inside a
/// [`crate::SignedEnvelope`] of kind [`AuditHead::KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// Sequence number of the newest entry (0: empty log).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When the server signed this head.
    pub signed_at: Timestamp,
}

impl AuditHead {
    /// Envelope kind of a signed audit head.
    pub const KIND: &'static str = "audit-head/v1";
}

/// A whole exported log: entries and the signed head, verifiable offline with the
/// organization's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    /// Format marker, `redoubt-audit-export/v1`.
    pub format: String,
    /// Base64 of the organization's Ed25519 public key (informative: verify against a
    /// key obtained independently).
    pub organization_key: String,
    /// Every entry, in order.
    pub entries: Vec<AuditEntry>,
    /// The signed head.
    pub head: crate::SignedEnvelope,
}

impl AuditExport {
    /// The `format` value.
    pub const FORMAT: &'static str = "redoubt-audit-export/v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> CheckpointCode {
        CheckpointCode {
            zone: "lab".parse().unwrap(),
            checkpoint: "north-gate".parse().unwrap(),
            direction: Direction::In,
            not_before: Timestamp(100),
            not_after: Timestamp(130),
            nonce: "abc".into(),
        }
    }

    #[test]
    fn codes_round_trip_and_detect_tampering() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let s = code().encode(&key);
        assert!(s.starts_with(CODE_PREFIX));
        let u = CheckpointCode::decode(&s).unwrap();
        assert_eq!(u.code, code());
        assert!(u.signed_by(&key.verifying_key()));
        assert!(!u.signed_by(&SigningKey::from_bytes(&[4; 32]).verifying_key()));
        let mut other = code();
        other.direction = Direction::Out;
        let forged_payload = other.encode(&SigningKey::from_bytes(&[4; 32]));
        let (_, sig) = s.rsplit_once('.').unwrap();
        let (head, _) = forged_payload.rsplit_once('.').unwrap();
        let spliced = CheckpointCode::decode(&format!("{head}.{sig}")).unwrap();
        assert!(!spliced.signed_by(&key.verifying_key()));
        for bad in ["", "RDZ1.", "RDZ2.a.b", "RDZ1.!!.!!", "RDZ1.e30.AAAA"] {
            assert!(CheckpointCode::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_bssids_are_validated() {
        assert_eq!(
            "AA-BB-cc-dd-ee-0F".parse::<Bssid>().unwrap().as_str(),
            "aa:bb:cc:dd:ee:0f"
        );
        assert!("aa:bb:cc:dd:ee".parse::<Bssid>().is_err());
        assert!("Lab".parse::<ZoneName>().is_err());
        assert!("cmd_0123456789abcdef01234567".parse::<CommandId>().is_ok());
        assert!("cmd_xyz".parse::<CommandId>().is_err());
    }

    #[test]
    fn commands_and_events_serialize_flat() {
        let c = DeviceCommand {
            id: CommandId::from_random([1; 12]),
            device_id: DeviceId::from_random([2; 12]),
            action: DeviceAction::ExitZone {
                zone: "lab".parse().unwrap(),
            },
            issued_at: Timestamp(1),
            expires_at: Timestamp(2),
        };
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["action"], "exit-zone");
        assert_eq!(j["zone"], "lab");
        assert_eq!(serde_json::from_value::<DeviceCommand>(j).unwrap(), c);
        let e = DeviceEvent {
            id: "01".into(),
            at: Timestamp(5),
            kind: DeviceEventKind::ZoneIn {
                zone: "lab".parse().unwrap(),
                evidence: Evidence::Wifi {
                    bssid: "aa:bb:cc:dd:ee:ff".parse().unwrap(),
                },
            },
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["event"], "zone-in");
        assert_eq!(j["via"], "wifi");
        assert_eq!(serde_json::from_value::<DeviceEvent>(j).unwrap(), e);
    }

    #[test]
    fn every_event_kind_round_trips() {
        let cmd = CommandId::from_random([3; 12]);
        let kinds = [
            DeviceEventKind::ZoneIn {
                zone: "lab".parse().unwrap(),
                evidence: Evidence::Code {
                    checkpoint: "main".parse().unwrap(),
                    nonce: "ab".into(),
                    not_before: Timestamp(4),
                },
            },
            DeviceEventKind::ZoneOut {
                zone: "lab".parse().unwrap(),
                evidence: Evidence::Command {
                    command: cmd.clone(),
                },
            },
            DeviceEventKind::CodeRefused {
                reason: "expired".into(),
            },
            DeviceEventKind::CommandDone {
                command: cmd.clone(),
                action: "wipe".into(),
            },
            DeviceEventKind::CommandRefused {
                command: Some(cmd),
                reason: "expired".into(),
            },
            DeviceEventKind::CommandRefused {
                command: None,
                reason: "bad signature".into(),
            },
        ];
        for kind in kinds {
            let e = DeviceEvent {
                id: "0a".into(),
                at: Timestamp(9),
                kind,
            };
            let text = serde_json::to_string(&e).unwrap();
            let back: DeviceEvent = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{text} does not read back: {err}"));
            assert_eq!(back, e);
        }
    }
}
