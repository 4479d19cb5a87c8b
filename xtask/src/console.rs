//! `cargo xtask bench console`: how long the officers' web console takes to answer when
//! the fleet is large (default 100 000 devices), measured like a browser against the
//! release server on loopback.
//!
//! **Fill.** A fresh data directory gets N devices through the real API, C at a time
//! (`--concurrency`, default 64): for each, `POST /api/v1/enrollments` with an owner
//! token (the code names the device's user and group), then `POST /api/v1/enroll` with
//! the phone's own Ed25519 key and proof of possession (`fleet::enroll_as`). The devices
//! are spread over four groups (`field` 40 %, `office` 30 %, `guard` 20 % with the
//! `secure-site` mode, `audit` 10 %) and over users of four phones each (`officer<k>`);
//! R % of them (`--reporting`, default 60) then open the device WebSocket once, answer
//! the signed challenge, verify their bundle and send one signed report: compliant, except
//! one `guard` phone in five, which reports its camera on (non-compliant). The others stay
//! `pending`. The server is started with `REDOUBT_STALE_AFTER_INTERVALS=100000`, so the
//! phones that reported once are not counted `stale` a quarter of an hour later.
//!
//! With `--data DIR` the data directory is DIR: filled when it holds no device, reused as
//! it is otherwise (the fill of 100 000 takes 7–9 minutes on 2 cores), and kept; without
//! it a temporary one is filled and removed at the end, unless `--keep` (its path is
//! printed).
//!
//! **Sign-in.** `redoubt-server admin create --password-stdin` makes an owner account;
//! the bench computes the TOTP code from the printed `otpauth://` URL, reads the sign-in
//! form (`GET /console/login`: the pre-session cookie and the form's CSRF field) and posts
//! it (`POST /console/login`), keeping the session cookie, over TLS pinned to the CA.
//!
//! **Measure.** One request at a time, on one kept-alive connection like a browser's tab,
//! each timed to the last byte of the body, S times (`--samples`, default 50) after one
//! untimed request: the device list's first page (100 devices), every page walked once by
//! following its `next-page` link to the end, page P (`--deep-page`, default 500) and the
//! last page, filtered pages (a group, `pending`, `non_compliant`, a user), the dashboard
//! (`GET /console`, which counts the fleet) and the CSV export of one group and of the
//! whole fleet. It prints p50 / p95 / max and the page's size, the server's memory, and
//! the command that made them.
//!
//! The release binaries are built once (`cargo build --release`, a no-op when they are
//! current), then the release xtask runs the measurement.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use futures_util::{SinkExt, StreamExt};
use redoubt_client::ServerClient;
use redoubt_proto::api::{CreateDeviceGroup, CreateEnrollment, DeviceCount, DeviceCounts};
use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
use redoubt_proto::{Capability, CapabilityState, ComplianceReport, DeviceId, SignedEnvelope};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    BenchServer, Procs, check_flags, flag, flag_value, load_average, mib, ms, percentile,
    proc_status_kib, release_bin, rss_kib, workspace_root,
};
use crate::fleet::{bar, enroll_as, frame_of, report_of};

/// How the command is called.
pub const USAGE: &str = "cargo xtask bench console [--devices N] [--samples S] [--deep-page P] \
[--reporting PERCENT] [--concurrency C] [--data DIR] [--keep]";

/// The flags that take a value (`--keep` takes none).
const FLAGS: &[&str] = &[
    "--devices",
    "--samples",
    "--deep-page",
    "--reporting",
    "--concurrency",
    "--data",
];

/// The phones report once, during the fill; a real fleet's report every check-in
/// interval. So that they stay as they reported for the whole run (and when a filled data
/// directory is reused later), a device becomes `stale` only after 100 000 intervals
/// without a report (a year at the default 300 s). The queries are the same: the stale
/// cut-off is compared with every device's last report all the same.
const STALE_SETTING: (&str, &str) = ("REDOUBT_STALE_AFTER_INTERVALS", "100000");

