//! Server configuration: a TOML file and `REDOUBT_*` environment variables are read into
//! [`RawConfig`] (unknown keys refused), then validated into [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Most bytes of live (not expired) files one device may store.
    pub max_blob_bytes_per_device: Option<u64>,
    /// Largest MLS message accepted.
    pub max_message_bytes: Option<usize>,
    /// KeyPackage claims a device may make per minute.
    pub key_package_claims_per_minute: Option<u32>,
    /// Below this many one-time KeyPackages a device is told to upload more.
    pub key_package_low_watermark: Option<u64>,
    /// Most one-time KeyPackages kept per device.
    pub key_package_max_stock: Option<u64>,
    /// Most one-time KeyPackages one device hands out per hour, to all claimers
    /// together (then its last-resort one).
    pub key_package_handouts_per_hour: Option<u64>,
    /// Lifetime of a device session (messenger).
    pub device_session_ttl_secs: Option<u64>,
    /// Validity of a checkpoint code shown by a gate terminal (seconds).
    pub gate_code_secs: Option<u32>,
    /// Default lifetime of a device command (lock, wipe, …) before it expires.
    pub command_ttl_secs: Option<u64>,
    /// The organization's addresses (IP literals) a phone under `organization-only`
    /// may reach; they travel in the signed bundle. Default: the listen address and the
    /// public URL's host, when they are IP addresses.
    pub organization_addresses: Option<Vec<String>>,
    /// Seconds a client has to send a request's headers (and a TLS handshake).
    pub header_timeout_secs: Option<u64>,
    /// Seconds a request may take in all, body included (WebSocket sessions excepted).
    pub request_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive connection is kept.
    pub idle_timeout_secs: Option<u64>,
    /// Most connections open at once.
    pub max_connections: Option<usize>,
    /// Most connections open at once from one address (an IPv6 /64 counts as one).
    pub max_connections_per_address: Option<usize>,
    /// Default lifetime of a new gate credential.
    pub gate_credential_ttl_secs: Option<u64>,
    /// Window over which refused enrollments from one source share one audit entry.
    pub refusal_audit_window_secs: Option<u64>,
    /// The PostgreSQL database (`postgres://…`) that several server nodes share;
    /// without it, the embedded SQLite file in the data directory.
    pub database_url: Option<String>,
    /// The organization's server addresses (`https://` origins): every node's, in the
    /// order phones try them. They travel in the signed bundle, so a phone whose server
    /// stops answering goes on through the next one. Default: none (the one address of
    /// the enrollment code).
    pub servers: Option<Vec<String>>,
    /// The NATS server (`nats://host:port`) through which the nodes sharing one
    /// PostgreSQL database tell each other what a phone connected elsewhere must hear.
    /// Needs `database_url`.
    pub nats_url: Option<String>,
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
    "max_blob_bytes_per_device",
    "max_message_bytes",
    "key_package_claims_per_minute",
    "key_package_low_watermark",
    "key_package_max_stock",
    "key_package_handouts_per_hour",
    "device_session_ttl_secs",
    "gate_code_secs",
    "command_ttl_secs",
    "organization_addresses",
    "header_timeout_secs",
    "request_timeout_secs",
    "idle_timeout_secs",
    "max_connections",
    "max_connections_per_address",
    "gate_credential_ttl_secs",
    "refusal_audit_window_secs",
    "database_url",
    "servers",
    "nats_url",
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
    /// Storage quota of each device: bytes of live (not expired) files.
    pub max_blob_bytes_per_device: u64,
    /// Largest MLS message.
    pub max_message_bytes: usize,
    /// KeyPackage claims per device per minute.
    pub key_package_claims_per_minute: u32,
    /// Low KeyPackage stock threshold.
    pub key_package_low_watermark: u64,
    /// Most one-time KeyPackages per device.
    pub key_package_max_stock: u64,
    /// One-time KeyPackages a device hands out per hour to all claimers together.
    pub key_package_handouts_per_hour: u64,
    /// Device session lifetime.
    pub device_session_ttl_secs: u64,
    /// Validity of a gate terminal's checkpoint codes.
    pub gate_code_secs: u32,
    /// Default lifetime of a device command.
    pub command_ttl_secs: u64,
    /// The organization's addresses, signed into every bundle.
    pub organization_addresses: Vec<IpAddr>,
    /// Connection limits and timeouts.
    pub limits: ConnectionLimits,
    /// Default lifetime of a new gate credential (seconds).
    pub gate_credential_ttl_secs: u64,
    /// Window over which refused enrollments from one source share one audit entry.
    pub refusal_audit_window_secs: u64,
    /// The shared PostgreSQL database, if configured (else SQLite in `data`).
    pub database_url: Option<String>,
    /// The organization's server addresses phones fail over between (empty: one server).
    pub servers: Vec<Url>,
    /// The NATS server the nodes share, if there are several.
    pub nats_url: Option<Url>,
}

