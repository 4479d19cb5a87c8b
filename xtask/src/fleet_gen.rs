//! `cargo xtask bench fleet --generators G`: the load generator split over G processes,
//! so that more phones are simulated than one process may hold sockets (20 000 files
//! per process on this machine kind).
//!
//! The coordinating process starts the server nodes, then G generator processes (the
//! same release xtask, `bench fleet-generator`), each with a slice of the phones. A
//! generator enrolls its phones, connects them when told, and prints one status line
//! every 250 ms (`stat ENROLLED CONNECTED REPORTED ACKS SWITCHED FAILED RECONNECTS`); it takes commands on
//! its standard input:
//!
//! - `connect`: connect every phone;
//! - `target MODE`: from now on count the phones whose acknowledged report is of a newer
//!   bundle in MODE (answers `armed`);
//! - `times`: every phone's acknowledgement time of that switch, in µs since the Unix
//!   epoch (answers `times T1,T2,…`);
//! - `flood 1` / `flood 0`: report back to back, or stop;
//! - `watch I MODE`: wait for phone I (of this generator) to report MODE from a newer
//!   bundle (answers `watching`, then `single UNIX_µS` or `single timeout`);
//! - `quit`.
//!
//! Times cross processes as Unix microseconds (one machine, one clock).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use redoubt_client::ServerClient;
use redoubt_proto::api::{DeviceView, SetMode};
use tokio::sync::watch;

use crate::common::{Procs, cpu_time, load_average, rss_kib};
use crate::fleet::{
    Config, Phone, PhoneStat, Shared, bar, enroll, mode_index, phone, start_nodes, sum_of,
};

/// The environment variable that carries a generator's slice and the servers.
const GEN_ENV: &str = "REDOUBT_FLEET_GENERATOR";

/// Unix time in microseconds.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A generator's slice of the phones and where to find the servers.
struct Slice {
    first: usize,
    count: usize,
    sources: usize,
    urls: Vec<String>,
    fingerprint: String,
    token: String,
}

impl Slice {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.first,
            self.count,
            self.sources,
            self.urls.join(","),
            self.fingerprint,
            self.token
        )
    }

    fn decode(s: &str) -> Result<Slice> {
        let parts: Vec<&str> = s.split('|').collect();
        let [first, count, sources, urls, fingerprint, token] = parts.as_slice() else {
            bail!("{GEN_ENV} is malformed");
        };
        Ok(Slice {
            first: first.parse()?,
            count: count.parse()?,
            sources: sources.parse()?,
            urls: urls.split(',').map(str::to_owned).collect(),
            fingerprint: (*fingerprint).to_owned(),
            token: (*token).to_owned(),
        })
    }
}

/// What a generator counts as switched: phones whose acknowledged report is of a newer
/// bundle than when `target` came, in the target mode.
#[derive(Default)]
struct Target {
    mode: u8,
    before: Vec<u64>,
}

/// `xtask bench fleet-generator` (started by the coordinator, never by hand).
pub fn generator_main() -> Result<()> {
    let slice = Slice::decode(&std::env::var(GEN_ENV).context("not started by the coordinator")?)?;
    crate::fleet::raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(generate(slice))
}

