use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use redoubt_proto::envelope::encode_public_key;
use redoubt_proto::{
    Assignments, CapabilityRules, CheckpointKey, NetworkReach, Rule, SignedEnvelope, ZonePolicy,
};

use super::*;
use crate::bundle::verify_bundle;
use crate::modes::{at_least_as_strict, presets};

const T0: Timestamp = Timestamp(1_800_000_000);

/// Floor and wall clock agree at `t`.
fn at(t: Timestamp) -> PhoneTime {
    PhoneTime::trusted(t)
}

fn org() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn device() -> DeviceId {
    DeviceId::from_random([1; 12])
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn bssid(n: u8) -> Bssid {
    name(&format!("02:00:00:00:00:{n:02x}"))
}

/// Standard but NFC off: not comparable with secure-site (which allows NFC).
fn vault_mode() -> Mode {
    let mut caps = CapabilityRules::all(Rule::Allow);
    caps.nfc = Rule::Deny;
    Mode {
        name: name("vault-mode"),
        description: String::new(),
        network: NetworkReach::Open,
        capabilities: caps,
        app_allowlist: None,
    }
}

fn checkpoint(n: &str, seed: u8) -> CheckpointKey {
    CheckpointKey {
        name: name(n),
        public_key: encode_public_key(&key(seed).verifying_key()),
    }
}

fn lab(mode: &str) -> ZonePolicy {
    ZonePolicy {
        name: name("lab"),
        mode: name(mode),
        checkpoints: vec![checkpoint("north-gate", 11), checkpoint("south-gate", 12)],
        wifi_bssids: vec![bssid(1), bssid(2)],
    }
}

fn vault() -> ZonePolicy {
    ZonePolicy {
        name: name("vault"),
        mode: name("vault-mode"),
        checkpoints: vec![checkpoint("door", 13)],
        wifi_bssids: vec![bssid(3)],
    }
}

fn bundle_with(
    version: u64,
    base: &str,
    zones: Vec<ZonePolicy>,
    expires: Timestamp,
) -> PolicyBundle {
    let mut modes = presets();
    modes.push(vault_mode());
    PolicyBundle {
        device_id: device(),
        version,
        issued_at: T0,
        expires_at: expires,
        modes,
        assignments: Assignments {
            base_mode: name(base),
            group_modes: Vec::new(),
        },
        check_in_interval_secs: 60,
        organization_endpoints: vec![],
        servers: Vec::new(),
        zones,
    }
}

fn bundle() -> PolicyBundle {
    bundle_with(
        1,
        "standard",
        vec![lab("secure-site"), vault()],
        T0.plus_secs(86_400),
    )
}

struct CodeSpec<'a> {
    zone: &'a str,
    checkpoint: &'a str,
    direction: Direction,
    not_before: Timestamp,
    not_after: Timestamp,
    nonce: &'a str,
    signer: u8,
}

impl CodeSpec<'_> {
    fn encode(&self) -> String {
        CheckpointCode {
            zone: name(self.zone),
            checkpoint: name(self.checkpoint),
            direction: self.direction,
            not_before: self.not_before,
            not_after: self.not_after,
            nonce: self.nonce.into(),
        }
        .encode(&key(self.signer))
    }
}

/// A code of lab's north gate, valid for 30 s from `at`.
fn lab_code(direction: Direction, at: Timestamp, nonce: &str) -> String {
    CodeSpec {
        zone: "lab",
        checkpoint: "north-gate",
        direction,
        not_before: at,
        not_after: at.plus_secs(30),
        nonce,
        signer: 11,
    }
    .encode()
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0u32;
    move || {
        n += 1;
        format!("{n:032x}")
    }
}

/// The state without its unreported events: what a refusal must leave unchanged.
fn without_events(s: &ZoneState) -> ZoneState {
    let mut s = s.clone();
    s.unreported.clear();
    s
}

fn command(action: DeviceAction, n: u8, issued_at: Timestamp) -> DeviceCommand {
    DeviceCommand {
        id: CommandId::from_random([n; 12]),
        device_id: device(),
        action,
        issued_at,
        expires_at: issued_at.plus_secs(600),
    }
}

// ---- verify_code ----

