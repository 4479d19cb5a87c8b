//! `cargo xtask bench compliance`: the time from an operator's mode change to the
//! server showing the device compliant in that mode, for N simulated phones at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redoubt_client::ServerClient;
use redoubt_proto::api::{DeviceView, SetMode};

use crate::common::{
    BenchServer, Procs, build_release, enroll_phone, ms, percentile, release_bin, rss_kib,
    workspace_root,
};

/// Runs the benchmark.
pub async fn bench_compliance(devices: usize, rounds: usize) -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root, &["redoubt-server", "redoubt-agent"])?;
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let server = BenchServer::start(&root, &tmp.path().join("server"), &[], &mut procs)?;
    let client = server.owner_client(&root)?;

    eprintln!("enrolling {devices} simulated phones…");
    let mut ids = Vec::new();
    for i in 0..devices {
        let state = tmp.path().join(format!("phone{i}"));
        ids.push(enroll_phone(&root, &client, &format!("user{i}"), &state).await?);
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
            let body = target.parse().map(|mode| SetMode { mode });
            async move {
                let sent = start.elapsed();
                client
                    .put::<_, DeviceView>(&format!("/api/v1/devices/{id}/mode"), &body?)
                    .await
                    .map(|_| sent)
                    .map_err(anyhow::Error::from)
            }
        });
        let sent: Vec<Duration> = futures_util::future::try_join_all(sets).await?;
        let mut done: Vec<Option<Duration>> = vec![None; ids.len()];
        let deadline = start + Duration::from_secs(60);
        while done.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                bail!("round {round}: not every device became compliant in {target} within 60 s");
            }
            let list = all_devices(&client).await?;
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
    if let Some(rss) = rss_kib(server.pid) {
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

/// Every device, page by page.
async fn all_devices(client: &ServerClient) -> anyhow::Result<Vec<DeviceView>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/devices?limit=5000&after={a}"),
            None => "/api/v1/devices?limit=5000".into(),
        };
        let page: redoubt_proto::api::DevicePage = client.get(&path).await?;
        out.extend(page.devices);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

async fn wait_all(client: &ServerClient, mode: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = all_devices(client).await?;
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
