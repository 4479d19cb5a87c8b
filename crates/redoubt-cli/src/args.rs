//! The command line as clap sees it: global connection options and the subcommand tree.
//!
//! Every argument is parsed here into a validated type (`Url`, `Fingerprint`,
//! `UserName`, `ModeName`, `DeviceId`, `Duration`), so a typo is refused before any
//! file is read or any connection is opened. Whether a server, token and fingerprint
//! were given at all is checked later, by [`Global::connection`], so that
//! `modes apply` can check its file before it needs a server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use redoubt_client::ServerClient;
use redoubt_proto::{DeviceId, Fingerprint, GroupId, ModeName, UserName};
use url::Url;

/// The `redoubt` admin command line.
#[derive(Debug, Parser)]
#[command(
    name = "redoubt",
    version,
    about = "Administer a Redoubt server: enroll phones, assign modes, define modes.",
    after_help = "Connection settings come from the options or from REDOUBT_SERVER, \
                  REDOUBT_TOKEN and REDOUBT_CA_FINGERPRINT."
)]
pub struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output options, accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// The server's base URL, e.g. https://redoubt.example.org:8443
    #[arg(
        long,
        env = "REDOUBT_SERVER",
        global = true,
        value_name = "URL",
        value_parser = parse_server_url,
        help_heading = "Connection"
    )]
    pub server: Option<Url>,

    /// The admin API token (prefer the environment variable: options are visible to
    /// other users of this machine).
    #[arg(
        long,
        env = "REDOUBT_TOKEN",
        global = true,
        value_name = "TOKEN",
        hide_env_values = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,

    /// SHA-256 fingerprint of the organization CA; the only certificate trusted.
    #[arg(
        long,
        env = "REDOUBT_CA_FINGERPRINT",
        global = true,
        value_name = "sha256:HEX",
        value_parser = parse_fingerprint,
        help_heading = "Connection"
    )]
    pub ca_fingerprint: Option<Fingerprint>,

    /// Print the server's JSON answer instead of text.
    #[arg(long, global = true, help_heading = "Connection")]
    pub json: bool,
}

impl Global {
    /// A client for the configured server, or an error naming what is missing and
    /// how to give it.
    pub fn connection(&self) -> anyhow::Result<ServerClient> {
        let Some(server) = self.server.clone() else {
            bail!("no server given: set REDOUBT_SERVER or pass --server URL");
        };
        let Some(pin) = self.ca_fingerprint else {
            bail!(
                "no CA fingerprint given: set REDOUBT_CA_FINGERPRINT or pass \
                 --ca-fingerprint sha256:HEX (the organization CA's certificate fingerprint)"
            );
        };
        let token = match self.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => bail!("no admin token given: set REDOUBT_TOKEN or pass --token TOKEN"),
        };
        ServerClient::new(server, pin, Some(token)).context("cannot set up the HTTPS client")
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create enrollment codes for new phones.
    #[command(subcommand)]
    Enroll(EnrollCommand),
    /// List, inspect and assign modes to enrolled devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// List, inspect and define modes.
    #[command(subcommand)]
    Modes(ModesCommand),
    /// Show who the admin token belongs to and its role.
    Whoami,
    /// The messenger on a phone: end-to-end encrypted conversations of the device
    /// whose messenger directory is --state (needs no admin credential, nor the
    /// agent's state directory or device key).
    Chat(ChatArgs),
    /// Secured zones, their checkpoints, gate terminals and checkpoint codes.
    #[command(subcommand)]
    Zones(crate::zones::ZonesCommand),
    /// The tamper-evident audit log: list, verify, export.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// Admin credentials: list them, revoke one.
    #[command(subcommand)]
    Tokens(crate::tokens::TokensCommand),
    /// Device groups (a unit, a department, a site) and the modes they assign.
    #[command(subcommand)]
    Groups(crate::groups::GroupsCommand),
    /// The fleet's device commands (lock, unlock, wipe, …) and their states.
    #[command(subcommand)]
    Commands(crate::fleet::CommandsCommand),
}

/// `redoubt chat --state DIR ...`
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The messenger directory written by `redoubt-agent enroll` (its
    /// `--messenger-dir`), or an agent state directory holding one in `messenger/`.
    #[arg(long, value_name = "DIR")]
    pub state: PathBuf,
    /// What to do; without one, the interactive terminal chat opens.
    #[command(subcommand)]
    pub command: Option<ChatCommand>,
}

