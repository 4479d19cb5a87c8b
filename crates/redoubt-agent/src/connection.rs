//! The run loop: one authenticated WebSocket session with the server
//! (`GET /api/v1/device/ws`), hardware re-checks, periodic check-ins and reconnection
//! with exponential backoff.
//!
//! Handshake: server `Challenge{nonce}` → agent `Hello{device_id, signature}` →
//! server `Welcome`. Then the agent sends its outbox in order; the server sends
//! `Bundle` (now and on every policy change), `ReportRequest`, cumulative
//! `ReportAck{seq}`, `Command` and `Error`. Hardware re-checks and reports go on while
//! offline; reports wait in the outbox.
//!
//! A command is verified, carried out in the zone state and written to disk, then
//! acknowledged (`CommandAck`), then enforced and reported. A wipe is acknowledged,
//! then the local data is destroyed, one last signed report is sent (waiting a few
//! seconds at most for its acknowledgement), then the key and the identity are
//! destroyed and `run` returns.
//!
//! The loop also serves the control socket ([`crate::control`]): checkpoint codes
//! from `redoubt-agent checkpoint` are applied and enforced here at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use rand_core::{OsRng, RngCore};
use redoubt_client::{DeviceSocket, ServerClient, ServerList};
use redoubt_proto::envelope::encode_signature;
use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
use redoubt_proto::{DeviceId, Timestamp};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::agent::{Agent, BundleOutcome};
use crate::clock::Clock;
use crate::control::{self, ControlCall, ControlRequest, ControlResponse};
use crate::outbox::Pending;
use crate::state::{CONTROL_SOCKET, StateDir};
use crate::status::{Connection, RunStatus};

/// The device WebSocket path.
pub const WS_PATH: &str = "/api/v1/device/ws";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
const PING_EVERY: Duration = Duration::from_secs(20);
/// How long the wake-ups of the hardware watcher are gathered before one re-check.
const WATCH_SETTLE: Duration = Duration::from_millis(100);
/// The shortest time between two re-checks the watcher causes.
const WATCH_MIN_GAP: Duration = Duration::from_millis(250);
/// Without any frame from the server for this long, the session is presumed dead.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Pause before trying the next server address after one did not answer.
const FAILOVER_GAP: Duration = Duration::from_millis(200);
/// How long a wiping agent waits for the acknowledgement of its last report.
const WIPE_REPORT_WAIT: Duration = Duration::from_secs(5);

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How often the hardware is measured again.
    pub recheck: Duration,
    /// Where the agent takes its time from.
    pub clock: Arc<dyn Clock>,
}

/// `d` scaled by a random factor in [0.8, 1.2].
fn jitter(d: Duration) -> Duration {
    let r = f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
    d.mul_f64(0.8 + 0.4 * r)
}

