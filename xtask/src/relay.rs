//! `cargo xtask bench relay`: what the server relays, measured the way the Matrix peers
//! are: one conversation of S members (default 50); K of them (default 10) each send M
//! messages (default 50) back to back; every other member receives each message through
//! its push channel, a fetch of its queue and an acknowledgement.
//!
//! The load generator is kept cheap so that the figures are the server's: the MLS
//! ciphertext of every message is prepared before the timed window
//! ([`Messenger::encrypt_text`]), and the receivers fetch and acknowledge without
//! decrypting (they match what they fetch to what was sent by the bytes). Setting up is
//! real: phones enrolled with the release agent, messengers with certified MLS keys and
//! KeyPackages, the conversation created and joined through Welcomes.
//!
//! After joining, the members take their turns to fill the ratchet tree (the
//! messenger's self-update); the bench prints how many committed and how the commits
//! shrank as the tree filled.
//!
//! It prints, with the command that made them: deliveries per second (sent → fetched by
//! a recipient, over the window from the first post to the last fetch), the send →
//! fetched latency p50/p99/max over every delivery, the server's CPU per 1000 deliveries
//! and its memory, on SQLite or (`--database postgres`) on a PostgreSQL database made for
//! the run.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use redoubt_client::DeviceSocket;
use redoubt_messenger::Messenger;
use redoubt_proto::messaging::{Ack, ItemKind, MessageAccepted, PostMessage, QueueBatch};
use redoubt_proto::{GroupId, UserName};

use crate::common::{
    BenchServer, Procs, check_flags, cpu_time, enroll_phone, flag, flag_value, load_average, mib,
    ms, percentile, rss_kib, workspace_root,
};

/// Usage of `bench relay`.
pub const USAGE: &str = "cargo xtask bench relay [--members S] [--senders K] [--messages M] \
[--database sqlite|postgres]";

const FLAGS: &[&str] = &["--members", "--senders", "--messages", "--database"];

/// Set when the release xtask runs the measurement itself.
const BUILT_ENV: &str = "REDOUBT_RELAY_BENCH_BUILT";

/// Longest the timed window may take.
const WINDOW_LIMIT: Duration = Duration::from_secs(300);

struct Config {
    members: usize,
    senders: usize,
    messages: usize,
    postgres: bool,
}

/// `cargo xtask bench relay …`.
pub fn main(args: &[&str]) -> Result<()> {
    check_flags(args, FLAGS)?;
    let cfg = Config {
        members: flag(args, "--members")?.unwrap_or(50),
        senders: flag(args, "--senders")?.unwrap_or(10),
        messages: flag(args, "--messages")?.unwrap_or(50),
        postgres: match flag_value::<String>(args, "--database")?.as_deref() {
            None | Some("sqlite") => false,
            Some("postgres") => true,
            Some(other) => bail!("--database must be sqlite or postgres, not {other}"),
        },
    };
    if cfg.members < 2 || cfg.senders == 0 || cfg.senders > cfg.members || cfg.messages == 0 {
        bail!(
            "--members must be at least 2, --senders between 1 and --members, --messages at least 1"
        );
    }
    let root = workspace_root();
    if std::env::var_os(BUILT_ENV).is_none() {
        return crate::common::rerun_release_bench(
            &root,
            &["redoubt-server", "redoubt-agent", "xtask"],
            "relay",
            args,
            BUILT_ENV,
        );
    }
    let command = format!("cargo xtask bench relay {}", args.join(" "));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&root, &cfg, command.trim()))
}

fn user(i: usize) -> String {
    format!("member{i}")
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

/// A message's bytes, as the receivers recognize them.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What the senders and the receivers share during the window.
struct Window {
    start: Instant,
    /// Index of each prepared message by the hash of its bytes.
    index: HashMap<u64, usize>,
    /// When each message was posted (µs after `start`, plus one; 0 = not yet).
    sent_at: Vec<AtomicU64>,
    /// Deliveries so far (for the progress bar).
    delivered: AtomicU64,
}

impl Window {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }
}

