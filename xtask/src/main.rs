//! `cargo xtask`: project automation written in Rust.
//!
//! `cargo xtask bench compliance [--devices N] [--rounds R]` measures, on loopback with
//! release binaries, the time from an operator's mode change to the server showing the
//! device compliant in that mode, for N simulated phones switched at once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redoubt_client::ServerClient;
use redoubt_proto::api::{CreateEnrollment, DeviceView, EnrollmentCreated, SetMode};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "compliance", rest @ ..] => {
            let devices = flag(rest, "--devices")?.unwrap_or(20);
            let rounds = flag(rest, "--rounds")?.unwrap_or(10);
            tokio::runtime::Runtime::new()?.block_on(bench_compliance(devices, rounds))
        }
        _ => {
            eprintln!("usage: cargo xtask bench compliance [--devices N] [--rounds R]");
            bail!("unknown task {args:?}")
        }
    }
}

fn flag(args: &[&str], name: &str) -> anyhow::Result<Option<usize>> {
    match args.iter().position(|a| *a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            Ok(Some(v.parse().with_context(|| format!("{name} {v}"))?))
        }
    }
}

/// Kills the child processes when the benchmark ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

fn release_bin(root: &Path, name: &str) -> PathBuf {
    root.join("target/release").join(name)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn bench_compliance(devices: usize, rounds: usize) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    eprintln!("building release binaries…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "redoubt-server",
            "-p",
            "redoubt-agent",
        ])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("server");
    let mut procs = Procs(Vec::new());
    let mut server = Command::new(release_bin(&root, "redoubt-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("REDOUBT_ENROLL_ATTEMPTS_PER_MINUTE", "1000000")
        .env("REDOUBT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let server_pid = server.id();
    let stdout = server.stdout.take().context("server stdout")?;
    procs.0.push(server);
    let (mut url, mut fingerprint) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(u) = line.strip_prefix("Redoubt server listening on ") {
            url = Some(u.trim().to_owned());
        }
        if let Some(f) = line.strip_prefix("CA fingerprint: ") {
            fingerprint = Some(f.trim().to_owned());
        }
        if url.is_some() && fingerprint.is_some() {
            break;
        }
    }
    let (url, fingerprint) = (
        url.context("no address")?,
        fingerprint.context("no fingerprint")?,
    );
    let token = Command::new(release_bin(&root, "redoubt-server"))
        .args([
            "admin-token",
            "--name",
            "bench",
            "--role",
            "owner",
            "--data",
        ])
        .arg(&data)
        .output()?;
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let client = ServerClient::new(url.parse()?, fingerprint.parse()?, Some(token))?;

    eprintln!("enrolling {devices} simulated phones…");
    let mut ids = Vec::new();
    for i in 0..devices {
        let code: EnrollmentCreated = client
            .post(
                "/api/v1/enrollments",
                &CreateEnrollment {
                    user: format!("user{i}").parse()?,
                    mode: None,
                    ttl_secs: None,
                },
            )
            .await?;
        let state = tmp.path().join(format!("phone{i}"));
        let out = Command::new(release_bin(&root, "redoubt-agent"))
            .args(["enroll", &code.url, "--json", "--state"])
            .arg(&state)
            .output()?;
        if !out.status.success() {
            bail!("enroll failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ids.push(v["device_id"].as_str().context("device id")?.to_owned());
        procs.0.push(
            Command::new(release_bin(&root, "redoubt-agent"))
                .args(["run", "--recheck-ms", "1000", "--state"])
                .arg(&state)
                .env("REDOUBT_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    wait_all(&client, "standard", Duration::from_secs(60)).await?;

    let mut samples = Vec::new();
    for round in 0..rounds {
        let target = if round % 2 == 0 {
            "secure-site"
        } else {
            "standard"
        };
        let start = Instant::now();
        let sets = ids.iter().map(|id| {
            let client = client.clone();
            let body = SetMode {
                mode: target.parse().expect("preset"),
            };
            async move {
                let sent = start.elapsed();
                client
                    .put::<_, DeviceView>(&format!("/api/v1/devices/{id}/mode"), &body)
                    .await
                    .map(|_| sent)
            }
        });
        let sent: Vec<Duration> = futures_util::future::try_join_all(sets).await?;
        let mut done: Vec<Option<Duration>> = vec![None; ids.len()];
        let deadline = start + Duration::from_secs(60);
        while done.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                bail!("round {round}: not every device became compliant in {target} within 60 s");
            }
            let list: Vec<DeviceView> = client.get("/api/v1/devices").await?;
            let now = start.elapsed();
            for d in list {
                if let Some(i) = ids.iter().position(|id| id == d.id.as_str())
                    && done[i].is_none()
                    && d.mode == target
                    && d.compliance == redoubt_proto::Compliance::Compliant
                {
                    done[i] = Some(now.saturating_sub(sent[i]));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.extend(done.into_iter().flatten());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "set-mode -> compliant, {devices} simulated phones switched at once, {rounds} rounds, {} samples (loopback, release build):",
        samples.len()
    );
    println!(
        "  p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (observed by polling GET /devices every ~5 ms)",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().context("no samples")?)
    );
    if let Some(rss) = rss_kib(server_pid) {
        println!("  server RSS {:.1} MiB", rss as f64 / 1024.0);
    }
    let agents: Vec<u64> = procs.0[1..]
        .iter()
        .filter_map(|c| rss_kib(c.id()))
        .collect();
    if !agents.is_empty() {
        println!(
            "  agent RSS {:.1} MiB each (mean)",
            agents.iter().sum::<u64>() as f64 / agents.len() as f64 / 1024.0
        );
    }
    Ok(())
}

async fn wait_all(client: &ServerClient, mode: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list: Vec<DeviceView> = client.get("/api/v1/devices").await?;
        if list
            .iter()
            .all(|d| d.mode == mode && d.compliance == redoubt_proto::Compliance::Compliant)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("devices did not all become compliant in {mode}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
