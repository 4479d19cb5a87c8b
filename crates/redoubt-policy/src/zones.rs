//! Secured zones on the phone, decided offline: verifying checkpoint codes against the
//! keys in the policy bundle, the persistent zone and lock state ([`ZoneState`]), and the
//! fail-closed decision of what holds ([`decide_with`]). For the server,
//! [`expected_mode`] says what a report's own zones and lock require.
//!
//! Time: the phone knows two clocks ([`PhoneTime`]): its **trusted floor** (a lower bound
//! on real time from the server's signed times, advanced by the boot clock, never by the
//! wall clock) and its **wall clock**, which the holder sets. Nothing counts as "not yet
//! expired" unless it is so against the floor; the wall clock may only make a decision
//! stricter. A wall clock behind the floor (beyond [`CODE_CLOCK_SKEW_SECS`]) means it was
//! set back: check-out codes are refused, check-in codes still count.
//!
//! Rules, all of them fail-closed:
//! - a code is accepted once, only inside its validity window (± [`CODE_CLOCK_SKEW_SECS`])
//!   judged at the later of floor and wall, only if its zone is listed in the bundle and
//!   one of that zone's checkpoints signed it; used nonces are kept until the floor is past
//!   their window;
//! - a check-out needs the phone to be inside, may not be older than its entry into the
//!   zone (however it entered: code, Wi-Fi or command; the entry time is trusted time),
//!   and is refused while the wall clock is behind the floor;
//! - a Wi-Fi sighting of a listed access point enters a zone; its absence never exits
//!   one. After a check-out the zone's access points then visible are ignored until a
//!   scan no longer shows them (the gate's own access point would pull the phone back in);
//! - a lock holds until an unlock issued later; an exit-zone command only takes the
//!   phone out of a zone it entered before the command was issued;
//! - command expiry is the server's to judge: a lock, an enter-zone or a wipe is never
//!   refused for its age; an unlock or an exit-zone (they relax) is refused once expired
//!   against the floor or the wall clock;
//! - a refused code or command changes nothing but the list of events to report.
//!
//! Pure: no IO, no clock; time (floor and wall) is a parameter.

use std::collections::{BTreeMap, BTreeSet};

use redoubt_proto::envelope::decode_public_key;
use redoubt_proto::zones::CodeFormatError;
use redoubt_proto::{
    Bssid, CheckpointCode, CheckpointName, CommandId, ComplianceReport, DeviceAction,
    DeviceCommand, DeviceEvent, DeviceEventKind, DeviceId, Direction, Evidence, Mode, PolicyBundle,
    Timestamp, ZoneName,
};
use serde::{Deserialize, Serialize};

use crate::bundle::Decision;
use crate::modes::{Effective, effective, lockdown};

/// How far the phone's clock may be off a code's validity window and still accept it.
pub const CODE_CLOCK_SKEW_SECS: i64 = 5;
/// How many done commands are remembered for de-duplication.
pub const DONE_COMMANDS_KEPT: usize = 64;

/// What the phone knows about the time when it decides: its trusted floor and its wall
/// clock. Built by the agent from its clock seam; the server, which trusts its own
/// clock, uses [`PhoneTime::trusted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneTime {
    /// A lower bound on real time: the newest server time seen, advanced by the boot
    /// clock. Only moves forward.
    pub floor: Timestamp,
    /// The phone's wall clock (set by the holder; may only make things stricter).
    pub wall: Timestamp,
}

impl PhoneTime {
    /// Floor and wall both at `t` (a clock that is trusted).
    pub const fn trusted(t: Timestamp) -> Self {
        PhoneTime { floor: t, wall: t }
    }

    /// The time against which expiry is judged: the later of floor and wall, so that an
    /// expiry by either clock counts (the wall clock can only make it stricter).
    pub fn latest(&self) -> Timestamp {
        self.floor.max(self.wall)
    }