/// Set when the release xtask runs the measurement itself.
const BUILT_ENV: &str = "REDOUBT_CONSOLE_BENCH_BUILT";

/// The groups the fleet is spread over: name, the mode they assign, tenths of the fleet.
const GROUPS: [(&str, Option<&str>, usize); 4] = [
    ("field", None, 4),
    ("office", None, 3),
    ("guard", Some("secure-site"), 2),
    ("audit", None, 1),
];

struct Config {
    devices: usize,
    samples: usize,
    deep_page: usize,
    /// Percent of the devices that report once.
    reporting: usize,
    concurrency: usize,
    data: Option<PathBuf>,
    keep: bool,
}

/// `cargo xtask bench console …`.
pub fn main(args: &[&str]) -> Result<()> {
    let keep = args.contains(&"--keep");
    let valued: Vec<&str> = args.iter().copied().filter(|a| *a != "--keep").collect();
    check_flags(&valued, FLAGS)?;
    let cfg = Config {
        devices: flag(&valued, "--devices")?.unwrap_or(100_000),
        samples: flag(&valued, "--samples")?.unwrap_or(50),
        deep_page: flag(&valued, "--deep-page")?.unwrap_or(500),
        reporting: flag(&valued, "--reporting")?.unwrap_or(60),
        concurrency: flag(&valued, "--concurrency")?.unwrap_or(64),
        data: flag_value::<PathBuf>(&valued, "--data")?,
        keep,
    };
    if cfg.devices == 0 || cfg.samples == 0 || cfg.deep_page == 0 {
        bail!("--devices, --samples and --deep-page must be at least 1");
    }
    if cfg.reporting > 100 {
        bail!("--reporting is a percentage (0 to 100)");
    }
    if cfg.concurrency == 0 || cfg.concurrency > 512 {
        bail!("--concurrency must be between 1 and 512");
    }
    let root = workspace_root();
    if std::env::var_os(BUILT_ENV).is_none() {
        return crate::common::rerun_release_bench(
            &root,
            &["redoubt-server", "xtask"],
            "console",
            args,
            BUILT_ENV,
        );
    }
    let command = format!("cargo xtask bench console {}", args.join(" "));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&root, &cfg, command.trim()))
}

/// The group of device `i` (an index into [`GROUPS`]).
fn group_of(i: usize) -> usize {
    let tenth = i % 10;
    let mut upto = 0;
    for (g, (_, _, tenths)) in GROUPS.iter().enumerate() {
        upto += tenths;
        if tenth < upto {
            return g;
        }
    }
    GROUPS.len() - 1
}

/// The person device `i` belongs to (four phones each).
fn user_of(i: usize) -> String {
    format!("officer{}", i / 4)
}

/// What device `i` does after enrolling.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Never reports.
    Pending,
    /// Reports what its bundle decides.
    Compliant,
    /// Reports its camera on where its mode denies it.
    NonCompliant,
}

/// The fate of device `i`: a percentage drawn from its index independently of its group.
fn fate(i: usize, reporting: usize) -> Fate {
    let h = (i / 10) % 100;
    if h >= reporting {
        Fate::Pending
    } else if GROUPS[group_of(i)].1.is_some() && h.is_multiple_of(5) {
        Fate::NonCompliant
    } else {
        Fate::Compliant
    }
}

