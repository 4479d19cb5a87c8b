//! Server configuration: a TOML file and `REDOUBT_*` environment variables are read into
//! [`RawConfig`] (unknown keys refused), then validated into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use url::Url;

/// The configuration as written: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Data directory.
    pub data: Option<PathBuf>,
    /// Address to listen on.
    pub listen: Option<String>,
    /// The URL phones use to reach the server (goes into enrollment codes).
    pub public_url: Option<String>,
    /// Extra DNS names / IPs for the server certificate.
    pub tls_names: Option<Vec<String>>,
    /// Seconds between agent check-ins.
    pub check_in_interval_secs: Option<u32>,
    /// A device with no report for this many check-in intervals is `stale`.
    pub stale_after_intervals: Option<u32>,
    /// Lifetime of a policy bundle.
    pub bundle_ttl_secs: Option<u64>,
    /// Default lifetime of an enrollment token.
    pub enrollment_ttl_secs: Option<u64>,
    /// Enrollment attempts allowed per client address per minute.
    pub enroll_attempts_per_minute: Option<u32>,
    /// Largest request body accepted.
    pub max_body_bytes: Option<usize>,
    /// How long undelivered messages and uploaded files are kept.
    pub message_ttl_secs: Option<u64>,
    /// Largest file a device may upload (encrypted size).
    pub max_file_bytes: Option<u64>,
    /// Largest MLS message accepted.
    pub max_message_bytes: Option<usize>,
    /// KeyPackage claims a device may make per minute.
    pub key_package_claims_per_minute: Option<u32>,
    /// Below this many one-time KeyPackages a device is told to upload more.
    pub key_package_low_watermark: Option<u64>,
    /// Most one-time KeyPackages kept per device.
    pub key_package_max_stock: Option<u64>,
    /// Lifetime of a device session (messenger).
    pub device_session_ttl_secs: Option<u64>,
    /// Validity of a checkpoint code shown by a gate terminal (seconds).
    pub gate_code_secs: Option<u32>,
    /// Default lifetime of a device command (lock, wipe, …) before it expires.
    pub command_ttl_secs: Option<u64>,
}

/// Names of the keys, for the `REDOUBT_*` environment overlay.
const KEYS: &[&str] = &[
    "data",
    "listen",
    "public_url",
    "tls_names",
    "check_in_interval_secs",
    "stale_after_intervals",
    "bundle_ttl_secs",
    "enrollment_ttl_secs",
    "enroll_attempts_per_minute",
    "max_body_bytes",
    "message_ttl_secs",
    "max_file_bytes",
    "max_message_bytes",
    "key_package_claims_per_minute",
    "key_package_low_watermark",
    "key_package_max_stock",
    "device_session_ttl_secs",
    "gate_code_secs",
    "command_ttl_secs",
];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Public URL, when configured (else derived from the bound address).
    pub public_url: Option<Url>,
    /// Names for the server certificate.
    pub tls_names: Vec<String>,
    /// Seconds between check-ins.
    pub check_in_interval_secs: u32,
    /// Stale threshold in intervals.
    pub stale_after_intervals: u32,
    /// Bundle lifetime.
    pub bundle_ttl_secs: u64,
    /// Default enrollment token lifetime.
    pub enrollment_ttl_secs: u64,
    /// Enrollment attempts per address per minute.
    pub enroll_attempts_per_minute: u32,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Lifetime of undelivered messages and files.
    pub message_ttl_secs: u64,
    /// Largest upload.
    pub max_file_bytes: u64,
    /// Largest MLS message.
    pub max_message_bytes: usize,
    /// KeyPackage claims per device per minute.
    pub key_package_claims_per_minute: u32,
    /// Low KeyPackage stock threshold.
    pub key_package_low_watermark: u64,
    /// Most one-time KeyPackages per device.
    pub key_package_max_stock: u64,
    /// Device session lifetime.
    pub device_session_ttl_secs: u64,
    /// Validity of a gate terminal's checkpoint codes.
    pub gate_code_secs: u32,
    /// Default lifetime of a device command.
    pub command_ttl_secs: u64,
}

/// Longest enrollment token lifetime accepted.
pub const MAX_ENROLLMENT_TTL_SECS: u64 = 30 * 24 * 3600;

