//! Validated identifiers: `DeviceId`, `ModeName`, `UserName`, `Fingerprint`.
//!
//! Each is parsed once from raw input (`FromStr`, serde) and is valid from then on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct IdError {
    /// Which kind of identifier was expected.
    pub what: &'static str,
    /// The rejected input (truncated to 64 characters).
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

pub(crate) fn id_error(what: &'static str, value: &str, rule: &'static str) -> IdError {
    IdError {
        what,
        value: value.chars().take(64).collect(),
        rule,
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> Result<(), &'static str> = $check;
                check(s).map_err(|rule| id_error($what, s, rule))?;
                Ok($name(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_id;

string_id!(
    /// A device's identifier, assigned by the server at enrollment: `dev_` + 24 lowercase hex digits.
    DeviceId,
    "device id",
    |s| {
        let hex = s.strip_prefix("dev_").ok_or("must start with dev_")?;
        if hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(())
        } else {
            Err("must be dev_ followed by 24 lowercase hex digits")
        }
    }
);

impl DeviceId {
    /// Builds a device id from 12 random bytes.
    pub fn from_random(bytes: [u8; 12]) -> Self {
        DeviceId(format!("dev_{}", hex::encode(bytes)))
    }
}

fn lower_hex_with_prefix(s: &str, prefix: &str, digits: usize) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == digits
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

string_id!(
    /// A conversation (MLS group) id, chosen by its creator: `grp_` + 32 lowercase hex digits.
    /// The MLS group id is these bytes as UTF-8.
    GroupId,
    "conversation id",
    |s| {
        if lower_hex_with_prefix(s, "grp_", 32) {
            Ok(())
        } else {
            Err("must be grp_ followed by 32 lowercase hex digits")
        }
    }
);

impl GroupId {
    /// Builds a group id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        GroupId(format!("grp_{}", hex::encode(bytes)))
    }
}

string_id!(
    /// An uploaded (encrypted) file's id, chosen by the server: `blob_` + 32 lowercase hex digits.
    BlobId,
    "blob id",
    |s| {
        if lower_hex_with_prefix(s, "blob_", 32) {
            Ok(())
        } else {
            Err("must be blob_ followed by 32 lowercase hex digits")
        }
    }
);

impl BlobId {
    /// Builds a blob id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        BlobId(format!("blob_{}", hex::encode(bytes)))
    }
}

string_id!(
    /// A mode's name: 1–48 characters of `a-z`, `0-9` and `-`, starting with a letter.
    ModeName,
    "mode name",
    |s| {
        let ok_len = (1..=48).contains(&s.len());
        let ok_first = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok_len && ok_first && ok_chars {
            Ok(())
        } else {
            Err("use 1-48 characters a-z, 0-9 and '-', starting with a letter")
        }
    }
);

string_id!(
    /// A device group's name (a unit, a department, a site): 1–64 characters of `a-z`,
    /// `0-9`, `-` and `.`, starting with a letter.
    DeviceGroupName,
    "device group name",
    |s| {
        let ok_len = (1..=64).contains(&s.len());
        let ok_first = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if ok_len && ok_first && ok_chars {
            Ok(())
        } else {
            Err("use 1-64 characters a-z, 0-9, '-' and '.', starting with a letter")
        }
    }
);

string_id!(
    /// A person's user name: 1–64 characters of letters, digits and `. _ @ -`.
    UserName,
    "user name",
    |s| {
        let ok_len = (1..=64).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
        if ok_len && ok_chars {
            Ok(())
        } else {
            Err("use 1-64 characters: letters, digits, '.', '_', '@', '-'")
        }
    }
);

/// The SHA-256 fingerprint of a certificate's DER encoding, written `sha256:` + 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Fingerprint {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let rule = "must be sha256: followed by 64 hex digits";
        let hex = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(|| id_error("CA fingerprint", s, rule))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex.to_ascii_lowercase(), &mut out)
            .map_err(|_| id_error("CA fingerprint", s, rule))?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: FromStr>(input: &str, ok: bool) {
        assert_eq!(input.parse::<T>().is_ok(), ok, "{input:?}");
    }

    #[test]
    fn device_ids() {
        check::<DeviceId>("dev_0123456789abcdef01234567", true);
        check::<DeviceId>("dev_0123456789ABCDEF01234567", false);
        check::<DeviceId>("dev_0123", false);
        check::<DeviceId>("0123456789abcdef01234567", false);
        check::<DeviceId>("../../etc/passwd", false);
    }

    #[test]
    fn mode_names() {
        check::<ModeName>("secure-site", true);
        check::<ModeName>("night2", true);
        check::<ModeName>("", false);
        check::<ModeName>("Secure", false);
        check::<ModeName>("-x", false);
        check::<ModeName>(&"a".repeat(49), false);
    }

    #[test]
    fn user_names() {
        check::<UserName>("alice", true);
        check::<UserName>("a.b_c@d-e", true);
        check::<UserName>("", false);
        check::<UserName>("bob smith", false);
    }

    #[test]
    fn fingerprints_round_trip() {
        let f = Fingerprint::of_der(b"cert");
        let s = f.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 71);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
        check::<Fingerprint>("sha256:abc", false);
        check::<Fingerprint>("md5:00", false);
    }
}
