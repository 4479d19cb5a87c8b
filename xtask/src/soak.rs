//! `cargo xtask soak [--cycles 100] [--phones 4] [--messengers 3] [--seed S]`: the
//! kill -9 soak. The release `redoubt-server` runs on a temp data dir; simulated
//! phones (release `redoubt-agent run`, `--hardware sim`) report while an operator
//! switches their modes and their camera is switched on behind the agent's back; in-process
//! messengers ([`Messenger`], public API only: create, send, sync, messages) talk in
//! one conversation. For each cycle the server is killed with SIGKILL at a random
//! moment and restarted on the same data dir and port; the load carries on.
//!
//! At the end the load stops, the server stays up until every outbox drained, and:
//! - every report an agent saw acknowledged (its outbox file was written, then deleted
//!   on a `ReportAck`; outboxes are polled, so the count is a lower bound) must be in
//!   the server's `reports` table (read with `sqlite3 -readonly`);
//! - every message a sender saw accepted (`status = sent`, polled after each send) must
//!   be shown exactly once, in the sender's order, by every other member.
//!
//! Prints the figures; fails if anything acknowledged was lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand_core::{OsRng, RngCore};
use redoubt_messenger::Messenger;
use redoubt_proto::api::SetMode;
use redoubt_proto::{GroupId, UserName};
use tokio::sync::Mutex;

use crate::common::{
    BenchServer, Procs, build_release, check_flags, enroll_phone, flag, release_bin, workspace_root,
};

/// Usage of `soak`.
pub const USAGE: &str = "cargo xtask soak [--cycles N] [--phones N] [--messengers N] [--seed S]";

const FLAGS: &[&str] = &["--cycles", "--phones", "--messengers", "--seed"];

/// How long the end waits for outboxes to drain and messages to arrive.
const SETTLE: Duration = Duration::from_secs(180);

/// Small deterministic generator for the kill moments (xorshift64*), so a run can be
/// repeated with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// Runs the soak.
pub fn main(args: &[&str]) -> Result<()> {
    check_flags(args, FLAGS)?;
    let cycles = flag(args, "--cycles")?.unwrap_or(100);
    let phones = flag(args, "--phones")?.unwrap_or(4);
    let messengers = flag(args, "--messengers")?.unwrap_or(3);
    if messengers < 2 {
        bail!("--messengers must be at least 2 (a sender and a recipient)");
    }
    let seed = crate::common::flag_value::<u64>(args, "--seed")?
        .unwrap_or_else(|| OsRng.next_u64())
        .max(1);
    let root = workspace_root();
    build_release(&root, &["redoubt-server", "redoubt-agent"])?;
    tokio::runtime::Runtime::new()?.block_on(soak(&root, cycles, phones, messengers, seed))
}

/// One simulated phone run by the release agent.
struct Phone {
    state: PathBuf,
    device_id: String,
    /// Every report sequence number seen in the outbox.
    seen: BTreeSet<u64>,
}

