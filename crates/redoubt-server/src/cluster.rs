//! Several server nodes on one PostgreSQL database: what one node must tell the others
//! travels on NATS (`nats_url`). A change made through node B (a new bundle, a command,
//! a revocation, a message in a queue) is a [`Signal`] for the device it concerns; the
//! node holding that device's session acts on it as if the change were its own.
//!
//! NATS carries only signals, never state: every signal makes the receiving session
//! read the database, which stays the source of truth. A node that may have missed
//! signals (NATS was unreachable, or dropped messages for a slow subscriber) catches up
//! from the database: every session it holds re-reads its bundle, commands and queue,
//! and every device it serves is checked for revocation. A node that was cut off from
//! NATS publishes nothing meanwhile (the others could not hear it) and, once back, asks
//! every node to catch up the same way, since they may have missed its signals. A revocation that arrives on
//! NATS is believed only once the database confirms it, so whoever can publish on the
//! NATS server can make nodes re-read, never end a phone's session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand_core::RngCore;
use redoubt_proto::DeviceId;
use redoubt_proto::messaging::MessengerPush;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use url::Url;

use crate::app::{Push, SharedApp};

/// Most signals in one NATS message (≈ 80 bytes each, well under NATS's 1 MiB limit).
const BATCH: usize = 4000;
/// How often a node tells the others how many phones it holds.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not heard from for this long holds no phones as far as counts go.
const PEER_SILENCE: Duration = Duration::from_secs(15);

/// Something a device's session on another node must act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
pub enum Signal {
    /// For the device's agent session.
    Push {
        /// The device.
        d: DeviceId,
        /// What changed.
        p: Push,
    },
    /// For the device's messenger push channels.
    Ring {
        /// The device.
        d: DeviceId,
        /// The push.
        m: MessengerPush,
    },
    /// The device was revoked: its messenger sessions end (once the database agrees).
    Revoked {
        /// The device.
        d: DeviceId,
    },
    /// The sender was cut off from NATS: every node catches up from the database (at
    /// most once per [`CATCH_UP_GAP`], whoever asks).
    CatchUp,
}

/// Fewest seconds between two catch-ups asked for by other nodes: anyone who can publish
/// on NATS can ask, and a catch-up reads the database for every session.
const CATCH_UP_GAP: Duration = Duration::from_secs(10);

/// One NATS message: signals from one node, in the order they were made.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    from: String,
    signals: Vec<Signal>,
}

/// A node's heartbeat.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Beat {
    from: String,
    devices: u64,
}

/// This node's side of the cluster: where its signals go, and what it last heard of
/// the other nodes. Without `nats_url` it is a single node and sends nothing.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    out: Option<mpsc::UnboundedSender<Signal>>,
    peers: Mutex<HashMap<String, (Beat, Instant)>>,
}

/// Signals waiting to be published (taken by [`run`]).
pub struct Outbox(mpsc::UnboundedReceiver<Signal>);

impl Cluster {
    /// A single node: nothing crosses.
    pub fn single() -> Cluster {
        Cluster {
            node: node_id(),
            out: None,
            peers: Mutex::default(),
        }
    }

