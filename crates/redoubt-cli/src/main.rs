//! `redoubt`: the admin command line of a Redoubt server.
//!
//! [`args`] parses the command line into validated types, [`commands`] does the work,
//! [`output`] and [`qr`] render it for people. Errors are printed to stderr as
//! `error: ...` with exit status 1 (clap's own usage errors exit with 2).

mod args;
mod audit;
mod chat;
mod chat_tui;
mod commands;
mod fleet;
mod groups;
mod output;
mod qr;
mod tokens;
mod zones;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