/// Exponential reconnection backoff with jitter, capped at the check-in interval.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// The delay before the next attempt; doubles the one after.
    fn delay(&mut self, cap: Duration) -> Duration {
        let d = self.next.min(cap);
        self.next = (self.next * 2).min(cap);
        jitter(d)
    }

    /// Jumps to the cap (the server refused this device: do not hammer it).
    fn give_up_to(&mut self, cap: Duration) {
        self.next = cap;
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum ConnectError {
    /// The server refused the device's identity (revoked or unknown device).
    Unauthorized(String),
    /// Anything else: network, TLS, protocol.
    Other(String),
}

fn parse_frame(msg: &Message) -> Option<Result<ServerFrame, String>> {
    match msg {
        Message::Text(t) => Some(serde_json::from_str(t.as_str()).map_err(|e| e.to_string())),
        _ => None,
    }
}

async fn send_frame(ws: &mut DeviceSocket, frame: &AgentFrame) -> Result<()> {
    let text = serde_json::to_string(frame).context("encoding a frame")?;
    timeout(SEND_TIMEOUT, ws.send(Message::text(text)))
        .await
        .context("sending timed out")?
        .context("sending failed")
}

/// Connects and authenticates; returns the socket once the server said `Welcome`.
async fn connect(
    client: ServerClient,
    device_id: DeviceId,
    key: Arc<SigningKey>,
) -> Result<(DeviceSocket, Timestamp), ConnectError> {
    let mut ws = client
        .websocket(WS_PATH)
        .await
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let handshake = async {
        let mut challenged = false;
        loop {
            let msg = match ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    return Err(ConnectError::Other(format!(
                        "connection failed during the handshake: {e}"
                    )));
                }
                None => {
                    return Err(ConnectError::Other(
                        "the server closed the connection during the handshake".into(),
                    ));
                }
            };
            if let Message::Close(frame) = &msg {
                let why = frame
                    .as_ref()
                    .map(|f| f.reason.to_string())
                    .unwrap_or_default();
                return Err(ConnectError::Other(
                    format!("the server closed the connection during the handshake {why}")
                        .trim_end()
                        .to_owned(),
                ));
            }
            let Some(frame) = parse_frame(&msg) else {
                continue;
            };
            match frame.map_err(|e| {
                ConnectError::Other(format!("unreadable frame from the server: {e}"))
            })? {
                ServerFrame::Challenge { nonce } if !challenged => {
                    challenged = true;
                    let signature = encode_signature(&key.sign(&hello_message(&nonce, &device_id)));
                    let hello = AgentFrame::Hello {
                        device_id: device_id.clone(),
                        signature,
                    };
                    send_frame(&mut ws, &hello)
                        .await
                        .map_err(|e| ConnectError::Other(format!("{e:#}")))?;
                }
                ServerFrame::Welcome { server_time } if challenged => return Ok(server_time),
                ServerFrame::Error { code, message, .. } if code == "unauthorized" => {
                    return Err(ConnectError::Unauthorized(message));
                }
                ServerFrame::Error { code, message, .. } => {
                    return Err(ConnectError::Other(format!(
                        "the server refused the session: {message} ({code})"
                    )));
                }
                other => {
                    return Err(ConnectError::Other(format!(
                        "unexpected {} frame during the handshake",
                        frame_name(&other)
                    )));
                }
            }
        }
    };
    let server_time = timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::Other("the handshake timed out".into()))??;
    Ok((ws, server_time))
}

fn frame_name(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Challenge { .. } => "challenge",
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Bundle { .. } => "bundle",
        ServerFrame::ReportAck { .. } => "report_ack",
        ServerFrame::ReportRequest => "report_request",
        ServerFrame::Command { .. } => "command",
        ServerFrame::Error { .. } => "error",
    }
}

async fn next_message(
    session: &mut Option<DeviceSocket>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match session {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

type ConnectTask = JoinHandle<Result<(DeviceSocket, Timestamp), ConnectError>>;

async fn connect_finished(
    task: &mut Option<ConnectTask>,
) -> Result<Result<(DeviceSocket, Timestamp), ConnectError>, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn accept_control(
    listener: &Option<UnixListener>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs `f` (which touches the hardware and the disk) without stalling the other
/// tasks of the runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The state of the run loop besides the agent core.
struct Session {
    ws: Option<DeviceSocket>,
    last_rx: Instant,
}

impl Session {
    /// Sends reports if connected; on failure drops the connection (the reports stay
    /// in the outbox and go out after reconnecting).
    async fn send_reports(&mut self, agent: &mut Agent, reports: &[Pending]) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        for p in reports {
            let frame = AgentFrame::Report {
                report: p.report.clone(),
            };
            if let Err(e) = send_frame(ws, &frame).await {
                tracing::warn!(error = %format!("{e:#}"), "lost the connection while sending; reports stay queued");
                agent
                    .status
                    .error(format!("sending report {}: {e:#}", p.seq));
                self.drop_connection(agent);
                return false;
            }
        }
        !reports.is_empty()
    }

    fn drop_connection(&mut self, agent: &mut Agent) {
        self.ws = None;
        agent.status.set_connection(Connection::Disconnected);
    }

    /// Sends a frame if connected; on failure drops the connection.
    async fn send(&mut self, agent: &mut Agent, frame: &AgentFrame) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        if let Err(e) = send_frame(ws, frame).await {
            tracing::warn!(error = %format!("{e:#}"), "lost the connection while sending");
            self.drop_connection(agent);
        }
    }

    /// Sends the last report of a wiped device and waits a little for its
    /// acknowledgement; the wipe does not depend on it.
    async fn send_last_report(&mut self, last: &Pending) {
        let Some(ws) = self.ws.as_mut() else {
            tracing::warn!("not connected: the last report of the wiped device is not sent");
            return;
        };
        let delivery = async {
            let frame = AgentFrame::Report {
                report: last.report.clone(),
            };
            send_frame(ws, &frame).await?;
            while let Some(msg) = ws.next().await {
                let msg = msg.context("connection lost")?;
                if let Some(Ok(ServerFrame::ReportAck { seq })) = parse_frame(&msg)
                    && seq >= last.seq
                {
                    return Ok(());
                }
            }
            anyhow::bail!("the server closed the connection")
        };
        match timeout(WIPE_REPORT_WAIT, delivery).await {
            Ok(Ok(())) => tracing::info!(seq = last.seq, "the server acknowledged the last report"),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the last report was not acknowledged")
            }
            Err(_) => tracing::warn!(
                "no acknowledgement of the last report within {}s",
                WIPE_REPORT_WAIT.as_secs()
            ),
        }
    }
}