async fn run(root: &Path, cfg: &Config, command: &str) -> Result<()> {
    let tmp = match &cfg.data {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let data = match (&cfg.data, &tmp) {
        (Some(d), _) => std::path::absolute(d)?,
        (None, Some(t)) => t.path().join("server"),
        (None, None) => unreachable!("a temporary directory is made without --data"),
    };
    let mut procs = Procs(Vec::new());
    let server = BenchServer::start(root, &data, &[STALE_SETTING], &mut procs)?;
    let admin = server.owner_client(root)?;
    let rss_start = rss_kib(server.pid);
    let held: DeviceCounts = admin.get("/api/v1/devices/counts").await?;
    eprintln!(
        "console benchmark: release server on SQLite, data directory {}",
        data.display()
    );

    let fill = if held.total == 0 {
        Some(fill(&admin, cfg).await?)
    } else {
        eprintln!(
            "reusing the {} devices the data directory holds (no fill)",
            held.total
        );
        None
    };
    let counts: DeviceCounts = admin.get("/api/v1/devices/counts").await?;
    if fill.is_some() && counts.total != cfg.devices as u64 {
        bail!(
            "the server holds {} devices after filling {}",
            counts.total,
            cfg.devices
        );
    }
    let rss_filled = rss_kib(server.pid);

    let (console, sign_in) = Console::sign_in(root, &server).await?;
    let rss_before = rss_kib(server.pid);
    let load_before = load_average();
    let mut rows: Vec<Row> = Vec::new();
    let s = cfg.samples;
    let count_of = |query: &str| {
        let admin = admin.clone();
        let path = format!("/api/v1/devices/count?{query}");
        async move { Ok::<_, anyhow::Error>(admin.get::<DeviceCount>(&path).await?.count) }
    };

    rows.push(
        console
            .timed(
                "first page of the list",
                "/console/devices",
                Some(counts.total),
                s,
            )
            .await?,
    );
    let mut walk = console.walk().await?;
    walk.row.covered = Some(counts.total);
    rows.push(walk.row);
    let deep = cfg.deep_page.min(walk.pages.len());
    rows.push(
        console
            .timed(
                &format!("page {deep} (followed by next-page)"),
                &walk.pages[deep - 1],
                Some(counts.total),
                s,
            )
            .await?,
    );
    if walk.pages.len() != deep {
        rows.push(
            console
                .timed(
                    &format!("last page ({})", walk.pages.len()),
                    &walk.pages[walk.pages.len() - 1],
                    Some(counts.total),
                    s,
                )
                .await?,
        );
    }
    let broad = largest(&counts.by_group);
    let narrow = smallest(&counts.by_group);
    let mut filters: Vec<(String, String)> = Vec::new();
    if let Some(g) = &broad {
        filters.push((format!("group {g}"), format!("group={g}")));
    }
    for c in ["pending", "non_compliant"] {
        filters.push((format!("compliance {c}"), format!("compliance={c}")));
    }
    filters.push((
        "one user (4 phones)".into(),
        format!("user={}", user_of(cfg.devices / 2)),
    ));
    for (label, query) in &filters {
        let covered = count_of(query).await?;
        rows.push(
            console
                .timed(
                    &format!("filtered: {label}"),
                    &format!("/console/devices?{query}"),
                    Some(covered),
                    s,
                )
                .await?,
        );
    }
    rows.push(
        console
            .timed("dashboard", "/console", Some(counts.total), s)
            .await?,
    );
    if let Some(g) = &narrow {
        let covered = count_of(&format!("group={g}")).await?;
        rows.push(
            console
                .timed(
                    &format!("CSV export of group {g}"),
                    &format!("/console/devices.csv?group={g}"),
                    Some(covered),
                    s,
                )
                .await?,
        );
    }
    rows.push(
        console
            .timed(
                "CSV export of the whole fleet",
                "/console/devices.csv",
                Some(counts.total),
                s.clamp(1, 3),
            )
            .await?,
    );
    let rss_after = rss_kib(server.pid);
    let peak = proc_status_kib(server.pid, "VmHWM");

    println!();
    println!("$ {command}");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "workload: the console of a release server on SQLite (loopback, TLS pinned to the CA), \
         one officer's browser: one request at a time on a kept-alive connection, each timed \
         to the last byte of the body, after one untimed request; a device turns stale after \
         {} check-in intervals ({}) so that those that reported once stay as they reported; \
         {cores}-core machine, load average {load_before} when measuring began, {} when it \
         ended (other work on the machine slows the pages)",
        STALE_SETTING.1,
        STALE_SETTING.0,
        load_average()
    );
    match &fill {
        Some(f) => println!(
            "filled:     {} devices in {:.1} s ({:.0} devices/s), through the API {} at a time: \
             an enrollment code (POST /api/v1/enrollments) and the phone's own key with its \
             proof (POST /api/v1/enroll); {} of them then reported once over the device \
             WebSocket",
            cfg.devices,
            f.secs,
            cfg.devices as f64 / f.secs,
            cfg.concurrency,
            f.reported
        ),
        None => println!(
            "reused:     the data directory {} as it was (no fill)",
            data.display()
        ),
    }
    println!("fleet:      {}", describe(&counts));
    println!(
        "sign-in:    GET /console/login, then POST /console/login (argon2id and TOTP) in {:.0} ms",
        ms(sign_in)
    );
    println!();
    println!(
        "| request | devices covered | devices listed | bytes | p50 | p95 | max | samples | server RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} `{}` | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
            r.label,
            r.path,
            r.covered.map_or_else(|| "—".into(), |n| n.to_string()),
            r.rows,
            r.bytes,
            ms(percentile(&r.times, 0.5)),
            ms(percentile(&r.times, 0.95)),
            ms(percentile(&r.times, 1.0)),
            r.times.len(),
            mib(r.rss_after)
        );
    }
    println!();
    println!(
        "server memory: {} at start, {} filled, {} signed in, {} after measuring (peak {})",
        mib(rss_start),
        mib(rss_filled),
        mib(rss_before),
        mib(rss_after),
        mib(peak)
    );
    drop(procs);
    if let Some(t) = tmp {
        if cfg.keep {
            let kept = t.keep();
            println!(
                "data directory kept: {} (run again with --data {})",
                kept.join("server").display(),
                kept.join("server").display()
            );
        }
    } else {
        println!("data directory kept: {}", data.display());
    }
    Ok(())
}