#[test]
fn a_good_code_verifies_within_its_window_and_the_skew() {
    let b = bundle();
    let code = lab_code(Direction::In, T0, "n1");
    assert_eq!(verify_code(&code, &b, T0).unwrap().zone.as_str(), "lab");
    let skew = CODE_CLOCK_SKEW_SECS;
    assert!(verify_code(&code, &b, T0.plus_secs(-skew)).is_ok());
    assert!(verify_code(&code, &b, T0.plus_secs(30 + skew)).is_ok());
    assert!(matches!(
        verify_code(&code, &b, T0.plus_secs(-skew - 1)),
        Err(CodeError::NotYetValid { .. })
    ));
    let err = verify_code(&code, &b, T0.plus_secs(31 + skew)).unwrap_err();
    assert!(matches!(err, CodeError::Expired { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("expired at") && msg.contains("lab") && msg.contains("north-gate"),
        "{msg}"
    );
}

#[test]
fn codes_for_unknown_zones_or_checkpoints_are_refused() {
    let b = bundle();
    let ghost = CodeSpec {
        zone: "ghost",
        checkpoint: "gate",
        direction: Direction::In,
        not_before: T0,
        not_after: T0.plus_secs(30),
        nonce: "n",
        signer: 14,
    };
    let msg = verify_code(&ghost.encode(), &b, T0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "the code is for zone ghost, which this device's policy does not list"
    );
    let side = CodeSpec {
        zone: "lab",
        checkpoint: "side-door",
        signer: 11,
        ..ghost
    };
    let msg = verify_code(&side.encode(), &b, T0).unwrap_err().to_string();
    assert!(
        msg.contains("side-door") && msg.contains("zone lab"),
        "{msg}"
    );
    // A checkpoint of another zone.
    let door = CodeSpec {
        zone: "lab",
        checkpoint: "door",
        signer: 13,
        ..side
    };
    assert!(matches!(
        verify_code(&door.encode(), &b, T0),
        Err(CodeError::UnknownCheckpoint { .. })
    ));
}

#[test]
fn forged_and_malformed_codes_are_refused() {
    let b = bundle();
    // Signed by south gate's key but claiming north gate.
    let wrong_key = CodeSpec {
        zone: "lab",
        checkpoint: "north-gate",
        direction: Direction::In,
        not_before: T0,
        not_after: T0.plus_secs(30),
        nonce: "n",
        signer: 12,
    };
    let err = verify_code(&wrong_key.encode(), &b, T0).unwrap_err();
    assert!(matches!(err, CodeError::Forged { .. }), "{err}");
    assert!(err.to_string().contains("forged"));
    let forged = CodeSpec {
        signer: 99,
        ..wrong_key
    };
    assert!(matches!(
        verify_code(&forged.encode(), &b, T0),
        Err(CodeError::Forged { .. })
    ));
    for bad in ["", "hello", "RDZ1.abc", "RDZ1.e30.AAAA"] {
        let err = verify_code(bad, &b, T0).unwrap_err();
        assert!(matches!(err, CodeError::Format(_)), "{bad}: {err}");
        assert!(
            err.to_string().starts_with("not a checkpoint code"),
            "{err}"
        );
    }
    let mut broken = bundle();
    broken.zones[0].checkpoints[0].public_key = "AAAA".into();
    assert!(matches!(
        verify_code(&lab_code(Direction::In, T0, "n"), &broken, T0),
        Err(CodeError::UnusableKey { .. })
    ));
}

// ---- apply_code ----

#[test]
fn check_in_and_check_out_with_codes() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    let change = s
        .apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(T0), next())
        .unwrap();
    assert!(matches!(change, ZoneChange::Entered { ref zone, .. } if zone.as_str() == "lab"));
    assert_eq!(decide_with(Some(&b), &s, at(T0)).mode.name, "secure-site");
    assert_eq!(
        decide_with(Some(&b), &s, at(T0)).zones,
        vec![name::<ZoneName>("lab")]
    );
    // Checking in again renews the evidence.
    let change = s
        .apply_code(
            &lab_code(Direction::In, T0.plus_secs(10), "n2"),
            &b,
            at(T0.plus_secs(10)),
            next(),
        )
        .unwrap();
    assert!(matches!(change, ZoneChange::Refreshed { .. }));
    let change = s
        .apply_code(
            &lab_code(Direction::Out, T0.plus_secs(20), "n3"),
            &b,
            at(T0.plus_secs(20)),
            next(),
        )
        .unwrap();
    assert!(matches!(change, ZoneChange::Left { .. }));
    assert!(s.inside().is_empty());
    assert_eq!(
        decide_with(Some(&b), &s, at(T0.plus_secs(20))).mode.name,
        "standard"
    );
    let kinds: Vec<&str> = s
        .unreported()
        .iter()
        .map(|e| match e.kind {
            DeviceEventKind::ZoneIn { .. } => "in",
            DeviceEventKind::ZoneOut { .. } => "out",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["in", "in", "out"]);
    s.mark_reported(2);
    assert_eq!(s.unreported_len(), 1);
}

#[test]
fn a_refused_code_changes_nothing_but_the_events() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    let code = lab_code(Direction::In, T0, "n1");
    s.apply_code(&code, &b, at(T0), next()).unwrap();
    let before = without_events(&s);
    let events = s.unreported_len();

    let err = s
        .apply_code(&code, &b, at(T0.plus_secs(1)), next())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "this code was already used (zone lab, checkpoint north-gate)"
    );
    // Checking out of a zone the phone is not inside.
    let vault_out = CodeSpec {
        zone: "vault",
        checkpoint: "door",
        direction: Direction::Out,
        not_before: T0,
        not_after: T0.plus_secs(30),
        nonce: "v1",
        signer: 13,
    };
    let err = s
        .apply_code(&vault_out.encode(), &b, at(T0), next())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not inside zone vault: nothing to check out of"
    );
    // A check-out code older than the check-in: refused.
    let old_out = lab_code(Direction::Out, T0.plus_secs(-10), "n0");
    let err = s.apply_code(&old_out, &b, at(T0), next()).unwrap_err();
    assert!(matches!(err, CodeError::OlderThanEntry { .. }), "{err}");
    // Expired and forged.
    let expired = lab_code(Direction::Out, T0.plus_secs(-100), "n9");
    assert!(matches!(
        s.apply_code(&expired, &b, at(T0), next()),
        Err(CodeError::Expired { .. })
    ));
    assert_eq!(without_events(&s), before);
    let refused: Vec<_> = s.unreported()[events..]
        .iter()
        .map(|e| match &e.kind {
            DeviceEventKind::CodeRefused { reason } => reason.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(refused.len(), 4);
    assert!(refused[0].contains("already used"));
    // The refused check-out's nonce was not consumed: once valid it works.
    let out = lab_code(Direction::Out, T0.plus_secs(5), "n9b");
    assert!(s.apply_code(&out, &b, at(T0.plus_secs(5)), next()).is_ok());
}

/// The floor at `floor`, the wall clock `offset` seconds from it.
fn clocks(floor: Timestamp, offset: i64) -> PhoneTime {
    PhoneTime {
        floor,
        wall: floor.plus_secs(offset),
    }
}

#[test]
fn lock_and_wipe_are_never_refused_for_their_age_whatever_the_clock() {
    // The holder set the clock a year forward: the phone must still lock and wipe
    // (the server only sends a command before its expiry).
    let ahead = clocks(T0, 365 * 24 * 3600);
    let mut s = ZoneState::default();
    let mut next = ids();
    let lock = command(DeviceAction::Lock, 1, T0);
    assert_eq!(
        s.apply_command(&lock, &device(), None, ahead, &mut next),
        Ok(CommandEffect::Locked {
            by: lock.id.clone()
        })
    );
    // Even past its expiry by the floor (a delayed delivery).
    let late = command(DeviceAction::Lock, 2, T0);
    assert!(
        s.apply_command(&late, &device(), None, at(T0.plus_secs(10_000)), &mut next)
            .is_ok()
    );
    let wipe = command(DeviceAction::Wipe, 3, T0);
    assert_eq!(
        s.apply_command(&wipe, &device(), None, ahead, &mut next),
        Ok(CommandEffect::Wipe)
    );
    let enter = command(DeviceAction::EnterZone { zone: name("lab") }, 4, T0);
    assert_eq!(
        s.apply_command(&enter, &device(), Some(&bundle()), ahead, &mut next),
        Ok(CommandEffect::EnteredZone { zone: name("lab") })
    );
    // An unlock is judged against the floor and the wall clock: a wall clock ahead
    // only makes it stricter, a wall clock set back does not revive an expired one.
    let unlock = command(DeviceAction::Unlock, 5, T0);
    assert!(
        s.apply_command(&unlock, &device(), None, ahead, &mut next)
            .is_err()
    );
    assert!(
        s.apply_command(
            &unlock,
            &device(),
            None,
            clocks(T0.plus_secs(601), -601),
            &mut next
        )
        .is_err()
    );
    assert!(s.lock().is_some());
}

#[test]
fn a_kept_check_out_code_replayed_with_the_clock_set_back_is_refused() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(T0), next())
        .unwrap();
    // A check-out code of a moment after the entry, kept instead of used.
    let kept = lab_code(Direction::Out, T0.plus_secs(10), "n2");
    // An hour later the holder sets the wall clock back into the code's window.
    let later = clocks(T0.plus_secs(3600), -3600 + 12);
    let before = without_events(&s);
    assert!(matches!(
        s.apply_code(&kept, &b, later, next()),
        Err(CodeError::Expired { .. })
    ));
    assert_eq!(without_events(&s), before);
    // A fresh check-out code while the wall clock is behind the floor: refused too;
    // a check-in code (it only restricts) still counts.
    let behind = clocks(T0.plus_secs(3600), -60);
    let fresh_out = lab_code(Direction::Out, T0.plus_secs(3598), "n3");
    assert!(matches!(
        s.apply_code(&fresh_out, &b, behind, next()),
        Err(CodeError::ClockBehind { .. })
    ));
    assert_eq!(without_events(&s), before);
    let fresh_in = lab_code(Direction::In, T0.plus_secs(3598), "n4");
    assert!(matches!(
        s.apply_code(&fresh_in, &b, behind, next()),
        Ok(ZoneChange::Refreshed { .. })
    ));
    // Within the skew it is not tampering.
    let fresh_out = lab_code(Direction::Out, T0.plus_secs(3600), "n5");
    assert!(
        s.apply_code(
            &fresh_out,
            &b,
            clocks(T0.plus_secs(3600), -CODE_CLOCK_SKEW_SECS),
            next()
        )
        .is_ok()
    );
}

