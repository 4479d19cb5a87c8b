//! `redoubt zones apply|list|show|code|gate|gate-list|gate-revoke`: secured zones, their
//! checkpoint codes and the credentials of gate terminals (which expire, `--ttl`).
//!
//! A zone file (TOML) holds one zone:
//!
//! ```toml
//! name = "lab"
//! description = "Building 4, second floor"
//! mode = "secure-site"
//! checkpoints = ["north-gate", "south-gate"]
//! wifi_bssids = ["02:00:00:00:01:00"]   # optional: their presence means "inside"
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use redoubt_proto::api::{
    CreateGateCredential, CredentialId, GateCredentialCreated, GateCredentialView, IssueCode,
    IssuedCode, Ttl, ZoneDefinition, ZoneView,
};
use redoubt_proto::{CheckpointName, Direction, Timestamp, ZoneName};

use crate::args::Global;
use crate::commands::{Answer, Api};
use crate::{output, qr};

/// `zones` subcommands.
#[derive(Debug, Subcommand)]
pub enum ZonesCommand {
    /// Create or replace a zone from a TOML file; every device's policy then lists it.
    Apply {
        /// The zone file.
        #[arg(value_name = "FILE.toml")]
        file: PathBuf,
    },
    /// List the zones.
    List,
    /// Show one zone with its checkpoints' public keys.
    Show {
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: ZoneName,
    },
    /// Print a checkpoint code valid now (what a gate shows as a QR code).
    Code {
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: ZoneName,
        /// `in` (check-in) or `out` (check-out).
        #[arg(long, value_name = "in|out")]
        direction: Direction,
        /// The checkpoint that signs it (the zone's first when absent).
        #[arg(long, value_name = "NAME")]
        checkpoint: Option<CheckpointName>,
        /// Validity in seconds (5–300; the server's default when absent).
        #[arg(long, value_name = "SECS")]
        valid_secs: Option<u32>,
    },
    /// Create a credential for the gate terminal (tablet) of a checkpoint and print
    /// the link to open on it, as text and QR code.
    Gate {
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: ZoneName,
        /// The checkpoint.
        #[arg(value_name = "CHECKPOINT")]
        checkpoint: CheckpointName,
        /// Lifetime: 365d, 12h, 30m or seconds (the server's default, a year, when
        /// absent).
        #[arg(long, value_name = "TTL")]
        ttl: Option<Ttl>,
    },
    /// List the gate credentials of a zone (no secrets): id, checkpoint, expiry, state.
    GateList {
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: ZoneName,
    },
    /// Revoke a gate credential by its id (from `gate-list`); the gate's page stops
    /// showing codes at its next refresh.
    GateRevoke {
        /// The zone.
        #[arg(value_name = "ZONE")]
        zone: ZoneName,
        /// The credential's id.
        #[arg(value_name = "ID")]
        id: CredentialId,
    },
}

/// Reads and checks a zone file (the parsing is `redoubt_policy::parse_zone_toml`).
pub fn read_zone_file(path: &Path) -> anyhow::Result<ZoneDefinition> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read zone file {}", path.display()))?;
    redoubt_policy::parse_zone_toml(&text)
        .map_err(|e| anyhow::anyhow!("zone file {}: {e}", path.display()))
}

/// Runs a `zones` subcommand.
pub async fn run(g: &Global, cmd: ZonesCommand) -> anyhow::Result<()> {
    let now = Timestamp::now();
    match cmd {
        ZonesCommand::Apply { file } => {
            let def = read_zone_file(&file)?;
            let path = format!("zones/{}", def.name);
            let view: Answer<ZoneView> = Api::new(g)?.put(&path, &def).await?;
            view.print(g, |z| {
                format!(
                    "zone {} stored; every device's policy now lists it\n\n{}",
                    z.definition.name,
                    output::zone(z, now)
                )
            })
        }
        ZonesCommand::List => {
            let zones: Answer<Vec<ZoneView>> = Api::new(g)?.get("zones").await?;
            zones.print(g, |z| output::zone_table(z))
        }
        ZonesCommand::Show { zone } => {
            let view: Answer<ZoneView> = Api::new(g)?.get(&format!("zones/{zone}")).await?;
            view.print(g, |z| output::zone(z, now))
        }
        ZonesCommand::Code {
            zone,
            direction,
            checkpoint,
            valid_secs,
        } => {
            let body = IssueCode {
                direction,
                checkpoint,
                valid_secs,
            };
            let code: Answer<IssuedCode> = Api::new(g)?
                .post(&format!("zones/{zone}/codes"), &body)
                .await?;
            // The bare code on stdout is what scripts pass on (`redoubt-agent checkpoint`).
            code.print(g, |c| format!("{}\n", c.code))?;
            if !g.json {
                let c = &code.value;
                eprintln!(
                    "check-{} code of zone {} at checkpoint {}, valid until {}",
                    c.direction, c.zone, c.checkpoint, c.not_after
                );
            }
            Ok(())
        }
        ZonesCommand::GateList { zone } => {
            let list: Answer<Vec<GateCredentialView>> = Api::new(g)?
                .get(&format!("zones/{zone}/gate-credentials"))
                .await?;
            list.print(g, |l| crate::tokens::gate_table(l, now))
        }
        ZonesCommand::GateRevoke { zone, id } => {
            let done: Answer<GateCredentialView> = Api::new(g)?
                .post(
                    &format!("zones/{zone}/gate-credentials/{id}/revoke"),
                    &serde_json::json!({}),
                )
                .await?;
            done.print(g, |c| {
                format!(
                    "gate credential {} of zone {}, checkpoint {} revoked; the gate refuses it now\n",
                    c.id, c.zone, c.checkpoint
                )
            })
        }
        ZonesCommand::Gate {
            zone,
            checkpoint,
            ttl,
        } => {
            let body = CreateGateCredential {
                ttl_secs: ttl.map(|t| t.0),
            };
            let created: Answer<GateCredentialCreated> = Api::new(g)?
                .post(
                    &format!("zones/{zone}/checkpoints/{checkpoint}/gate-credentials"),
                    &body,
                )
                .await?;
            if g.json {
                return crate::commands::print_json(&created.raw);
            }
            let url = &created.value.url;
            let mut text = format!(
                "gate terminal link for zone {zone}, checkpoint {checkpoint} (open it once on the \
                 tablet; it holds the credential, keep it like a password):\n{url}\n\n"
            );
            if let (Some(id), Some(exp)) = (&created.value.id, created.value.expires_at) {
                text.push_str(&format!(
                    "credential {id}, expires {exp} (revoke with `redoubt zones gate-revoke {zone} {id}`)\n\n"
                ));
            }
            text.push_str(&qr::terminal(url)?);
            output::emit(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zone.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn zone_files_are_checked() {
        let (_d, p) = file(
            "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"north-gate\"]\nwifi_bssids = [\"02:00:00:00:01:00\"]\n",
        );
        let def = read_zone_file(&p).unwrap();
        assert_eq!(def.name.as_str(), "lab");
        assert_eq!(def.wifi_bssids.len(), 1);
        for (bad, why) in [
            (
                "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = []\n",
                "at least one checkpoint",
            ),
            (
                "name = \"Lab\"\nmode = \"secure-site\"\ncheckpoints = [\"g\"]\n",
                "zone name",
            ),
            (
                "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"g\"]\nwifi_bssids = [\"nope\"]\n",
                "BSSID",
            ),
            (
                "name = \"lab\"\nmode = \"secure-site\"\ncheckpoints = [\"g\"]\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let (_d, p) = file(bad);
            let e = read_zone_file(&p).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
