//! `redoubt tokens list|revoke`: the server's admin credentials (owners and auditors
//! list them, owners revoke them), and the tables of admin and gate credentials.
//!
//! New admin credentials are made offline on the server (`redoubt-server admin-token
//! --ttl 90d`); they expire, and a revoked one stops working at its next request.

use clap::Subcommand;
use redoubt_proto::Timestamp;
use redoubt_proto::api::{AdminTokenView, CredentialId, GateCredentialView};

use crate::args::Global;
use crate::commands::{Answer, Api};
use crate::output::{self, Table};

/// `tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List every admin credential (no secrets): id, holder, role, expiry, state.
    List,
    /// Revoke an admin credential by its id (from `tokens list`); it stops working at
    /// once.
    Revoke {
        /// The credential's id.
        #[arg(value_name = "ID")]
        id: CredentialId,
    },
}

/// Runs a `tokens` subcommand.
pub async fn run(g: &Global, cmd: TokensCommand) -> anyhow::Result<()> {
    let now = Timestamp::now();
    match cmd {
        TokensCommand::List => {
            let list: Answer<Vec<AdminTokenView>> = Api::new(g)?.get("admin-tokens").await?;
            list.print(g, |l| admin_table(l, now))
        }
        TokensCommand::Revoke { id } => {
            let done: Answer<AdminTokenView> = Api::new(g)?
                .post(&format!("admin-tokens/{id}/revoke"), &serde_json::json!({}))
                .await?;
            done.print(g, |t| {
                format!(
                    "admin credential {} of {} ({}) revoked; it no longer works\n",
                    t.id, t.name, t.role
                )
            })
        }
    }
}

/// The table of `tokens list`.
pub fn admin_table(list: &[AdminTokenView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no admin credentials\n".into();
    }
    let mut t = Table::new(["ID", "NAME", "ROLE", "STATE", "EXPIRES", "REVOKED BY"]);
    for a in list {
        t.row([
            a.id.to_string(),
            a.name.clone(),
            a.role.to_string(),
            a.state.as_str().to_owned(),
            output::relative(a.expires_at, now),
            a.revoked_by.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// The table of `zones gate-list`.
pub fn gate_table(list: &[GateCredentialView], now: Timestamp) -> String {
    if list.is_empty() {
        return "no gate credentials in this zone\n".into();
    }
    let mut t = Table::new([
        "ID",
        "CHECKPOINT",
        "STATE",
        "EXPIRES",
        "CREATED BY",
        "REVOKED BY",
    ]);
    for c in list {
        t.row([
            c.id.to_string(),
            c.checkpoint.to_string(),
            c.state.as_str().to_owned(),
            output::relative(c.expires_at, now),
            c.created_by.clone(),
            c.revoked_by.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redoubt_proto::api::{CredentialState, Role};

    #[test]
    fn admin_credentials_are_listed_without_secrets() {
        let now = Timestamp(1_800_000_000);
        let list = [AdminTokenView {
            id: "0123456789abcdef".parse().unwrap(),
            name: "olga".into(),
            role: Role::Officer,
            created_at: now,
            expires_at: now.plus_secs(3 * 86400),
            revoked_at: Some(now),
            revoked_by: Some("admin:root".into()),
            state: CredentialState::Revoked,
        }];
        let text = admin_table(&list, now);
        assert!(text.starts_with("ID "), "{text}");
        assert!(
            text.contains("0123456789abcdef  olga  officer  revoked  in 3d"),
            "{text}"
        );
        assert!(text.contains("admin:root"), "{text}");
        assert!("0123".parse::<CredentialId>().is_err());
        assert!("0123456789abcdeg".parse::<CredentialId>().is_err());
    }
}