    /// Whether the wall clock is behind the floor by more than [`CODE_CLOCK_SKEW_SECS`]:
    /// it was set back (or lost its setting), so it is not believed in the holder's favour.
    pub fn wall_behind(&self) -> bool {
        self.wall < self.floor.plus_secs(-CODE_CLOCK_SKEW_SECS)
    }
}

/// Why a checkpoint code was refused. A refused code changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a checkpoint code at all.
    #[error(transparent)]
    Format(#[from] CodeFormatError),
    /// The zone is not in this device's policy.
    #[error("the code is for zone {zone}, which this device's policy does not list")]
    UnknownZone {
        /// The zone the code names.
        zone: ZoneName,
    },
    /// The checkpoint is not one of the zone's.
    #[error("the code names checkpoint {checkpoint}, which is not a checkpoint of zone {zone}")]
    UnknownCheckpoint {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint the code names.
        checkpoint: CheckpointName,
    },
    /// The policy carries a key that is not an Ed25519 public key.
    #[error("the policy's key of checkpoint {checkpoint} in zone {zone} is not a valid key")]
    UnusableKey {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint.
        checkpoint: CheckpointName,
    },
    /// The signature is not the checkpoint's.
    #[error("the code is forged: it is not signed by checkpoint {checkpoint} of zone {zone}")]
    Forged {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint it claims.
        checkpoint: CheckpointName,
    },
    /// Past its validity.
    #[error(
        "the code of checkpoint {checkpoint} for zone {zone} expired at {not_after} (it is now {now})"
    )]
    Expired {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint.
        checkpoint: CheckpointName,
        /// End of validity.
        not_after: Timestamp,
        /// The phone's clock.
        now: Timestamp,
    },
    /// Before its validity.
    #[error(
        "the code of checkpoint {checkpoint} for zone {zone} is not valid before {not_before} (it is now {now})"
    )]
    NotYetValid {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint.
        checkpoint: CheckpointName,
        /// Start of validity.
        not_before: Timestamp,
        /// The phone's clock.
        now: Timestamp,
    },
    /// Accepted before: a code is used once.
    #[error("this code was already used (zone {zone}, checkpoint {checkpoint})")]
    Replayed {
        /// The zone.
        zone: ZoneName,
        /// The checkpoint.
        checkpoint: CheckpointName,
    },
    /// A check-out of a zone the phone is not inside.
    #[error("not inside zone {zone}: nothing to check out of")]
    NotInside {
        /// The zone.
        zone: ZoneName,
    },
    /// A check-out code older than the phone's entry into the zone.
    #[error(
        "the check-out code for zone {zone} (valid from {out_not_before}) is older than the phone's entry into the zone (at {entered}); scan a newer one"
    )]
    OlderThanEntry {
        /// The zone.
        zone: ZoneName,
        /// The check-out code's start of validity.
        out_not_before: Timestamp,
        /// When the phone entered (trusted time).
        entered: Timestamp,
    },
    /// A check-out while the phone's wall clock is behind its trusted time floor.
    #[error(
        "check-out refused: the phone's clock ({wall}) is behind the time it knows has passed ({floor}); it was set back, so the zone stays as it is until the clock is right"
    )]
    ClockBehind {
        /// The trusted floor.
        floor: Timestamp,
        /// The wall clock.
        wall: Timestamp,
    },
}