#[test]
fn nonces_are_kept_until_the_floor_is_past_their_window() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(T0), next())
        .unwrap();
    // The wall clock far ahead does not prune n1: the floor has not passed its window.
    s.apply_code(
        &lab_code(Direction::In, T0.plus_secs(1), "n2"),
        &b,
        clocks(T0.plus_secs(2), 0),
        next(),
    )
    .unwrap();
    let mut ahead = s.clone();
    ahead
        .apply_code(
            &lab_code(Direction::In, T0.plus_secs(3), "n3"),
            &b,
            clocks(T0.plus_secs(4), 30),
            next(),
        )
        .unwrap();
    assert!(ahead.used_nonces.contains_key("n1"));
    assert!(matches!(
        ahead.apply_code(
            &lab_code(Direction::In, T0, "n1"),
            &b,
            at(T0.plus_secs(5)),
            next()
        ),
        Err(CodeError::Replayed { .. })
    ));
}

#[test]
fn a_check_out_code_older_than_any_entry_is_refused() {
    let b = bundle();
    let mut next = ids();
    // Entered by Wi-Fi at floor T0+100: a check-out code from T0+50 cannot undo it.
    let mut s = ZoneState::default();
    s.observe_wifi(&[bssid(1)], Some(&b), at(T0.plus_secs(100)), &mut next);
    assert!(s.inside().contains_key(&name::<ZoneName>("lab")));
    let old = lab_code(Direction::Out, T0.plus_secs(80), "o1");
    assert!(matches!(
        s.apply_code(&old, &b, at(T0.plus_secs(100)), next()),
        Err(CodeError::OlderThanEntry { .. })
    ));
    // Even with a wall clock far behind: the entry time is the floor at entry.
    let mut s = ZoneState::default();
    s.observe_wifi(
        &[bssid(1)],
        Some(&b),
        clocks(T0.plus_secs(100), -90),
        &mut next,
    );
    assert!(matches!(
        s.apply_code(&old, &b, at(T0.plus_secs(100)), next()),
        Err(CodeError::OlderThanEntry { .. })
    ));
    let newer = lab_code(Direction::Out, T0.plus_secs(100), "o2");
    assert!(
        s.apply_code(&newer, &b, at(T0.plus_secs(105)), next())
            .is_ok()
    );
    // Entered by an operator's command issued at T0+100.
    let mut s = ZoneState::default();
    let enter = command(
        DeviceAction::EnterZone { zone: name("lab") },
        9,
        T0.plus_secs(100),
    );
    s.apply_command(&enter, &device(), Some(&b), at(T0.plus_secs(90)), &mut next)
        .unwrap();
    assert!(matches!(
        s.apply_code(&old, &b, at(T0.plus_secs(100)), next()),
        Err(CodeError::OlderThanEntry { .. })
    ));
    let newer = lab_code(Direction::Out, T0.plus_secs(101), "o3");
    assert!(
        s.apply_code(&newer, &b, at(T0.plus_secs(105)), next())
            .is_ok()
    );
}

#[test]
fn a_bundle_expired_by_either_clock_means_lockdown_and_the_wall_clock_cannot_revive_it() {
    let b = bundle_with(3, "standard", vec![lab("secure-site")], T0.plus_secs(100));
    let s = ZoneState::default();
    assert_eq!(decide_with(Some(&b), &s, at(T0)).mode.name, "standard");
    // Expired by the floor, wall clock set back: still expired.
    assert_eq!(
        decide_with(Some(&b), &s, clocks(T0.plus_secs(200), -150))
            .mode
            .name,
        "lockdown"
    );
    // Expired by a wall clock far ahead (a glitch): stricter, lockdown...
    assert_eq!(
        decide_with(Some(&b), &s, clocks(T0, 100_000)).mode.name,
        "lockdown"
    );
    // ...and back once the wall clock is right again (the floor did not move).
    assert_eq!(
        decide_with(Some(&b), &s, at(T0.plus_secs(1))).mode.name,
        "standard"
    );
}

