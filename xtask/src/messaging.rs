//! `cargo xtask bench messaging`: end-to-end messaging between simulated devices on
//! loopback, and the cost of MLS operations for large groups.
//!
//! The xtask binary of `cargo xtask` is a debug build; this task builds the release
//! server, agent and xtask, and runs the release xtask with the same arguments, so the
//! in-process clients (one [`Messenger`] per device) and the MLS figures are release
//! code too.
//!
//! End to end: the release `redoubt-server` on a temp data dir; N phones enrolled with
//! the release `redoubt-agent enroll`; each opened in-process with
//! [`Messenger::open`] (certifies its MLS key, uploads KeyPackages); devices split into
//! groups (one conversation each, created by its first member); every member sends M
//! texts while all receive through the push channel + `sync()`. Latency is from just
//! before `send_text` to the moment the recipient's `messages()` shows the message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt as _, StreamExt as _};
use redoubt_client::DeviceSocket;
use redoubt_messenger::Messenger;
use redoubt_messenger::messenger::RECEIPTS_UP_TO;
use redoubt_proto::{GroupId, UserName};
use tokio::sync::Mutex;

use crate::common::{
    BenchServer, Procs, build_release, check_flags, cpu_time, enroll_phone, flag, flag_value,
    load_average, mib, ms, percentile, proc_status_kib, rss_kib, workspace_root,
};
use crate::mls_cost::{self, Shape};

/// Usage of `bench messaging`.
pub const USAGE: &str = "cargo xtask bench messaging [--devices N] [--group G] [--messages M] \
[--interval-ms MS] [--timeout SECS] [--sizes 10,100,1000] [--rounds R] \
[--tree as-added|filled|both] [--only e2e|mls]";

const FLAGS: &[&str] = &[
    "--devices",
    "--group",
    "--messages",
    "--interval-ms",
    "--timeout",
    "--sizes",
    "--rounds",
    "--tree",
    "--only",
];

/// Set in the environment of the release xtask started by the debug one, whose build
/// already covered the server and the agent.
const BUILT_ENV: &str = "REDOUBT_BENCH_RELEASE_BUILT";

/// The end-to-end settings.
struct E2e {
    devices: usize,
    group: usize,
    messages: usize,
    interval: Duration,
    timeout: Duration,
}

/// Parses the flags and runs the benchmark (in the release xtask).
pub fn main(args: &[&str]) -> Result<()> {
    check_flags(args, FLAGS)?;
    let e2e = E2e {
        devices: flag(args, "--devices")?.unwrap_or(20),
        group: flag(args, "--group")?.unwrap_or(5),
        messages: flag(args, "--messages")?.unwrap_or(20),
        interval: Duration::from_millis(flag_value(args, "--interval-ms")?.unwrap_or(0)),
        timeout: Duration::from_secs(flag_value(args, "--timeout")?.unwrap_or(300)),
    };
    let sizes: Vec<usize> = flag_value::<String>(args, "--sizes")?
        .unwrap_or_else(|| "10,100,1000".into())
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("--sizes: {s:?}")))
        .collect::<Result<_>>()?;
    let rounds = flag(args, "--rounds")?.unwrap_or(5);
    let shapes = match flag_value::<String>(args, "--tree")?.as_deref() {
        None | Some("as-added") => vec![Shape::AsAdded],
        Some("filled") => vec![Shape::Filled],
        Some("both") => vec![Shape::AsAdded, Shape::Filled],
        Some(other) => bail!("--tree {other}: expected as-added, filled or both"),
    };
    let (run_e2e, run_mls) = match flag_value::<String>(args, "--only")?.as_deref() {
        None => (true, true),
        Some("e2e") => (true, false),
        Some("mls") => (false, true),
        Some(other) => bail!("--only {other}: expected e2e or mls"),
    };
    if run_e2e && (e2e.group < 2 || e2e.group > e2e.devices) {
        bail!(
            "--group {} must be at least 2 and at most --devices {}",
            e2e.group,
            e2e.devices
        );
    }
    if run_e2e && e2e.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if run_mls && (rounds == 0 || sizes.iter().any(|&n| n < 2)) {
        bail!("--sizes must all be at least 2 (committer and receiver) and --rounds at least 1");
    }

    let root = workspace_root();
    if cfg!(debug_assertions) {
        // Re-run as release code.
        let packages: &[&str] = if run_e2e {
            &["redoubt-server", "redoubt-agent", "xtask"]
        } else {
            &["xtask"]
        };
        return crate::common::rerun_release_bench(&root, packages, "messaging", args, BUILT_ENV);
    }
    if run_e2e && std::env::var_os(BUILT_ENV).is_none() {
        build_release(&root, &["redoubt-server", "redoubt-agent"])?;
    }
    if run_e2e {
        tokio::runtime::Runtime::new()?.block_on(end_to_end(&root, &e2e))?;
    }
    if run_mls {
        mls_cost::run(&sizes, rounds, &shapes)?;
    }
    Ok(())
}