/// The fleet's state in words.
fn describe(c: &DeviceCounts) -> String {
    let list = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} devices; by compliance: {}; by effective mode: {}; by group: {}; {} connected",
        c.total,
        list(&c.by_compliance),
        list(&c.by_mode),
        list(&c.by_group),
        c.connected
    )
}

fn largest(m: &std::collections::BTreeMap<String, u64>) -> Option<String> {
    m.iter().max_by_key(|(_, n)| **n).map(|(k, _)| k.clone())
}

fn smallest(m: &std::collections::BTreeMap<String, u64>) -> Option<String> {
    m.iter()
        .filter(|(_, n)| **n > 0)
        .min_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
}

/// What the fill did.
struct Filled {
    secs: f64,
    reported: usize,
}

/// Makes the groups, then enrolls `cfg.devices` devices, `cfg.concurrency` at a time,
/// each reporting once if its fate says so.
async fn fill(admin: &ServerClient, cfg: &Config) -> Result<Filled> {
    for (name, mode, _) in GROUPS {
        let _: serde_json::Value = admin
            .post(
                "/api/v1/groups",
                &CreateDeviceGroup {
                    name: name.parse()?,
                    description: format!("console benchmark: {name}"),
                    mode: mode.map(str::parse).transpose()?,
                },
            )
            .await
            .with_context(|| format!("creating group {name}"))?;
    }
    let pb = bar(cfg.devices, "filling");
    log_progress(&pb, "filled");
    let next = Arc::new(AtomicUsize::new(0));
    let reported = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (admin, pb, next, reported) =
            (admin.clone(), pb.clone(), next.clone(), reported.clone());
        let (n, share) = (cfg.devices, cfg.reporting);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let request = CreateEnrollment {
                    user: user_of(i).parse()?,
                    mode: None,
                    ttl_secs: None,
                    groups: vec![GROUPS[group_of(i)].0.parse()?],
                };
                let (id, key, org) = enroll_as(&admin, &request)
                    .await
                    .with_context(|| format!("enrolling device {i}"))?;
                let f = fate(i, share);
                if f != Fate::Pending {
                    report_once(&admin, &id, &key, &org, f == Fate::NonCompliant)
                        .await
                        .with_context(|| format!("device {i} ({id}) reporting"))?;
                    reported.fetch_add(1, Ordering::Relaxed);
                }
                pb.inc(1);
            }
        }));
    }
    for w in workers {
        if let Err(e) = w.await? {
            pb.abandon();
            return Err(e);
        }
    }
    pb.finish();
    Ok(Filled {
        secs: started.elapsed().as_secs_f64(),
        reported: reported.load(Ordering::Relaxed),
    })
}

