//! `redoubt zones …` (STUB: being written).

use clap::Subcommand;

use crate::args::Global;

/// `zones` subcommands.
#[derive(Debug, Subcommand)]
pub enum ZonesCommand {
    /// List zones.
    List,
}

/// Runs a `zones` subcommand.
pub async fn run(_g: &Global, _cmd: ZonesCommand) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
