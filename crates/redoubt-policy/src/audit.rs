//! The audit log's hash chain and its verification. Pure: no IO, no clock.
//!
//! Each entry's hash is the SHA-256 of an unambiguous encoding of its fields and of
//! the previous entry's hash, so changing, removing, inserting or moving an entry
//! breaks the chain from that entry on. The newest entry's `(seq, hash)` is signed by
//! the organization key (the *head*), so deleting the newest entries or rolling the
//! log back to an older state is detected too.
//!
//! The encoding hashed, in order:
//! `"redoubt-audit-v1\0"`, the previous hash, `seq` (u64 big-endian), the time (i64
//! Unix seconds, big-endian), actor, source, action, the device id (a byte 0 when
//! absent, else 1 and the id) and the detail as canonical compact JSON (object keys
//! sorted). Every string is preceded by its length in bytes (u64 big-endian), so no
//! two different splits of the same characters into fields give the same bytes.

use ed25519_dalek::VerifyingKey;
use redoubt_proto::{AuditEntry, AuditHead, DeviceId, SignedEnvelope, Timestamp};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry, and the hash of an empty log: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &[u8] = b"redoubt-audit-v1\0";

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The detail as compact JSON with object keys sorted by their bytes, so the hash does
/// not depend on the order a JSON library keeps keys in.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serializing a string, number, bool or null into memory cannot fail.
    out.extend_from_slice(serde_json::to_string(value).unwrap_or_default().as_bytes());
}

/// Hex SHA-256 of one entry chained to `prev_hash` (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    prev_hash: &str,
    seq: u64,
    at: Timestamp,
    actor: &str,
    source: &str,
    action: &str,
    device_id: Option<&DeviceId>,
    detail: &Value,
) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    field(&mut h, prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(at.unix().to_be_bytes());
    field(&mut h, actor.as_bytes());
    field(&mut h, source.as_bytes());
    field(&mut h, action.as_bytes());
    match device_id {
        None => h.update([0u8]),
        Some(d) => {
            h.update([1u8]);
            field(&mut h, d.as_str().as_bytes());
        }
    }
    field(&mut h, &canonical_json(detail));
    hex::encode(h.finalize())
}

/// The hash `entry` should carry, recomputed from its fields and its `prev_hash`.
pub fn recompute_hash(entry: &AuditEntry) -> String {
    entry_hash(
        &entry.prev_hash,
        entry.seq,
        entry.at,
        &entry.actor,
        &entry.source,
        &entry.action,
        entry.device_id.as_ref(),
        &entry.detail,
    )
}

/// A log that verified: every entry chains to the previous one and the organization
/// signed its newest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLog {
    /// Number of entries.
    pub entries: u64,
    /// The signed head (its `seq` and `hash` are those of the newest entry).
    pub head: AuditHead,
}

/// Why a log failed verification. Every variant but [`AuditError::BadHeadSignature`]
/// names the first bad entry by its sequence number ([`AuditError::seq`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The entry's fields no longer give its hash.
    #[error("entry #{seq} was edited: its contents do not match its hash")]
    Edited {
        /// The entry.
        seq: u64,
    },
    /// The log jumps over this sequence number and it appears nowhere.
    #[error("entry #{seq} is missing (deleted): the log goes from #{before} to #{found}")]
    Missing {
        /// The first missing entry.
        seq: u64,
        /// The entry before the gap (0: the start of the log).
        before: u64,
        /// The entry found after the gap.
        found: u64,
    },
    /// Another entry stands where this one should be.
    #[error("entry #{seq} is out of order: {what}")]
    OutOfOrder {
        /// The first position holding the wrong entry.
        seq: u64,
        /// What was found there.
        what: String,
    },
    /// The entry does not chain to the one before it, and it is not another entry of
    /// the log moved here.
    #[error(
        "entry #{seq} does not follow entry #{before}: an entry there was replaced, or entries were deleted and the rest renumbered"
    )]
    BrokenLink {
        /// The entry.
        seq: u64,
        /// The entry before it.
        before: u64,
    },
    /// The signed head names another entry than the newest one.
    #[error("entry #{seq} {what}")]
    HeadMismatch {
        /// The first entry concerned: the first deleted one, or the first one the
        /// signature does not cover.
        seq: u64,
        /// What does not match.
        what: String,
    },
    /// The head is not signed by the organization key.
    #[error("the signed head is not valid for this organization key: {0}")]
    BadHeadSignature(String),
}

