//! `cargo xtask bench fleet`: one load-generator process simulates N phones speaking
//! the real protocol against the release server on loopback, one lightweight task per
//! phone (not one process): its own Ed25519 key, enrollment through `POST /enroll`,
//! the device WebSocket over TLS pinned to the organization CA, the signed challenge,
//! every bundle verified with the organization key and decided with
//! `redoubt_policy::decide`, and signed compliance reports of what that decision
//! enforces. Connections are spread over several loopback source addresses
//! (127.0.0.2, 127.0.0.3, …) so no per-address limit is met, and the process raises
//! its own open-file limit. It prints, with the command that made them:
//!
//! - phones connected and held, and the connect rate;
//! - the server's memory per connected idle phone (RSS after − before, over N);
//! - a bulk set-mode to every phone (one `POST /devices/bulk`): the time from the
//!   request to each phone's compliant report being stored, p50/p99/max;
//! - sustained report ingest: every phone sends its next signed report as soon as the
//!   previous one is acknowledged, for S seconds: reports stored per second and the
//!   server's CPU per report;
//! - one phone's set-mode → its compliant report stored, p50/p99/max over R changes
//!   made one after another while all others stay connected.
//!
//! With `--nodes N` (on PostgreSQL), N server nodes share one database and one NATS
//! server (`REDOUBT_BENCH_NATS`, default `nats://127.0.0.1:4222`); phone i holds its
//! session on node i mod N, every admin request goes to the first node, so a change
//! reaches the phones of the other nodes through NATS. Memory and CPU are the sums over
//! the nodes.
//!
//! The release binaries are built once (`cargo build --release`), then the release
//! xtask runs the measurement (the load generator must not be a debug build).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use redoubt_client::ServerClient;
use redoubt_proto::api::{
    BulkAction, BulkDone, BulkRequest, CreateEnrollment, DeviceQuery, DeviceView, EnrollRequest,
    EnrollResponse, EnrollmentCreated, SetMode, enroll_proof_message,
};
use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
use redoubt_proto::{
    Capability, CapabilityState, ComplianceReport, DeviceId, EnrollmentUrl, HardwareKind,
    NetworkReach, NetworkState, PolicyBundle, Rule, SignedEnvelope, Timestamp,
};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    BenchServer, Procs, check_flags, cpu_time, flag, load_average, ms, percentile, rss_kib,
    workspace_root,
};

/// How the command is called.
pub const USAGE: &str = "cargo xtask bench fleet [--phones N] [--sources K] [--ingest-secs S] [--single R] [--database sqlite|postgres] [--nodes N] [--generators G]";

const FLAGS: &[&str] = &[
    "--phones",
    "--sources",
    "--ingest-secs",
    "--single",
    "--database",
    "--nodes",
    "--generators",
];

/// Set when the release xtask runs the measurement itself.
const BUILT_ENV: &str = "REDOUBT_FLEET_BENCH_BUILT";

pub(crate) struct Config {
    /// PostgreSQL (a database made for the run, on the machine's server) or SQLite.
    pub(crate) postgres: bool,
    pub(crate) phones: usize,
    pub(crate) sources: usize,
    pub(crate) ingest: Duration,
    pub(crate) single: usize,
    /// Server nodes (more than one needs PostgreSQL and NATS).
    pub(crate) nodes: usize,
    /// Load-generator processes (each holds at most ~18 000 sockets).
    pub(crate) generators: usize,
}