#[test]
fn used_nonces_are_pruned_once_their_code_expired() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(T0), next())
        .unwrap();
    let later = T0.plus_secs(100);
    s.apply_code(
        &lab_code(Direction::Out, later, "n2"),
        &b,
        at(later),
        next(),
    )
    .unwrap();
    assert_eq!(s.used_nonces.keys().collect::<Vec<_>>(), ["n2"]);
    // And the pruned code stays refused: it expired.
    assert!(matches!(
        s.apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(later), next()),
        Err(CodeError::Expired { .. })
    ));
}

// ---- Wi-Fi ----

#[test]
fn wifi_enters_absence_never_exits_and_checkout_suppresses_the_gate() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    // An unlisted access point does nothing.
    assert!(
        s.observe_wifi(&[bssid(9)], Some(&b), at(T0), &mut next)
            .is_empty()
    );
    let changes = s.observe_wifi(&[bssid(2), bssid(9)], Some(&b), at(T0), &mut next);
    assert_eq!(
        changes,
        vec![ZoneChange::Entered {
            zone: name("lab"),
            evidence: Evidence::Wifi { bssid: bssid(2) }
        }]
    );
    // Gone from the scan: still inside.
    assert!(
        s.observe_wifi(&[], Some(&b), at(T0.plus_secs(1)), &mut next)
            .is_empty()
    );
    assert!(s.inside().contains_key(&name::<ZoneName>("lab")));
    // At the gate: both access points visible, check out.
    s.observe_wifi(
        &[bssid(1), bssid(2)],
        Some(&b),
        at(T0.plus_secs(2)),
        &mut next,
    );
    s.apply_code(
        &lab_code(Direction::Out, T0.plus_secs(3), "o1"),
        &b,
        at(T0.plus_secs(3)),
        next(),
    )
    .unwrap();
    assert!(s.inside().is_empty());
    assert_eq!(
        s.suppressed(&name("lab")).unwrap(),
        &BTreeSet::from([bssid(1), bssid(2)])
    );
    // The gate's access points do not pull the phone back in.
    assert!(
        s.observe_wifi(
            &[bssid(1), bssid(2)],
            Some(&b),
            at(T0.plus_secs(4)),
            &mut next
        )
        .is_empty()
    );
    // Access point 1 fades: no longer suppressed; seeing it again enters.
    assert!(
        s.observe_wifi(&[bssid(2)], Some(&b), at(T0.plus_secs(5)), &mut next)
            .is_empty()
    );
    assert_eq!(
        s.suppressed(&name("lab")).unwrap(),
        &BTreeSet::from([bssid(2)])
    );
    let changes = s.observe_wifi(
        &[bssid(1), bssid(2)],
        Some(&b),
        at(T0.plus_secs(6)),
        &mut next,
    );
    assert_eq!(changes.len(), 1);
    // Without a bundle nothing is entered, but the scan is remembered.
    let mut fresh = ZoneState::default();
    assert!(
        fresh
            .observe_wifi(&[bssid(3)], None, at(T0), &mut next)
            .is_empty()
    );
    assert_eq!(fresh.last_visible(), &BTreeSet::from([bssid(3)]));
}

// ---- commands ----

#[test]
fn lock_and_unlock_are_ordered_by_issue_time() {
    let mut s = ZoneState::default();
    let mut next = ids();
    let lock = command(DeviceAction::Lock, 1, T0);
    assert_eq!(
        s.apply_command(&lock, &device(), None, at(T0), &mut next),
        Ok(CommandEffect::Locked {
            by: lock.id.clone()
        })
    );
    let b = bundle();
    let d = decide_with(Some(&b), &s, at(T0));
    assert_eq!(
        (d.mode.name.as_str(), d.locked_by.as_ref()),
        ("lockdown", Some(&lock.id))
    );
    // An unlock issued before the lock changes nothing.
    let old_unlock = command(DeviceAction::Unlock, 2, T0.plus_secs(-10));
    assert_eq!(
        s.apply_command(&old_unlock, &device(), None, at(T0), &mut next),
        Ok(CommandEffect::NothingToUnlock)
    );
    assert!(s.lock().is_some());
    let unlock = command(DeviceAction::Unlock, 3, T0.plus_secs(10));
    assert_eq!(
        s.apply_command(&unlock, &device(), None, at(T0.plus_secs(10)), &mut next),
        Ok(CommandEffect::Unlocked)
    );
    assert_eq!(
        decide_with(Some(&b), &s, at(T0.plus_secs(10))).mode.name,
        "standard"
    );
    // A lock issued before that unlock, delivered late: stays unlocked.
    let late_lock = command(DeviceAction::Lock, 4, T0.plus_secs(5));
    assert_eq!(
        s.apply_command(&late_lock, &device(), None, at(T0.plus_secs(11)), &mut next),
        Ok(CommandEffect::LockSuperseded)
    );
    assert!(s.lock().is_none());
    // Re-delivery of a done command: no new effect.
    let relock = s.apply_command(&lock, &device(), None, at(T0.plus_secs(12)), &mut next);
    assert_eq!(relock, Ok(CommandEffect::AlreadyDone));
    assert!(s.lock().is_none());
    assert_eq!(
        s.recent_commands(2),
        vec![unlock.id.clone(), late_lock.id.clone()]
    );
}