/// Decodes a checkpoint code and verifies it against the bundle: its zone is listed, its
/// checkpoint is one of that zone's, the checkpoint's key signed it, and `now` lies in
/// its validity window (± [`CODE_CLOCK_SKEW_SECS`]). The phone passes
/// [`PhoneTime::latest`]. Says nothing about replays or
/// whether the phone is inside: that is [`ZoneState::apply_code`]'s part.
pub fn verify_code(
    text: &str,
    bundle: &PolicyBundle,
    now: Timestamp,
) -> Result<CheckpointCode, CodeError> {
    let unverified = CheckpointCode::decode(text)?;
    let code = &unverified.code;
    let zone = bundle
        .zones
        .iter()
        .find(|z| z.name == code.zone)
        .ok_or_else(|| CodeError::UnknownZone {
            zone: code.zone.clone(),
        })?;
    let checkpoint = zone
        .checkpoints
        .iter()
        .find(|c| c.name == code.checkpoint)
        .ok_or_else(|| CodeError::UnknownCheckpoint {
            zone: code.zone.clone(),
            checkpoint: code.checkpoint.clone(),
        })?;
    let key = decode_public_key(&checkpoint.public_key).ok_or_else(|| CodeError::UnusableKey {
        zone: code.zone.clone(),
        checkpoint: code.checkpoint.clone(),
    })?;
    if !unverified.signed_by(&key) {
        return Err(CodeError::Forged {
            zone: code.zone.clone(),
            checkpoint: code.checkpoint.clone(),
        });
    }
    if now > code.not_after.plus_secs(CODE_CLOCK_SKEW_SECS) {
        return Err(CodeError::Expired {
            zone: code.zone.clone(),
            checkpoint: code.checkpoint.clone(),
            not_after: code.not_after,
            now,
        });
    }
    if now < code.not_before.plus_secs(-CODE_CLOCK_SKEW_SECS) {
        return Err(CodeError::NotYetValid {
            zone: code.zone.clone(),
            checkpoint: code.checkpoint.clone(),
            not_before: code.not_before,
            now,
        });
    }
    Ok(unverified.code)
}

/// The phone is inside a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    /// When it entered (or last checked in again), in trusted time: the floor at entry,
    /// or a check-in code's start of validity when that is later.
    pub since: Timestamp,
    /// How it knows.
    pub evidence: Evidence,
    /// The zone's mode when it entered; holds only if a later bundle no longer lists the zone.
    pub mode: Mode,
}

/// The lock in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockState {
    /// The lock command.
    pub id: CommandId,
    /// When the operator issued it.
    pub issued_at: Timestamp,
}

/// A command carried out, remembered so that a re-delivery has no new effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneCommand {
    /// The command.
    pub id: CommandId,
    /// Its action's name.
    pub action: String,
    /// When the operator issued it.
    pub issued_at: Timestamp,
    /// When the phone carried it out.
    pub done_at: Timestamp,
}

/// What a code or a Wi-Fi scan changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneChange {
    /// The phone entered the zone.
    Entered {
        /// The zone.
        zone: ZoneName,
        /// How.
        evidence: Evidence,
    },
    /// The phone was inside already and checked in again (newer evidence).
    Refreshed {
        /// The zone.
        zone: ZoneName,
        /// The new evidence.
        evidence: Evidence,
    },
    /// The phone left the zone.
    Left {
        /// The zone.
        zone: ZoneName,
        /// How.
        evidence: Evidence,
    },
}

impl ZoneChange {
    /// The zone concerned.
    pub fn zone(&self) -> &ZoneName {
        match self {
            ZoneChange::Entered { zone, .. }
            | ZoneChange::Refreshed { zone, .. }
            | ZoneChange::Left { zone, .. } => zone,
        }
    }
}

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEffect {
    /// Done before: nothing new happens.
    AlreadyDone,
    /// The device is locked (by this command, or by a lock issued later).
    Locked {
        /// The lock in force.
        by: CommandId,
    },
    /// An unlock issued after this lock was seen already: nothing changed.
    LockSuperseded,
    /// The lock was lifted.
    Unlocked,
    /// No lock issued before this unlock was in force: nothing changed.
    NothingToUnlock,
    /// The device left the zone.
    ExitedZone {
        /// The zone.
        zone: ZoneName,
    },
    /// The device entered (or stays in) the zone.
    EnteredZone {
        /// The zone.
        zone: ZoneName,
    },
    /// The device was not inside the zone, or entered it after the command was issued.
    NotInZone {
        /// The zone.
        zone: ZoneName,
    },
    /// The agent must destroy the device's keys and local data now.
    Wipe,
}

