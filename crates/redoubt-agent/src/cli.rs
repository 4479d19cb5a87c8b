//! Command-line parsing (clap) and dispatch of `redoubt-agent` subcommands:
//! `enroll`, `run`, `status`, `checkpoint`, `probe`, `sim set|show|reset|wifi`,
//! `bundle import`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use redoubt_proto::{Bssid, Capability, EnrollmentUrl, HardwareKind, SignedEnvelope};
use serde_json::json;

use crate::agent::{Agent, BundleOutcome, CheckpointOutcome};
use crate::clock::{Clock, SystemClock};
use crate::connection::{RunOptions, run};
use crate::control;
use crate::enroll::{MessengerPlacement, enroll};
use crate::hardware::linux::Roots;
use crate::hardware::sim::{SimChange, SimHardware};
use crate::hardware::{Hardware, HardwareError};
use crate::state::{LockProbe, Owner, StateDir};
use crate::status;

/// The Redoubt device agent.
#[derive(Debug, Parser)]
#[command(name = "redoubt-agent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The state directory argument shared by every subcommand.
#[derive(Debug, Args)]
pub struct StateArg {
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", env = "REDOUBT_AGENT_STATE")]
    pub state: PathBuf,
}

/// Hardware backends that can be chosen at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HardwareArg {
    /// SIMULATED hardware whose state lives in a file of the state directory.
    Sim,
    /// Mainline Linux kernel interfaces (postmarketOS, Mobian): rfkill, sysfs, ALSA, nftables.
    Linux,
    /// Sailfish OS / Aurora OS: ConnMan, oFono, sailjaild and MCE over the system D-Bus,
    /// plus the kernel checks.
    Sailfish,
    /// Probe this device and pick (`redoubt-agent probe` shows what it finds).
    Auto,
}