/// `redoubt chat` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Create a conversation with these people (all their devices).
    Create {
        /// The conversation's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// The other people, comma-separated.
        #[arg(
            long,
            value_name = "USER[,USER...]",
            value_delimiter = ',',
            required = true
        )]
        members: Vec<UserName>,
        /// Deliver only to devices that comply with this mode (e.g. secure-site).
        #[arg(long, value_name = "MODE")]
        clearance: Option<ModeName>,
    },
    /// Send a text message.
    Send {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
        /// The text.
        #[arg(value_name = "TEXT")]
        text: String,
    },
    /// Send a file (encrypted on this device; the server stores only ciphertext).
    SendFile {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
        /// The file.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Download, decrypt and check a received file, and write it to PATH.
    SaveFile {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
        /// The message id (as printed by `read --json`).
        #[arg(value_name = "MESSAGE_ID")]
        message: String,
        /// Where to write it (must not exist).
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Fetch, decrypt and print a conversation's messages.
    Read {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
    },
    /// Add a person (all their enrolled devices).
    Add {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
        /// The person.
        #[arg(value_name = "USER")]
        user: UserName,
    },
    /// Remove a person (all their devices).
    Remove {
        /// The conversation id.
        #[arg(value_name = "CONVERSATION")]
        conversation: GroupId,
        /// The person.
        #[arg(value_name = "USER")]
        user: UserName,
    },
    /// List this device's conversations.
    List,
    /// Fetch and apply everything waiting on the server.
    Sync,
    /// Print messages as they arrive (until interrupted).
    Listen,
}

/// `redoubt enroll ...`
#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Create a single-use enrollment code and show it as a QR code.
    Create(EnrollCreate),
    /// List the enrollment codes made, oldest first (filters narrow; every page is
    /// fetched). The codes themselves are never shown: the server keeps only hashes.
    List {
        /// Only codes in this state: open, used or expired.
        #[arg(long, value_name = "STATE", value_parser = parse_enrollment_state)]
        state: Option<redoubt_proto::api::EnrollmentState>,
        /// Only codes for this person.
        #[arg(long, value_name = "USER")]
        user: Option<UserName>,
        /// Only codes this admin created (`admin:NAME`).
        #[arg(long, value_name = "ADMIN")]
        created_by: Option<String>,
        /// At most this many codes.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

fn parse_enrollment_state(s: &str) -> Result<redoubt_proto::api::EnrollmentState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of open, used, expired".to_owned())
}

/// `redoubt enroll create`
#[derive(Debug, Args)]
pub struct EnrollCreate {
    /// The person the phone is for.
    #[arg(long, value_name = "USER")]
    pub user: UserName,
    /// The phone's initial mode (server default: standard).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<ModeName>,
    /// How long the code stays valid, e.g. 15m, 1h (server default when omitted).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Device groups the phone joins when it enrolls (repeat, or comma-separate).
    #[arg(long = "group", value_name = "GROUP", value_delimiter = ',')]
    pub groups: Vec<redoubt_proto::DeviceGroupName>,
    /// Also write the QR code to this PNG file.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
}

/// `redoubt devices ...`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List enrolled devices with their mode and compliance (filters narrow; every
    /// page is fetched).
    List(crate::fleet::ListArgs),
    /// Count live devices by verdict, mode, assignment, hardware, group and zone.
    Counts,
    /// One action on every device a filter covers, after confirming their number.
    #[command(subcommand)]
    Bulk(crate::fleet::BulkCommand),
    /// Show everything known about one device.
    Show {
        /// The device id (dev_ + 24 hex digits).
        #[arg(value_name = "DEVICE")]
        device: DeviceId,
    },
    /// Approve a person's additional device (owner only, and not the owner who created
    /// its enrollment code): until then it cannot join conversations.
    Approve {
        /// The device id (dev_ + 24 hex digits).
        #[arg(value_name = "DEVICE")]
        device: DeviceId,
    },
    /// Assign a base mode to a device.
    SetMode {
        /// The device id (dev_ + 24 hex digits).
        #[arg(value_name = "DEVICE")]
        device: DeviceId,
        /// The mode to assign.
        #[arg(value_name = "MODE")]
        mode: ModeName,
    },
    /// Force the device into lockdown until it is unlocked (a signed command; see
    /// `devices commands` for its progress).
    Lock(CommandArgs),
    /// Lift the device's lock.
    Unlock(CommandArgs),
    /// Destroy the device's keys and local data (agent state, messenger store); the
    /// server then revokes it.
    Wipe {
        #[command(flatten)]
        args: CommandArgs,
        /// Confirm: a wipe cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Revoke the device at once (also when the phone never comes back): its
    /// credentials stop working and it is removed from every conversation.
    Revoke {
        /// The device id (dev_ + 24 hex digits).
        #[arg(value_name = "DEVICE")]
        device: DeviceId,
    },
    /// Take the device out of a zone it entered (an operator's signed instruction).
    ExitZone {
        #[command(flatten)]
        args: CommandArgs,
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: redoubt_proto::ZoneName,
    },
    /// Put the device into a zone (as if it had checked in at a gate).
    EnterZone {
        #[command(flatten)]
        args: CommandArgs,
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: redoubt_proto::ZoneName,
    },
    /// The device's commands and where each is: queued, delivered, acknowledged,
    /// verified, expired or failed.
    Commands {
        /// The device id (dev_ + 24 hex digits).
        #[arg(value_name = "DEVICE")]
        device: DeviceId,
    },
}

/// The device and expiry of a command.
#[derive(Debug, Args)]
pub struct CommandArgs {
    /// The device id (dev_ + 24 hex digits).
    #[arg(value_name = "DEVICE")]
    pub device: DeviceId,
    /// How long the command may wait for the phone (e.g. 1h, 7d; the server's default
    /// when absent).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub expires_in: Option<Duration>,
}

/// `redoubt modes ...`
#[derive(Debug, Subcommand)]
pub enum ModesCommand {
    /// List the built-in and custom modes.
    List,
    /// Show one mode's rules.
    Show {
        /// The mode's name.
        #[arg(value_name = "MODE")]
        mode: ModeName,
    },
    /// Create or replace a custom mode from a TOML file.
    Apply {
        /// The mode file (checked locally before anything is sent).
        #[arg(value_name = "FILE.toml")]
        file: PathBuf,
    },
}

/// Parses `--server`: an `https://` URL with a host, normalized to end with `/` so
/// that API paths are joined below any path prefix it has.
fn parse_server_url(s: &str) -> Result<Url, String> {
    if s.trim().is_empty() {
        return Err("empty; set REDOUBT_SERVER or pass --server https://HOST:PORT".into());
    }
    let mut url = Url::parse(s.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if url.scheme() != "https" {
        return Err("the server URL must start with https://".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the server URL has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("the server URL must not carry a query, fragment or user name".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Parses `--ca-fingerprint`, with a hint for an empty environment variable.
fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    if s.trim().is_empty() {
        return Err("empty; set REDOUBT_CA_FINGERPRINT or pass --ca-fingerprint sha256:HEX".into());
    }
    s.parse().map_err(|e: redoubt_proto::IdError| e.to_string())
}

/// Parses `--ttl` with humantime (`90s`, `15m`, `1h 30m`), whole seconds, at least 1s.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s
        .parse::<humantime::Duration>()
        .map_err(|e| format!("{e} (use e.g. 15m or 1h)"))?
        .into();
    if d.as_secs() == 0 {
        return Err("must be at least 1s".into());
    }
    if d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn check_url(input: &str, expect: &str) {
        let got = match parse_server_url(input) {
            Ok(u) => u.to_string(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn server_urls() {
        check_url("https://127.0.0.1:8443", "https://127.0.0.1:8443/");
        check_url("https://h.example/redoubt", "https://h.example/redoubt/");
        check_url(
            "http://h.example",
            "error: the server URL must start with https://",
        );
        check_url(
            "https://h.example/?a=b",
            "error: the server URL must not carry a query, fragment or user name",
        );
        assert!(parse_server_url("h.example:8443").is_err());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn json_is_accepted_before_and_after_the_subcommand() {
        for argv in [
            ["redoubt", "--json", "modes", "list"],
            ["redoubt", "modes", "list", "--json"],
            ["redoubt", "modes", "--json", "list"],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            assert!(cli.global.json, "{argv:?}");
        }
    }

    #[test]
    fn ids_are_validated_while_parsing() {
        let err = Cli::try_parse_from(["redoubt", "devices", "show", "../etc"])
            .expect_err("bad id refused");
        assert!(err.to_string().contains("invalid device id"), "{err}");
        let err = Cli::try_parse_from(["redoubt", "enroll", "create", "--user", "bob smith"])
            .expect_err("bad user refused");
        assert!(err.to_string().contains("invalid user name"), "{err}");
    }
}