impl CommandEffect {
    /// For people and logs.
    pub fn describe(&self) -> String {
        match self {
            CommandEffect::AlreadyDone => "already carried out; nothing new happens".into(),
            CommandEffect::Locked { by } => format!("locked (lock {by} in force)"),
            CommandEffect::LockSuperseded => {
                "not locked: an unlock issued later was already received".into()
            }
            CommandEffect::Unlocked => "unlocked".into(),
            CommandEffect::NothingToUnlock => "no lock issued earlier was in force".into(),
            CommandEffect::ExitedZone { zone } => format!("left zone {zone}"),
            CommandEffect::EnteredZone { zone } => format!("entered zone {zone}"),
            CommandEffect::NotInZone { zone } => format!(
                "not inside zone {zone} since before the command was issued; nothing changed"
            ),
            CommandEffect::Wipe => "wiping the device".into(),
        }
    }
}

/// An event as the zone state stores it. Not [`DeviceEvent`] itself: its flattened
/// form repeats the `id` key for command events, which JSON cannot read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEvent {
    id: String,
    at: Timestamp,
    what: DeviceEventKind,
}

/// The phone's persistent zone and lock state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneState {
    /// The zones the phone is inside.
    inside: BTreeMap<ZoneName, Presence>,
    /// Nonces of accepted codes, with their code's end of validity.
    used_nonces: BTreeMap<String, Timestamp>,
    /// Per zone, access points ignored since a check-out until a scan no longer shows them.
    suppressed: BTreeMap<ZoneName, BTreeSet<Bssid>>,
    /// The access points the last scan showed.
    last_visible: BTreeSet<Bssid>,
    /// The lock in force.
    lock: Option<LockState>,
    /// When the newest unlock seen was issued.
    newest_unlock: Option<Timestamp>,
    /// The most recent commands carried out, oldest first.
    done: Vec<DoneCommand>,
    /// Events not yet carried by a report, oldest first.
    unreported: Vec<StoredEvent>,
}

fn zone_mode(bundle: &PolicyBundle, zone: &ZoneName) -> Option<Mode> {
    let z = bundle.zones.iter().find(|z| &z.name == zone)?;
    bundle.modes.iter().find(|m| m.name == z.mode).cloned()
}

impl ZoneState {
    /// The zones the phone is inside.
    pub fn inside(&self) -> &BTreeMap<ZoneName, Presence> {
        &self.inside
    }

    /// The lock in force.
    pub fn lock(&self) -> Option<&LockState> {
        self.lock.as_ref()
    }

    /// The command that locked the device, if it is locked.
    pub fn locked_by(&self) -> Option<&CommandId> {
        self.lock.as_ref().map(|l| &l.id)
    }

    /// The commands carried out recently, oldest first.
    pub fn done(&self) -> &[DoneCommand] {
        &self.done
    }

    /// The ids of the `n` most recent commands carried out, oldest first.
    pub fn recent_commands(&self, n: usize) -> Vec<CommandId> {
        let skip = self.done.len().saturating_sub(n);
        self.done[skip..].iter().map(|d| d.id.clone()).collect()
    }

    /// Events not yet reported, oldest first.
    pub fn unreported(&self) -> Vec<DeviceEvent> {
        self.unreported
            .iter()
            .map(|e| DeviceEvent {
                id: e.id.clone(),
                at: e.at,
                kind: e.what.clone(),
            })
            .collect()
    }

    /// How many events wait for a report.
    pub fn unreported_len(&self) -> usize {
        self.unreported.len()
    }

    /// Forgets the `n` oldest unreported events (a report that carries them is safely
    /// queued).
    pub fn mark_reported(&mut self, n: usize) {
        let n = n.min(self.unreported.len());
        self.unreported.drain(..n);
    }