impl HardwareArg {
    /// The backend this choice means on this device.
    pub fn resolve(self) -> Result<HardwareKind> {
        Ok(match self {
            HardwareArg::Sim => HardwareKind::Sim,
            HardwareArg::Linux => HardwareKind::Linux,
            HardwareArg::Sailfish => HardwareKind::Sailfish,
            HardwareArg::Auto => {
                let p = crate::hardware::probe::probe(&Roots::system());
                match p.choice {
                    Some(kind) => {
                        tracing::info!(hardware = %kind, reason = %p.reason, "hardware probed");
                        kind
                    }
                    None => bail!(
                        "no supported hardware found ({}); `--hardware sim` enrolls a SIMULATED phone",
                        p.reason
                    ),
                }
            }
        })
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this device with an enrollment URL (`redoubt://enroll?...`, or `-` to read it from stdin).
    Enroll {
        /// The enrollment URL from the QR code.
        url: String,
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// The hardware backend.
        #[arg(long, value_enum, default_value = "sim")]
        hardware: HardwareArg,
        /// Where to write the messenger directory (the messenger's own key, its
        /// delegation by the device key, the public identity; `redoubt chat --state`
        /// takes it). Default: `messenger/` inside the state directory.
        #[arg(long, value_name = "DIR")]
        messenger_dir: Option<PathBuf>,
        /// Hand the messenger directory to the user that runs the chat (numeric
        /// `UID` or `UID:GID`); it must then lie outside the state directory.
        #[arg(long, value_name = "UID[:GID]")]
        messenger_owner: Option<Owner>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent: enforce the mode, report compliance, stay connected.
    Run {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// Milliseconds between hardware re-checks.
        #[arg(
            long,
            value_name = "MS",
            env = "REDOUBT_AGENT_RECHECK_MS",
            default_value_t = 2000,
            value_parser = clap::value_parser!(u64).range(10..=3_600_000)
        )]
        recheck_ms: u64,
    },
    /// Show the device's state, with the hardware measured now.
    Status {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand a scanned checkpoint code to the agent: enter or leave a secured zone.
    /// Verified offline with the checkpoint keys of the held bundle; the mode changes
    /// at once and the report reaches the server at the next connection.
    Checkpoint {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// The code from the gate's QR code (`RDZ1.…`), or `-` to read it from stdin.
        code: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what this device offers: the backend `--hardware auto` picks and, per
    /// capability, whether the agent can switch it off and measure it. Changes nothing.
    Probe {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Act on the SIMULATED hardware behind the agent's back.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Policy bundles delivered by hand (offline: a file carried to the phone).
    #[command(subcommand)]
    Bundle(BundleCommand),
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Verify a signed bundle file exactly as one from the server (organization
    /// signature, this device, not older than the held one, not expired) and apply it.
    /// Refused while `run` holds the state directory.
    Import {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// The signed bundle (JSON envelope, as in `bundle.json`).
        file: PathBuf,
    },
}

/// `sim` subcommands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Change a simulated switch: `CAPABILITY on|off` or `network open|organization-only`.
    Set {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// A capability (camera, microphone, bluetooth, wifi, cellular_data, location, nfc, usb_data, screenshots) or `network`.
        target: String,
        /// `on`/`off` for a capability, `open`/`organization-only` for the network.
        value: String,
        /// Also make the capability's simulated driver ignore the agent (it answers
        /// "done" and changes nothing); without it, the driver obeys again.
        #[arg(long)]
        stuck: bool,
    },
    /// Show the simulated switches.
    Show {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a fresh simulated phone in place (everything on, network open, no Wi-Fi in sight).
    Reset {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
    },
    /// Set the Wi-Fi access points the simulated phone sees (none given: none visible).
    Wifi {
        /// The state directory.
        #[command(flatten)]
        state: StateArg,
        /// BSSIDs (aa:bb:cc:dd:ee:ff).
        bssids: Vec<String>,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REDOUBT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The process entry point: parses the command line, runs, prints any error on
/// one line to stderr and exits non-zero on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out).context("writing JSON")
}

/// Runs one subcommand.
pub async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Enroll {
            url,
            state,
            hardware,
            messenger_dir,
            messenger_owner,
            json,
        } => {
            let url = if url == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the enrollment URL from stdin")?;
                line
            } else {
                url
            };
            let url: EnrollmentUrl = url.parse()?;
            let done = enroll(
                &url,
                &StateDir::new(state.state),
                hardware.resolve()?,
                &MessengerPlacement {
                    dir: messenger_dir,
                    owner: messenger_owner,
                },
                &*system_clock()?,
            )
            .await?;
            if json {
                print_json(&done)?;
            } else {
                println!("enrolled device {}", done.device_id);
                println!("user: {}", done.user);
                println!("server: {}", done.server);
                println!("hardware: {}", done.hardware);
                println!(
                    "mode: {} (bundle version {})",
                    done.effective_mode, done.bundle_version
                );
                println!("messenger directory: {}", done.messenger_dir.display());
            }
            Ok(())
        }
        Command::Run { state, recheck_ms } => {
            run(
                StateDir::new(state.state),
                RunOptions {
                    recheck: Duration::from_millis(recheck_ms),
                    clock: system_clock()?,
                },
            )
            .await
        }
        Command::Status { state, json } => {
            let view = status::collect(&StateDir::new(state.state), &*system_clock()?)?;
            if json {
                print_json(&view)
            } else {
                print!("{}", view.to_text());
                Ok(())
            }
        }
        Command::Checkpoint { state, code, json } => {
            let code = if code == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the checkpoint code from stdin")?;
                line
            } else {
                code
            };
            let outcome = checkpoint(&StateDir::new(state.state), code.trim())?;
            if json {
                print_json(&outcome)
            } else {
                println!("{}", outcome.message);
                Ok(())
            }
        }
        Command::Probe { json } => {
            let p = crate::hardware::probe::probe(&Roots::system());
            if json {
                print_json(&p)
            } else {
                print!("{}", probe_text(&p));
                Ok(())
            }
        }
        Command::Sim(cmd) => sim(cmd),
        Command::Bundle(BundleCommand::Import { state, file }) => import_bundle(state.state, &file),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The human form of a probe.
fn probe_text(p: &crate::hardware::probe::Probe) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let choice = p
        .choice
        .map(|k| k.to_string())
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(out, "backend (--hardware auto): {choice} — {}", p.reason);
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:<7} how",
        "capability", "enforce", "verify"
    );
    for (cap, c) in &p.capabilities {
        let _ = writeln!(
            out,
            "{:<14} {:<8} {:<7} {}",
            cap.as_str(),
            yes_no(c.enforce),
            yes_no(c.verify),
            c.how
        );
    }
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:<7} {}",
        "network",
        yes_no(p.network.enforce),
        yes_no(p.network.verify),
        p.network.how
    );
    out
}

/// The system's clocks, shifted by the test seam when `REDOUBT_AGENT_TEST_CLOCK` is set
/// (see [`crate::clock`]).
fn system_clock() -> Result<std::sync::Arc<dyn Clock>> {
    Ok(std::sync::Arc::new(SystemClock::from_env()?))
}

/// Applies a checkpoint code: through the running agent when `run` holds the state
/// directory, otherwise in this process under the run lock.
fn checkpoint(dir: &StateDir, code: &str) -> Result<CheckpointOutcome> {
    dir.require_enrolled()?;
    if dir.probe_lock()? == LockProbe::Held {
        return control::checkpoint(dir, code);
    }
    let _lock = match dir.lock() {
        Ok(lock) => lock,
        // `run` started in between.
        Err(_) if dir.probe_lock()? == LockProbe::Held => return control::checkpoint(dir, code),
        Err(e) => return Err(e),
    };
    let mut agent = Agent::open(dir.clone(), system_clock()?)?;
    let (result, _reports) = agent.checkpoint(code)?;
    result.map_err(|reason| anyhow::anyhow!("{reason}"))
}