#[test]
fn foreign_expired_and_revoke_commands_are_refused() {
    let mut s = ZoneState::default();
    let mut next = ids();
    let mut foreign = command(DeviceAction::Lock, 1, T0);
    foreign.device_id = DeviceId::from_random([2; 12]);
    let err = s
        .apply_command(&foreign, &device(), None, at(T0), &mut next)
        .unwrap_err();
    assert!(err.contains("not for this device"), "{err}");
    // An unlock (it relaxes) is refused once expired against the floor.
    let expired = command(DeviceAction::Unlock, 2, T0);
    let err = s
        .apply_command(&expired, &device(), None, at(T0.plus_secs(601)), &mut next)
        .unwrap_err();
    assert!(err.contains("expired at"), "{err}");
    let revoke = command(DeviceAction::Revoke, 3, T0);
    let err = s
        .apply_command(&revoke, &device(), None, at(T0), &mut next)
        .unwrap_err();
    assert!(err.contains("server"), "{err}");
    assert_eq!(without_events(&s), ZoneState::default());
    assert!(
        s.unreported()
            .iter()
            .all(|e| matches!(e.kind, DeviceEventKind::CommandRefused { .. }))
    );
    assert_eq!(s.unreported_len(), 3);
    let wipe = command(DeviceAction::Wipe, 4, T0);
    assert_eq!(
        s.apply_command(&wipe, &device(), None, at(T0), &mut next),
        Ok(CommandEffect::Wipe)
    );
}

#[test]
fn exit_zone_only_undoes_an_entry_made_before_it_was_issued() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.observe_wifi(&[bssid(3)], Some(&b), at(T0), &mut next);
    let lab_zone: ZoneName = name("lab");
    s.apply_code(
        &lab_code(Direction::In, T0.plus_secs(20), "n1"),
        &b,
        at(T0.plus_secs(20)),
        next(),
    )
    .unwrap();
    let exit_lab = command(
        DeviceAction::ExitZone {
            zone: lab_zone.clone(),
        },
        1,
        T0.plus_secs(10),
    );
    assert_eq!(
        s.apply_command(&exit_lab, &device(), None, at(T0.plus_secs(30)), &mut next),
        Ok(CommandEffect::NotInZone {
            zone: lab_zone.clone()
        })
    );
    assert!(s.inside().contains_key(&lab_zone));
    let exit_vault = command(
        DeviceAction::ExitZone {
            zone: name("vault"),
        },
        2,
        T0.plus_secs(10),
    );
    assert_eq!(
        s.apply_command(
            &exit_vault,
            &device(),
            None,
            at(T0.plus_secs(30)),
            &mut next
        ),
        Ok(CommandEffect::ExitedZone {
            zone: name("vault")
        })
    );
    assert_eq!(s.inside().keys().collect::<Vec<_>>(), [&lab_zone]);
    assert!(s.unreported().iter().any(|e| matches!(
        &e.kind,
        DeviceEventKind::ZoneOut { evidence: Evidence::Command { command }, .. } if *command == exit_vault.id
    )));
    // The vault's access point still in sight does not take the phone straight back
    // in; once it went out of sight, seeing it again does.
    s.observe_wifi(&[bssid(3)], Some(&b), at(T0.plus_secs(40)), &mut next);
    assert_eq!(s.inside().keys().collect::<Vec<_>>(), [&lab_zone]);
    s.observe_wifi(&[], Some(&b), at(T0.plus_secs(50)), &mut next);
    s.observe_wifi(&[bssid(3)], Some(&b), at(T0.plus_secs(60)), &mut next);
    assert!(s.inside().contains_key(&name::<ZoneName>("vault")));
}

#[test]
fn the_done_list_is_bounded() {
    let mut s = ZoneState::default();
    let mut next = ids();
    for n in 0..(DONE_COMMANDS_KEPT as u8 + 10) {
        let c = command(DeviceAction::Unlock, n, T0);
        s.apply_command(&c, &device(), None, at(T0), &mut next)
            .unwrap();
    }
    assert_eq!(s.done().len(), DONE_COMMANDS_KEPT);
    assert_eq!(s.done()[0].id, CommandId::from_random([10; 12]));
}

// ---- decide_with ----

#[test]
fn zones_modes_combine_and_survive_a_bundle_that_drops_the_zone() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.observe_wifi(&[bssid(1), bssid(3)], Some(&b), at(T0), &mut next);
    let d = decide_with(Some(&b), &s, at(T0));
    assert!(
        d.mode.name.contains("secure-site") && d.mode.name.contains("vault-mode"),
        "{}",
        d.mode.name
    );
    assert_eq!(d.mode.capabilities.nfc, Rule::Deny);
    assert_eq!(d.mode.capabilities.camera, Rule::Deny);
    // A newer bundle redefines lab as lockdown: the current definition holds.
    let redefined = bundle_with(
        2,
        "standard",
        vec![lab("lockdown"), vault()],
        T0.plus_secs(100),
    );
    assert!(
        decide_with(Some(&redefined), &s, at(T0))
            .mode
            .name
            .starts_with("lockdown")
    );
    // A bundle that no longer lists the zones: the modes noted at entry still hold.
    let dropped = bundle_with(3, "standard", vec![], T0.plus_secs(100));
    assert_eq!(decide_with(Some(&dropped), &s, at(T0)).mode, d.mode);
    // Expired: lockdown, and the zones are still named.
    let d = decide_with(Some(&dropped), &s, at(T0.plus_secs(100)));
    assert_eq!(d.mode.name, "lockdown");
    assert_eq!(d.zones.len(), 2);
    assert!(d.fallback_reason.unwrap().contains("expired"));
    assert_eq!(decide_with(None, &s, at(T0)).mode.name, "lockdown");
}

#[test]
fn the_state_round_trips_through_json() {
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.observe_wifi(&[bssid(1)], Some(&b), at(T0), &mut next);
    s.apply_code(&lab_code(Direction::Out, T0, "n1"), &b, at(T0), next())
        .unwrap();
    s.apply_command(
        &command(DeviceAction::Lock, 1, T0),
        &device(),
        None,
        at(T0),
        &mut next,
    )
    .unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<ZoneState>(&json).unwrap(), s);
    assert_eq!(
        serde_json::from_str::<ZoneState>("{}").unwrap(),
        ZoneState::default()
    );
}

// ---- property test: random traces against an independent oracle ----

const ZONES: [&str; 3] = ["lab", "vault", "ghost"];

#[derive(Debug, Clone, Copy)]
enum Window {
    Valid,
    /// Still valid, but issued well before the codes made now.
    Earlier,
    Expired,
    Future,
}