    /// The access points the last scan showed.
    pub fn last_visible(&self) -> &BTreeSet<Bssid> {
        &self.last_visible
    }

    /// Access points ignored for `zone` since a check-out.
    pub fn suppressed(&self, zone: &ZoneName) -> Option<&BTreeSet<Bssid>> {
        self.suppressed.get(zone)
    }

    fn event(&mut self, id: String, at: Timestamp, kind: DeviceEventKind) {
        self.unreported.push(StoredEvent { id, at, what: kind });
    }

    /// Adds an event to report that no method here records (e.g. a command whose
    /// signature did not verify, so it never reached [`ZoneState::apply_command`]).
    pub fn push_event(&mut self, id: String, at: Timestamp, kind: DeviceEventKind) {
        self.event(id, at, kind);
    }

    /// Checks a code against the bundle and this state without changing anything.
    fn check_code(
        &self,
        text: &str,
        bundle: &PolicyBundle,
        now: PhoneTime,
    ) -> Result<CheckpointCode, CodeError> {
        let code = verify_code(text, bundle, now.latest())?;
        if self.used_nonces.contains_key(&code.nonce) {
            return Err(CodeError::Replayed {
                zone: code.zone,
                checkpoint: code.checkpoint,
            });
        }
        if code.direction == Direction::Out {
            let presence = self
                .inside
                .get(&code.zone)
                .ok_or_else(|| CodeError::NotInside {
                    zone: code.zone.clone(),
                })?;
            // The gate's and the server's clocks may differ by the skew; no more.
            if code.not_before < presence.since.plus_secs(-CODE_CLOCK_SKEW_SECS) {
                return Err(CodeError::OlderThanEntry {
                    zone: code.zone,
                    out_not_before: code.not_before,
                    entered: presence.since,
                });
            }
            if now.wall_behind() {
                return Err(CodeError::ClockBehind {
                    floor: now.floor,
                    wall: now.wall,
                });
            }
        }
        Ok(code)
    }

    /// Applies a scanned checkpoint code: a check-in enters the zone (or renews the
    /// evidence when inside already), a check-out leaves it. The code's nonce is
    /// recorded only on success, and kept until the floor is past the code's window.
    /// Records a `zone-in` / `zone-out` event, or on refusal a `code-refused` event and
    /// nothing else. Events are stamped with the wall clock (what the phone showed).
    pub fn apply_code(
        &mut self,
        text: &str,
        bundle: &PolicyBundle,
        time: PhoneTime,
        event_id: String,
    ) -> Result<ZoneChange, CodeError> {
        let now = time.wall;
        let code = match self.check_code(text, bundle, time) {
            Ok(c) => c,
            Err(e) => {
                self.event(
                    event_id,
                    now,
                    DeviceEventKind::CodeRefused {
                        reason: e.to_string(),
                    },
                );
                return Err(e);
            }
        };
        let skew = CODE_CLOCK_SKEW_SECS;
        self.used_nonces
            .retain(|_, not_after| not_after.plus_secs(skew) >= time.floor);
        self.used_nonces.insert(code.nonce.clone(), code.not_after);
        let evidence = Evidence::Code {
            checkpoint: code.checkpoint.clone(),
            nonce: code.nonce.clone(),
            not_before: code.not_before,
        };
        let zone = code.zone;
        let change = match code.direction {
            Direction::In => {
                let mode = zone_mode(bundle, &zone).unwrap_or_else(lockdown);
                let was_inside = self
                    .inside
                    .insert(
                        zone.clone(),
                        Presence {
                            since: time.floor.max(code.not_before),
                            evidence: evidence.clone(),
                            mode,
                        },
                    )
                    .is_some();
                self.suppressed.remove(&zone);
                self.event(
                    event_id,
                    now,
                    DeviceEventKind::ZoneIn {
                        zone: zone.clone(),
                        evidence: evidence.clone(),
                    },
                );
                if was_inside {
                    ZoneChange::Refreshed { zone, evidence }
                } else {
                    ZoneChange::Entered { zone, evidence }
                }
            }
            Direction::Out => {
                self.inside.remove(&zone);
                let listed: BTreeSet<Bssid> = bundle
                    .zones
                    .iter()
                    .filter(|z| z.name == zone)
                    .flat_map(|z| z.wifi_bssids.iter().cloned())
                    .collect();
                let visible: BTreeSet<Bssid> =
                    self.last_visible.intersection(&listed).cloned().collect();
                if visible.is_empty() {
                    self.suppressed.remove(&zone);
                } else {
                    self.suppressed.insert(zone.clone(), visible);
                }
                self.event(
                    event_id,
                    now,
                    DeviceEventKind::ZoneOut {
                        zone: zone.clone(),
                        evidence: evidence.clone(),
                    },
                );
                ZoneChange::Left { zone, evidence }
            }
        };
        Ok(change)
    }