fn import_bundle(state: PathBuf, file: &std::path::Path) -> Result<()> {
    let dir = StateDir::new(state);
    dir.require_enrolled()?;
    let _lock = dir.lock().context(
        "the agent is running and takes its bundles from the server; stop it to import one by hand",
    )?;
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let envelope: SignedEnvelope = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a signed policy bundle", file.display()))?;
    let mut agent = Agent::open(dir, system_clock()?)?;
    let (outcome, reports) = agent.offer_bundle(&envelope)?;
    match outcome {
        BundleOutcome::Refused { reason } => bail!("{reason}"),
        BundleOutcome::Unchanged => println!("this bundle is already held; nothing changed"),
        BundleOutcome::Applied { version } => println!(
            "bundle version {version} applied; {} report(s) queued for the server",
            reports.len()
        ),
    }
    Ok(())
}

/// Opens the simulated hardware of an enrolled state directory that uses it.
fn sim_of(state: PathBuf) -> Result<SimHardware> {
    let dir = StateDir::new(state);
    let identity = dir.load_identity()?;
    if identity.hardware != HardwareKind::Sim {
        bail!(
            "device {} uses the {} hardware backend, not the simulated one",
            identity.device_id,
            identity.hardware
        );
    }
    Ok(SimHardware::new(dir.root()))
}

fn sim_error(e: HardwareError) -> anyhow::Error {
    anyhow::anyhow!(
        "SIMULATED hardware: {e}; `redoubt-agent sim reset` puts a fresh simulated phone in place"
    )
}

fn bssid_list(bssids: &[Bssid]) -> String {
    if bssids.is_empty() {
        "none".into()
    } else {
        bssids
            .iter()
            .map(Bssid::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn sim(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Set {
            state,
            target,
            value,
            stuck,
        } => {
            let change = SimChange::parse(&target, &value).map_err(|e| anyhow::anyhow!("{e}"))?;
            let hw = sim_of(state.state)?;
            hw.set(change, stuck).map_err(sim_error)?;
            let note = if stuck {
                " (its driver now ignores the agent)"
            } else {
                ""
            };
            println!("SIMULATED: {target} is now {value}{note}");
            Ok(())
        }
        SimCommand::Show { state, json } => {
            let hw = sim_of(state.state)?;
            let capabilities = hw.verify_all();
            let network = hw.verify_network();
            let (stuck, visible, reachable, problem) = match hw.read() {
                Ok(s) => (
                    s.stuck.into_iter().collect::<Vec<Capability>>(),
                    s.visible_bssids,
                    s.allowed_endpoints,
                    None,
                ),
                Err(e) => (Vec::new(), Vec::new(), Vec::new(), Some(e.to_string())),
            };
            if json {
                print_json(&json!({
                    "hardware": HardwareKind::Sim,
                    "simulated": true,
                    "capabilities": capabilities,
                    "network": network,
                    "stuck": stuck,
                    "visible_bssids": visible,
                    "allowed_endpoints": reachable,
                    "error": problem,
                }))
            } else {
                println!(
                    "hardware: {} — these switches are SIMULATED",
                    HardwareKind::Sim
                );
                if let Some(p) = problem {
                    println!("problem: {p}");
                }
                for (cap, state) in &capabilities {
                    let note = if stuck.contains(cap) {
                        "  (stuck: ignores the agent)"
                    } else {
                        ""
                    };
                    println!("  {:<14} {state}{note}", cap.as_str());
                }
                println!("  {:<14} {network}", "network");
                println!("  {:<14} {}", "wifi in sight", bssid_list(&visible));
                Ok(())
            }
        }
        SimCommand::Wifi { state, bssids } => {
            let bssids = bssids
                .iter()
                .map(|b| b.parse::<Bssid>())
                .collect::<Result<Vec<_>, _>>()?;
            sim_of(state.state)?
                .set_visible(&bssids)
                .map_err(sim_error)?;
            println!(
                "SIMULATED: Wi-Fi access points in sight: {}",
                bssid_list(&bssids)
            );
            Ok(())
        }
        SimCommand::Reset { state } => {
            sim_of(state.state)?.reset().map_err(sim_error)?;
            println!(
                "SIMULATED: fresh phone in place (every capability on, network open, no Wi-Fi in sight)"
            );
            Ok(())
        }
    }
}