/// `cargo xtask bench fleet …`.
pub fn main(args: &[&str]) -> Result<()> {
    check_flags(args, FLAGS)?;
    let phones = flag(args, "--phones")?.unwrap_or(5_000);
    let postgres = match crate::common::flag_value::<String>(args, "--database")?.as_deref() {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => bail!("--database must be sqlite or postgres, not {other}"),
    };
    let cfg = Config {
        postgres,
        phones,
        // At most ~900 phones per source address: the server's default limit is 1024.
        sources: flag(args, "--sources")?.unwrap_or(phones.div_ceil(900).max(1)),
        ingest: Duration::from_secs(flag(args, "--ingest-secs")?.unwrap_or(10) as u64),
        single: flag(args, "--single")?.unwrap_or(100),
        nodes: flag(args, "--nodes")?.unwrap_or(1),
        // One process may hold 20 000 files here: 18 000 phones per generator at most.
        generators: flag(args, "--generators")?.unwrap_or(phones.div_ceil(18_000).max(1)),
    };
    if cfg.generators == 0 || cfg.generators > 64 {
        bail!("--generators must be between 1 and 64");
    }
    if cfg.nodes == 0 || cfg.nodes > 16 {
        bail!("--nodes must be between 1 and 16");
    }
    if cfg.nodes > 1 && !cfg.postgres {
        bail!(
            "--nodes {} needs --database postgres: nodes share one PostgreSQL database",
            cfg.nodes
        );
    }
    if cfg.phones == 0 || cfg.sources == 0 || cfg.sources > 250 {
        bail!("--phones must be at least 1 and --sources between 1 and 250");
    }
    let root = workspace_root();
    if std::env::var_os(BUILT_ENV).is_none() {
        return crate::common::rerun_release_bench(
            &root,
            &["redoubt-server", "xtask"],
            "fleet",
            args,
            BUILT_ENV,
        );
    }
    let command = format!("cargo xtask bench fleet {}", args.join(" "));
    if cfg.generators > 1 {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(crate::fleet_gen::run_distributed(
                &root,
                &cfg,
                command.trim(),
            ));
    }
    let open_files = raise_open_file_limit();
    if (open_files as usize) < cfg.phones + 200 {
        bail!(
            "this process may open {open_files} files; {} phones need about {} (one socket each)",
            cfg.phones,
            cfg.phones + 200
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&root, &cfg, command.trim()))
}

/// Raises the soft limit of open files to the hard one; returns the limit in force.
pub(crate) fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

pub(crate) fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Mode names as the phones report them, as small numbers for atomics.
pub(crate) fn mode_index(name: &str) -> u8 {
    match name {
        "standard" => 1,
        "secure-site" => 2,
        "lockdown" => 3,
        _ => 255,
    }
}

/// What the benchmark reads of each phone while it runs.
#[derive(Default)]
pub(crate) struct PhoneStat {
    pub(crate) connected: AtomicBool,
    /// The bundle version and mode of the newest report the server acknowledged.
    pub(crate) acked_version: AtomicU64,
    pub(crate) acked_mode: AtomicU8,
    /// When (microseconds since the benchmark's epoch).
    pub(crate) acked_at_us: AtomicU64,
    pub(crate) acks: AtomicU64,
}

pub(crate) struct Phone {
    pub(crate) id: DeviceId,
    pub(crate) key: SigningKey,
    pub(crate) source: IpAddr,
}

pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    pub(crate) org_key: VerifyingKey,
    pub(crate) stats: Vec<PhoneStat>,
    pub(crate) flood: watch::Receiver<bool>,
    pub(crate) failures: AtomicU64,
    /// Set when the benchmark ends (the server's exit is no failure then).
    pub(crate) stopping: AtomicBool,
    /// Sessions that dropped and were opened again.
    pub(crate) reconnects: AtomicU64,
    /// Connections being opened at once: tens of thousands dialing together would
    /// outlast the servers' handshake timeout, as no fleet of real phones does.
    pub(crate) dialing: tokio::sync::Semaphore,
}

/// Connections one load-generator process opens at once.
pub(crate) const DIALING: usize = 64;

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