    /// Takes a Wi-Fi scan into account: a listed access point of a zone that is visible
    /// and not suppressed enters that zone. Absence never exits. Suppressed access points
    /// that the scan no longer shows stop being suppressed. Without a bundle, no zone is
    /// entered (none is listed) but the scan is still remembered. The entry time is the
    /// floor.
    pub fn observe_wifi(
        &mut self,
        visible: &[Bssid],
        bundle: Option<&PolicyBundle>,
        time: PhoneTime,
        id_gen: &mut dyn FnMut() -> String,
    ) -> Vec<ZoneChange> {
        let now = time.wall;
        let visible: BTreeSet<Bssid> = visible.iter().cloned().collect();
        for set in self.suppressed.values_mut() {
            set.retain(|b| visible.contains(b));
        }
        self.suppressed.retain(|_, set| !set.is_empty());
        let mut changes = Vec::new();
        let zones = bundle.map(|b| b.zones.as_slice()).unwrap_or_default();
        for zone in zones {
            if self.inside.contains_key(&zone.name) {
                continue;
            }
            let suppressed = self.suppressed.get(&zone.name);
            let Some(bssid) = zone
                .wifi_bssids
                .iter()
                .filter(|b| visible.contains(*b) && !suppressed.is_some_and(|s| s.contains(*b)))
                .min()
            else {
                continue;
            };
            let mode = bundle
                .and_then(|b| zone_mode(b, &zone.name))
                .unwrap_or_else(lockdown);
            let evidence = Evidence::Wifi {
                bssid: bssid.clone(),
            };
            self.inside.insert(
                zone.name.clone(),
                Presence {
                    since: time.floor,
                    evidence: evidence.clone(),
                    mode,
                },
            );
            self.event(
                id_gen(),
                now,
                DeviceEventKind::ZoneIn {
                    zone: zone.name.clone(),
                    evidence: evidence.clone(),
                },
            );
            changes.push(ZoneChange::Entered {
                zone: zone.name.clone(),
                evidence,
            });
        }
        self.last_visible = visible;
        changes
    }

    fn refuse_command(
        &self,
        cmd: &DeviceCommand,
        device: &DeviceId,
        time: PhoneTime,
    ) -> Option<String> {
        if &cmd.device_id != device {
            return Some(format!(
                "command {} is for device {}, not for this device {device}",
                cmd.id, cmd.device_id
            ));
        }
        if self.done.iter().any(|d| d.id == cmd.id) {
            return None;
        }
        // Expiry is the server's to judge: it only sends a command before its expiry.
        // A command that restricts (lock, enter-zone) or destroys (wipe) is never
        // refused for its age, whatever the phone's clock says. One that relaxes
        // (unlock, exit-zone) is refused once expired by the floor, or by the wall clock
        // (which may only make things stricter).
        let relaxes = matches!(
            cmd.action,
            DeviceAction::Unlock | DeviceAction::ExitZone { .. }
        );
        let now = time.latest();
        if relaxes && now > cmd.expires_at {
            return Some(format!(
                "command {} ({}) expired at {} (it is now {now})",
                cmd.id,
                cmd.action.name(),
                cmd.expires_at
            ));
        }
        if cmd.action == DeviceAction::Revoke {
            return Some(format!(
                "command {} (revoke) is carried out by the server, not by the device",
                cmd.id
            ));
        }
        None
    }

