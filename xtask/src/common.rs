//! What the benchmarks share: flags, release builds, a server on a temp data dir,
//! simulated phones enrolled with the real agent, `/proc` readings, percentiles.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use redoubt_client::ServerClient;
use redoubt_proto::api::{CreateEnrollment, EnrollmentCreated};

/// The value of `--name V` parsed as `T`, if the flag is present.
pub fn flag_value<T>(args: &[&str], name: &str) -> anyhow::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
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

/// A numeric flag (`--devices 20`).
pub fn flag(args: &[&str], name: &str) -> anyhow::Result<Option<usize>> {
    flag_value(args, name)
}

/// Fails on a flag that is not in `known` (each known flag takes one value), so a
/// typo is not silently ignored.
pub fn check_flags(args: &[&str], known: &[&str]) -> anyhow::Result<()> {
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i]) {
            bail!(
                "unknown argument {:?} (known: {})",
                args[i],
                known.join(" ")
            );
        }
        i += 2;
    }
    Ok(())
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kills the child processes when the benchmark ends, however it ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// A binary of the release build.
pub fn release_bin(root: &Path, name: &str) -> PathBuf {
    root.join("target/release").join(name)
}

/// `cargo build --release -p P…` in the workspace.
pub fn build_release(root: &Path, packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("building release binaries ({})…", packages.join(", "));
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

/// Builds `packages` in release and runs `xtask bench BENCH ARGS…` from the release
/// build with `marker` set in its environment (so it knows it is the release run).
pub fn rerun_release_bench(
    root: &Path,
    packages: &[&str],
    bench: &str,
    args: &[&str],
    marker: &str,
) -> anyhow::Result<()> {
    build_release(root, packages)?;
    let status = Command::new(release_bin(root, "xtask"))
        .args(["bench", bench])
        .args(args)
        .env(marker, "1")
        .status()
        .context("running the release xtask")?;
    if !status.success() {
        bail!("the release benchmark failed ({status})");
    }
    Ok(())
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// The machine's 1-minute load average (other work on the machine skews timings).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// KiB as MiB for printing.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks_per_sec() as f64,
    ))
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A database of the run's own on the machine's PostgreSQL (dropped with the value), or
/// none for the embedded SQLite.
pub async fn bench_database(postgres: bool) -> Option<redoubt_store::test_support::TempPostgres> {
    if postgres {
        Some(redoubt_store::test_support::TempPostgres::create().await)
    } else {
        None
    }
}

/// The settings that point a server at `db` (none for SQLite).
pub fn database_env(db: &Option<redoubt_store::test_support::TempPostgres>) -> Vec<(&str, &str)> {
    db.as_ref()
        .map(|p| vec![("REDOUBT_DATABASE_URL", p.url())])
        .unwrap_or_default()
}

/// A release `redoubt-server` on a temp data dir, listening on a loopback port.
pub struct BenchServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA fingerprint to pin.
    pub fingerprint: String,
    /// Its process id (for `/proc` readings).
    pub pid: u32,
    /// Its data dir.
    pub data: PathBuf,
    /// The `REDOUBT_*` settings it was started with (the offline commands get them too).
    pub env: Vec<(String, String)>,
}

impl BenchServer {
    /// Starts `redoubt-server serve` with extra `REDOUBT_*` settings; the process is
    /// pushed onto `procs` so it dies with the benchmark.
    pub fn start(
        root: &Path,
        data: &Path,
        env: &[(&str, &str)],
        procs: &mut Procs,
    ) -> anyhow::Result<BenchServer> {
        Self::start_at(root, data, "127.0.0.1:0", env, procs)
    }

    /// [`BenchServer::start`] on the address `listen` (the soak restarts the server on
    /// the port it had).
    pub fn start_at(
        root: &Path,
        data: &Path,
        listen: &str,
        env: &[(&str, &str)],
        procs: &mut Procs,
    ) -> anyhow::Result<BenchServer> {
        let mut server = Command::new(release_bin(root, "redoubt-server"))
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .env("REDOUBT_ENROLL_ATTEMPTS_PER_MINUTE", "1000000")
            .env("REDOUBT_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting redoubt-server")?;
        let pid = server.id();
        let stdout = server.stdout.take().context("server stdout")?;
        procs.0.push(server);
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut fingerprint) = (None, None);
        while url.is_none() || fingerprint.is_none() {
            let Some(line) = lines.next() else {
                bail!("the server exited before printing its address and CA fingerprint");
            };
            let line = line?;
            if let Some(u) = line.strip_prefix("Redoubt server listening on ") {
                url = Some(u.trim().to_owned());
            }
            if let Some(f) = line.strip_prefix("CA fingerprint: ") {
                fingerprint = Some(f.trim().to_owned());
            }
        }
        // Keep reading, so a later line never meets a closed pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(BenchServer {
            url: url.context("no address")?,
            fingerprint: fingerprint.context("no fingerprint")?,
            pid,
            data: data.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// An admin client with a fresh owner token (minted with the offline command).
    pub fn owner_client(&self, root: &Path) -> anyhow::Result<ServerClient> {
        let token = self.owner_token(root)?;
        Ok(ServerClient::new(
            self.url.parse()?,
            self.fingerprint.parse()?,
            Some(token),
        )?)
    }

    /// A fresh owner token, minted with the offline command.
    pub fn owner_token(&self, root: &Path) -> anyhow::Result<String> {
        let out = Command::new(release_bin(root, "redoubt-server"))
            .args([
                "admin-token",
                "--name",
                "bench",
                "--role",
                "owner",
                "--data",
            ])
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        if !out.status.success() {
            bail!(
                "admin-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

/// Enrolls a simulated phone of `user` into the state dir `state` with the release
/// `redoubt-agent enroll`; returns its device id.
pub async fn enroll_phone(
    root: &Path,
    client: &ServerClient,
    user: &str,
    state: &Path,
) -> anyhow::Result<String> {
    let code: EnrollmentCreated = client
        .post(
            "/api/v1/enrollments",
            &CreateEnrollment {
                user: user.parse()?,
                mode: None,
                ttl_secs: None,
                groups: Vec::new(),
            },
        )
        .await?;
    let out = Command::new(release_bin(root, "redoubt-agent"))
        .args(["enroll", &code.url, "--json", "--state"])
        .arg(state)
        .output()?;
    if !out.status.success() {
        bail!("enroll failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["device_id"].as_str().context("device id")?.to_owned())
}