    /// A node of a cluster; its signals wait in the [`Outbox`] until [`run`] publishes them.
    pub fn joined() -> (Cluster, Outbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Cluster {
                node: node_id(),
                out: Some(tx),
                peers: Mutex::default(),
            },
            Outbox(rx),
        )
    }

    /// This node's random name (new at every start).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Queues a signal for the other nodes (nothing without NATS).
    pub fn send(&self, signal: Signal) {
        if let Some(tx) = &self.out {
            let _ = tx.send(signal);
        }
    }

    /// Devices connected to the other nodes heard from lately.
    pub fn peer_devices(&self) -> u64 {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        peers.retain(|_, (_, at)| now.duration_since(*at) < PEER_SILENCE);
        peers.values().map(|(b, _)| b.devices).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn node_id() -> String {
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The subjects of one organization (several may share a NATS server).
fn subjects(app: &SharedApp) -> (String, String) {
    let fp = app.keys.fingerprint().to_string();
    let short = fp.trim_start_matches("sha256:").get(..16).unwrap_or("org");
    (
        format!("redoubt.{short}.signals"),
        format!("redoubt.{short}.nodes"),
    )
}

/// Connects to NATS and runs the node's side of the cluster until shutdown: publishes
/// the outbox in batches, applies what the other nodes send, sends heartbeats, and
/// catches up from the database after every (re)connection and every dropped message.
/// An unreachable NATS server does not stop the node: it serves its own phones and
/// keeps trying.
pub async fn run(app: SharedApp, url: Url, outbox: Outbox) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel::<async_nats::Event>();
    let client = async_nats::ConnectOptions::new()
        .name(format!("redoubt-server {}", app.cluster.node()))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(url.as_str())
        .await?;
    let (signals_subject, nodes_subject) = subjects(&app);
    let mut signals = client.subscribe(signals_subject.clone()).await?;
    let mut beats = client.subscribe(nodes_subject.clone()).await?;
    let mut outbox = outbox.0;
    let mut shutdown = app.shutdown.clone();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let me = app.cluster.node().to_owned();
    // Whether NATS hears this node now, and whether it was cut off since it last did.
    let mut linked = false;
    let mut was_cut_off = false;
    let mut last_catch_up: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            first = outbox.recv() => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match outbox.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(_) => break,
                    }
                }
                if !linked && was_cut_off {
                    // Nobody hears it now; the others catch up when this node is back.
                    // (Before the first connection the client keeps what is published.)
                    continue;
                }
                let payload = serde_json::to_vec(&Wire { from: me.clone(), signals: batch })?;
                if let Err(e) = client.publish(signals_subject.clone(), payload.into()).await {
                    // The other nodes catch up from the database when they reconnect.
                    tracing::warn!(error = %e, "cluster: a signal batch was not published");
                }
            }
            msg = signals.next() => {
                let Some(msg) = msg else { break };
                match serde_json::from_slice::<Wire>(&msg.payload) {
                    Ok(w) if w.from == me => {}
                    Ok(w) => {
                        let asked = w.signals.contains(&Signal::CatchUp);
                        apply(&app, w.signals).await;
                        if asked && last_catch_up.is_none_or(|t| t.elapsed() >= CATCH_UP_GAP) {
                            tracing::info!(from = %w.from, "cluster: a node was cut off from NATS; catching up from the database");
                            last_catch_up = Some(Instant::now());
                            catch_up(&app).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: an unreadable signal batch was ignored"),
                }
            }
            msg = beats.next() => {
                let Some(msg) = msg else { break };
                if let Ok(b) = serde_json::from_slice::<Beat>(&msg.payload)
                    && b.from != me
                {
                    lock(&app.cluster.peers).insert(b.from.clone(), (b, Instant::now()));
                }
            }
            _ = heartbeat.tick() => {
                let beat = Beat { from: me.clone(), devices: app.hub.len() as u64 };
                let _ = client.publish(nodes_subject.clone(), serde_json::to_vec(&beat)?.into()).await;
            }
            Some(event) = events.recv() => match event {
                async_nats::Event::Connected => {
                    tracing::info!(node = %me, "cluster: connected to NATS; catching up from the database");
                    linked = true;
                    if was_cut_off {
                        let ask = Wire { from: me.clone(), signals: vec![Signal::CatchUp] };
                        let _ = client.publish(signals_subject.clone(), serde_json::to_vec(&ask)?.into()).await;
                    }
                    last_catch_up = Some(Instant::now());
                    catch_up(&app).await;
                }
                async_nats::Event::SlowConsumer(_) => {
                    tracing::warn!("cluster: NATS dropped signals for this node; catching up from the database");
                    catch_up(&app).await;
                }
                async_nats::Event::Disconnected => {
                    linked = false;
                    was_cut_off = true;
                    tracing::warn!("cluster: disconnected from NATS; phones on other nodes hear of changes made here once it is back");
                }
                other => tracing::info!(event = %other, "cluster: NATS event"),
            },
        }
    }
    // What is still buffered goes out, unless NATS is away (then the others catch up).
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    Ok(())
}

/// Acts on signals from another node.
async fn apply(app: &SharedApp, signals: Vec<Signal>) {
    // A revocation is the database's word, not the publisher's.
    let claimed: Vec<DeviceId> = signals
        .iter()
        .filter_map(|s| match s {
            Signal::Revoked { d } => Some(d.clone()),
            _ => None,
        })
        .collect();
    let revoked = if claimed.is_empty() {
        Vec::new()
    } else {
        match app.store.revoked_among(&claimed).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot check revocations; they are checked again at the next catch-up");
                Vec::new()
            }
        }
    };
    for s in signals {
        match s {
            Signal::Push { d, p } => {
                // A session is ended for revocation only when the database agrees.
                if p != Push::Revoked || revoked.contains(&d) {
                    app.hub.notify(&d, p);
                }
            }
            Signal::Ring { d, m } => app.doorbells.ring(&d, m),
            Signal::Revoked { d } => {
                if revoked.contains(&d) {
                    app.sessions.end_device(&d);
                }
            }
            Signal::CatchUp => {}
        }
    }
}

/// Brings every session this node holds up to the database: revoked devices lose their
/// sessions, the others re-read their bundle and commands, messengers their queue.
pub async fn catch_up(app: &SharedApp) {
    let mut devices = app.hub.devices();
    devices.extend(app.doorbells.devices());
    devices.extend(app.sessions.devices());
    devices.sort();
    devices.dedup();
    if devices.is_empty() {
        return;
    }
    let revoked = match app.store.revoked_among(&devices).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: catch-up could not read the database");
            Vec::new()
        }
    };
    for d in &revoked {
        app.sessions.end_device(d);
        app.hub.notify(d, Push::Revoked);
    }
    for d in &devices {
        if !revoked.contains(d) {
            app.hub.notify(d, Push::Resync);
        }
        app.doorbells.ring(d, MessengerPush::QueueChanged);
    }
    tracing::info!(
        sessions = devices.len(),
        revoked = revoked.len(),
        "cluster: caught up"
    );
}
