//! `redoubt-server`: the organization's server. Subcommands `serve`, `ca-fingerprint`,
//! `admin-token`, `routes`.

mod app;
mod audit;
mod cluster;
mod commands;
mod config;
mod conn;
mod console;
mod error;
mod fleet;
mod gate;
mod groups;
mod http;
mod messaging;
mod messenger_ws;
mod pki;
mod reports;
mod routes;
mod serve;
mod ws;
mod zones;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use redoubt_proto::api::{Role, Ttl};

#[derive(Parser)]
#[command(
    name = "redoubt-server",
    version,
    about = "Redoubt server: enrollment, modes, compliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (creates the CA, keys and database on first start).
    Serve {
        /// Data directory [default: ./redoubt-data; env REDOUBT_DATA].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8443; env REDOUBT_LISTEN].
        #[arg(long)]
        listen: Option<String>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the organization CA's fingerprint (what phones pin).
    CaFingerprint {
        /// Data directory.
        #[arg(long, default_value = "./redoubt-data")]
        data: PathBuf,
    },
    /// Create an admin API token offline; it is printed once and stored hashed.
    AdminToken {
        /// Data directory.
        #[arg(long, default_value = "./redoubt-data")]
        data: PathBuf,
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// owner, officer (modes, zones), operator (enroll, assign, lock/wipe) or auditor (read-only).
        #[arg(long)]
        role: Role,
        /// Lifetime: 90d, 12h, 30m or seconds (1 minute to 5 years). Credentials expire
        /// so that a forgotten or leaked one does not open the server forever.
        #[arg(long, value_name = "TTL", default_value = "90d")]
        ttl: Ttl,
        /// The shared PostgreSQL database of a multi-node deployment (postgres://…);
        /// without it, the SQLite database in the data directory.
        #[arg(long, env = "REDOUBT_DATABASE_URL", value_name = "URL")]
        database_url: Option<String>,
    },
    /// Web console accounts (`admin create` makes the first owner).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// List every HTTP route and who may call it: the table the router is built from.
    Routes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a web console account offline and print its first password, its second
    /// factor (a QR code for an authenticator app) and its recovery codes, once.
    Create {
        /// Data directory.
        #[arg(long, default_value = "./redoubt-data")]
        data: PathBuf,
        /// The name it signs in with.
        #[arg(long)]
        name: String,
        /// owner (also manages accounts), officer, operator or auditor.
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input instead of making a
        /// random one (12 characters or more).
        #[arg(long)]
        password_stdin: bool,
        /// The shared PostgreSQL database of a multi-node deployment (postgres://…);
        /// without it, the SQLite database in the data directory.
        #[arg(long, env = "REDOUBT_DATABASE_URL", value_name = "URL")]
        database_url: Option<String>,
    },
}

/// The organization's keys, the configuration and the store, for a subcommand run on
/// the server's machine (the data directory, or the shared PostgreSQL database).
async fn offline(
    data: &std::path::Path,
    database_url: Option<String>,
) -> anyhow::Result<(pki::Keys, config::Config, redoubt_store::Store)> {
    let keys = pki::Keys::open_or_create(data)?;
    let config = config::RawConfig {
        data: Some(data.to_owned()),
        database_url,
        ..Default::default()
    }
    .resolve()?;
    let store = redoubt_store::Store::open(&config.database())
        .await
        .with_context(|| format!("opening the database ({})", config.database_label()))?;
    Ok((keys, config, store))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REDOUBT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Serve {
            data,
            listen,
            config,
        } => {
            let mut raw = config::RawConfig::load(config.as_deref())?;
            if data.is_some() {
                raw.data = data;
            }
            if listen.is_some() {
                raw.listen = listen;
            }
            serve::serve(raw.resolve()?).await
        }
        Command::Routes { json } => {
            let config = config::RawConfig::load(None)?.resolve()?;
            let (_, table) = http::routes(&config);
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                for r in table {
                    println!("{:<5} {:<58} {}", r.method, r.path, r.access);
                }
            }
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    data,
                    name,
                    role,
                    password_stdin,
                    database_url,
                },
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let (keys, config, store) = offline(&data, database_url).await?;
            let made = console::create_account(
                &store,
                &keys.org_signing,
                &audit::Who::server_cli(),
                &name,
                role,
                password,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.close().await;
            println!("Console account {name} ({role}) created. Shown only this once:");
            println!();
            if !password_stdin {
                println!("  first password: {}", made.password);
                println!();
            }
            println!("Second factor: scan this with an authenticator app (TOTP, 6 digits, 30 s),");
            println!("or enter the URL below by hand:");
            println!();
            print!("{}", console::terminal_qr(&made.factor.url)?);
            println!("  {}", made.factor.url);
            println!();
            println!("Recovery codes (each signs in once in place of a code; keep them apart):");
            for c in &made.factor.recovery {
                println!("  {c}");
            }
            println!();
            let origin = config
                .public_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .unwrap_or_else(|| format!("https://{}", config.listen));
            println!("Sign in at {origin}/console with the name, the password and a code.");
            Ok(())
        }
        Command::CaFingerprint { data } => {
            println!("{}", pki::Keys::open(&data)?.fingerprint());
            Ok(())
        }
        Command::AdminToken {
            data,
            name,
            role,
            ttl,
            database_url,
        } => {
            let (keys, _config, store) = offline(&data, database_url).await?;
            let token = app::create_admin_token(
                &store,
                &name,
                role,
                ttl.0,
                &audit::Who::server_cli(),
                &audit::sign_with(&keys.org_signing),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.close().await;
            eprintln!(
                "Admin token for {name} ({role}), valid for {} days; it is shown only this once:",
                ttl.0 / 86400
            );
            println!("{token}");
            Ok(())
        }
    }
}