impl RawConfig {
    /// Reads `file` (if given) and overlays `REDOUBT_<KEY>` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<RawConfig> {
        let mut table = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config file {}", p.display()))?
            }
            None => toml::Table::new(),
        };
        for key in KEYS {
            let var = format!("REDOUBT_{}", key.to_ascii_uppercase());
            if let Ok(v) = std::env::var(&var) {
                // Numbers and lists are written as TOML values; anything else is a string.
                let value = format!("v = {v}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or(toml::Value::String(v));
                table.insert((*key).to_owned(), value);
            }
        }
        RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))
    }

    /// Validates into a [`Config`].
    pub fn resolve(self) -> anyhow::Result<Config> {
        let listen_s = self.listen.unwrap_or_else(|| "127.0.0.1:8443".into());
        let listen: SocketAddr = listen_s
            .parse()
            .with_context(|| format!("listen address {listen_s:?} is not IP:PORT"))?;
        let public_url = match self.public_url {
            Some(u) => {
                let url =
                    Url::parse(&u).with_context(|| format!("public_url {u:?} is not a URL"))?;
                if url.scheme() != "https" {
                    bail!("public_url must be an https:// URL");
                }
                Some(url)
            }
            None => None,
        };
        let mut tls_names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !listen.ip().is_unspecified() {
            tls_names.push(listen.ip().to_string());
        }
        if let Some(host) = public_url.as_ref().and_then(|u| u.host_str()) {
            tls_names.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            );
        }
        tls_names.extend(self.tls_names.unwrap_or_default());
        tls_names.sort();
        tls_names.dedup();
        let check_in_interval_secs = self.check_in_interval_secs.unwrap_or(300);
        if check_in_interval_secs == 0 {
            bail!("check_in_interval_secs must be at least 1");
        }
        let stale_after_intervals = self.stale_after_intervals.unwrap_or(3).max(1);
        let bundle_ttl_secs = self.bundle_ttl_secs.unwrap_or(7 * 24 * 3600);
        if bundle_ttl_secs < 60 {
            bail!("bundle_ttl_secs must be at least 60");
        }
        let enrollment_ttl_secs = self.enrollment_ttl_secs.unwrap_or(24 * 3600);
        if enrollment_ttl_secs == 0 || enrollment_ttl_secs > MAX_ENROLLMENT_TTL_SECS {
            bail!("enrollment_ttl_secs must be between 1 and {MAX_ENROLLMENT_TTL_SECS}");
        }
        let message_ttl_secs = self.message_ttl_secs.unwrap_or(14 * 24 * 3600);
        if message_ttl_secs < 60 {
            bail!("message_ttl_secs must be at least 60");
        }
        let max_message_bytes = self.max_message_bytes.unwrap_or(1024 * 1024);
        if !(4096..=64 * 1024 * 1024).contains(&max_message_bytes) {
            bail!("max_message_bytes must be between 4096 and 67108864");
        }
        let key_package_max_stock = self.key_package_max_stock.unwrap_or(500).max(1);
        let gate_code_secs = self.gate_code_secs.unwrap_or(30);
        if !(5..=300).contains(&gate_code_secs) {
            bail!("gate_code_secs must be between 5 and 300");
        }
        let command_ttl_secs = self.command_ttl_secs.unwrap_or(7 * 24 * 3600);
        if !(60..=90 * 24 * 3600).contains(&command_ttl_secs) {
            bail!("command_ttl_secs must be between 60 and 7776000");
        }
        Ok(Config {
            gate_code_secs,
            command_ttl_secs,
            message_ttl_secs,
            max_file_bytes: self
                .max_file_bytes
                .unwrap_or(25 * 1024 * 1024)
                .clamp(1024, 4 * 1024 * 1024 * 1024),
            max_message_bytes,
            key_package_claims_per_minute: self.key_package_claims_per_minute.unwrap_or(600).max(1),
            key_package_low_watermark: self
                .key_package_low_watermark
                .unwrap_or(20)
                .min(key_package_max_stock),
            key_package_max_stock,
            device_session_ttl_secs: self
                .device_session_ttl_secs
                .unwrap_or(3600)
                .clamp(60, 86400),
            data: self.data.unwrap_or_else(|| PathBuf::from("./redoubt-data")),
            listen,
            public_url,
            tls_names,
            check_in_interval_secs,
            stale_after_intervals,
            bundle_ttl_secs,
            enrollment_ttl_secs,
            enroll_attempts_per_minute: self.enroll_attempts_per_minute.unwrap_or(30).max(1),
            max_body_bytes: self
                .max_body_bytes
                .unwrap_or(64 * 1024)
                .clamp(1024, 16 * 1024 * 1024),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &str) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let got = match RawConfig::load(Some(&p)).and_then(RawConfig::resolve) {
            Ok(c) => format!("ok {} {}", c.listen, c.check_in_interval_secs),
            Err(e) => format!("{e:#}"),
        };
        assert!(got.contains(expect), "{got}");
    }

    #[test]
    fn files_are_parsed_strictly() {
        check(
            "listen = \"0.0.0.0:9443\"\ncheck_in_interval_secs = 60\n",
            "ok 0.0.0.0:9443 60",
        );
        check("", "ok 127.0.0.1:8443 300");
        check("lisen = \"x\"", "unknown field `lisen`");
        check("listen = \"nowhere\"", "is not IP:PORT");
        check("public_url = \"http://x\"", "https://");
        check("check_in_interval_secs = 0", "at least 1");
        check("listen = ", "c.toml");
    }
}