impl AuditError {
    /// The first bad entry's sequence number, when one is named.
    pub fn seq(&self) -> Option<u64> {
        match self {
            AuditError::Edited { seq }
            | AuditError::Missing { seq, .. }
            | AuditError::OutOfOrder { seq, .. }
            | AuditError::BrokenLink { seq, .. }
            | AuditError::HeadMismatch { seq, .. } => Some(*seq),
            AuditError::BadHeadSignature(_) => None,
        }
    }
}

fn short(hash: &str) -> String {
    hash.chars().take(16).collect()
}

/// Checks a whole log, oldest first, against its signed head: sequence numbers run
/// 1..=N without gaps, each entry chains to the previous one and recomputes to its
/// hash, and the head is signed by `org_key` and names exactly the newest entry.
/// The error names the first bad entry.
pub fn verify_log(
    entries: &[AuditEntry],
    head: &SignedEnvelope,
    org_key: &VerifyingKey,
) -> Result<VerifiedLog, AuditError> {
    let mut prev_hash = GENESIS;
    for (i, e) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if e.seq != expected {
            let later = entries[i + 1..].iter().any(|x| x.seq == expected);
            return Err(if e.seq > expected && !later {
                AuditError::Missing {
                    seq: expected,
                    before: expected - 1,
                    found: e.seq,
                }
            } else {
                AuditError::OutOfOrder {
                    seq: expected,
                    what: format!("entry #{} stands in its place", e.seq),
                }
            });
        }
        if e.prev_hash != prev_hash {
            // An entry of this log moved here still names its old predecessor.
            let moved = entries
                .iter()
                .enumerate()
                .find(|(j, x)| *j + 1 != i && x.hash == e.prev_hash);
            return Err(match moved {
                Some((j, x)) => AuditError::OutOfOrder {
                    seq: expected,
                    what: format!(
                        "it holds the entry that followed the one now at #{} (position {})",
                        x.seq,
                        j + 1
                    ),
                },
                None if i == 0 && e.prev_hash != GENESIS => AuditError::BrokenLink {
                    seq: expected,
                    before: 0,
                },
                None => AuditError::BrokenLink {
                    seq: expected,
                    before: expected - 1,
                },
            });
        }
        if recompute_hash(e) != e.hash {
            return Err(AuditError::Edited { seq: expected });
        }
        prev_hash = &e.hash;
    }
    let signed: AuditHead = head
        .verify(AuditHead::KIND, org_key)
        .map_err(|e| AuditError::BadHeadSignature(e.to_string()))?;
    let last = entries.len() as u64;
    if signed.seq > last {
        return Err(AuditError::HeadMismatch {
            seq: last + 1,
            what: if signed.seq == last + 1 {
                format!(
                    "is missing: the signed head names entry #{} but the log ends at #{last} (the newest entry was deleted, or the log rolled back)",
                    signed.seq
                )
            } else {
                format!(
                    "is missing: the signed head names entry #{} but the log ends at #{last} (the newest {} entries were deleted, or the log rolled back)",
                    signed.seq,
                    signed.seq - last
                )
            },
        });
    }
    if signed.seq < last {
        return Err(AuditError::HeadMismatch {
            seq: signed.seq + 1,
            what: format!(
                "is not covered by the signed head, which ends at #{} (entries were added without the organization key, or the head was rolled back)",
                signed.seq
            ),
        });
    }
    if signed.hash != prev_hash {
        return Err(AuditError::HeadMismatch {
            seq: last.max(1),
            what: format!(
                "differs from the entry the head signed (hash {}… instead of {}…): the log was replaced or rolled back",
                short(prev_hash),
                short(&signed.hash)
            ),
        });
    }
    Ok(VerifiedLog {
        entries: last,
        head: signed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ed25519_dalek::SigningKey;
    use serde_json::json;

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn entry(prev: &str, seq: u64, action: &str, detail: Value) -> AuditEntry {
        let mut e = AuditEntry {
            seq,
            at: Timestamp(1_800_000_000 + seq as i64),
            actor: "admin:alice".into(),
            source: "10.0.0.1".into(),
            action: action.into(),
            device_id: seq
                .is_multiple_of(2)
                .then(|| DeviceId::from_random([seq as u8; 12])),
            detail,
            prev_hash: prev.into(),
            hash: String::new(),
        };
        e.hash = recompute_hash(&e);
        e
    }

    fn log(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or(GENESIS.to_owned(), |e| e.hash.clone());
            out.push(entry(
                &prev,
                seq,
                "device.mode",
                json!({"n": seq, "to": "lockdown"}),
            ));
        }
        out
    }

    fn head_of(entries: &[AuditEntry], k: &SigningKey) -> SignedEnvelope {
        let (seq, hash) = entries
            .last()
            .map_or((0, GENESIS.to_owned()), |e| (e.seq, e.hash.clone()));
        SignedEnvelope::sign(
            AuditHead::KIND,
            &AuditHead {
                seq,
                hash,
                signed_at: Timestamp(1_900_000_000),
            },
            k,
        )
    }

    fn check(entries: &[AuditEntry], head: &SignedEnvelope) -> Result<VerifiedLog, AuditError> {
        verify_log(entries, head, &key().verifying_key())
    }

    #[test]
    fn an_intact_log_verifies() {
        let l = log(5);
        let v = check(&l, &head_of(&l, &key())).unwrap();
        assert_eq!(v.entries, 5);
        assert_eq!(v.head.seq, 5);
        assert_eq!(v.head.hash, l[4].hash);
        assert_eq!(l[0].prev_hash, GENESIS);
        assert_eq!(check(&[], &head_of(&[], &key())).unwrap().entries, 0);
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256_and_depend_on_every_field() {
        let base = entry(GENESIS, 1, "a", json!({"x": 1}));
        assert_eq!(base.hash.len(), 64);
        assert!(
            base.hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let variants: [fn(&mut AuditEntry); 8] = [
            |e| e.prev_hash = "1".repeat(64),
            |e| e.seq = 2,
            |e| e.at = Timestamp(e.at.0 + 1),
            |e| e.actor.push('x'),
            |e| e.source.push('x'),
            |e| e.action.push('x'),
            |e| e.device_id = Some(DeviceId::from_random([1; 12])),
            |e| e.detail = json!({"x": 2}),
        ];
        for change in variants {
            let mut e = base.clone();
            change(&mut e);
            assert_ne!(recompute_hash(&e), base.hash, "{e:?}");
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let d = json!({});
        let t = Timestamp(1);
        let a = entry_hash(GENESIS, 1, t, "admin:a", "b", "c", None, &d);
        let b = entry_hash(GENESIS, 1, t, "admin:", "ab", "c", None, &d);
        let c = entry_hash(GENESIS, 1, t, "admin:a", "", "bc", None, &d);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        // An empty source is not the same as no device, nor a moved detail.
        let with_dev = entry_hash(
            GENESIS,
            1,
            t,
            "x",
            "",
            "y",
            Some(&DeviceId::from_random([0; 12])),
            &d,
        );
        assert_ne!(with_dev, entry_hash(GENESIS, 1, t, "x", "", "y", None, &d));
        assert_ne!(
            entry_hash(GENESIS, 1, t, "x", "", "y", None, &json!("z")),
            entry_hash(GENESIS, 1, t, "x", "", "yz", None, &json!(""))
        );
    }

    #[test]
    fn key_order_of_the_detail_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"2"],"x":null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"2"]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), br#"{"a":{"x":null,"y":[1,"2"]},"b":1}"#);
        let t = Timestamp(5);
        assert_eq!(
            entry_hash(GENESIS, 1, t, "a", "b", "c", None, &a),
            entry_hash(GENESIS, 1, t, "a", "b", "c", None, &b)
        );
    }

    #[test]
    fn an_edited_entry_is_named() {
        let mut l = log(5);
        let head = head_of(&l, &key());
        l[2].detail = json!({"n": 3, "to": "standard"});
        assert_eq!(check(&l, &head), Err(AuditError::Edited { seq: 3 }));
        let mut l = log(5);
        l[3].actor = "admin:mallory".into();
        assert_eq!(check(&l, &head), Err(AuditError::Edited { seq: 4 }));
    }

    #[test]
    fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let mut l = log(5);
        let head = head_of(&l, &key());
        l[1].detail = json!({"forged": true});
        l[1].hash = recompute_hash(&l[1]);
        assert_eq!(
            check(&l, &head),
            Err(AuditError::BrokenLink { seq: 3, before: 2 })
        );
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let mut l = log(6);
        let head = head_of(&l, &key());
        l.remove(2);
        let err = check(&l, &head).unwrap_err();
        assert_eq!(
            err,
            AuditError::Missing {
                seq: 3,
                before: 2,
                found: 4
            }
        );
        assert!(err.to_string().starts_with("entry #3 is missing"), "{err}");
        let mut l = log(3);
        l.remove(0);
        assert_eq!(check(&l, &head).unwrap_err().seq(), Some(1));
    }

    #[test]
    fn deleting_and_renumbering_breaks_the_chain() {
        let mut l = log(5);
        let head = head_of(&l, &key());
        l.remove(1);
        for (i, e) in l.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(
            check(&l, &head),
            Err(AuditError::BrokenLink { seq: 2, before: 1 })
        );
    }

    #[test]
    fn reordered_entries_are_named() {
        // Swapped in the list.
        let mut l = log(5);
        let head = head_of(&l, &key());
        l.swap(1, 3);
        let err = check(&l, &head).unwrap_err();
        assert!(
            matches!(err, AuditError::OutOfOrder { seq: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("out of order"), "{err}");
        // Swapped sequence numbers (the rows exchanged places).
        let mut l = log(5);
        let (a, b) = (l[1].seq, l[2].seq);
        l[1].seq = b;
        l[2].seq = a;
        l.swap(1, 2);
        let err = check(&l, &head).unwrap_err();
        assert!(
            matches!(err, AuditError::OutOfOrder { seq: 2, .. }),
            "{err}"
        );
        // A duplicate.
        let mut l = log(3);
        let dup = l[1].clone();
        l.insert(2, dup);
        assert!(matches!(
            check(&l, &head),
            Err(AuditError::OutOfOrder { seq: 3, .. })
        ));
    }

    #[test]
    fn deleting_the_newest_entries_is_a_head_mismatch() {
        let mut l = log(5);
        let head = head_of(&l, &key());
        l.pop();
        let err = check(&l, &head).unwrap_err();
        assert!(
            matches!(err, AuditError::HeadMismatch { seq: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("entry #5"), "{err}");
        l.pop();
        assert_eq!(check(&l, &head).unwrap_err().seq(), Some(4));
        assert_eq!(check(&[], &head).unwrap_err().seq(), Some(1));
    }

    #[test]
    fn entries_beyond_the_head_are_not_covered() {
        let full = log(5);
        let old_head = head_of(&full[..3], &key());
        let err = check(&full, &old_head).unwrap_err();
        assert!(
            matches!(err, AuditError::HeadMismatch { seq: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_rolled_back_log_of_the_same_length_is_a_head_mismatch() {
        let l = log(4);
        let head = head_of(&l, &key());
        let mut other = log(3);
        let prev = other[2].hash.clone();
        other.push(entry(&prev, 4, "device.enroll", json!({})));
        assert!(matches!(
            check(&other, &head),
            Err(AuditError::HeadMismatch { seq: 4, .. })
        ));
    }

    #[test]
    fn a_forged_or_foreign_head_is_refused() {
        let l = log(3);
        let foreign = head_of(&l, &SigningKey::from_bytes(&[8; 32]));
        assert!(matches!(
            check(&l, &foreign),
            Err(AuditError::BadHeadSignature(_))
        ));
        let mut tampered = head_of(&l, &key());
        tampered.payload = head_of(&l[..2], &key()).payload;
        assert!(matches!(
            check(&l, &tampered),
            Err(AuditError::BadHeadSignature(_))
        ));
        let wrong_kind = SignedEnvelope::sign(
            "policy-bundle/v1",
            &AuditHead {
                seq: 3,
                hash: l[2].hash.clone(),
                signed_at: Timestamp(1),
            },
            &key(),
        );
        assert!(matches!(
            check(&l, &wrong_kind),
            Err(AuditError::BadHeadSignature(_))
        ));
    }

    #[test]
    fn the_first_bad_entry_wins() {
        let mut l = log(6);
        let head = head_of(&l, &key());
        l[4].detail = json!("late edit");
        l[1].action = "early edit".into();
        assert_eq!(check(&l, &head), Err(AuditError::Edited { seq: 2 }));
    }
}