/// Parses an `https://host[:port]` origin for the setting `key`.
fn parse_origin(key: &str, u: &str) -> anyhow::Result<Url> {
    let url = Url::parse(u).with_context(|| format!("{key} {u:?} is not a URL"))?;
    if url.scheme() != "https" {
        bail!("{key} must be an https:// URL");
    }
    // Phones build every address from it and pin it in enrollment codes (which must be
    // an origin): a path, query or user would be dropped or misread somewhere.
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.host_str().is_none()
    {
        bail!("{key} {u:?} must be an origin (https://host[:port]) without path, query or user");
    }
    Ok(url)
}

/// The host of a URL as a TLS name or an IP literal (without IPv6 brackets).
fn bare_host(u: &Url) -> Option<String> {
    u.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
}

impl Config {
    /// The NATS server named for people and logs: never its user or password.
    pub fn nats_label(&self) -> Option<String> {
        self.nats_url.as_ref().map(|u| {
            format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(4222)
            )
        })
    }

    /// What `Store::open` takes: the PostgreSQL URL, or the SQLite file's path.
    pub fn database(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => crate::pki::database_path(&self.data)
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// The database named for people and logs: never the URL's password.
    pub fn database_label(&self) -> String {
        match self
            .database_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
        {
            Some(url) => format!(
                "PostgreSQL at {}:{}{}",
                url.host_str().unwrap_or("?"),
                url.port().unwrap_or(5432),
                url.path()
            ),
            None => format!(
                "SQLite at {}",
                crate::pki::database_path(&self.data).display()
            ),
        }
    }
}

/// How long a client may take and how many connections it may hold.
///
/// Defaults: a phone holds one device WebSocket and at most one messenger WebSocket,
/// and a box serves 100k+ phones, so the global cap is 250 000. A site behind one NAT
/// address (or one IPv6 /64) shows up as a single source: 1024 per source lets about
/// 500 phones share one public address; a larger site raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to finish the TLS handshake and to send a request's headers.
    pub header_timeout: Duration,
    /// Time for a whole request, body included (not for WebSocket sessions, which
    /// keep themselves alive with ping/pong once upgraded).
    pub request_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one source (IPv4 address or IPv6 /64).
    pub max_connections_per_address: usize,
}