fn outbox_seqs(state: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(state.join("outbox"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")?
                        .parse::<u64>()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The server process, restarted on the same data dir and address.
struct Server {
    procs: Procs,
    data: PathBuf,
    listen: String,
    info: BenchServer,
}

impl Server {
    fn start(root: &Path, data: &Path) -> Result<Server> {
        let mut procs = Procs(Vec::new());
        let info = BenchServer::start_at(root, data, "127.0.0.1:0", &[], &mut procs)?;
        let listen = info
            .url
            .strip_prefix("https://")
            .context("server url")?
            .to_owned();
        Ok(Server {
            procs,
            data: data.to_owned(),
            listen,
            info,
        })
    }

    /// SIGKILL, then a fresh start on the same port (retried while the port is busy).
    fn kill_and_restart(&mut self, root: &Path) -> Result<Duration> {
        for c in &mut self.procs.0 {
            c.kill().context("kill -9 the server")?;
            c.wait()?;
        }
        self.procs.0.clear();
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..50 {
            match BenchServer::start_at(root, &self.data, &self.listen, &[], &mut self.procs) {
                Ok(info) => {
                    self.info = info;
                    return Ok(t0.elapsed());
                }
                Err(e) => {
                    self.procs.0.clear();
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt"))).context("restarting the server")
    }
}

/// A messenger with what it saw accepted.
struct Talker {
    index: usize,
    m: Messenger,
    /// Ids of this device's messages the server accepted, in sending order.
    acked: Mutex<Vec<String>>,
    sent: AtomicU64,
    send_errors: AtomicU64,
    /// What the last sync of the settling phase said, when not plainly fine.
    last_sync: Mutex<String>,
}

impl Talker {
    /// Records the messages now shown as `sent` (accepted by the server).
    async fn note_acked(&self, gid: &GroupId) -> Result<()> {
        let views = self.m.messages(gid, None).await?;
        let mut acked = self.acked.lock().await;
        let known: BTreeSet<String> = acked.iter().cloned().collect();
        for v in views.iter().filter(|v| v.outgoing && v.status == "sent") {
            if !known.contains(&v.id) {
                acked.push(v.id.clone());
            }
        }
        Ok(())
    }
}

async fn soak(
    root: &Path,
    cycles: usize,
    n_phones: usize,
    n_messengers: usize,
    seed: u64,
) -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let mut rng = Rng(seed);
    eprintln!("soak: {cycles} cycles, {n_phones} phones, {n_messengers} messengers, seed {seed}");
    let mut server = Server::start(root, &tmp.path().join("server"))?;
    let client = server.info.owner_client(root)?;

    // Phones: enrolled and run by the release agent on the simulated backend.
    let mut agents = Procs(Vec::new());
    let mut phones = Vec::new();
    for i in 0..n_phones {
        let state = tmp.path().join(format!("phone{i}"));
        let device_id = enroll_phone(root, &client, &format!("phone{i}"), &state).await?;
        agents.0.push(
            Command::new(release_bin(root, "redoubt-agent"))
                .args(["run", "--recheck-ms", "300", "--state"])
                .arg(&state)
                .env("REDOUBT_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redoubt-agent run")?,
        );
        phones.push(Phone {
            state,
            device_id,
            seen: BTreeSet::new(),
        });
    }

    // Messengers: enrolled phones of their own, opened in-process.
    let mut talkers = Vec::new();
    for i in 0..n_messengers {
        let state = tmp.path().join(format!("talker{i}"));
        enroll_phone(root, &client, &format!("talker{i}"), &state).await?;
        // The messenger directory enrollment wrote (`STATE/messenger/`).
        let m = Messenger::open(redoubt_messenger::MessengerDir::resolve(&state)?.root())
            .await
            .with_context(|| format!("messenger {i}: open"))?;
        m.sync()
            .await
            .with_context(|| format!("messenger {i}: first sync"))?;
        talkers.push(Arc::new(Talker {
            index: i,
            m,
            acked: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            last_sync: Mutex::new(String::new()),
        }));
    }
    let others: Vec<UserName> = (1..n_messengers)
        .map(|i| format!("talker{i}").parse())
        .collect::<Result<_, _>>()?;
    let (gid, added) = talkers[0].m.create("soak", &others, None).await?;
    if added.added.len() != others.len() {
        bail!(
            "only {} of {} members added: {:?}",
            added.added.len(),
            others.len(),
            added.skipped
        );
    }
    for t in &talkers[1..] {
        let until = Instant::now() + Duration::from_secs(60);
        while !t.m.conversations().await?.iter().any(|c| c.id == gid) {
            if Instant::now() > until {
                bail!("messenger {} did not join the conversation", t.index);
            }
            t.m.sync().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "setup done in {:.1} s; load starts",
        started.elapsed().as_secs_f64()
    );

    // The load, until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in &talkers {
        let (t, gid, stop) = (t.clone(), gid.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let text = format!("soak {} #{k}", t.index);
                match t.m.send_text(&gid, &text).await {
                    Ok(_) => t.sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => t.send_errors.fetch_add(1, Ordering::Relaxed),
                };
                let _ = t.m.sync().await;
                t.note_acked(&gid).await?;
                tokio::time::sleep(Duration::from_millis(150 + 50 * t.index as u64)).await;
            }
            anyhow::Ok(())
        }));
    }
    let mode_changes = Arc::new(AtomicU64::new(0));
    {
        let (stop, changes) = (stop.clone(), mode_changes.clone());
        let ids: Vec<String> = phones.iter().map(|p| p.device_id.clone()).collect();
        let states: Vec<PathBuf> = phones.iter().map(|p| p.state.clone()).collect();
        let agent = release_bin(root, "redoubt-agent");
        let client = server.info.owner_client(root)?;
        load.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let mode = if round.is_multiple_of(2) {
                    "standard"
                } else {
                    "secure-site"
                };
                for (id, state) in ids.iter().zip(&states) {
                    let body = SetMode {
                        mode: mode.parse()?,
                    };
                    let r: Result<serde_json::Value, _> = client
                        .put(&format!("/api/v1/devices/{id}/mode"), &body)
                        .await;
                    if r.is_ok() {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    // The camera switched on behind the agent's back: a new measurement.
                    let _ = Command::new(&agent)
                        .args(["sim", "set", "camera", "on", "--state"])
                        .arg(state)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            anyhow::Ok(())
        }));
    }

    // The kills.
    let mut restart_times = Vec::with_capacity(cycles);
    for cycle in 1..=cycles {
        let up = rng.millis(500, 3000);
        let until = Instant::now() + up;
        while Instant::now() < until {
            for p in &mut phones {
                p.seen.extend(outbox_seqs(&p.state));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let restart = server.kill_and_restart(root)?;
        restart_times.push(restart);
        if cycle.is_multiple_of(10) || cycle == cycles {
            let mut acked = 0u64;
            for t in &talkers {
                acked += t.acked.lock().await.len() as u64;
            }
            eprintln!(
                "cycle {cycle}/{cycles}: {:.0} s, messages acked so far {acked}, mode changes {}, last restart {:.0} ms",
                started.elapsed().as_secs_f64(),
                mode_changes.load(Ordering::Relaxed),
                restart.as_secs_f64() * 1000.0
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await.context("a load task panicked")??;
    }
    eprintln!("load stopped; settling (outboxes drain, messages arrive)…");

    // Settle: outboxes empty, every pending message sent, every member has them all.
    let deadline = Instant::now() + SETTLE;
    loop {
        for p in &mut phones {
            p.seen.extend(outbox_seqs(&p.state));
        }
        let outboxes_empty = phones.iter().all(|p| outbox_seqs(&p.state).is_empty());
        let mut pending = 0;
        for t in &talkers {
            match t.m.sync().await {
                Ok(r) if !r.refused.is_empty() => {
                    *t.last_sync.lock().await = format!("refused {:?}", r.refused)
                }
                Ok(_) => {}
                Err(e) => *t.last_sync.lock().await = format!("error: {e:#}"),
            }
            t.note_acked(&gid).await?;
            pending +=
                t.m.messages(&gid, None)
                    .await?
                    .iter()
                    .filter(|v| v.outgoing && v.status != "sent")
                    .count();
        }
        let mut missing = 0;
        for t in &talkers {
            missing += check_delivery(&talkers, t, &gid).await?.0;
        }
        if outboxes_empty && pending == 0 && missing == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "not settled after {} s: outboxes empty {outboxes_empty}, pending messages {pending}, missing deliveries {missing}",
                SETTLE.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(agents);

    // Reports: every one seen acknowledged is stored.
    let stored = stored_reports(&server.data)?;
    let (mut reports_acked, mut reports_lost) = (0usize, Vec::new());
    for p in &phones {
        let left = outbox_seqs(&p.state);
        let have = stored.get(&p.device_id).cloned().unwrap_or_default();
        for seq in p.seen.difference(&left) {
            reports_acked += 1;
            if !have.contains(seq) {
                reports_lost.push(format!("{} report {seq}", p.device_id));
            }
        }
    }
    let reports_stored: usize = stored.values().map(BTreeSet::len).sum();

    // Messages: every one acked is delivered to every other member once, in order.
    let mut messages_acked = 0;
    let mut message_faults = Vec::new();
    for t in &talkers {
        messages_acked += t.acked.lock().await.len();
        let (_, faults) = check_delivery(&talkers, t, &gid).await?;
        message_faults.extend(faults);
    }
    let sent: u64 = talkers.iter().map(|t| t.sent.load(Ordering::Relaxed)).sum();
    let send_errors: u64 = talkers
        .iter()
        .map(|t| t.send_errors.load(Ordering::Relaxed))
        .sum();
    restart_times.sort();
    let median = restart_times
        .get(restart_times.len() / 2)
        .copied()
        .unwrap_or_default();
    let lost = reports_lost.len() + message_faults.len();

    println!("soak (seed {seed})");
    println!("  cycles (kill -9 + restart)  {cycles}");
    println!(
        "  restart median / max       {:.0} ms / {:.0} ms",
        median.as_secs_f64() * 1000.0,
        restart_times
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    );
    println!("  phones / messengers        {n_phones} / {n_messengers}");
    println!(
        "  mode changes accepted      {}",
        mode_changes.load(Ordering::Relaxed)
    );
    println!("  reports acked (seen)       {reports_acked}");
    println!("  reports stored             {reports_stored}");
    println!("  messages acked             {messages_acked}");
    println!("  sends ok / failed at once  {sent} / {send_errors}");
    println!("  lost                       {lost}");
    println!(
        "  duration                   {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for l in reports_lost.iter().chain(&message_faults).take(20) {
        eprintln!("LOST: {l}");
    }
    if lost > 0 {
        for t in &talkers {
            let conv = t.m.conversations().await?;
            let c = conv.iter().find(|c| c.id == gid);
            eprintln!(
                "messenger {}: conversation {:?} (held {:?}), last sync: {}",
                t.index,
                c.map(|c| c.status.as_str()),
                c.and_then(|c| c.held_reason.clone()),
                t.last_sync.lock().await
            );
        }
        bail!("{lost} acknowledged item(s) lost or duplicated");
    }
    if reports_acked == 0 || messages_acked == 0 {
        bail!("the load produced nothing acknowledged: the soak proved nothing");
    }
    Ok(())
}

/// For `sender`'s acknowledged messages, how many are not yet at some other member,
/// and the faults: a message shown twice, or out of the sender's order.
async fn check_delivery(
    talkers: &[Arc<Talker>],
    sender: &Talker,
    gid: &GroupId,
) -> Result<(usize, Vec<String>)> {
    let acked = sender.acked.lock().await.clone();
    let sender_device = sender.m.device_id().to_string();
    let mut missing = 0;
    let mut faults = Vec::new();
    for t in talkers.iter().filter(|t| t.index != sender.index) {
        let views = t.m.messages(gid, None).await?;
        let got: Vec<&str> = views
            .iter()
            .filter(|v| !v.outgoing && v.from_device.to_string() == sender_device)
            .map(|v| v.id.as_str())
            .collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for id in &got {
            *count.entry(id).or_default() += 1;
        }
        for (id, n) in &count {
            if *n > 1 {
                faults.push(format!(
                    "messenger {} shows message {id} of messenger {} {n} times",
                    t.index, sender.index
                ));
            }
        }
        let position: BTreeMap<&str, usize> =
            got.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut last = None;
        for id in &acked {
            match position.get(id.as_str()) {
                None => {
                    missing += 1;
                    faults.push(format!(
                        "messenger {} lacks message {id} of messenger {}",
                        t.index, sender.index
                    ));
                }
                Some(&p) => {
                    if last.is_some_and(|l| p < l) {
                        faults.push(format!(
                            "messenger {} shows message {id} of messenger {} out of order",
                            t.index, sender.index
                        ));
                    }
                    last = Some(p);
                }
            }
        }
    }
    Ok((missing, faults))
}

/// `(device id → stored report sequence numbers)` read from the server's database with
/// the sqlite3 command-line shell, read-only.
fn stored_reports(data: &Path) -> Result<HashMap<String, BTreeSet<u64>>> {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(data.join("redoubt.db"))
        .arg("SELECT device_id, seq FROM reports")
        .output()
        .context("running sqlite3 (the soak reads the server's database with it)")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut map: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let (dev, seq) = line.split_once('|').context("sqlite3 output")?;
        map.entry(dev.to_owned()).or_default().insert(seq.parse()?);
    }
    Ok(map)
}