async fn run(root: &Path, cfg: &Config, command: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let pg = crate::common::bench_database(cfg.postgres).await;
    let mut env = crate::common::database_env(&pg);
    env.push(("REDOUBT_KEY_PACKAGE_CLAIMS_PER_MINUTE", "1000000"));
    let backend = if cfg.postgres { "PostgreSQL" } else { "SQLite" };
    let server = BenchServer::start(root, &tmp.path().join("server"), &env, &mut procs)?;
    let client = server.owner_client(root)?;
    eprintln!(
        "relay benchmark: one conversation of {} members, {} senders × {} messages, release server on {backend}",
        cfg.members, cfg.senders, cfg.messages
    );

    let pb = bar(cfg.members, "enrolling");
    let mut dirs = Vec::with_capacity(cfg.members);
    for i in 0..cfg.members {
        let state = tmp.path().join(format!("phone{i}"));
        enroll_phone(root, &client, &user(i), &state).await?;
        dirs.push(state);
        pb.inc(1);
    }
    pb.finish();
    let pb = bar(cfg.members, "messengers");
    let mut messengers = Vec::with_capacity(cfg.members);
    for (i, dir) in dirs.iter().enumerate() {
        let dir = redoubt_messenger::MessengerDir::resolve(dir)?;
        let m = Messenger::open(dir.root())
            .await
            .with_context(|| format!("member {i}: opening the messenger"))?;
        m.sync()
            .await
            .with_context(|| format!("member {i}: first sync"))?;
        messengers.push(Arc::new(m));
        pb.inc(1);
    }
    pb.finish();
    let others: Vec<UserName> = (1..cfg.members)
        .map(|i| user(i).parse())
        .collect::<Result<_, _>>()?;
    let (gid, report) = messengers[0]
        .create("relay", &others, None)
        .await
        .context("creating the conversation")?;
    if report.added.len() != others.len() {
        bail!(
            "{} of {} members added; skipped: {:?}",
            report.added.len(),
            others.len(),
            report.skipped
        );
    }
    let pb = bar(cfg.members, "joining");
    pb.inc(1);
    for (i, m) in messengers.iter().enumerate().skip(1) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            m.sync()
                .await
                .with_context(|| format!("member {i}: sync"))?;
            if m.conversations().await?.iter().any(|c| c.id == gid) {
                break;
            }
            if Instant::now() > until {
                bail!("member {i} did not join within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pb.inc(1);
    }
    pb.finish();

    // The members take their turns to fill the ratchet tree, as their scheduled
    // self-update does after joining (here one after another, without waiting for the
    // turn's time): one commit per pair of leaves, each smaller than the one before.
    let pb = bar(cfg.members - 1, "self-updates");
    let fill_started = Instant::now();
    let mut sizes = Vec::new();
    for (i, m) in messengers.iter().enumerate().skip(1) {
        if let Some(size) = m
            .self_update(&gid)
            .await
            .with_context(|| format!("member {i}: self-update"))?
        {
            sizes.push(size);
        }
        pb.inc(1);
    }
    pb.finish();
    let fill_secs = fill_started.elapsed().as_secs_f64();
    // The senders apply every commit (they encrypt in the newest epoch); the others only
    // empty their queues, so that the window holds the messages alone.
    for (i, m) in messengers.iter().enumerate() {
        if i < cfg.senders {
            m.sync()
                .await
                .with_context(|| format!("member {i}: sync"))?;
        } else {
            drain(m).await?;
        }
    }

    // Every message encrypted before the window.
    let total = cfg.senders * cfg.messages;
    let pb = bar(total, "encrypting");
    let mut prepared: Vec<Vec<PostMessage>> = Vec::with_capacity(cfg.senders);
    let mut index = HashMap::with_capacity(total);
    for (k, sender) in messengers.iter().enumerate().take(cfg.senders) {
        let mut mine = Vec::with_capacity(cfg.messages);
        for j in 0..cfg.messages {
            let post = sender.encrypt_text(&gid, &format!("relay {k}.{j}")).await?;
            index.insert(fingerprint(&post.message.0), k * cfg.messages + j);
            mine.push(post);
            pb.inc(1);
        }
        prepared.push(mine);
    }
    pb.finish();
    if index.len() != total {
        bail!("two prepared messages have the same bytes");
    }

    // Every member's push channel open and ready before the window.
    let mut sockets = Vec::with_capacity(cfg.members);
    for (i, m) in messengers.iter().enumerate() {
        let mut s = m
            .net()
            .push_channel()
            .await
            .with_context(|| format!("member {i}: push channel"))?;
        match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
            Ok(Some(Ok(_))) => sockets.push(s),
            _ => bail!("member {i}: no `ready` on the push channel"),
        }
    }

    let deliveries = total * (cfg.members - 1);
    let window = Arc::new(Window {
        start: Instant::now(),
        index,
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
    });
    let load = load_average();
    let rss_before = rss_kib(server.pid);
    let cpu_before = cpu_time(server.pid);
    let mut receivers = Vec::with_capacity(cfg.members);
    for (i, socket) in sockets.into_iter().enumerate() {
        // A sender does not receive its own messages.
        let expected = total - if i < cfg.senders { cfg.messages } else { 0 };
        receivers.push(tokio::spawn(receive(
            messengers[i].clone(),
            socket,
            expected,
            window.clone(),
        )));
    }
    let mut senders = Vec::with_capacity(cfg.senders);
    for (k, posts) in prepared.into_iter().enumerate() {
        let (m, w, gid) = (messengers[k].clone(), window.clone(), gid.clone());
        senders.push(tokio::spawn(send(m, gid, k * cfg.messages, posts, w)));
    }
    let pb = bar(deliveries, "deliveries");
    let progress = {
        let (pb, w) = (pb.clone(), window.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(w.delivered.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut latencies = Vec::with_capacity(deliveries);
    let mut last_fetch = Duration::ZERO;
    let outcome = tokio::time::timeout(WINDOW_LIMIT, async {
        for s in senders {
            s.await.context("a sender panicked")??;
        }
        for r in receivers {
            let (lat, last) = r.await.context("a receiver panicked")??;
            latencies.extend(lat);
            last_fetch = last_fetch.max(last);
        }
        anyhow::Ok(())
    })
    .await;
    progress.abort();
    let cpu_after = cpu_time(server.pid);
    let rss_after = rss_kib(server.pid);
    match outcome {
        Ok(r) => r?,
        Err(_) => bail!(
            "not every delivery within {} s ({} of {deliveries})",
            WINDOW_LIMIT.as_secs(),
            window.delivered.load(Ordering::Relaxed)
        ),
    }
    pb.finish();
    latencies.sort();
    if latencies.len() != deliveries {
        bail!("{} deliveries of {deliveries}", latencies.len());
    }
    let per_sec = deliveries as f64 / last_fetch.as_secs_f64();
    let cpu_per_1000 = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() * 1000.0 * 1000.0 / deliveries as f64),
        _ => None,
    };

    println!();
    println!("$ {command}");
    println!(
        "workload: one conversation of {} members; {} senders × {} messages sent back to back \
         (MLS ciphertext prepared before the window); every other member receives each through \
         its push channel, a fetch and an acknowledgement (without decrypting); release server on \
         {backend}; 2-core machine shared with the load generator, load average {load}",
        cfg.members, cfg.senders, cfg.messages
    );
    println!(
        "self-updates:   {} of {} joined members committed (the others' paths were already \
         full) in {fill_secs:.1} s; commit size: first {}, median {}, last {}",
        sizes.len(),
        cfg.members - 1,
        bytes(sizes.first().copied()),
        bytes(median(&sizes)),
        bytes(sizes.last().copied())
    );
    println!(
        "relayed:        {deliveries} deliveries in {:.2} s: {per_sec:.0} deliveries/s",
        last_fetch.as_secs_f64()
    );
    println!(
        "latency:        sent → fetched p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    println!(
        "server:         CPU {} per 1000 deliveries; memory {} before the window, {} after",
        cpu_per_1000.map_or_else(|| "?".into(), |v| format!("{v:.0} ms")),
        mib(rss_before),
        mib(rss_after)
    );
    drop(procs);
    drop(pg);
    Ok(())
}

/// A size for people.
fn bytes(n: Option<usize>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n >= 10 * 1024 => format!("{:.0} KiB", n as f64 / 1024.0),
        Some(n) => format!("{n} B"),
    }
}