async fn run(root: &Path, cfg: &Config, command: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let pg = crate::common::bench_database(cfg.postgres).await;
    let env = crate::common::database_env(&pg);
    let backend = if cfg.postgres { "PostgreSQL" } else { "SQLite" };
    let nodes = start_nodes(root, tmp.path(), cfg.nodes, &env, &mut procs)?;
    let server = &nodes[0];
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let token = server.owner_token(root)?;
    let clients: Vec<ServerClient> = nodes
        .iter()
        .map(|n| {
            Ok(ServerClient::new(
                n.url.parse()?,
                n.fingerprint.parse()?,
                Some(token.clone()),
            )?)
        })
        .collect::<Result<_>>()?;
    let admin = clients[0].clone();
    let backend = if cfg.nodes > 1 {
        format!("{} nodes on one {backend} database and NATS", cfg.nodes)
    } else {
        backend.to_owned()
    };
    eprintln!(
        "fleet benchmark: {} phones over {} loopback source addresses against the release server ({backend})",
        cfg.phones, cfg.sources
    );

    // Enrollment: a code per phone, then the phone's own key and proof.
    let pb = bar(cfg.phones, "enrolling");
    let started = Instant::now();
    let mut phones: Vec<Phone> = Vec::with_capacity(cfg.phones);
    let mut org_key = None;
    let chunks: Vec<Vec<usize>> = (0..cfg.phones)
        .collect::<Vec<_>>()
        .chunks(cfg.phones.div_ceil(16))
        .map(<[usize]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let admin = admin.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for i in chunk {
                out.push((i, enroll(&admin, i).await?));
                pb.inc(1);
            }
            anyhow::Ok(out)
        }));
    }
    let mut enrolled = Vec::new();
    for t in tasks {
        enrolled.extend(t.await??);
    }
    enrolled.sort_by_key(|(i, _)| *i);
    for (i, (id, key, org)) in enrolled {
        org_key.get_or_insert(org);
        phones.push(Phone {
            id,
            key,
            source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % cfg.sources) as u8)),
        });
    }
    pb.finish();
    let enroll_secs = started.elapsed().as_secs_f64();
    let org_key = org_key.context("no phone enrolled")?;

    // Connect every phone and wait until each holds its session and has reported.
    let rss_before = sum_of(&pids, rss_kib);
    let (flood_tx, flood_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        org_key,
        stats: (0..cfg.phones).map(|_| PhoneStat::default()).collect(),
        flood: flood_rx,
        failures: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        dialing: tokio::sync::Semaphore::new(DIALING),
        reconnects: AtomicU64::new(0),
    });
    let pb = bar(cfg.phones, "connecting");
    let started = Instant::now();
    for (i, p) in phones.iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let shared = shared.clone();
        let (id, key, source) = (p.id.clone(), p.key.clone(), p.source);
        tokio::spawn(async move {
            if let Err(e) = phone(i, client, id, key, source, shared.clone()).await
                && !shared.stopping.load(Ordering::Relaxed)
            {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                if shared.failures.load(Ordering::Relaxed) <= 3 {
                    eprintln!("phone {i}: {e:#}");
                }
            }
            shared.stats[i].connected.store(false, Ordering::Relaxed);
        });
    }
    let connected = |s: &Shared| {
        s.stats
            .iter()
            .filter(|p| p.connected.load(Ordering::Relaxed))
            .count()
    };
    let reported = |s: &Shared| {
        s.stats
            .iter()
            .filter(|p| p.acks.load(Ordering::Relaxed) > 0)
            .count()
    };
    wait_until(&pb, Duration::from_secs(600), || {
        let c = connected(&shared);
        pb.set_position(c as u64);
        c == cfg.phones
    })
    .await
    .with_context(|| format!("{} of {} phones connected", connected(&shared), cfg.phones))?;
    let connect_secs = started.elapsed().as_secs_f64();
    pb.finish();
    let pb = bar(cfg.phones, "first report");
    wait_until(&pb, Duration::from_secs(600), || {
        let r = reported(&shared);
        pb.set_position(r as u64);
        r == cfg.phones
    })
    .await?;
    pb.finish();
    // Idle: let the server settle, then read its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sum_of(&pids, rss_kib);
    let console = console_queries(&admin).await?;
    let per_phone_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 / cfg.phones as f64),
        _ => None,
    };

    // One request puts every phone into secure-site.
    let before: Vec<u64> = shared
        .stats
        .iter()
        .map(|s| s.acked_version.load(Ordering::Relaxed))
        .collect();
    let t0 = shared.now_us();
    all_to_secure_site(&admin, cfg.phones as u64).await?;
    let pb = bar(cfg.phones, "set-mode all");
    let target = mode_index("secure-site");
    let switched = |s: &Shared| {
        s.stats
            .iter()
            .zip(&before)
            .filter(|(p, b)| {
                p.acked_version.load(Ordering::Relaxed) > **b
                    && p.acked_mode.load(Ordering::Relaxed) == target
            })
            .count()
    };
    wait_until(&pb, Duration::from_secs(300), || {
        let n = switched(&shared);
        pb.set_position(n as u64);
        n == cfg.phones
    })
    .await
    .with_context(|| format!("{} of {} phones switched", switched(&shared), cfg.phones))?;
    pb.finish();
    let mut all_switch: Vec<Duration> = shared
        .stats
        .iter()
        .map(|p| Duration::from_micros(p.acked_at_us.load(Ordering::Relaxed).saturating_sub(t0)))
        .collect();
    all_switch.sort();

    // Sustained ingest: every phone reports back to back.
    let acks = |s: &Shared| -> u64 { s.stats.iter().map(|p| p.acks.load(Ordering::Relaxed)).sum() };
    let cpu0 = sum_of(&pids, cpu_time);
    let acks0 = acks(&shared);
    let started = Instant::now();
    flood_tx.send_replace(true);
    let pb = ProgressBar::new(cfg.ingest.as_secs());
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message("ingest");
    while started.elapsed() < cfg.ingest {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pb.set_position(started.elapsed().as_secs().min(cfg.ingest.as_secs()));
    }
    let window = started.elapsed();
    let acks1 = acks(&shared);
    let cpu1 = sum_of(&pids, cpu_time);
    flood_tx.send_replace(false);
    pb.finish();
    let ingested = acks1 - acks0;
    let per_sec = ingested as f64 / window.as_secs_f64();
    let cpu_per_report_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if ingested > 0 => Some((b - a).as_secs_f64() * 1e6 / ingested as f64),
        _ => None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One phone at a time, everyone else connected.
    let pb = bar(cfg.single, "single");
    let mut single = Vec::with_capacity(cfg.single);
    for r in 0..cfg.single {
        let i = (r * 7919) % cfg.phones;
        let mode = if r % 2 == 0 {
            "lockdown"
        } else {
            "secure-site"
        };
        let stat = &shared.stats[i];
        let prev = stat.acked_version.load(Ordering::Relaxed);
        let t = shared.now_us();
        let _: DeviceView = admin
            .put(
                &format!("/api/v1/devices/{}/mode", phones[i].id),
                &SetMode {
                    mode: mode.parse()?,
                },
            )
            .await?;
        let want = mode_index(mode);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stat.acked_version.load(Ordering::Relaxed) > prev
                && stat.acked_mode.load(Ordering::Relaxed) == want
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("phone {i} did not report {mode} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        single.push(Duration::from_micros(
            stat.acked_at_us.load(Ordering::Relaxed).saturating_sub(t),
        ));
        pb.inc(1);
    }
    pb.finish();
    single.sort();
    let held = connected(&shared);
    let failures = shared.failures.load(Ordering::Relaxed);
    shared.stopping.store(true, Ordering::Relaxed);

    println!();
    println!("$ {command}");
    println!(
        "workload: {} simulated phones in one load-generator process (one task each, real protocol: \
         own Ed25519 keys, TLS pinned to the CA, device WebSocket, signed bundles verified, signed reports), \
         spread over {} loopback source addresses; release server on {backend}; 2-core machine, load average {}",
        cfg.phones,
        cfg.sources,
        load_average()
    );
    println!(
        "enrolled:              {} phones in {enroll_secs:.1} s ({:.0}/s)",
        cfg.phones,
        cfg.phones as f64 / enroll_secs
    );
    println!(
        "connected and held:    {held} of {} (connection failures: {failures}; sessions that dropped and \
         were opened again: {}); connect rate {:.0} phones/s",
        cfg.phones,
        shared.reconnects.load(Ordering::Relaxed),
        cfg.phones as f64 / connect_secs
    );
    println!("{console}");
    Measures {
        rss_before,
        rss_after,
        per_phone_kib,
        all_switch: &all_switch,
        per_sec,
        window,
        ingested,
        cpu_per_report_us,
        single: &single,
        held: held as u64,
    }
    .print();
    if held != cfg.phones || failures > 0 {
        bail!("{} phones lost their connection", cfg.phones - held);
    }
    drop(procs);
    drop(pg);
    Ok(())
}