    /// Carries out a command whose organization signature was verified already.
    /// Refuses one for another device, an expired unlock or exit-zone, and `revoke`
    /// (server side only); a lock or a wipe is never refused for its age;
    /// a command done before is a success without new effect. Records a
    /// `command-done` event (and `zone-out` for an exit), or on refusal a
    /// `command-refused` event and nothing else.
    pub fn apply_command(
        &mut self,
        cmd: &DeviceCommand,
        device: &DeviceId,
        bundle: Option<&PolicyBundle>,
        time: PhoneTime,
        id_gen: &mut dyn FnMut() -> String,
    ) -> Result<CommandEffect, String> {
        let now = time.wall;
        if let Some(reason) = self.refuse_command(cmd, device, time) {
            self.event(
                id_gen(),
                now,
                DeviceEventKind::CommandRefused {
                    command: Some(cmd.id.clone()),
                    reason: reason.clone(),
                },
            );
            return Err(reason);
        }
        if self.done.iter().any(|d| d.id == cmd.id) {
            return Ok(CommandEffect::AlreadyDone);
        }
        let effect = match &cmd.action {
            DeviceAction::Lock => {
                if self.newest_unlock.is_some_and(|u| u > cmd.issued_at) {
                    CommandEffect::LockSuperseded
                } else {
                    if self
                        .lock
                        .as_ref()
                        .is_none_or(|l| l.issued_at <= cmd.issued_at)
                    {
                        self.lock = Some(LockState {
                            id: cmd.id.clone(),
                            issued_at: cmd.issued_at,
                        });
                    }
                    CommandEffect::Locked {
                        by: self
                            .lock
                            .as_ref()
                            .map_or_else(|| cmd.id.clone(), |l| l.id.clone()),
                    }
                }
            }
            DeviceAction::Unlock => {
                self.newest_unlock = Some(
                    self.newest_unlock
                        .map_or(cmd.issued_at, |u| u.max(cmd.issued_at)),
                );
                if self
                    .lock
                    .as_ref()
                    .is_some_and(|l| l.issued_at < cmd.issued_at)
                {
                    self.lock = None;
                    CommandEffect::Unlocked
                } else {
                    CommandEffect::NothingToUnlock
                }
            }
            DeviceAction::ExitZone { zone } => {
                if self
                    .inside
                    .get(zone)
                    .is_some_and(|p| p.since < cmd.issued_at)
                {
                    self.inside.remove(zone);
                    // As after a check-out: the access points in sight now do not take
                    // the phone straight back in; they must first go out of sight.
                    if self.last_visible.is_empty() {
                        self.suppressed.remove(zone);
                    } else {
                        self.suppressed
                            .insert(zone.clone(), self.last_visible.clone());
                    }
                    self.event(
                        id_gen(),
                        now,
                        DeviceEventKind::ZoneOut {
                            zone: zone.clone(),
                            evidence: Evidence::Command {
                                command: cmd.id.clone(),
                            },
                        },
                    );
                    CommandEffect::ExitedZone { zone: zone.clone() }
                } else {
                    CommandEffect::NotInZone { zone: zone.clone() }
                }
            }
            DeviceAction::EnterZone { zone } => {
                // Entered now (trusted time), or never earlier than the command was
                // issued: a check-out code older than this entry cannot undo it.
                let since = time.floor.max(cmd.issued_at);
                let evidence = Evidence::Command {
                    command: cmd.id.clone(),
                };
                let mode = bundle
                    .and_then(|b| zone_mode(b, zone))
                    .unwrap_or_else(lockdown);
                self.inside.insert(
                    zone.clone(),
                    Presence {
                        since,
                        evidence: evidence.clone(),
                        mode,
                    },
                );
                self.suppressed.remove(zone);
                self.event(
                    id_gen(),
                    now,
                    DeviceEventKind::ZoneIn {
                        zone: zone.clone(),
                        evidence,
                    },
                );
                CommandEffect::EnteredZone { zone: zone.clone() }
            }
            DeviceAction::Wipe => CommandEffect::Wipe,
            // Refused above.
            DeviceAction::Revoke => return Err("revoke is carried out by the server".into()),
        };
        self.done.push(DoneCommand {
            id: cmd.id.clone(),
            action: cmd.action.name().to_owned(),
            issued_at: cmd.issued_at,
            done_at: now,
        });
        let excess = self.done.len().saturating_sub(DONE_COMMANDS_KEPT);
        self.done.drain(..excess);
        self.event(
            id_gen(),
            now,
            DeviceEventKind::CommandDone {
                command: cmd.id.clone(),
                action: cmd.action.name().to_owned(),
            },
        );
        Ok(effect)
    }
}