fn median(sizes: &[usize]) -> Option<usize> {
    let mut v = sizes.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Fetches and acknowledges whatever a member's queue holds, without applying it.
async fn drain(m: &Messenger) -> Result<()> {
    loop {
        let batch: QueueBatch = m.net().get("/queue?limit=500").await?;
        let seqs: Vec<u64> = batch.items.iter().map(|i| i.seq).collect();
        if !seqs.is_empty() {
            let _: serde_json::Value = m.net().post("/queue/ack", &Ack { seqs }).await?;
        }
        if !batch.more {
            return Ok(());
        }
    }
}

/// Posts a sender's prepared messages one after another, each as soon as the one before
/// was accepted, and notes when each went out.
async fn send(
    m: Arc<Messenger>,
    gid: GroupId,
    first: usize,
    posts: Vec<PostMessage>,
    w: Arc<Window>,
) -> Result<()> {
    let path = format!("/groups/{gid}/messages");
    for (j, post) in posts.into_iter().enumerate() {
        w.sent_at[first + j].store(w.now_us(), Ordering::Relaxed);
        let accepted: MessageAccepted = m.net().post(&path, &post).await?;
        if accepted.duplicate {
            bail!("message {} was taken for a retry", first + j);
        }
    }
    Ok(())
}

/// Fetches and acknowledges at every push until `expected` messages arrived; returns
/// each one's sent → fetched time and when the last one was fetched.
async fn receive(
    m: Arc<Messenger>,
    mut socket: DeviceSocket,
    expected: usize,
    w: Arc<Window>,
) -> Result<(Vec<Duration>, Duration)> {
    let mut latencies = Vec::with_capacity(expected);
    let mut last = Duration::ZERO;
    while latencies.len() < expected {
        loop {
            let batch: QueueBatch = m.net().get("/queue?limit=500").await?;
            let fetched = w.now_us();
            let mut seqs = Vec::with_capacity(batch.items.len());
            for item in &batch.items {
                seqs.push(item.seq);
                if item.kind != ItemKind::Application {
                    continue;
                }
                let Some(&i) = w.index.get(&fingerprint(&item.payload.0)) else {
                    continue;
                };
                let sent = w.sent_at[i].load(Ordering::Relaxed);
                latencies.push(Duration::from_micros(fetched.saturating_sub(sent)));
                w.delivered.fetch_add(1, Ordering::Relaxed);
                last = Duration::from_micros(fetched);
            }
            if !seqs.is_empty() {
                let _: serde_json::Value = m.net().post("/queue/ack", &Ack { seqs }).await?;
            }
            if !batch.more {
                break;
            }
        }
        if latencies.len() >= expected {
            break;
        }
        // Wait for the next push (any frame: queue changed, KeyPackages low).
        match socket.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("push channel: {e}"),
            None => bail!("the push channel closed"),
        }
    }
    Ok((latencies, last))
}
