//! `redoubt-server serve`: opens the data directory, listens with TLS (rustls, the
//! organization CA's certificate), serves HTTP/1.1 and HTTP/2 with WebSocket upgrades,
//! and shuts down cleanly on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use redoubt_proto::Timestamp;
use redoubt_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use url::Url;

use crate::app::{App, Hub, RateLimiter, RefusalLog, Source};
use crate::cluster::Cluster;
use crate::config::{Config, ConnectionLimits};
use crate::conn::{Activity, ConnectionLimiter, Counted};
use crate::http::{HttpState, router};
use crate::pki::Keys;

/// Runs the server until a shutdown signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let keys = Keys::open_or_create(&config.data)?;
    // One server per data directory: a second one would split the device sessions.
    let lock_path = config.data.join("server.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another redoubt-server is already serving {} (it holds {})",
            config.data.display(),
            lock_path.display()
        );
    }
    let store = Store::open(&config.database())
        .await
        .with_context(|| format!("opening the database ({})", config.database_label()))?;
    // Nodes sharing a database must sign with one organization's keys.
    store
        .claim_organization(
            &keys.fingerprint().to_string(),
            &redoubt_proto::envelope::encode_public_key(&keys.org_signing.verifying_key()),
            Timestamp::now(),
        )
        .await
        .with_context(|| format!("checking the keys of {}", config.data.display()))?;
    store
        .install_builtin_modes(&redoubt_policy::presets(), Timestamp::now())
        .await?;
    let (chain, key) = keys.issue_tls_cert(&config.data, &config.tls_names)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("loading the TLS certificate")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let public_url = match &config.public_url {
        Some(u) => u.clone(),
        None => Url::parse(&format!("https://{bound}")).context("building the public URL")?,
    };

    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("redoubt_http_request_duration_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;

    let admins = store.count_admin_tokens(Timestamp::now()).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reports, report_jobs) = crate::reports::ReportBatcher::new();
    let (cluster, outbox) = match config.nats_url {
        Some(_) => {
            let (c, o) = Cluster::joined();
            (c, Some(o))
        }
        None => (Cluster::single(), None),
    };
    let app = Arc::new(App {
        cluster,
        reports,
        enroll_limiter: RateLimiter::new(config.enroll_attempts_per_minute),
        console_limiter: RateLimiter::new(30),
        recent_counts: Default::default(),
        challenge_limiter: RateLimiter::new(600),
        refusals: RefusalLog::new(config.refusal_audit_window_secs),
        claim_limiter: RateLimiter::new(config.key_package_claims_per_minute),
        sessions: Default::default(),
        doorbells: Default::default(),
        command_issue: Default::default(),
        fleet_worker: Default::default(),
        session_starts: tokio::sync::Semaphore::new((store.max_connections() / 2).max(1)),
        store: store.clone(),
        keys,
        public_url: public_url.clone(),
        hub: Hub::default(),
        shutdown: shutdown_rx,
        config,
    });
    let data = app.config.data.display().to_string();
    println!(
        "Redoubt server listening on {}",
        public_url.as_str().trim_end_matches('/')
    );
    println!("CA fingerprint: {}", app.keys.fingerprint());
    if app.config.organization_addresses.is_empty() {
        println!(
            "Warning: no organization address is known (the public URL is a name and the \
             listen address is unspecified); phones in organization-only mode will reach \
             nothing. Set organization_addresses in the configuration."
        );
    }
    println!("Data directory: {data}");
    let open_files = raise_open_file_limit();
    if open_files < app.config.limits.max_connections as u64 {
        println!(
            "Open files: at most {open_files} (each connection holds one): this process can \
             hold fewer connections than max_connections ({}); raise the hard limit \
             (ulimit -Hn) or run more server nodes",
            app.config.limits.max_connections
        );
    }
    println!("Database: {}", app.config.database_label());
    if let Some(nats) = app.config.nats_label() {
        println!(
            "Cluster: node {} through NATS at {nats}",
            app.cluster.node()
        );
    }
    if !app.config.servers.is_empty() {
        let list: Vec<&str> = app
            .config
            .servers
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect();
        println!("Server addresses in bundles: {}", list.join(", "));
    }
    if admins == 0 {
        println!("No admin credential yet. Create the first one (printed once) with:");
        println!("  redoubt-server admin-token --data {data} --name YOUR-NAME --role owner");
    }
    tracing::info!(addr = %bound, "listening");

    // What a bulk change left to do when the server stopped is done now.
    let report_batcher = tokio::spawn(crate::reports::ReportBatcher::run(app.clone(), report_jobs));
    let fleet_worker = tokio::spawn(crate::fleet::FleetWorker::run(app.clone()));
    let cluster = match (app.config.nats_url.clone(), outbox) {
        (Some(url), Some(outbox)) => {
            let app = app.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::cluster::run(app, url, outbox).await {
                    tracing::error!(error = %e, "cluster: NATS link ended; this node serves only its own phones");
                }
            }))
        }
        _ => None,
    };
    app.fleet_worker.wake();
    let sampler = tokio::spawn(crate::console::sample_compliance(app.clone()));
    let sweeper = {
        let app = app.clone();
        let mut stop = app.shutdown.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(
                (app.config.message_ttl_secs / 4)
                    .clamp(1, 60)
                    .min(app.config.refusal_audit_window_secs),
            );
            loop {
                if let Err(e) = app.flush_refusals(false).await {
                    tracing::warn!(error = %e, "recording refused enrollments failed");
                }
                if let Err(e) = app.sweep().await {
                    tracing::warn!(error = %e, "sweeping expired messages failed");
                }
                if let Err(e) = app.expire_commands().await {
                    tracing::warn!(error = %e, "expiring overdue device commands failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {
                        // Counted refusals are not lost at shutdown.
                        if let Err(e) = app.flush_refusals(true).await {
                            tracing::warn!(error = %e, "recording refused enrollments failed");
                        }
                        break;
                    }
                }
            }
        })
    };
    let service = router(HttpState {
        app: app.clone(),
        metrics,
        access: Default::default(),
    });
    let limits = app.config.limits;
    let connections = ConnectionLimiter::new(&limits);
    let mut stop = Box::pin(shutdown_signal());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let source = Source::of(peer.ip());
        let slot = match connections.admit(source) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::counter!("redoubt_connections_refused_total", "limit" => why.as_str())
                    .increment(1);
                tracing::debug!(%source, limit = why.as_str(), "connection refused");
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let shutdown = app.shutdown.clone();
        tokio::spawn(serve_connection(
            Counted::new(tcp, slot),
            peer,
            acceptor,
            service,
            limits,
            shutdown,
        ));
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), connections.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.open(),
            "some connections did not close within 5 s"
        );
    }
    let _ = sweeper.await;
    let _ = sampler.await;
    let _ = fleet_worker.await;
    if let Some(c) = cluster {
        let _ = c.await;
    }
    let _ = report_batcher.await;
    store.close().await;
    drop(lock);
    println!("Redoubt server stopped");
    Ok(())
}

/// Serves one admitted connection: TLS handshake and request headers within the header
/// timeout, every request within the request timeout (in the router), closed when idle
/// or at shutdown. Once upgraded to a WebSocket the connection leaves this loop; the
/// WebSocket keeps itself alive with ping/pong and keeps its slot until it closes.
async fn serve_connection(
    tcp: Counted<tokio::net::TcpStream>,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    service: axum::Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let activity = Activity::new();
    let busy = activity.clone();
    let svc = service
        .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
            req
        })
        .map_future(move |fut| {
            let guard = busy.begin();
            async move {
                let out = fut.await;
                drop(guard);
                out
            }
        });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
        .into_owned();
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let (deadline, idle) = activity.deadline(&limits);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                if idle && activity.deadline(&limits).0 <= tokio::time::Instant::now() {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Raises this process's soft limit of open files to its hard limit (each phone's
/// connection holds one) and returns the limit in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