/// Messages a device has seen arrive, in order.
#[derive(Default)]
struct Seen {
    last_local_id: Option<i64>,
    arrivals: Vec<(String, Instant)>,
}

/// One simulated device during the send phase.
struct Device {
    index: usize,
    messenger: Arc<Messenger>,
    group: GroupId,
    /// Texts it must receive.
    expected: usize,
    seen: Arc<Mutex<Seen>>,
}

/// Records the incoming messages `messages()` shows that were not seen yet; returns
/// how many have arrived in all.
async fn observe(m: &Messenger, gid: &GroupId, seen: &Mutex<Seen>) -> Result<usize> {
    let mut s = seen.lock().await;
    let new = m.messages(gid, s.last_local_id).await?;
    let now = Instant::now();
    for v in new {
        s.last_local_id = Some(v.local_id);
        if !v.outgoing {
            s.arrivals.push((v.id, now));
        }
    }
    Ok(s.arrivals.len())
}

/// Sends `count` texts; returns each message id with the instant just before its
/// `send_text`, and when the last send returned.
async fn sender(
    d: Arc<Device>,
    count: usize,
    interval: Duration,
) -> Result<(Vec<(String, Instant)>, Instant)> {
    let mut sent = Vec::with_capacity(count);
    for k in 0..count {
        let text = format!("bench message {k} from device {}", d.index);
        let t0 = Instant::now();
        let id = d
            .messenger
            .send_text(&d.group, &text)
            .await
            .with_context(|| format!("device {}: sending message {k}", d.index))?;
        sent.push((id, t0));
        observe(&d.messenger, &d.group, &d.seen).await?;
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    Ok((sent, Instant::now()))
}

/// How long a receiver waits for a push frame before syncing anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// What a receiver saw besides messages.
#[derive(Debug, Default)]
struct ReceiverStats {
    syncs: u64,
    fallback_syncs: u64,
    refused: Vec<String>,
}

/// Syncs on every push frame until all expected texts have arrived.
async fn receiver(d: Arc<Device>, mut socket: Option<DeviceSocket>) -> Result<ReceiverStats> {
    let mut stats = ReceiverStats::default();
    loop {
        let report = d
            .messenger
            .sync()
            .await
            .with_context(|| format!("device {}: sync", d.index))?;
        stats.syncs += 1;
        stats.refused.extend(report.refused);
        if observe(&d.messenger, &d.group, &d.seen).await? >= d.expected {
            return Ok(stats);
        }
        let wake = match socket.as_mut() {
            Some(s) => match tokio::time::timeout(POLL_FALLBACK, s.next()).await {
                Ok(Some(Ok(_))) => Wake::Frame,
                Ok(_) => Wake::Closed,
                Err(_) => Wake::Timeout,
            },
            None => {
                tokio::time::sleep(POLL_FALLBACK).await;
                Wake::Timeout
            }
        };
        match wake {
            Wake::Frame => {
                // Frames already waiting ask for the same sync.
                while let Some(Some(Ok(_))) = socket.as_mut().and_then(|s| s.next().now_or_never())
                {
                }
            }
            Wake::Closed => {
                // The push channel closed: reopen it, or poll.
                socket = d.messenger.net().push_channel().await.ok();
                stats.fallback_syncs += 1;
            }
            Wake::Timeout => stats.fallback_syncs += 1,
        }
    }
}

/// Why a receiver woke up.
enum Wake {
    Frame,
    Closed,
    Timeout,
}

fn user(i: usize) -> String {
    format!("user{i}")
}

/// Waits for a spawned task.
async fn joined<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    h.await.context("a benchmark task panicked")?
}