fn lockdown_decision(version: u64, reason: String, zones: &ZoneState) -> Decision {
    Decision {
        mode: effective(&[lockdown()]),
        bundle_version: version,
        fallback_reason: Some(reason),
        zones: zones.inside.keys().cloned().collect(),
        locked_by: zones.locked_by().cloned(),
    }
}

/// Decides what holds from the bundle held and the zone state, fail-closed: without a
/// bundle, once it expired, or when its base mode is missing, `lockdown`. Otherwise the
/// most restrictive of the base mode, the mode of every zone the phone is inside (the
/// bundle's definition when it lists the zone, else the mode noted at entry) and
/// `lockdown` while a lock holds. The bundle has expired when it has by the floor or by
/// the wall clock.
pub fn decide_with(bundle: Option<&PolicyBundle>, zones: &ZoneState, time: PhoneTime) -> Decision {
    let Some(bundle) = bundle else {
        return lockdown_decision(0, "no policy bundle: lockdown".into(), zones);
    };
    if bundle.expires_at <= time.latest() {
        return lockdown_decision(
            bundle.version,
            format!(
                "policy bundle {} expired at {}: lockdown",
                bundle.version, bundle.expires_at
            ),
            zones,
        );
    }
    let Ok(mut active) = crate::bundle::assigned_modes(bundle) else {
        return lockdown_decision(
            bundle.version,
            "assigned mode missing from bundle: lockdown".into(),
            zones,
        );
    };
    for (zone, presence) in &zones.inside {
        active.push(zone_mode(bundle, zone).unwrap_or_else(|| presence.mode.clone()));
    }
    if zones.lock.is_some() {
        active.push(lockdown());
    }
    Decision {
        mode: effective(&active),
        bundle_version: bundle.version,
        fallback_reason: None,
        zones: zones.inside.keys().cloned().collect(),
        locked_by: zones.locked_by().cloned(),
    }
}

/// What a report's own zones and lock require under `bundle` (for the server): the
/// base mode, the mode of each zone the report says the phone is inside (`lockdown` for
/// a zone the bundle does not list, fail-closed), and `lockdown` when the report names
/// a lock. An expired bundle, or one without its base mode, means `lockdown`.
pub fn expected_mode(
    bundle: &PolicyBundle,
    report: &ComplianceReport,
    now: Timestamp,
) -> Effective {
    if bundle.expires_at <= now {
        return effective(&[lockdown()]);
    }
    let Ok(mut active) = crate::bundle::assigned_modes(bundle) else {
        return effective(&[lockdown()]);
    };
    for zone in &report.zones {
        active.push(zone_mode(bundle, zone).unwrap_or_else(lockdown));
    }
    if report.locked_by.is_some() {
        active.push(lockdown());
    }
    effective(&active)
}

#[cfg(test)]
mod tests;
