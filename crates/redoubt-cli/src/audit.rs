//! `redoubt audit list|verify|export` (STUB: being written).

use clap::Subcommand;

use crate::args::Global;

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List entries.
    List,
}

/// Runs an `audit` subcommand.
pub async fn run(_g: &Global, _cmd: AuditCommand) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