/// Runs the futures as tasks (so they spread over the cores); their results in order.
async fn spawn_all<T, F>(futures: impl IntoIterator<Item = F>) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    futures_util::future::try_join_all(handles.into_iter().map(joined)).await
}

/// Syncs until the device has joined `gid`.
async fn wait_joined(m: &Messenger, gid: &GroupId, index: usize, until: Instant) -> Result<()> {
    loop {
        m.sync()
            .await
            .with_context(|| format!("device {index}: sync"))?;
        if m.conversations().await?.iter().any(|c| &c.id == gid) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("device {index} did not receive the Welcome to {gid} in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens the push channel and waits for its first frame (`ready`).
async fn ready_socket(m: &Messenger, index: usize) -> Result<DeviceSocket> {
    let mut s = m
        .net()
        .push_channel()
        .await
        .with_context(|| format!("device {index}: opening the push channel"))?;
    match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
        Ok(Some(Ok(_))) => Ok(s),
        Ok(Some(Err(e))) => bail!("device {index}: push channel: {e}"),
        Ok(None) => bail!("device {index}: the push channel closed at once"),
        Err(_) => bail!("device {index}: no `ready` on the push channel within 30 s"),
    }
}

async fn end_to_end(root: &Path, p: &E2e) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    // Creators claim one KeyPackage per member; the default per-minute limit is for
    // people, not for a benchmark creating many groups from one process.
    let server = BenchServer::start(
        root,
        &tmp.path().join("server"),
        &[("REDOUBT_KEY_PACKAGE_CLAIMS_PER_MINUTE", "1000000")],
        &mut procs,
    )?;
    let rss_idle = rss_kib(server.pid);
    let client = server.owner_client(root)?;
    let setup = Instant::now();

    eprintln!("enrolling {} simulated phones…", p.devices);
    let mut dirs = Vec::with_capacity(p.devices);
    for i in 0..p.devices {
        let state = tmp.path().join(format!("phone{i}"));
        enroll_phone(root, &client, &user(i), &state).await?;
        dirs.push(state);
    }
    let enrolled = setup.elapsed();

    eprintln!(
        "opening {} messengers (MLS key certificates, KeyPackages)…",
        p.devices
    );
    let messengers: Vec<Arc<Messenger>> =
        spawn_all(dirs.into_iter().enumerate().map(|(i, dir)| async move {
            let dir = redoubt_messenger::MessengerDir::resolve(&dir)?;
            let m = Messenger::open(dir.root())
                .await
                .with_context(|| format!("device {i}: opening the messenger"))?;
            m.sync()
                .await
                .with_context(|| format!("device {i}: first sync (KeyPackage upload)"))?;
            Ok(Arc::new(m))
        }))
        .await?;
    let opened = setup.elapsed();

    let n_groups = p.devices / p.group;
    let members: Vec<Vec<usize>> = (0..n_groups)
        .map(|k| (0..p.devices).filter(|i| i % n_groups == k).collect())
        .collect();
    eprintln!("creating {n_groups} conversations…");
    let gids: Vec<GroupId> = spawn_all(members.iter().enumerate().map(|(k, ms)| {
        let creator = messengers[ms[0]].clone();
        let others: Vec<String> = ms[1..].iter().map(|&i| user(i)).collect();
        async move {
            let others: Vec<UserName> =
                others.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
            let (gid, report) = creator
                .create(&format!("bench {k}"), &others, None)
                .await
                .with_context(|| format!("creating conversation {k}"))?;
            if report.added.len() != others.len() {
                bail!(
                    "conversation {k}: {} of {} devices added; skipped: {:?}",
                    report.added.len(),
                    others.len(),
                    report.skipped
                );
            }
            Ok(gid)
        }
    }))
    .await?;
    let mut group_of = vec![0; p.devices];
    for (k, ms) in members.iter().enumerate() {
        for &i in ms {
            group_of[i] = k;
        }
    }
    let until = Instant::now() + Duration::from_secs(120);
    spawn_all((0..p.devices).map(|i| {
        let (m, gid) = (messengers[i].clone(), gids[group_of[i]].clone());
        async move { wait_joined(&m, &gid, i, until).await }
    }))
    .await?;
    let sockets: Vec<DeviceSocket> = spawn_all((0..p.devices).map(|i| {
        let m = messengers[i].clone();
        async move { ready_socket(&m, i).await }
    }))
    .await?;
    let created = setup.elapsed();

    let devices: Vec<Arc<Device>> = (0..p.devices)
        .map(|i| {
            let k = group_of[i];
            Arc::new(Device {
                index: i,
                messenger: messengers[i].clone(),
                group: gids[k].clone(),
                expected: (members[k].len() - 1) * p.messages,
                seen: Arc::new(Mutex::new(Seen::default())),
            })
        })
        .collect();
    let expected: usize = devices.iter().map(|d| d.expected).sum();
    let load = load_average();
    let rss_before = rss_kib(server.pid);
    let server_cpu_before = cpu_time(server.pid);
    let own_cpu_before = cpu_time(std::process::id());

    eprintln!(
        "send phase: {} devices × {} messages, {expected} deliveries expected…",
        p.devices, p.messages
    );
    let start = Instant::now();
    let mut senders = Vec::with_capacity(p.devices);
    let mut receivers = Vec::with_capacity(p.devices);
    for (d, socket) in devices.iter().zip(sockets) {
        receivers.push(tokio::spawn(receiver(d.clone(), Some(socket))));
        senders.push(tokio::spawn(sender(d.clone(), p.messages, p.interval)));
    }
    let aborts: Vec<_> = senders
        .iter()
        .map(|h| h.abort_handle())
        .chain(receivers.iter().map(|h| h.abort_handle()))
        .collect();
    let outcome = tokio::time::timeout(
        p.timeout,
        futures_util::future::try_join(
            futures_util::future::try_join_all(senders.into_iter().map(joined)),
            futures_util::future::try_join_all(receivers.into_iter().map(joined)),
        ),
    )
    .await;
    aborts.iter().for_each(|a| a.abort());
    let (sent, stats) = match outcome {
        Ok(r) => r?,
        Err(_) => {
            let mut got = 0;
            let mut short = Vec::new();
            for d in &devices {
                let n = d.seen.lock().await.arrivals.len();
                got += n;
                if n < d.expected {
                    short.push(format!("device {}: {n}/{}", d.index, d.expected));
                }
            }
            short.truncate(10);
            bail!(
                "only {got} of {expected} deliveries arrived within {} s (--timeout); short: {}",
                p.timeout.as_secs(),
                short.join(", ")
            );
        }
    };
    let server_cpu = server_cpu_before
        .zip(cpu_time(server.pid))
        .map(|(a, b)| b.saturating_sub(a));
    let own_cpu = own_cpu_before
        .zip(cpu_time(std::process::id()))
        .map(|(a, b)| b.saturating_sub(a));
    let rss_after = rss_kib(server.pid);
    let rss_peak = proc_status_kib(server.pid, "VmHWM");
    let own_rss = rss_kib(std::process::id());

    // Latencies: each delivery against the instant just before its send_text.
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut sends_done = start;
    for (list, done) in &sent {
        sends_done = sends_done.max(*done);
        for (id, t0) in list {
            sent_at.insert(id.clone(), *t0);
        }
    }
    let mut latencies = Vec::with_capacity(expected);
    let mut last_arrival = start;
    for d in &devices {
        let seen = d.seen.lock().await;
        if seen.arrivals.len() != d.expected {
            bail!(
                "device {} received {} messages, expected {}",
                d.index,
                seen.arrivals.len(),
                d.expected
            );
        }
        for (id, at) in &seen.arrivals {
            let t0 = sent_at
                .get(id)
                .with_context(|| format!("device {} received an unknown message {id}", d.index))?;
            latencies.push(at.saturating_duration_since(*t0));
            last_arrival = last_arrival.max(*at);
        }
    }
    latencies.sort();
    let wall = last_arrival.saturating_duration_since(start);
    let sends_wall = sends_done.saturating_duration_since(start);
    let total_sent = p.devices * p.messages;
    let refused: Vec<&String> = stats.iter().flat_map(|s| &s.refused).collect();
    let syncs: u64 = stats.iter().map(|s| s.syncs).sum();
    let fallback: u64 = stats.iter().map(|s| s.fallback_syncs).sum();
    let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
    let (smallest, largest) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );

    let client_profile = if cfg!(debug_assertions) {
        "DEBUG build"
    } else {
        "release build"
    };
    println!(
        "messaging end to end: {} simulated devices on loopback in {n_groups} conversation(s) of {} members; \
         server: release redoubt-server (TLS, SQLite); clients: {} in-process redoubt_messenger::Messenger ({client_profile}, SQLite state under {}); {} cores shared by all",
        p.devices,
        if smallest == largest {
            smallest.to_string()
        } else {
            format!("{smallest}-{largest}")
        },
        p.devices,
        tmp.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  every member sends {} texts ({}), each delivered to the other members: {expected} deliveries; delivery receipts {}",
        p.messages,
        if p.interval.is_zero() {
            "back to back".to_owned()
        } else {
            format!("{} ms apart", p.interval.as_millis())
        },
        if largest <= RECEIPTS_UP_TO {
            format!("on (conversations ≤ {RECEIPTS_UP_TO} members send them: more MLS traffic)")
        } else if smallest > RECEIPTS_UP_TO {
            format!("off (conversations > {RECEIPTS_UP_TO} members)")
        } else {
            format!("only in conversations ≤ {RECEIPTS_UP_TO} members")
        }
    );
    println!(
        "  delivered {}/{expected} in {:.2} s: {:.0} messages/s delivered end to end ({total_sent} sent in {:.2} s: {:.0} sends/s)",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
        sends_wall.as_secs_f64(),
        total_sent as f64 / sends_wall.as_secs_f64().max(1e-9),
    );
    println!(
        "  latency (before send_text -> visible in the recipient's messages()): p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!(
        "  server RSS: {} idle, {} before the send phase, {} after (peak {}); server CPU in the send phase {}",
        mib(rss_idle),
        mib(rss_before),
        mib(rss_after),
        mib(rss_peak),
        server_cpu.map_or_else(|| "?".into(), |c| format!("{:.2} s", c.as_secs_f64())),
    );
    println!(
        "  client process (all {} messengers): RSS {}, CPU in the send phase {}; {syncs} receiver syncs ({fallback} without a push frame)",
        p.devices,
        mib(own_rss),
        own_cpu.map_or_else(|| "?".into(), |c| format!("{:.2} s", c.as_secs_f64())),
    );
    println!(
        "  setup: enrolled in {:.1} s, messengers opened in {:.1} s, conversations created and joined in {:.1} s",
        enrolled.as_secs_f64(),
        (opened - enrolled).as_secs_f64(),
        (created - opened).as_secs_f64(),
    );
    println!("  machine load average (1 min) before the send phase: {load}");
    if !refused.is_empty() {
        println!("  WARNING: {} queue item(s) refused:", refused.len());
        for r in refused.iter().take(10) {
            println!("    {r}");
        }
    }
    drop(procs);
    Ok(())
}