/// The figures both ways of running the benchmark print alike.
pub(crate) struct Measures<'a> {
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
    pub(crate) per_phone_kib: Option<f64>,
    pub(crate) all_switch: &'a [Duration],
    pub(crate) per_sec: f64,
    pub(crate) window: Duration,
    pub(crate) ingested: u64,
    pub(crate) cpu_per_report_us: Option<f64>,
    pub(crate) single: &'a [Duration],
    pub(crate) held: u64,
}

impl Measures<'_> {
    pub(crate) fn print(&self) {
        println!(
            "server memory:         {} before, {} with all connected: {} per connected idle phone",
            crate::common::mib(self.rss_before),
            crate::common::mib(self.rss_after),
            self.per_phone_kib
                .map_or_else(|| "?".into(), |k| format!("{k:.1} KiB"))
        );
        println!(
            "set-mode to all:       one bulk request → every phone's compliant report stored: \
             p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms(percentile(self.all_switch, 0.5)),
            ms(percentile(self.all_switch, 0.99)),
            ms(percentile(self.all_switch, 1.0))
        );
        println!(
            "report ingest:         {:.0} signed reports/s stored durably over {:.0} s \
             ({} reports), server CPU {} per report",
            self.per_sec,
            self.window.as_secs_f64(),
            self.ingested,
            self.cpu_per_report_us
                .map_or_else(|| "?".into(), |u| format!("{u:.0} µs"))
        );
        println!(
            "single set-mode:       {} changes one after another → compliant report stored: \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (with {} phones connected)",
            self.single.len(),
            ms(percentile(self.single, 0.5)),
            ms(percentile(self.single, 0.99)),
            ms(percentile(self.single, 1.0)),
            self.held
        );
    }
}