async fn generate(slice: Slice) -> Result<()> {
    let clients: Vec<ServerClient> = slice
        .urls
        .iter()
        .map(|u| {
            Ok(ServerClient::new(
                u.parse()?,
                slice.fingerprint.parse()?,
                Some(slice.token.clone()),
            )?)
        })
        .collect::<Result<_>>()?;
    let (flood_tx, flood_rx) = watch::channel(false);
    let target = Arc::new(Mutex::new(Target::default()));
    let enrolled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let epoch = Instant::now();
    let epoch_unix = unix_us();
    // Commands from the coordinator, read on a thread of their own.
    let (cmd_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Enrollment, spread over the nodes and over 16 tasks.
    let mut tasks = Vec::new();
    let per = slice.count.div_ceil(16).max(1);
    for chunk_start in (0..slice.count).step_by(per) {
        let (clients, enrolled) = (clients.clone(), enrolled.clone());
        let (first, end) = (slice.first, (chunk_start + per).min(slice.count));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(end - chunk_start);
            for local in chunk_start..end {
                let global = first + local;
                out.push((
                    local,
                    enroll(&clients[global % clients.len()], global).await?,
                ));
                enrolled.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(out)
        }));
    }
    // Status lines while enrolling.
    let status_enrolled = enrolled.clone();
    let early_status = tokio::spawn(async move {
        loop {
            println!(
                "stat {} 0 0 0 0 0 0",
                status_enrolled.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut done = Vec::with_capacity(slice.count);
    for t in tasks {
        done.extend(t.await??);
    }
    done.sort_by_key(|(i, _)| *i);
    let org_key = done
        .first()
        .map(|(_, (_, _, org))| *org)
        .context("no phone")?;
    let phones: Vec<Phone> = done
        .into_iter()
        .map(|(local, (id, key, _))| Phone {
            id,
            key,
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + ((slice.first + local) % slice.sources) as u8,
            )),
        })
        .collect();
    let shared = Arc::new(Shared {
        epoch,
        org_key,
        stats: (0..slice.count).map(|_| PhoneStat::default()).collect(),
        flood: flood_rx,
        failures: Default::default(),
        stopping: Default::default(),
        dialing: tokio::sync::Semaphore::new(crate::fleet::DIALING),
        reconnects: Default::default(),
    });
    early_status.abort();
    {
        let (shared, target) = (shared.clone(), target.clone());
        let n = slice.count;
        tokio::spawn(async move {
            loop {
                let (mut c, mut r, mut a, mut s) = (0, 0, 0, 0);
                {
                    let t = target.lock().unwrap_or_else(|p| p.into_inner());
                    for (i, p) in shared.stats.iter().enumerate() {
                        c += usize::from(p.connected.load(Ordering::Relaxed));
                        let acks = p.acks.load(Ordering::Relaxed);
                        r += usize::from(acks > 0);
                        a += acks;
                        if t.mode != 0
                            && p.acked_version.load(Ordering::Relaxed) > t.before[i]
                            && p.acked_mode.load(Ordering::Relaxed) == t.mode
                        {
                            s += 1;
                        }
                    }
                }
                let f = shared.failures.load(Ordering::Relaxed);
                let d = shared.reconnects.load(Ordering::Relaxed);
                println!("stat {n} {c} {r} {a} {s} {f} {d}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    let to_unix = move |us: u64| epoch_unix + us;
    while let Some(cmd) = commands.recv().await {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["connect"] => {
                for (local, p) in phones.iter().enumerate() {
                    let global = slice.first + local;
                    let client = clients[global % clients.len()].clone();
                    let shared = shared.clone();
                    let (id, key, source) = (p.id.clone(), p.key.clone(), p.source);
                    tokio::spawn(async move {
                        if let Err(e) = phone(local, client, id, key, source, shared.clone()).await
                            && !shared.stopping.load(Ordering::Relaxed)
                            && shared.failures.fetch_add(1, Ordering::Relaxed) < 3
                        {
                            eprintln!("phone {global}: {e:#}");
                        }
                        shared.stats[local]
                            .connected
                            .store(false, Ordering::Relaxed);
                    });
                }
            }
            ["target", mode] => {
                let mut t = target.lock().unwrap_or_else(|p| p.into_inner());
                t.before = shared
                    .stats
                    .iter()
                    .map(|p| p.acked_version.load(Ordering::Relaxed))
                    .collect();
                t.mode = mode_index(mode);
                drop(t);
                println!("armed");
            }
            ["times"] => {
                let list: Vec<String> = shared
                    .stats
                    .iter()
                    .map(|p| to_unix(p.acked_at_us.load(Ordering::Relaxed)).to_string())
                    .collect();
                println!("times {}", list.join(","));
            }
            ["flood", on] => {
                flood_tx.send_replace(*on == "1");
            }
            ["watch", local, mode] => {
                let local: usize = local.parse()?;
                let want = mode_index(mode);
                let stat_prev = shared.stats[local].acked_version.load(Ordering::Relaxed);
                println!("watching");
                let shared = shared.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let stat = &shared.stats[local];
                    loop {
                        if stat.acked_version.load(Ordering::Relaxed) > stat_prev
                            && stat.acked_mode.load(Ordering::Relaxed) == want
                        {
                            println!(
                                "single {}",
                                to_unix(stat.acked_at_us.load(Ordering::Relaxed))
                            );
                            return;
                        }
                        if Instant::now() > deadline {
                            println!("single timeout");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
            ["quit"] => {
                shared.stopping.store(true, Ordering::Relaxed);
                break;
            }
            other => bail!("unknown command {other:?}"),
        }
        std::io::stdout().flush().ok();
    }
    Ok(())
}

/// One generator process as the coordinator sees it.
struct Generator {
    child: Child,
    stdin: ChildStdin,
    first: usize,
    count: usize,
    /// The last status line's figures.
    stat: [u64; 7],
}

impl Generator {
    fn tell(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}").context("a generator stopped")?;
        self.stdin.flush()?;
        Ok(())
    }
}

/// Lines from the generators: (generator, line).
type Lines = mpsc::Receiver<(usize, String)>;

/// Reads the generators' lines until `done` holds for their figures, updating the bar
/// with `progress`; answers that are not status lines are returned in order.
fn wait_stats(
    gens: &mut [Generator],
    lines: &Lines,
    limit: Duration,
    pb: &indicatif::ProgressBar,
    progress: impl Fn(&[Generator]) -> u64,
    done: impl Fn(&[Generator]) -> bool,
) -> Result<Vec<(usize, String)>> {
    let deadline = Instant::now() + limit;
    let mut answers = Vec::new();
    loop {
        for g in gens.iter_mut() {
            if let Some(status) = g.child.try_wait()? {
                bail!("a generator exited ({status})");
            }
        }
        while let Ok((k, line)) = lines.try_recv() {
            if let Some(rest) = line.strip_prefix("stat ") {
                let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                if let Ok(stat) = <[u64; 7]>::try_from(v) {
                    gens[k].stat = stat;
                }
            } else {
                answers.push((k, line));
            }
        }
        pb.set_position(progress(gens));
        let failed = total(gens, 5);
        if failed > 0 {
            pb.abandon();
            bail!("{failed} phones failed (their errors are above)");
        }
        if done(gens) {
            return Ok(answers);
        }
        if Instant::now() > deadline {
            pb.abandon();
            bail!("not done within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for one answer from each listed generator that starts with `prefix`.
fn answers(
    gens: &mut [Generator],
    lines: &Lines,
    from: &[usize],
    prefix: &str,
    limit: Duration,
) -> Result<Vec<(usize, String)>> {
    let pb = indicatif::ProgressBar::hidden();
    let mut got: Vec<(usize, String)> = Vec::new();
    let deadline = Instant::now() + limit;
    while from.iter().any(|k| !got.iter().any(|(g, _)| g == k)) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no {prefix:?} answer within {} s", limit.as_secs());
        }
        let more = wait_stats(gens, lines, left, &pb, |_| 0, |_| true)?;
        got.extend(more.into_iter().filter(|(_, l)| l.starts_with(prefix)));
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(got)
}

/// Waits, with a progress bar, until the generators' `field` adds up to `n`.
fn all_reach(
    gens: &mut [Generator],
    lines: &Lines,
    field: usize,
    n: u64,
    what: &str,
    limit: Duration,
) -> Result<()> {
    let pb = bar(n as usize, what);
    wait_stats(
        gens,
        lines,
        limit,
        &pb,
        |g| total(g, field),
        |g| total(g, field) == n,
    )?;
    pb.finish();
    Ok(())
}

/// Sends one command to every generator.
fn tell_all(gens: &mut [Generator], line: &str) -> Result<()> {
    gens.iter_mut().try_for_each(|g| g.tell(line))
}

fn total(gens: &[Generator], field: usize) -> u64 {
    gens.iter().map(|g| g.stat[field]).sum()
}

/// The benchmark with the phones spread over `cfg.generators` processes.
pub async fn run_distributed(root: &std::path::Path, cfg: &Config, command: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let pg = crate::common::bench_database(cfg.postgres).await;
    let env = crate::common::database_env(&pg);
    let nodes = start_nodes(root, tmp.path(), cfg.nodes, &env, &mut procs)?;
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let token = nodes[0].owner_token(root)?;
    let admin = ServerClient::new(
        nodes[0].url.parse()?,
        nodes[0].fingerprint.parse()?,
        Some(token.clone()),
    )?;
    let n = cfg.phones;
    eprintln!(
        "fleet benchmark: {n} phones in {} generator processes over {} loopback source addresses, {} server nodes",
        cfg.generators, cfg.sources, cfg.nodes
    );
    let exe = std::env::current_exe()?;
    let (line_tx, lines) = mpsc::channel::<(usize, String)>();
    let mut gens = Vec::with_capacity(cfg.generators);
    let per = n.div_ceil(cfg.generators);
    for k in 0..cfg.generators {
        let first = k * per;
        let count = per.min(n.saturating_sub(first));
        if count == 0 {
            break;
        }
        let slice = Slice {
            first,
            count,
            sources: cfg.sources,
            urls: nodes.iter().map(|s| s.url.clone()).collect(),
            fingerprint: nodes[0].fingerprint.clone(),
            token: token.clone(),
        };
        let mut child = Command::new(&exe)
            .args(["bench", "fleet-generator"])
            .env(GEN_ENV, slice.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a generator")?;
        let out = child.stdout.take().context("generator stdout")?;
        let stdin = child.stdin.take().context("generator stdin")?;
        let tx = line_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((k, line)).is_err() {
                    break;
                }
            }
        });
        gens.push(Generator {
            child,
            stdin,
            first,
            count,
            stat: [0; 7],
        });
    }
    let n = n as u64;
    let started = Instant::now();
    all_reach(
        &mut gens,
        &lines,
        0,
        n,
        "enrolling",
        Duration::from_secs(3600),
    )?;
    let enroll_secs = started.elapsed().as_secs_f64();
    let rss_before = sum_of(&pids, rss_kib);
    let started = Instant::now();
    tell_all(&mut gens, "connect")?;
    all_reach(
        &mut gens,
        &lines,
        1,
        n,
        "connecting",
        Duration::from_secs(1800),
    )
    .with_context(|| "not every phone connected")?;
    let connect_secs = started.elapsed().as_secs_f64();
    all_reach(
        &mut gens,
        &lines,
        2,
        n,
        "first report",
        Duration::from_secs(1800),
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sum_of(&pids, rss_kib);
    let console = crate::fleet::console_queries(&admin).await?;
    let per_phone_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / n as f64),
        _ => None,
    };

    // One request puts every phone into secure-site.
    let all: Vec<usize> = (0..gens.len()).collect();
    tell_all(&mut gens, "target secure-site")?;
    answers(&mut gens, &lines, &all, "armed", Duration::from_secs(60))?;
    let t0 = unix_us();
    crate::fleet::all_to_secure_site(&admin, n).await?;
    all_reach(
        &mut gens,
        &lines,
        4,
        n,
        "set-mode all",
        Duration::from_secs(1800),
    )?;
    tell_all(&mut gens, "times")?;
    let mut all_switch: Vec<Duration> = Vec::with_capacity(n as usize);
    for (_, line) in answers(&mut gens, &lines, &all, "times ", Duration::from_secs(120))? {
        for t in line.trim_start_matches("times ").split(',') {
            all_switch.push(Duration::from_micros(t.parse::<u64>()?.saturating_sub(t0)));
        }
    }
    all_switch.sort();

    // Sustained ingest.
    let window = Duration::from_secs(cfg.ingest.as_secs().max(1));
    let pb = bar(0, "ingest");
    wait_stats(
        &mut gens,
        &lines,
        Duration::from_secs(5),
        &pb,
        |_| 0,
        |_| true,
    )?;
    let acks0 = total(&gens, 3);
    let cpu0 = sum_of(&pids, cpu_time);
    let started = Instant::now();
    tell_all(&mut gens, "flood 1")?;
    wait_stats(
        &mut gens,
        &lines,
        window + Duration::from_secs(5),
        &pb,
        |_| 0,
        |_| started.elapsed() >= window,
    )?;
    // The status lines lag by up to 250 ms: read them once more before counting.
    let lag = Instant::now();
    wait_stats(
        &mut gens,
        &lines,
        Duration::from_secs(5),
        &pb,
        |_| 0,
        |_| lag.elapsed() >= Duration::from_millis(300),
    )?;
    let acks1 = total(&gens, 3);
    let cpu1 = sum_of(&pids, cpu_time);
    let measured = started.elapsed();
    tell_all(&mut gens, "flood 0")?;
    pb.finish_and_clear();
    let ingested = acks1.saturating_sub(acks0);
    let per_sec = ingested as f64 / measured.as_secs_f64();
    let cpu_per_report_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if ingested > 0 => Some((b - a).as_secs_f64() * 1e6 / ingested as f64),
        _ => None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One phone at a time.
    let phones = admin_ids(&admin, n as usize).await?;
    let pb = bar(cfg.single, "single");
    let mut single = Vec::with_capacity(cfg.single);
    for r in 0..cfg.single {
        let i = (r * 7919) % n as usize;
        let k = gens
            .iter()
            .position(|g| i >= g.first && i < g.first + g.count)
            .context("no generator holds that phone")?;
        let mode = if r % 2 == 0 {
            "lockdown"
        } else {
            "secure-site"
        };
        let local = i - gens[k].first;
        gens[k].tell(&format!("watch {local} {mode}"))?;
        answers(&mut gens, &lines, &[k], "watching", Duration::from_secs(30))?;
        let t = unix_us();
        let _: DeviceView = admin
            .put(
                &format!("/api/v1/devices/{}/mode", phones[i]),
                &SetMode {
                    mode: mode.parse()?,
                },
            )
            .await?;
        let got = answers(&mut gens, &lines, &[k], "single ", Duration::from_secs(40))?;
        let at = got[0].1.trim_start_matches("single ");
        let at: u64 = at
            .parse()
            .with_context(|| format!("phone {i} did not report {mode} within 30 s"))?;
        single.push(Duration::from_micros(at.saturating_sub(t)));
        pb.inc(1);
    }
    pb.finish();
    single.sort();
    let held = total(&gens, 1);
    let reconnects = total(&gens, 6);
    for g in gens.iter_mut() {
        let _ = g.tell("quit");
    }
    for g in gens.iter_mut() {
        let _ = g.child.wait();
    }

    println!();
    println!("$ {command}");
    println!(
        "workload: {n} simulated phones in {} load-generator processes (one task per phone, real protocol: \
         own Ed25519 keys, TLS pinned to the CA, device WebSocket, signed bundles verified, signed reports), \
         spread over {} loopback source addresses; {} release server nodes{}; 2-core machine, load average {}",
        gens.len(),
        cfg.sources,
        cfg.nodes,
        if cfg.postgres {
            " on one PostgreSQL database and NATS"
        } else {
            " on SQLite"
        },
        load_average()
    );
    println!(
        "enrolled:              {n} phones in {enroll_secs:.1} s ({:.0}/s)",
        n as f64 / enroll_secs
    );
    println!(
        "connected and held:    {held} of {n}; connect rate {:.0} phones/s; sessions that dropped \
         and were opened again (as an agent does): {reconnects}",
        n as f64 / connect_secs
    );
    println!("{console}");
    crate::fleet::Measures {
        rss_before,
        rss_after,
        per_phone_kib,
        all_switch: &all_switch,
        per_sec,
        window: measured,
        ingested,
        cpu_per_report_us,
        single: &single,
        held,
    }
    .print();
    if held != n {
        bail!("{} phones lost their connection", n - held);
    }
    drop(procs);
    drop(pg);
    Ok(())
}

/// Every device id, in enrollment order (phone i is the i-th enrolled).
async fn admin_ids(admin: &ServerClient, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(c) => format!("/api/v1/devices?limit=5000&after={c}"),
            None => "/api/v1/devices?limit=5000".to_owned(),
        };
        let page: redoubt_proto::api::DevicePage = admin.get(&path).await?;
        for d in page.devices {
            // Users are p<i>: the phone's index, whatever order enrollment finished in.
            let i: usize = d.user.as_str().trim_start_matches('p').parse()?;
            if ids.len() <= i {
                ids.resize(i + 1, String::new());
            }
            ids[i] = d.id.to_string();
        }
        match page.next {
            Some(c) => next = Some(c),
            None => break,
        }
    }
    if ids.len() != n || ids.iter().any(String::is_empty) {
        bail!(
            "the server lists {} of {n} phones",
            ids.iter().filter(|s| !s.is_empty()).count()
        );
    }
    Ok(ids)
}