/// One session of a phone: answers the challenge, verifies the bundle it is sent, sends
/// one signed report (its camera on when `broken`), and leaves once it is acknowledged.
async fn report_once(
    client: &ServerClient,
    id: &DeviceId,
    key: &SigningKey,
    org: &VerifyingKey,
    broken: bool,
) -> Result<()> {
    use base64::Engine as _;
    let mut ws = client.websocket("/api/v1/device/ws").await?;
    let mut sent = false;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no frame from the server within 60 s")?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the session"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        };
        match serde_json::from_str::<ServerFrame>(&text)? {
            ServerFrame::Challenge { nonce } => {
                let signature = base64::engine::general_purpose::STANDARD
                    .encode(key.sign(&hello_message(&nonce, id)).to_bytes());
                ws.send(frame_of(&AgentFrame::Hello {
                    device_id: id.clone(),
                    signature,
                }))
                .await?;
            }
            ServerFrame::Bundle { bundle } if !sent => {
                let b = redoubt_policy::verify_bundle(
                    &bundle,
                    org,
                    id,
                    None,
                    redoubt_proto::Timestamp::now(),
                )
                .map_err(|e| anyhow::anyhow!("bundle refused: {e}"))?;
                let (mut report, _) = report_of(id, &b, 1);
                if broken {
                    report
                        .capabilities
                        .insert(Capability::Camera, CapabilityState::On);
                }
                let report = SignedEnvelope::sign(ComplianceReport::KIND, &report, key);
                ws.send(frame_of(&AgentFrame::Report { report })).await?;
                sent = true;
            }
            ServerFrame::ReportAck { seq } if seq >= 1 => {
                ws.close(None).await.ok();
                return Ok(());
            }
            ServerFrame::Error {
                code,
                message,
                fatal: true,
            } => bail!("server error {code}: {message}"),
            _ => {}
        }
    }
}

/// One line of the table.
struct Row {
    label: String,
    path: String,
    covered: Option<u64>,
    /// Devices listed in the page (rows of the CSV).
    rows: usize,
    bytes: usize,
    times: Vec<Duration>,
    /// The server's resident memory after the samples.
    rss_after: Option<u64>,
}

/// The list walked page after page.
struct Walk {
    /// Each page's path, the first one first.
    pages: Vec<String>,
    row: Row,
}

/// A signed-in officer's browser: the session cookie on a client pinned to the CA that
/// does not follow redirects (a redirect to the sign-in page is a failure).
struct Console {
    http: reqwest::Client,
    base: url::Url,
    cookie: String,
    /// The server's process id (for its memory).
    server_pid: u32,
}