/// What an officer's console asks of a full fleet, timed: the counts (slowest of five)
/// and the first page of 1000 devices.
pub(crate) async fn console_queries(admin: &ServerClient) -> Result<String> {
    let mut counts = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let _: redoubt_proto::api::DeviceCounts = admin.get("/api/v1/devices/counts").await?;
        counts = counts.max(t.elapsed());
    }
    let t = Instant::now();
    let page: redoubt_proto::api::DevicePage = admin.get("/api/v1/devices?limit=1000").await?;
    let listed = t.elapsed();
    Ok(format!(
        "console queries:       GET /devices/counts {:.1} ms (slowest of 5); first page of {} devices {:.1} ms",
        ms(counts),
        page.devices.len(),
        ms(listed)
    ))
}

/// One bulk request puts all `n` phones into `secure-site`.
pub(crate) async fn all_to_secure_site(admin: &ServerClient, n: u64) -> Result<()> {
    let done: BulkDone = admin
        .post(
            "/api/v1/devices/bulk",
            &BulkRequest {
                filter: DeviceQuery::default(),
                action: BulkAction::SetMode,
                mode: Some("secure-site".parse()?),
                expected_count: n,
                expires_in_secs: None,
            },
        )
        .await?;
    if done.devices != n {
        bail!("the bulk set-mode covered {} devices", done.devices);
    }
    Ok(())
}

/// The sum of a reading over every node (none if one is unreadable).
pub(crate) fn sum_of<T: std::iter::Sum<T>>(
    pids: &[u32],
    read: impl Fn(u32) -> Option<T>,
) -> Option<T> {
    pids.iter().map(|p| read(*p)).sum()
}