#[derive(Debug, Clone)]
enum Step {
    Code {
        zone: usize,
        right_checkpoint: bool,
        direction: Direction,
        forged: bool,
        window: Window,
        /// Replay a code used earlier in the trace instead.
        replay: Option<usize>,
    },
    Scan([bool; 4]),
    Bundle {
        version_delta: i64,
        life: i64,
        lab: Option<bool>,
        vault: bool,
        secure_base: bool,
    },
    Restart,
    LostNetwork,
    Command {
        /// 0 lock, 1 unlock, 2 exit lab, 3 exit vault, 4 enter lab, 5 enter vault.
        kind: u8,
        issued_offset: i64,
        life: i64,
        other_device: bool,
        replay: Option<usize>,
    },
    Advance(i64),
    /// The holder sets the wall clock this far from real time (the floor).
    SetWall(i64),
}

fn step() -> impl Strategy<Value = Step> {
    let window = prop_oneof![
        4 => Just(Window::Valid),
        2 => Just(Window::Earlier),
        1 => Just(Window::Expired),
        1 => Just(Window::Future)
    ];
    let direction = prop_oneof![Just(Direction::In), Just(Direction::Out)];
    prop_oneof![
        6 => (
            prop_oneof![4 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)],
            prop::bool::weighted(0.9),
            direction,
            prop::bool::weighted(0.1),
            window,
            prop::option::weighted(0.25, 0usize..64),
        )
            .prop_map(|(zone, right_checkpoint, direction, forged, window, replay)| Step::Code {
                zone,
                right_checkpoint,
                direction,
                forged,
                window,
                replay,
            }),
        3 => any::<[bool; 4]>().prop_map(Step::Scan),
        2 => (
            -1i64..=2,
            prop_oneof![Just(-10i64), Just(40), Just(3_600)],
            prop::option::of(any::<bool>()),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(version_delta, life, lab, vault, secure_base)| Step::Bundle {
                version_delta,
                life,
                lab,
                vault,
                secure_base,
            }),
        1 => Just(Step::Restart),
        1 => Just(Step::LostNetwork),
        3 => (
            0u8..6,
            -120i64..60,
            prop_oneof![Just(-30i64), Just(20), Just(600)],
            prop::bool::weighted(0.1),
            prop::option::weighted(0.15, 0usize..64),
        )
            .prop_map(|(kind, issued_offset, life, other_device, replay)| Step::Command {
                kind,
                issued_offset,
                life,
                other_device,
                replay,
            }),
        3 => (0i64..90).prop_map(Step::Advance),
        2 => prop_oneof![
            Just(0i64),
            Just(-3),
            Just(-60),
            Just(-100_000),
            Just(4),
            Just(600),
            Just(100_000)
        ]
        .prop_map(Step::SetWall),
    ]
}

/// What the oracle knows about a code: everything the generator put in it.
#[derive(Debug, Clone)]
struct CodeFacts {
    zone: ZoneName,
    checkpoint: CheckpointName,
    direction: Direction,
    genuine: bool,
    not_before: Timestamp,
    not_after: Timestamp,
    nonce: String,
}

struct OracleEntry {
    /// When the phone entered, in trusted time.
    since: Timestamp,
    mode: Mode,
}

/// An independent model of what the newest valid signed instructions require. It
/// never looks at the implementation's state.
#[derive(Default)]
struct Oracle {
    bundle: Option<PolicyBundle>,
    used_nonces: BTreeSet<String>,
    inside: BTreeMap<ZoneName, OracleEntry>,
    suppressed: BTreeMap<ZoneName, BTreeSet<Bssid>>,
    visible: BTreeSet<Bssid>,
    newest_lock: Option<Timestamp>,
    newest_unlock: Option<Timestamp>,
    done: BTreeSet<CommandId>,
}

impl Oracle {
    fn listed(&self, zone: &ZoneName) -> Option<&ZonePolicy> {
        self.bundle.as_ref()?.zones.iter().find(|z| &z.name == zone)
    }

    fn mode_of(&self, zone: &ZoneName) -> Option<Mode> {
        let z = self.listed(zone)?;
        self.bundle
            .as_ref()?
            .modes
            .iter()
            .find(|m| m.name == z.mode)
            .cloned()
    }

    fn offer_bundle(&mut self, b: &PolicyBundle, time: PhoneTime) {
        let newer = self
            .bundle
            .as_ref()
            .is_none_or(|held| b.version > held.version);
        // Not expired by the floor, nor by the wall clock.
        if newer && b.expires_at > time.floor && b.expires_at > time.wall {
            self.bundle = Some(b.clone());
        }
    }

    fn code(&mut self, c: &CodeFacts, time: PhoneTime) {
        let Some(zone) = self.listed(&c.zone) else {
            return;
        };
        let skew = CODE_CLOCK_SKEW_SECS;
        // Expired by either clock counts; valid from: the later clock reached it.
        let newest = time.floor.unix().max(time.wall.unix());
        let valid = c.genuine
            && zone.checkpoints.iter().any(|k| k.name == c.checkpoint)
            && c.not_before.unix() - skew <= newest
            && time.floor.unix() <= c.not_after.unix() + skew
            && time.wall.unix() <= c.not_after.unix() + skew
            && !self.used_nonces.contains(&c.nonce);
        if !valid {
            return;
        }
        match c.direction {
            Direction::In => {
                let mode = self.mode_of(&c.zone).unwrap_or_else(lockdown);
                self.inside.insert(
                    c.zone.clone(),
                    OracleEntry {
                        since: time.floor.max(c.not_before),
                        mode,
                    },
                );
                self.suppressed.remove(&c.zone);
            }
            Direction::Out => {
                let Some(entry) = self.inside.get(&c.zone) else {
                    return;
                };
                // Never older than the entry, however it entered; never while the
                // wall clock is set back behind the floor.
                if c.not_before.unix() < entry.since.unix() - skew
                    || time.wall.unix() < time.floor.unix() - skew
                {
                    return;
                }
                let gate: BTreeSet<Bssid> = zone
                    .wifi_bssids
                    .iter()
                    .filter(|b| self.visible.contains(*b))
                    .cloned()
                    .collect();
                self.inside.remove(&c.zone);
                if gate.is_empty() {
                    self.suppressed.remove(&c.zone);
                } else {
                    self.suppressed.insert(c.zone.clone(), gate);
                }
            }
        }
        self.used_nonces.insert(c.nonce.clone());
    }