impl Console {
    /// Makes an owner account offline and signs in with it as a browser does; returns the
    /// console and how long the sign-in's two requests took.
    async fn sign_in(root: &Path, server: &BenchServer) -> Result<(Console, Duration)> {
        redoubt_client::install_crypto_provider();
        let name = format!("bench-{}", crate::fleet_gen::unix_us() / 1_000_000);
        let password = format!(
            "bench-{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        );
        let mut child = Command::new(release_bin(root, "redoubt-server"))
            .args(["admin", "create", "--name", &name, "--role", "owner"])
            .args(["--password-stdin", "--data"])
            .arg(&server.data)
            .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running redoubt-server admin create")?;
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().context("admin create's stdin")?;
            writeln!(stdin, "{password}")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "admin create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let printed = String::from_utf8(out.stdout)?;
        let otpauth = printed
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("otpauth://"))
            .context("admin create printed no otpauth:// URL")?;
        let totp = totp_rs::Totp::from_url(otpauth)
            .map_err(|e| anyhow::anyhow!("the otpauth URL does not read: {e:?}"))?;

        let http = reqwest::Client::builder()
            .use_preconfigured_tls(redoubt_client::pinned_tls_config(
                server.fingerprint.parse()?,
                &[b"http/1.1"],
            ))
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(600))
            .build()?;
        let base: url::Url = server.url.parse()?;
        let started = Instant::now();
        let form = http
            .get(base.join("/console/login")?)
            .header(reqwest::header::ACCEPT_LANGUAGE, "en")
            .send()
            .await?;
        let pre = set_cookie(&form, "__Host-redoubt_signin")
            .context("the sign-in page set no pre-session cookie")?;
        let page = form.text().await?;
        let csrf = attribute_after(&page, "name=\"csrf\"", "value")
            .context("the sign-in form has no csrf field")?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", &csrf)
            .append_pair("next", "/console")
            .append_pair("name", &name)
            .append_pair("password", &password)
            .append_pair("code", &totp.generate_current().to_string())
            .finish();
        let signed = http
            .post(base.join("/console/login")?)
            .header(
                reqwest::header::COOKIE,
                format!("__Host-redoubt_signin={pre}"),
            )
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT_LANGUAGE, "en")
            .body(body)
            .send()
            .await?;
        let took = started.elapsed();
        let status = signed.status();
        let Some(session) = set_cookie(&signed, "__Host-redoubt_console") else {
            bail!("the sign-in was refused ({status})");
        };
        Ok((
            Console {
                http,
                base,
                cookie: format!("__Host-redoubt_console={session}"),
                server_pid: server.pid,
            },
            took,
        ))
    }

    /// `GET path` as the signed-in officer: the time to the last byte and the body.
    async fn get(&self, path: &str) -> Result<(Duration, Vec<u8>)> {
        let started = Instant::now();
        let resp = self
            .http
            .get(self.base.join(path)?)
            .header(reqwest::header::COOKIE, &self.cookie)
            .header(reqwest::header::ACCEPT_LANGUAGE, "en")
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let took = started.elapsed();
        if status != reqwest::StatusCode::OK {
            bail!("GET {path}: {status}");
        }
        Ok((took, body.to_vec()))
    }

    /// `path` once untimed, then `samples` times timed.
    async fn timed(
        &self,
        label: &str,
        path: &str,
        covered: Option<u64>,
        samples: usize,
    ) -> Result<Row> {
        let pb = bar(samples, &short(label));
        let (_, body) = self.get(path).await?;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            times.push(self.get(path).await?.0);
            pb.inc(1);
        }
        pb.finish_and_clear();
        times.sort();
        eprintln!(
            "{label}: p50 {:.1} ms, max {:.1} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 1.0))
        );
        Ok(Row {
            label: label.to_owned(),
            path: path.to_owned(),
            covered,
            rows: listed(path, &body),
            bytes: body.len(),
            times,
            rss_after: rss_kib(self.server_pid),
        })
    }

    /// Every page of the unfiltered list, following each page's `next-page` link from the
    /// first page to the last, each timed once.
    async fn walk(&self) -> Result<Walk> {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{msg:>12} page {pos} ({per_sec}, {elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.set_message("walking");
        log_progress(&pb, "pages walked");
        let mut pages = vec!["/console/devices".to_owned()];
        let mut times = Vec::new();
        let (mut rows, mut bytes) = (0, 0);
        loop {
            let path = pages.last().context("no page")?.clone();
            let (took, body) = self.get(&path).await?;
            times.push(took);
            bytes = bytes.max(body.len());
            rows += listed(&path, &body);
            pb.set_position(pages.len() as u64);
            match next_link(&String::from_utf8_lossy(&body)) {
                Some(next) => pages.push(next),
                None => break,
            }
        }
        pb.finish_and_clear();
        times.sort();
        let n = pages.len();
        eprintln!(
            "walked {n} pages ({rows} devices): p50 {:.1} ms, max {:.1} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 1.0))
        );
        Ok(Walk {
            pages,
            row: Row {
                label: format!("every page walked once by next-page (1 to {n}), largest page"),
                path: "/console/devices?after=…".into(),
                covered: None,
                rows,
                bytes,
                times,
                rss_after: rss_kib(self.server_pid),
            },
        })
    }
}

/// Where standard error is no terminal (a log), the bar draws nothing: a line every 30 s
/// says how far it is instead, until the bar is finished.
fn log_progress(pb: &indicatif::ProgressBar, what: &'static str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return;
    }
    let pb = pb.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if pb.is_finished() {
                return;
            }
            let of = pb.length().map_or_else(String::new, |n| format!(" of {n}"));
            eprintln!(
                "{what}: {}{of} after {:.0} s ({:.0}/s)",
                pb.position(),
                pb.elapsed().as_secs_f64(),
                pb.per_sec()
            );
        }
    });
}