/// Destroys the local data, the key and the identity of a device whose wipe was
/// accepted, sending its last signed report in between if connected.
async fn wipe(agent: &mut Agent, session: &mut Session) -> Result<()> {
    let dir = agent.dir().clone();
    for failure in blocking(|| dir.destroy_local_data()) {
        tracing::error!(failure = %failure, "could not delete local data");
    }
    let last = blocking(|| agent.final_report());
    session.send_last_report(&last).await;
    if let Some(mut ws) = session.ws.take() {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    blocking(|| dir.destroy_key_and_identity())
}

/// Finishes a wipe that a crash or a restart interrupted (nothing is sent: the key
/// may already be gone).
fn finish_interrupted_wipe(dir: &StateDir, id: &str) -> Result<()> {
    tracing::warn!(command = %id, "finishing a remote wipe interrupted by a restart");
    for failure in dir.destroy_local_data() {
        tracing::error!(failure = %failure, "could not delete local data");
    }
    let _ = std::fs::remove_file(dir.path(CONTROL_SOCKET));
    dir.destroy_key_and_identity()?;
    tracing::info!("device wiped");
    Ok(())
}

fn save_status(agent: &Agent, saved: &mut RunStatus) {
    if &agent.status != saved {
        match agent.status.store(agent.dir()) {
            Ok(()) => *saved = agent.status.clone(),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot write the status file"),
        }
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// `redoubt-agent run`: holds the state directory's lock and runs until SIGINT or
/// SIGTERM. Needs a multi-threaded Tokio runtime.
pub async fn run(dir: StateDir, opts: RunOptions) -> Result<()> {
    dir.require_enrolled()?;
    let _lock = dir.lock()?;
    if let Some(id) = dir.wipe_pending()? {
        return blocking(|| finish_interrupted_wipe(&dir, &id));
    }
    let mut agent = blocking(|| Agent::open(dir.clone(), opts.clock.clone()))?;
    let identity = agent.identity().clone();
    // An agent enrolled before the messenger had a credential of its own makes it now;
    // messaging must not stop enforcement, so a failure is reported and the run goes on.
    let now = opts.clock.wall();
    if let Err(e) = blocking(|| crate::messenger_dir::ensure(&dir, &identity, now)) {
        tracing::error!(error = %format!("{e:#}"), "cannot prepare the messenger directory");
        agent.status.error(format!("messenger directory: {e:#}"));
    }
    // The enrollment address, then the organization's list from the signed bundle: a
    // server that stops answering is left for the next one.
    let mut servers = ServerList::new(identity.server.clone());
    servers.learn(agent.bundle_servers());
    ServerClient::new(identity.server.clone(), identity.ca_fingerprint, None)
        .context("preparing the connection to the server")?;
    let shutdown = shutdown_signal().await?;
    tokio::pin!(shutdown);

    agent.status.pid = std::process::id();
    agent.status.set_connection(Connection::Disconnected);
    let mut saved = RunStatus::default();
    tracing::info!(
        device = %identity.device_id,
        server = %identity.server,
        hardware = %identity.hardware,
        recheck_ms = opts.recheck.as_millis() as u64,
        "agent starting"
    );

    let mut recheck = tokio::time::interval(opts.recheck);
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The backend's watcher wakes the loop on a change behind the agent's back; the
    // wake-ups of one burst (a driver probing, our own rfkill writes) are gathered for
    // `WATCH_SETTLE` and then re-checked once, so the re-check rate stays bounded.
    let hw_changed = Arc::new(Notify::new());
    let notify = hw_changed.clone();
    blocking(|| agent.watch_hardware(Arc::new(move || notify.notify_one())));
    let mut settle_until: Option<Instant> = None;
    let mut last_watch_check = Instant::now()
        .checked_sub(WATCH_MIN_GAP)
        .unwrap_or_else(Instant::now);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut session = Session {
        ws: None,
        last_rx: Instant::now(),
    };
    let control_socket = match control::bind(&dir) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no control socket: `redoubt-agent checkpoint` cannot reach this agent");
            agent.status.error(format!("control socket: {e:#}"));
            None
        }
    };
    let (control_tx, mut control_rx) = mpsc::channel::<ControlCall>(8);
    let mut wiped = false;
    let mut connecting: Option<ConnectTask> = None;
    let mut backoff = Backoff::new();
    let mut next_connect = Instant::now();
    let mut next_checkin = Instant::now() + jitter(agent.check_in_interval());

    loop {
        save_status(&agent, &mut saved);
        let connected = session.ws.is_some();
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("stopping on signal");
                break;
            }
            accepted = accept_control(&control_socket) => {
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(control::serve(stream, control_tx.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
            Some(call) = control_rx.recv() => {
                let ControlRequest::Checkpoint { code } = call.request;
                match blocking(|| agent.checkpoint(&code)) {
                    Ok((result, reports)) => {
                        let answer = match result {
                            Ok(outcome) => ControlResponse::done(outcome),
                            Err(reason) => ControlResponse::failed(reason),
                        };
                        let _ = call.reply.send(answer);
                        if session.send_reports(&mut agent, &reports).await {
                            next_checkin = Instant::now() + jitter(agent.check_in_interval());
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "cannot apply a checkpoint code");
                        agent.status.error(format!("checkpoint: {e:#}"));
                        let _ = call.reply.send(ControlResponse::failed(format!("{e:#}")));
                    }
                }
            }
            () = hw_changed.notified(), if settle_until.is_none() => {
                // Gather the burst; and however often the hardware changes (a driver
                // that ignores what we write and reports every attempt), re-check at
                // most every WATCH_MIN_GAP.
                settle_until = Some((Instant::now() + WATCH_SETTLE).max(last_watch_check + WATCH_MIN_GAP));
            }
            () = sleep_until(settle_until.unwrap_or_else(Instant::now)), if settle_until.is_some() => {
                settle_until = None;
                last_watch_check = Instant::now();
                recheck.reset_immediately();
            }
            _ = recheck.tick() => {
                match blocking(|| agent.check()) {
                    Ok(reports) => {
                        if session.send_reports(&mut agent, &reports).await {
                            next_checkin = Instant::now() + jitter(agent.check_in_interval());
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "re-check failed");
                        agent.status.error(format!("re-check: {e:#}"));
                    }
                }
            }
            () = sleep_until(next_checkin), if connected => {
                match blocking(|| agent.report_now()) {
                    Ok(reports) => {
                        session.send_reports(&mut agent, &reports).await;
                    }
                    Err(e) => agent.status.error(format!("check-in: {e:#}")),
                }
                next_checkin = Instant::now() + jitter(agent.check_in_interval());
            }
            () = sleep_until(next_connect), if !connected && connecting.is_none() => {
                tracing::debug!(server = %servers.current(), "connecting");
                let (url, pin, id, key) = (servers.current().clone(), identity.ca_fingerprint, identity.device_id.clone(), agent.key());
                connecting = Some(tokio::spawn(async move {
                    let client = ServerClient::new(url, pin, None).map_err(|e| ConnectError::Other(e.to_string()))?;
                    connect(client, id, key).await
                }));
            }
            joined = connect_finished(&mut connecting) => {
                connecting = None;
                let cap = agent.check_in_interval();
                match joined {
                    Ok(Ok((ws, server_time))) => {
                        tracing::info!(server = %servers.current(), %server_time, "connected and authenticated");
                        servers.succeeded();
                        // The server's time (over the pinned TLS session) raises the
                        // trusted floor; a wall clock set far ahead does not.
                        blocking(|| agent.observe_server_time(server_time));
                        backoff.reset();
                        session.ws = Some(ws);
                        session.last_rx = Instant::now();
                        agent.status.set_connection(Connection::Connected);
                        match blocking(|| agent.pending()) {
                            Ok(pending) => {
                                if !pending.is_empty() {
                                    tracing::info!(count = pending.len(), "sending queued reports");
                                }
                                session.send_reports(&mut agent, &pending).await;
                            }
                            Err(e) => agent.status.error(format!("reading the outbox: {e:#}")),
                        }
                        next_checkin = Instant::now() + jitter(cap);
                    }
                    Ok(Err(ConnectError::Unauthorized(message))) => {
                        backoff.give_up_to(cap);
                        let delay = backoff.delay(cap);
                        tracing::error!(reason = %message, retry_in_s = delay.as_secs(), "the server refused this device (revoked or unknown device)");
                        agent.status.error(format!("unauthorized: the server refused this device (revoked or unknown): {message}"));
                        next_connect = Instant::now() + delay;
                    }
                    Ok(Err(ConnectError::Other(message))) => {
                        let failed = servers.current().clone();
                        // The next address at once; after a whole round, the backoff.
                        let delay = if servers.failed() { backoff.delay(cap) } else { jitter(FAILOVER_GAP) };
                        tracing::warn!(server = %failed, next = %servers.current(), reason = %message, retry_in_ms = delay.as_millis() as u64, "connection failed");
                        agent.status.error(format!("connection: {message}"));
                        next_connect = Instant::now() + delay;
                    }
                    Err(e) => {
                        let delay = backoff.delay(cap);
                        agent.status.error(format!("connection task failed: {e}"));
                        next_connect = Instant::now() + delay;
                    }
                }
            }
            _ = ping.tick(), if connected => {
                if session.last_rx.elapsed() > IDLE_LIMIT {
                    tracing::warn!("no word from the server for {}s; reconnecting", IDLE_LIMIT.as_secs());
                    agent.status.error("connection: the server stopped answering");
                    session.drop_connection(&mut agent);
                    next_connect = Instant::now() + backoff.delay(agent.check_in_interval());
                } else if let Some(ws) = session.ws.as_mut()
                    && timeout(SEND_TIMEOUT, ws.send(Message::Ping(Vec::new().into()))).await.map_or(true, |r| r.is_err())
                {
                    session.drop_connection(&mut agent);
                    next_connect = Instant::now() + backoff.delay(agent.check_in_interval());
                }
            }
            msg = next_message(&mut session.ws) => {
                session.last_rx = Instant::now();
                let frame = match msg {
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        tracing::warn!(reason = %why, "the server closed the connection");
                        session.drop_connection(&mut agent);
                        next_connect = Instant::now() + backoff.delay(agent.check_in_interval());
                        continue;
                    }
                    Some(Ok(m)) => match parse_frame(&m) {
                        Some(Ok(f)) => f,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "ignoring an unreadable frame from the server");
                            continue;
                        }
                        None => continue,
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "connection lost");
                        agent.status.error(format!("connection: {e}"));
                        session.drop_connection(&mut agent);
                        next_connect = Instant::now() + backoff.delay(agent.check_in_interval());
                        continue;
                    }
                    None => {
                        tracing::warn!("connection lost");
                        session.drop_connection(&mut agent);
                        next_connect = Instant::now() + backoff.delay(agent.check_in_interval());
                        continue;
                    }
                };
                match frame {
                    ServerFrame::Bundle { bundle } => {
                        match blocking(|| agent.offer_bundle(&bundle)) {
                            Ok((BundleOutcome::Applied { .. }, reports)) => {
                                servers.learn(agent.bundle_servers());
                                session.send_reports(&mut agent, &reports).await;
                                next_checkin = Instant::now() + jitter(agent.check_in_interval());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "cannot store the new bundle");
                                agent.status.error(format!("storing a bundle: {e:#}"));
                            }
                        }
                    }
                    ServerFrame::Command { command } => {
                        match blocking(|| agent.command(&command)) {
                            Ok(outcome) => {
                                // Stored before this acknowledgement; a lost ack means a
                                // re-delivery, which changes nothing and is acked again.
                                if let Some(id) = outcome.id.clone() {
                                    let ack = AgentFrame::CommandAck { id, accepted: outcome.accepted, reason: outcome.reason.clone() };
                                    session.send(&mut agent, &ack).await;
                                }
                                if outcome.wipe() {
                                    tracing::warn!("remote wipe: destroying the local data and the device key");
                                    wipe(&mut agent, &mut session).await?;
                                    wiped = true;
                                    break;
                                }
                                match blocking(|| agent.check()) {
                                    Ok(reports) => {
                                        if session.send_reports(&mut agent, &reports).await {
                                            next_checkin = Instant::now() + jitter(agent.check_in_interval());
                                        }
                                    }
                                    Err(e) => {
                                        tracing::error!(error = %format!("{e:#}"), "enforcing after a command failed");
                                        agent.status.error(format!("after a command: {e:#}"));
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "cannot store a device command; not acknowledging it");
                                agent.status.error(format!("storing a command: {e:#}"));
                            }
                        }
                    }
                    ServerFrame::ReportAck { seq } => {
                        if let Err(e) = blocking(|| agent.ack(seq)) {
                            agent.status.error(format!("acknowledging report {seq}: {e:#}"));
                        }
                    }
                    ServerFrame::ReportRequest => {
                        match blocking(|| agent.report_now()) {
                            Ok(reports) => {
                                session.send_reports(&mut agent, &reports).await;
                                next_checkin = Instant::now() + jitter(agent.check_in_interval());
                            }
                            Err(e) => agent.status.error(format!("report request: {e:#}")),
                        }
                    }
                    ServerFrame::Error { code, message, fatal } => {
                        tracing::warn!(%code, reason = %message, fatal, "the server reported an error");
                        agent.status.error(format!("server: {message} ({code})"));
                        if fatal {
                            session.drop_connection(&mut agent);
                            let cap = agent.check_in_interval();
                            if code == "unauthorized" {
                                tracing::error!("the server refused this device (revoked or unknown device)");
                                backoff.give_up_to(cap);
                            }
                            next_connect = Instant::now() + backoff.delay(cap);
                        }
                    }
                    other @ (ServerFrame::Challenge { .. } | ServerFrame::Welcome { .. }) => {
                        tracing::debug!(frame = frame_name(&other), "ignoring a handshake frame after the handshake");
                    }
                }
            }
        }
    }

    if let Some(mut ws) = session.ws.take() {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    if let Some(task) = connecting.take() {
        task.abort();
    }
    drop(control_socket);
    let _ = std::fs::remove_file(dir.path(CONTROL_SOCKET));
    if wiped {
        tracing::info!("device wiped");
        return Ok(());
    }
    agent.status.set_connection(Connection::Disconnected);
    save_status(&agent, &mut saved);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(10);
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.delay(cap)).collect();
        assert!(delays[0] >= Duration::from_millis(400) && delays[0] <= Duration::from_millis(600));
        assert!(
            delays[3] >= Duration::from_millis(3200) && delays[3] <= Duration::from_millis(4800)
        );
        assert!(delays[7] >= Duration::from_secs(8) && delays[7] <= Duration::from_secs(12));
        b.reset();
        assert!(b.delay(cap) <= Duration::from_millis(600));
        b.give_up_to(cap);
        assert!(b.delay(cap) >= Duration::from_secs(8));
    }
}