/// Longest lifetime of an admin or gate credential (the `--ttl` bound).
pub const MAX_CREDENTIAL_TTL_SECS: u64 = 5 * 365 * 24 * 3600;

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
        let public_url = self
            .public_url
            .map(|u| parse_origin("public_url", &u))
            .transpose()?;
        let mut servers = Vec::new();
        for u in self.servers.unwrap_or_default() {
            let url = parse_origin("servers", &u)?;
            if !servers.contains(&url) {
                servers.push(url);
            }
        }
        if let Some(p) = &public_url
            && !servers.is_empty()
            && !servers.contains(p)
        {
            bail!(
                "public_url {p} must be one of servers: the phones this node enrolls fail over along that list"
            );
        }
        let mut tls_names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if !listen.ip().is_unspecified() {
            tls_names.push(listen.ip().to_string());
        }
        // Every node's certificate names every server address: one configuration
        // serves all nodes, and a phone failing over checks the name it dialed.
        tls_names.extend(public_url.iter().chain(&servers).filter_map(bare_host));
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
        let key_package_handouts_per_hour = self.key_package_handouts_per_hour.unwrap_or(50);
        let max_file_bytes = self
            .max_file_bytes
            .unwrap_or(25 * 1024 * 1024)
            .clamp(1024, 4 * 1024 * 1024 * 1024);
        let max_blob_bytes_per_device = self.max_blob_bytes_per_device.unwrap_or(256 * 1024 * 1024);
        if max_blob_bytes_per_device < max_file_bytes {
            bail!(
                "max_blob_bytes_per_device ({max_blob_bytes_per_device}) must be at least max_file_bytes ({max_file_bytes})"
            );
        }
        let gate_code_secs = self.gate_code_secs.unwrap_or(30);
        if !(5..=300).contains(&gate_code_secs) {
            bail!("gate_code_secs must be between 5 and 300");
        }
        let command_ttl_secs = self.command_ttl_secs.unwrap_or(7 * 24 * 3600);
        if !(60..=90 * 24 * 3600).contains(&command_ttl_secs) {
            bail!("command_ttl_secs must be between 60 and 7776000");
        }
        let organization_addresses = match self.organization_addresses {
            Some(list) => {
                let mut out = Vec::new();
                for a in list {
                    let ip: IpAddr = a.trim_start_matches('[').trim_end_matches(']').parse().with_context(|| {
                        format!(
                            "organization_addresses: {a:?} is not an IP address (names are not allowed: \
                             a phone must not ask a resolver it does not trust)"
                        )
                    })?;
                    if ip.is_unspecified() {
                        bail!("organization_addresses: {ip} is not an address a phone can reach");
                    }
                    out.push(ip);
                }
                out
            }
            None => {
                let mut out = Vec::new();
                if !listen.ip().is_unspecified() {
                    out.push(listen.ip());
                }
                // Under `organization-only` a phone must still reach every server
                // it may fail over to.
                out.extend(
                    public_url
                        .iter()
                        .chain(&servers)
                        .filter_map(bare_host)
                        .filter_map(|h| h.parse::<IpAddr>().ok()),
                );
                out
            }
        };
        let mut organization_addresses = organization_addresses;
        organization_addresses.sort();
        organization_addresses.dedup();
        let secs =
            |v: Option<u64>, default: u64, name: &str, range: std::ops::RangeInclusive<u64>| {
                let v = v.unwrap_or(default);
                if range.contains(&v) {
                    Ok(Duration::from_secs(v))
                } else {
                    Err(anyhow::anyhow!(
                        "{name} must be between {} and {}",
                        range.start(),
                        range.end()
                    ))
                }
            };
        let limits = ConnectionLimits {
            header_timeout: secs(self.header_timeout_secs, 10, "header_timeout_secs", 1..=300)?,
            request_timeout: secs(
                self.request_timeout_secs,
                300,
                "request_timeout_secs",
                1..=86400,
            )?,
            idle_timeout: secs(self.idle_timeout_secs, 120, "idle_timeout_secs", 1..=86400)?,
            max_connections: self.max_connections.unwrap_or(250_000),
            max_connections_per_address: self.max_connections_per_address.unwrap_or(1024),
        };
        if limits.max_connections == 0 || limits.max_connections_per_address == 0 {
            bail!("max_connections and max_connections_per_address must be at least 1");
        }
        let ttl = |v: Option<u64>, default: u64, name: &str| {
            let v = v.unwrap_or(default);
            if (60..=MAX_CREDENTIAL_TTL_SECS).contains(&v) {
                Ok(v)
            } else {
                Err(anyhow::anyhow!(
                    "{name} must be between 60 and {MAX_CREDENTIAL_TTL_SECS}"
                ))
            }
        };
        let gate_credential_ttl_secs = ttl(
            self.gate_credential_ttl_secs,
            365 * 24 * 3600,
            "gate_credential_ttl_secs",
        )?;
        let refusal_audit_window_secs = self.refusal_audit_window_secs.unwrap_or(300);
        if !(1..=86400).contains(&refusal_audit_window_secs) {
            bail!("refusal_audit_window_secs must be between 1 and 86400");
        }
        let database_url = match self.database_url {
            Some(u) if u.trim().is_empty() => None,
            Some(u) => {
                let parsed = Url::parse(&u)
                    .map_err(|e| anyhow::anyhow!("database_url is not a URL ({e})"))?;
                if !matches!(parsed.scheme(), "postgres" | "postgresql") {
                    bail!(
                        "database_url must be a postgres:// URL (without it the embedded SQLite \
                         database in the data directory is used)"
                    );
                }
                Some(u)
            }
            None => None,
        };
        let nats_url = match self.nats_url {
            Some(u) if u.trim().is_empty() => None,
            Some(u) => {
                let parsed =
                    Url::parse(&u).map_err(|e| anyhow::anyhow!("nats_url is not a URL ({e})"))?;
                if !matches!(parsed.scheme(), "nats" | "tls") || parsed.host_str().is_none() {
                    bail!("nats_url must be a nats://host:port (or tls://host:port) URL");
                }
                if database_url.is_none() {
                    bail!(
                        "nats_url needs database_url: the nodes that share a NATS server must share \
                         one PostgreSQL database (the source of truth NATS only signals changes of)"
                    );
                }
                Some(parsed)
            }
            None => None,
        };
        Ok(Config {
            servers,
            nats_url,
            database_url,
            organization_addresses,
            limits,
            gate_credential_ttl_secs,
            refusal_audit_window_secs,
            gate_code_secs,
            command_ttl_secs,
            message_ttl_secs,
            max_file_bytes,
            max_blob_bytes_per_device,
            max_message_bytes,
            key_package_claims_per_minute: self.key_package_claims_per_minute.unwrap_or(600).max(1),
            key_package_low_watermark: self
                .key_package_low_watermark
                .unwrap_or(20)
                .min(key_package_max_stock),
            key_package_max_stock,
            key_package_handouts_per_hour,
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
        check("public_url = \"https://x.example:8443\"", "ok ");
        check("public_url = \"https://x.example/\"", "ok ");
        for not_an_origin in [
            "https://x.example/redoubt",
            "https://x.example/?a=b",
            "https://x.example/#f",
            "https://user@x.example",
            "https://user:pw@x.example",
        ] {
            check(
                &format!("public_url = \"{not_an_origin}\""),
                "must be an origin",
            );
        }
        check("check_in_interval_secs = 0", "at least 1");
        check("listen = ", "c.toml");
        check("max_connections_per_address = 0", "at least 1");
        check(
            "header_timeout_secs = 0",
            "header_timeout_secs must be between",
        );
        check(
            "max_file_bytes = 2048\nmax_blob_bytes_per_device = 1024",
            "max_blob_bytes_per_device (1024) must be at least max_file_bytes (2048)",
        );
    }

    #[test]
    fn several_nodes_need_origins_a_shared_database_and_a_nats_url() {
        check(
            "servers = [\"https://a.example:8443\", \"http://b.example\"]",
            "servers must be an https:// URL",
        );
        check("servers = [\"https://a.example/x\"]", "must be an origin");
        check(
            "public_url = \"https://c.example\"\nservers = [\"https://a.example\"]",
            "must be one of servers",
        );
        check(
            "nats_url = \"nats://127.0.0.1:4222\"",
            "nats_url needs database_url",
        );
        check(
            "database_url = \"postgres://p@h/db\"\nnats_url = \"http://127.0.0.1:4222\"",
            "nats_url must be a nats://",
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "database_url = \"postgres://p:secret@db.example/redoubt\"\n\
             nats_url = \"nats://u:pw@127.0.0.1:4222\"\n\
             public_url = \"https://10.0.0.2:8443\"\n\
             servers = [\"https://10.0.0.1:8443\", \"https://10.0.0.2:8443\", \"https://n3.example\"]",
        )
        .unwrap();
        let c = RawConfig::load(Some(&p))
            .and_then(RawConfig::resolve)
            .unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.nats_label().unwrap(), "nats://127.0.0.1:4222");
        // Each node's certificate names every server; a phone may reach every one.
        for name in ["10.0.0.1", "10.0.0.2", "n3.example"] {
            assert!(c.tls_names.iter().any(|n| n == name), "{:?}", c.tls_names);
        }
        let reach: Vec<String> = c
            .organization_addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(reach, ["10.0.0.1", "10.0.0.2", "127.0.0.1"]);
    }

    #[test]
    fn storage_and_key_package_limits_have_defaults() {
        let c = RawConfig::default().resolve().unwrap();
        assert_eq!(c.max_blob_bytes_per_device, 256 * 1024 * 1024);
        assert_eq!(c.key_package_handouts_per_hour, 50);
    }

    fn addresses(text: &str) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        RawConfig::load(Some(&p))
            .and_then(RawConfig::resolve)
            .map(|c| {
                c.organization_addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            })
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn organization_addresses_are_ip_literals_defaulting_to_the_servers_own() {
        assert_eq!(addresses("").unwrap(), ["127.0.0.1"]);
        assert_eq!(
            addresses("listen = \"0.0.0.0:8443\"\npublic_url = \"https://[2001:db8::5]:8443\"")
                .unwrap(),
            ["2001:db8::5"]
        );
        // A name says nothing a phone may trust: no default from it.
        assert!(
            addresses("listen = \"0.0.0.0:8443\"\npublic_url = \"https://mdm.example\"")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            addresses(
                "organization_addresses = [\"192.0.2.10\", \"[2001:db8::1]\", \"192.0.2.10\"]"
            )
            .unwrap(),
            ["192.0.2.10", "2001:db8::1"]
        );
        let err = addresses("organization_addresses = [\"mdm.example\"]").unwrap_err();
        assert!(err.contains("not an IP address"), "{err}");
        let err = addresses("organization_addresses = [\"0.0.0.0\"]").unwrap_err();
        assert!(err.contains("not an address a phone can reach"), "{err}");
    }
}