    fn scan(&mut self, visible: BTreeSet<Bssid>, time: PhoneTime) {
        for set in self.suppressed.values_mut() {
            set.retain(|b| visible.contains(b));
        }
        self.suppressed.retain(|_, s| !s.is_empty());
        let zones: Vec<ZonePolicy> = self
            .bundle
            .as_ref()
            .map(|b| b.zones.clone())
            .unwrap_or_default();
        for z in zones {
            if self.inside.contains_key(&z.name) {
                continue;
            }
            let seen = z.wifi_bssids.iter().any(|b| {
                visible.contains(b) && !self.suppressed.get(&z.name).is_some_and(|s| s.contains(b))
            });
            if seen {
                let mode = self.mode_of(&z.name).unwrap_or_else(lockdown);
                self.inside.insert(
                    z.name.clone(),
                    OracleEntry {
                        since: time.floor,
                        mode,
                    },
                );
            }
        }
        self.visible = visible;
    }

    fn command(&mut self, c: &DeviceCommand, time: PhoneTime) {
        // Only the relaxing commands can expire on the phone, by either clock.
        let relaxes = matches!(
            c.action,
            DeviceAction::Unlock | DeviceAction::ExitZone { .. }
        );
        let expired = time.floor > c.expires_at || time.wall > c.expires_at;
        if c.device_id != device()
            || self.done.contains(&c.id)
            || (relaxes && expired)
            || c.action == DeviceAction::Revoke
        {
            return;
        }
        self.done.insert(c.id.clone());
        match &c.action {
            DeviceAction::Lock => {
                self.newest_lock =
                    Some(self.newest_lock.map_or(c.issued_at, |t| t.max(c.issued_at)))
            }
            DeviceAction::Unlock => {
                self.newest_unlock = Some(
                    self.newest_unlock
                        .map_or(c.issued_at, |t| t.max(c.issued_at)),
                )
            }
            DeviceAction::ExitZone { zone } => {
                if self.inside.get(zone).is_some_and(|e| e.since < c.issued_at) {
                    self.inside.remove(zone);
                    if self.visible.is_empty() {
                        self.suppressed.remove(zone);
                    } else {
                        self.suppressed.insert(zone.clone(), self.visible.clone());
                    }
                }
            }
            DeviceAction::EnterZone { zone } => {
                let mode = self.mode_of(zone).unwrap_or_else(lockdown);
                self.inside.insert(
                    zone.clone(),
                    OracleEntry {
                        since: time.floor.max(c.issued_at),
                        mode,
                    },
                );
                self.suppressed.remove(zone);
            }
            DeviceAction::Wipe | DeviceAction::Revoke => {}
        }
    }