/// A label short enough for the progress bar.
fn short(label: &str) -> String {
    label.chars().take(12).collect()
}

/// Devices a page lists (links to a device's page), or the CSV's rows.
fn listed(path: &str, body: &[u8]) -> usize {
    if path.contains(".csv") {
        return body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            .saturating_sub(1);
    }
    String::from_utf8_lossy(body)
        .matches("<td><a href=\"/console/devices/dev_")
        .count()
}

/// The value of cookie `name` a response sets.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// The value of attribute `attr` in the tag where `marker` appears, after it.
fn attribute_after(html: &str, marker: &str, attr: &str) -> Option<String> {
    let at = html.find(marker)?;
    let rest = &html[at..];
    let end = rest.find('>')?;
    let tag = &rest[..end];
    let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

/// The target of the page's `next-page` link.
fn next_link(html: &str) -> Option<String> {
    let at = html.find("id=\"next-page\"")?;
    let start = html[..at].rfind("href=\"")? + 6;
    let len = html[start..].find('"')?;
    Some(unescape(&html[start..start + len]))
}

/// An attribute's text as the browser reads it (the character references askama
/// writes: `&amp;`, `&lt;`, `&gt;`, `&quot;`, `&#NN;`, `&#xNN;`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .or_else(|| e.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_read_as_the_browser_reads_it() {
        let html = r#"<nav><a href="/console/devices?group=guard&amp;after=r200" id="next-page" rel="next">Next</a></nav>"#;
        assert_eq!(
            next_link(html).as_deref(),
            Some("/console/devices?group=guard&after=r200")
        );
        assert_eq!(unescape("a&#39;b&#x3d;c&amp"), "a'b=c&amp");
        let form = r#"<input type="hidden" name="csrf" value="ab12">"#;
        assert_eq!(
            attribute_after(form, "name=\"csrf\"", "value").as_deref(),
            Some("ab12")
        );
    }

    #[test]
    fn the_fleet_is_spread_as_described() {
        let n = 100_000;
        let mut groups = [0usize; 4];
        let (mut pending, mut broken) = (0, 0);
        for i in 0..n {
            groups[group_of(i)] += 1;
            match fate(i, 60) {
                Fate::Pending => pending += 1,
                Fate::NonCompliant => broken += 1,
                Fate::Compliant => {}
            }
        }
        assert_eq!(groups, [40_000, 30_000, 20_000, 10_000]);
        assert_eq!(pending, 40_000);
        assert_eq!(broken, 2_400);
    }
}