/// Starts `n` server nodes; more than one share the database in `env` and a NATS
/// server, each with the first node's keys, every one listed in the signed bundles.
pub(crate) fn start_nodes(
    root: &Path,
    tmp: &Path,
    n: usize,
    env: &[(&str, &str)],
    procs: &mut Procs,
) -> Result<Vec<BenchServer>> {
    if n == 1 {
        return Ok(vec![BenchServer::start(
            root,
            &tmp.join("server"),
            env,
            procs,
        )?]);
    }
    let nats =
        std::env::var("REDOUBT_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    if std::net::TcpStream::connect(nats.trim_start_matches("nats://")).is_err() {
        bail!(
            "--nodes needs a NATS server at {nats} (start nats-server, or set REDOUBT_BENCH_NATS)"
        );
    }
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<Result<_>>()?;
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let servers = format!(
        "[{}]",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out: Vec<BenchServer> = Vec::new();
    for (k, (port, url)) in ports.iter().zip(&urls).enumerate() {
        let data = tmp.join(format!("node-{k}"));
        if let Some(first) = out.first() {
            std::fs::create_dir_all(&data)?;
            for f in ["ca.crt", "ca.key", "org-signing.key"] {
                std::fs::copy(first.data.join(f), data.join(f))?;
            }
        }
        let mut node_env = env.to_vec();
        node_env.extend([
            ("REDOUBT_NATS_URL", nats.as_str()),
            ("REDOUBT_PUBLIC_URL", url.as_str()),
            ("REDOUBT_SERVERS", servers.as_str()),
        ]);
        out.push(BenchServer::start_at(
            root,
            &data,
            &format!("127.0.0.1:{port}"),
            &node_env,
            procs,
        )?);
    }
    Ok(out)
}

async fn wait_until(
    pb: &ProgressBar,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            pb.abandon();
            bail!("not done within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Enrolls phone `i` (of user `p<i>`): a code from the server, then the phone's own key.
pub(crate) async fn enroll(
    admin: &ServerClient,
    i: usize,
) -> Result<(DeviceId, SigningKey, VerifyingKey)> {
    enroll_as(
        admin,
        &CreateEnrollment {
            user: format!("p{i}").parse()?,
            mode: None,
            ttl_secs: None,
            groups: Vec::new(),
        },
    )
    .await
}

/// Enrolls a phone with a code made from `request` (its user, groups): the code from the
/// server, then the phone's own Ed25519 key and its proof of possession through
/// `POST /enroll`. Returns the device id, the key and the organization's key.
pub(crate) async fn enroll_as(
    admin: &ServerClient,
    request: &CreateEnrollment,
) -> Result<(DeviceId, SigningKey, VerifyingKey)> {
    let code: EnrollmentCreated = admin.post("/api/v1/enrollments", request).await?;
    let url: EnrollmentUrl = code.url.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let public = STANDARD.encode(key.verifying_key().to_bytes());
    let proof = STANDARD.encode(
        key.sign(&enroll_proof_message(&url.token, &public))
            .to_bytes(),
    );
    let anonymous = ServerClient::new(admin.base().clone(), url.ca, None)?;
    let done: EnrollResponse = anonymous
        .post(
            "/api/v1/enroll",
            &EnrollRequest {
                token: url.token,
                device_public_key: public,
                hardware: HardwareKind::Sim,
                proof,
            },
        )
        .await?;
    let org: [u8; 32] = STANDARD
        .decode(&done.organization_key)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("organization key is not 32 bytes"))?;
    Ok((done.device_id, key, VerifyingKey::from_bytes(&org)?))
}

/// What a phone enforces under `bundle`, as a signed report numbered `seq`.
fn report(
    id: &DeviceId,
    key: &SigningKey,
    bundle: &PolicyBundle,
    seq: u64,
) -> (SignedEnvelope, u8) {
    let (report, mode) = report_of(id, bundle, seq);
    (
        SignedEnvelope::sign(ComplianceReport::KIND, &report, key),
        mode,
    )
}

/// The report (unsigned) of a phone that enforces what `bundle` decides, numbered `seq`,
/// with the index of its mode ([`mode_index`]).
pub(crate) fn report_of(id: &DeviceId, bundle: &PolicyBundle, seq: u64) -> (ComplianceReport, u8) {
    let now = Timestamp::now();
    let decision = redoubt_policy::decide(Some(bundle), now);
    let mode = decision.mode;
    let report = ComplianceReport {
        device_id: id.clone(),
        seq,
        bundle_version: bundle.version,
        effective_mode: mode.name.clone(),
        capabilities: Capability::ALL
            .into_iter()
            .map(|c| {
                let state = if mode.capabilities.get(c) == Rule::Deny {
                    CapabilityState::Off
                } else {
                    CapabilityState::On
                };
                (c, state)
            })
            .collect(),
        network: if mode.network == NetworkReach::OrganizationOnly {
            NetworkState::OrganizationOnly
        } else {
            NetworkState::Open
        },
        hardware: HardwareKind::Sim,
        observed_at: now,
        fallback_reason: decision.fallback_reason,
        zones: Vec::new(),
        locked_by: None,
        commands_done: Vec::new(),
        events: Vec::new(),
        trusted_floor: None,
        clock_tampered: false,
        inventory: None,
    };
    let index = mode_index(&mode.name);
    (report, index)
}

/// One phone: connects from `source`, proves its key, applies every bundle it is sent
/// and reports; reports back to back while the flood flag is up.
pub(crate) async fn phone(
    i: usize,
    client: ServerClient,
    id: DeviceId,
    key: SigningKey,
    source: IpAddr,
    shared: Arc<Shared>,
) -> Result<()> {
    let stat = &shared.stats[i];
    let mut flood = shared.flood.clone();
    let mut bundle: Option<PolicyBundle> = None;
    let mut reports = Reports {
        id: &id,
        key: &key,
        seq: 0,
        in_flight: Default::default(),
    };
    // Like an agent, a phone whose session drops connects again (counted, and at most
    // ten times: more is a failure).
    let mut dropped = 0u32;
    loop {
        let ended: Result<()> = async {
            let mut ws = {
                let _dialing = shared.dialing.acquire().await?;
                // Like an agent: a refused or timed-out connection is tried again, after a pause.
                let mut attempt = 0u32;
                loop {
                    match client
                        .websocket_from("/api/v1/device/ws", Some(source))
                        .await
                    {
                        Ok(ws) => break ws,
                        Err(_) if attempt < 5 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                        }
                        Err(e) => return Err(e).context("connecting"),
                    }
                }
            };
            loop {
                tokio::select! {
                    msg = ws.next() => {
                        let text = match msg {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Close(_))) | None => bail!("the server closed the session"),
                            Some(Ok(_)) => continue,
                            Some(Err(e)) => return Err(e.into()),
                        };
                        let frame: ServerFrame = serde_json::from_str(&text)?;
                        match frame {
                            ServerFrame::Challenge { nonce } => {
                                let signature = STANDARD.encode(key.sign(&hello_message(&nonce, &id)).to_bytes());
                                ws.send(frame_of(&AgentFrame::Hello { device_id: id.clone(), signature })).await?;
                            }
                            ServerFrame::Welcome { .. } => stat.connected.store(true, Ordering::Relaxed),
                            ServerFrame::Bundle { bundle: env } => {
                                let held = bundle.as_ref().map(|b| b.version);
                                let b = redoubt_policy::verify_bundle(&env, &shared.org_key, &id, held, Timestamp::now())
                                    .map_err(|e| anyhow::anyhow!("bundle refused: {e}"))?;
                                reports.send(&mut ws, &b).await?;
                                bundle = Some(b);
                            }
                            ServerFrame::ReportRequest => {
                                if let Some(b) = &bundle {
                                    reports.send(&mut ws, b).await?;
                                }
                            }
                            ServerFrame::ReportAck { seq: acked } => {
                                let mut last = None;
                                while reports.in_flight.front().is_some_and(|(s, _, _)| *s <= acked) {
                                    last = reports.in_flight.pop_front();
                                }
                                if let Some((_, version, mode)) = last {
                                    stat.acked_at_us.store(shared.now_us(), Ordering::Relaxed);
                                    stat.acked_mode.store(mode, Ordering::Relaxed);
                                    stat.acked_version.store(version, Ordering::Relaxed);
                                    stat.acks.fetch_add(1, Ordering::Relaxed);
                                }
                                if *flood.borrow() && reports.in_flight.is_empty()
                                    && let Some(b) = &bundle
                                {
                                    reports.send(&mut ws, b).await?;
                                }
                            }
                            ServerFrame::Command { .. } => {}
                            ServerFrame::Error { code, message, fatal } => {
                                if fatal {
                                    bail!("server error {code}: {message}");
                                }
                            }
                        }
                    }
                    changed = flood.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        if *flood.borrow() && reports.in_flight.is_empty()
                            && let Some(b) = &bundle
                        {
                            reports.send(&mut ws, b).await?;
                        }
                    }
                }
            }
        }
        .await;
        match ended {
            Ok(()) => return Ok(()),
            Err(_) if shared.stopping.load(Ordering::Relaxed) => return Ok(()),
            Err(e) if dropped >= 10 => return Err(e),
            Err(_) => {
                dropped += 1;
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                stat.connected.store(false, Ordering::Relaxed);
                reports.in_flight.clear();
                tokio::time::sleep(Duration::from_millis(500 * u64::from(dropped))).await;
            }
        }
    }
}

pub(crate) fn frame_of(frame: &AgentFrame) -> Message {
    Message::text(serde_json::to_string(frame).unwrap_or_default())
}

/// A phone's reports: numbered, signed, and remembered until acknowledged.
struct Reports<'a> {
    id: &'a DeviceId,
    key: &'a SigningKey,
    seq: u64,
    /// Sent and not yet acknowledged: (seq, bundle version, mode).
    in_flight: std::collections::VecDeque<(u64, u64, u8)>,
}

impl Reports<'_> {
    /// Signs and sends the report of what `bundle` makes the phone enforce.
    async fn send(
        &mut self,
        ws: &mut redoubt_client::DeviceSocket,
        bundle: &PolicyBundle,
    ) -> Result<()> {
        self.seq += 1;
        let (env, mode) = report(self.id, self.key, bundle, self.seq);
        self.in_flight.push_back((self.seq, bundle.version, mode));
        ws.send(frame_of(&AgentFrame::Report { report: env }))
            .await?;
        Ok(())
    }
}