    fn locked(&self) -> bool {
        match (self.newest_lock, self.newest_unlock) {
            (Some(l), Some(u)) => l >= u,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn required(&self, time: PhoneTime) -> Effective {
        let Some(b) = self
            .bundle
            .as_ref()
            .filter(|b| b.expires_at > time.floor && b.expires_at > time.wall)
        else {
            return effective(&[lockdown()]);
        };
        let mut modes: Vec<Mode> = b
            .modes
            .iter()
            .filter(|m| m.name == b.assignments.base_mode)
            .cloned()
            .collect();
        for (zone, entry) in &self.inside {
            modes.push(self.mode_of(zone).unwrap_or_else(|| entry.mode.clone()));
        }
        if self.locked() {
            modes.push(lockdown());
        }
        effective(&modes)
    }
}

fn run_trace(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut now = T0;
    let mut held: Option<PolicyBundle> = None;
    let mut state = ZoneState::default();
    let mut oracle = Oracle::default();
    let mut codes: Vec<(String, CodeFacts)> = Vec::new();
    let mut commands: Vec<DeviceCommand> = Vec::new();
    let mut counter = 0u64;
    let mut next_id = move || {
        counter += 1;
        format!("{counter:032x}")
    };
    let bssids = [bssid(1), bssid(2), bssid(3), bssid(9)];

    // The model's real time is `now`, which the phone's floor tracks; the holder moves
    // the wall clock around it.
    let mut wall_offset = 0i64;
    for (i, step) in steps.iter().enumerate() {
        let time = PhoneTime {
            floor: now,
            wall: now.plus_secs(wall_offset),
        };
        match step {
            Step::Code {
                zone,
                right_checkpoint,
                direction,
                forged,
                window,
                replay,
            } => {
                let (text, facts) = match replay.filter(|_| !codes.is_empty()) {
                    // Mostly one of the last few codes (still valid), sometimes any.
                    Some(r) if r % 4 != 0 => {
                        codes[codes.len() - 1 - (r / 4) % codes.len().min(4)].clone()
                    }
                    Some(r) => codes[r % codes.len()].clone(),
                    None => {
                        let zone_name = ZONES[*zone];
                        let (checkpoint, seed) = match (zone_name, right_checkpoint) {
                            (_, false) => ("side-door", 20),
                            ("lab", true) => {
                                if i % 2 == 0 {
                                    ("north-gate", 11)
                                } else {
                                    ("south-gate", 12)
                                }
                            }
                            ("vault", true) => ("door", 13),
                            _ => ("gate", 14),
                        };
                        let not_before = match window {
                            Window::Valid => now.plus_secs(-3),
                            Window::Earlier => now.plus_secs(-25),
                            Window::Expired => now.plus_secs(-200),
                            Window::Future => now.plus_secs(100),
                        };
                        let nonce = format!("nonce-{i}");
                        let facts = CodeFacts {
                            zone: name(zone_name),
                            checkpoint: name(checkpoint),
                            direction: *direction,
                            genuine: !forged && seed != 20,
                            not_before,
                            not_after: not_before.plus_secs(30),
                            nonce: nonce.clone(),
                        };
                        let text = CheckpointCode {
                            zone: facts.zone.clone(),
                            checkpoint: facts.checkpoint.clone(),
                            direction: facts.direction,
                            not_before: facts.not_before,
                            not_after: facts.not_after,
                            nonce,
                        }
                        .encode(&key(if *forged { 99 } else { seed }));
                        (text, facts)
                    }
                };
                codes.push((text.clone(), facts.clone()));
                oracle.code(&facts, time);
                if let Some(b) = &held {
                    let before = without_events(&state);
                    let events = state.unreported_len();
                    if state.apply_code(&text, b, time, next_id()).is_err() {
                        prop_assert_eq!(
                            &without_events(&state),
                            &before,
                            "a refused code changed the state"
                        );
                        prop_assert_eq!(state.unreported_len(), events + 1);
                    }
                }
            }
            Step::Scan(mask) => {
                let visible: Vec<Bssid> = bssids
                    .iter()
                    .zip(mask)
                    .filter(|(_, on)| **on)
                    .map(|(b, _)| b.clone())
                    .collect();
                oracle.scan(visible.iter().cloned().collect(), time);
                state.observe_wifi(&visible, held.as_ref(), time, &mut next_id);
            }
            Step::Bundle {
                version_delta,
                life,
                lab: lab_zone,
                vault: vault_zone,
                secure_base,
            } => {
                let held_version = held.as_ref().map_or(0, |b| b.version);
                let version = held_version.saturating_add_signed(*version_delta).max(1);
                let mut zones = Vec::new();
                if let Some(locked_down) = lab_zone {
                    zones.push(lab(if *locked_down {
                        "lockdown"
                    } else {
                        "secure-site"
                    }));
                }
                if *vault_zone {
                    zones.push(vault());
                }
                let base = if *secure_base {
                    "secure-site"
                } else {
                    "standard"
                };
                let b = bundle_with(version, base, zones, now.plus_secs(*life));
                let env = SignedEnvelope::sign(PolicyBundle::KIND, &b, &org());
                oracle.offer_bundle(&b, time);
                // The agent's rule: verify, and replace only with a newer version.
                if let Ok(v) = verify_bundle(
                    &env,
                    &org().verifying_key(),
                    &device(),
                    held.as_ref().map(|b| b.version),
                    time.latest(),
                ) && held.as_ref().is_none_or(|h| v.version > h.version)
                {
                    held = Some(v);
                }
            }
            Step::Restart => {
                let json = serde_json::to_string(&state).unwrap();
                let back: ZoneState = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(&back, &state);
                state = back;
            }
            Step::LostNetwork => {}
            Step::Command {
                kind,
                issued_offset,
                life,
                other_device,
                replay,
            } => {
                let cmd = match replay.filter(|_| !commands.is_empty()) {
                    Some(r) => commands[r % commands.len()].clone(),
                    None => {
                        let action = match kind {
                            0 => DeviceAction::Lock,
                            1 => DeviceAction::Unlock,
                            2 => DeviceAction::ExitZone { zone: name("lab") },
                            3 => DeviceAction::ExitZone {
                                zone: name("vault"),
                            },
                            4 => DeviceAction::EnterZone { zone: name("lab") },
                            _ => DeviceAction::EnterZone {
                                zone: name("vault"),
                            },
                        };
                        let issued_at = now.plus_secs(*issued_offset);
                        let mut bytes = [0u8; 12];
                        bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        DeviceCommand {
                            id: CommandId::from_random(bytes),
                            device_id: if *other_device {
                                DeviceId::from_random([2; 12])
                            } else {
                                device()
                            },
                            action,
                            issued_at,
                            expires_at: issued_at.plus_secs(*life),
                        }
                    }
                };
                commands.push(cmd.clone());
                oracle.command(&cmd, time);
                let before = without_events(&state);
                if state
                    .apply_command(&cmd, &device(), held.as_ref(), time, &mut next_id)
                    .is_err()
                {
                    prop_assert_eq!(
                        &without_events(&state),
                        &before,
                        "a refused command changed the state"
                    );
                }
            }
            Step::Advance(secs) => now = now.plus_secs(*secs),
            Step::SetWall(offset) => wall_offset = *offset,
        }
        let time = PhoneTime {
            floor: now,
            wall: now.plus_secs(wall_offset),
        };

        let decision = decide_with(held.as_ref(), &state, time);
        let required = oracle.required(time);
        prop_assert!(
            at_least_as_strict(&decision.mode, &required),
            "step {}: {:?}\nenforced {} but the instructions require {}",
            i,
            step,
            decision.mode.name,
            required.name
        );
        let oracle_zones: Vec<ZoneName> = oracle.inside.keys().cloned().collect();
        prop_assert_eq!(&decision.zones, &oracle_zones, "step {}: {:?}", i, step);
        prop_assert_eq!(
            decision.locked_by.is_some(),
            oracle.locked(),
            "step {}: {:?}",
            i,
            step
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn enforced_mode_is_never_looser_than_the_newest_signed_instructions(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        run_trace(&steps)?;
    }
}

#[test]
fn the_oracle_catches_a_state_that_forgets_a_zone() {
    // The property test must be able to fail: a state that drops its zones on restart
    // enforces less than the instructions require.
    let b = bundle();
    let mut s = ZoneState::default();
    let mut next = ids();
    s.apply_code(&lab_code(Direction::In, T0, "n1"), &b, at(T0), next())
        .unwrap();
    let mut oracle = Oracle::default();
    oracle.offer_bundle(&b, at(T0));
    oracle.code(
        &CodeFacts {
            zone: name("lab"),
            checkpoint: name("north-gate"),
            direction: Direction::In,
            genuine: true,
            not_before: T0,
            not_after: T0.plus_secs(30),
            nonce: "n1".into(),
        },
        at(T0),
    );
    let required = oracle.required(at(T0));
    assert!(at_least_as_strict(
        &decide_with(Some(&b), &s, at(T0)).mode,
        &required
    ));
    let forgetful = ZoneState::default();
    assert!(!at_least_as_strict(
        &decide_with(Some(&b), &forgetful, at(T0)).mode,
        &required
    ));
}
