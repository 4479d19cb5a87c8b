//! The device WebSocket: challenge-response authentication with the device key, bundle
//! push, and compliance reports acknowledged once stored. One session per device.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use rand_core::RngCore;
use redoubt_proto::envelope::decode_signature;
use redoubt_proto::ws::{AgentFrame, ServerFrame, hello_message};
use redoubt_proto::{DeviceId, Timestamp};
use redoubt_store::{DeviceRecord, ReportOutcome};

use crate::app::{Push, SharedApp};
use crate::error::ServiceError;
use crate::http::HttpState;

/// Largest frame a device may send.
const MAX_FRAME: usize = 64 * 1024;
/// How long a device has to answer the challenge.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a session's socket at a time. Tungstenite's default (128 KiB,
/// allocated for every connection) would cost more than everything else a connected
/// phone holds, and the buffer stays as large as the largest frame read; frames larger
/// than this are still read whole (the reads come from TLS's buffer, not the socket).
pub const READ_BUFFER: usize = 1024;
/// Keep-alive ping period.
const PING_EVERY: Duration = Duration::from_secs(30);

/// `GET /api/v1/device/ws`.
pub async fn device_ws(State(s): State<HttpState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        // Every frame is flushed as it is sent: no per-connection write buffer.
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            if let Err(e) = session(s.app, socket).await {
                tracing::debug!(error = %e, "device session ended");
            }
        })
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> anyhow::Result<()> {
    let text = serde_json::to_string(frame)?;
    socket.send(Message::Text(text.into())).await?;
    Ok(())
}

async fn refuse(socket: &mut WebSocket, code: &str, message: &str) {
    let _ = send(
        socket,
        &ServerFrame::Error {
            code: code.into(),
            message: message.into(),
            fatal: true,
        },
    )
    .await;
    let _ = socket.close().await;
}

/// A session's turn at the database while it starts (see
/// [`crate::app::App::session_starts`]).
type StartTurn<'a> = tokio::sync::SemaphorePermit<'a>;

/// Runs the challenge; returns the authenticated device, and the session's turn to
/// start, taken once the phone answered (a client that never answers holds no turn).
async fn authenticate<'a>(
    app: &'a SharedApp,
    socket: &mut WebSocket,
) -> anyhow::Result<Option<(DeviceRecord, StartTurn<'a>)>> {
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let nonce = URL_SAFE_NO_PAD.encode(nonce);
    send(
        socket,
        &ServerFrame::Challenge {
            nonce: nonce.clone(),
        },
    )
    .await?;
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<AgentFrame>(&t).ok(),
        Ok(_) => None,
        Err(_) => {
            refuse(socket, "timeout", "no answer to the challenge").await;
            return Ok(None);
        }
    };
    let Some(AgentFrame::Hello {
        device_id,
        signature,
    }) = hello
    else {
        refuse(socket, "bad_request", "expected a hello frame").await;
        return Ok(None);
    };
    let turn = app.session_starts.acquire().await?;
    let device = app.store.get_device(&device_id).await?;
    let verified = device.filter(|d| d.revoked_at.is_none()).filter(|d| {
        let key = VerifyingKey::from_bytes(&d.public_key).ok();
        let sig = decode_signature(&signature);
        match (key, sig) {
            (Some(k), Some(s)) => k
                .verify_strict(&hello_message(&nonce, &device_id), &s)
                .is_ok(),
            _ => false,
        }
    });
    if verified.is_none() {
        metrics::counter!("redoubt_device_auth_failures_total").increment(1);
        refuse(socket, "unauthorized", "device authentication failed").await;
        return Ok(None);
    }
    Ok(verified.map(|d| (d, turn)))
}

/// What a session keeps of its device: its key, decompressed once (not at every
/// report), and the version of the bundle last sent.
struct Held<'k> {
    key: &'k VerifyingKey,
    bundle_version: u64,
}

/// Sends the device's bundle unless it is the one the session last sent (`sent`): a
/// push, a catch-up and a report's check-in may all announce the same new bundle.
async fn send_bundle(
    app: &SharedApp,
    socket: &mut WebSocket,
    id: &DeviceId,
    sent: Option<u64>,
) -> anyhow::Result<u64> {
    let (version, bundle, issued_at, _) = app
        .store
        .device_bundle(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("device vanished"))?;
    let half = (app.config.bundle_ttl_secs / 2) as i64;
    let (version, bundle) = if issued_at.plus_secs(half) > Timestamp::now() {
        if sent == Some(version) {
            return Ok(version);
        }
        (version, bundle)
    } else {
        // Past half its life: renewed before it is sent.
        let dev = app
            .store
            .get_device(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("device vanished"))?;
        let dev = app
            .renew_if_aging(dev)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        (dev.bundle_version, dev.bundle)
    };
    send(socket, &ServerFrame::Bundle { bundle }).await?;
    Ok(version)
}

/// Sends every command the phone has not acknowledged yet and marks them delivered.
async fn send_commands(
    app: &SharedApp,
    socket: &mut WebSocket,
    id: &DeviceId,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let pending = app.store.commands_to_send(id, now).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let mut sent = Vec::with_capacity(pending.len());
    for c in pending {
        send(
            socket,
            &ServerFrame::Command {
                command: c.envelope.clone(),
            },
        )
        .await?;
        sent.push(c.id);
    }
    app.store
        .mark_delivered(id, &sent, now, &|h| app.sign_audit_head(h))
        .await?;
    Ok(())
}

/// After signals may have been missed: the bundle if it is not the one last sent, and
/// whatever commands wait.
async fn resync(
    app: &SharedApp,
    socket: &mut WebSocket,
    id: &DeviceId,
    sent: u64,
) -> anyhow::Result<u64> {
    let version = send_bundle(app, socket, id, Some(sent)).await?;
    send_commands(app, socket, id).await?;
    Ok(version)
}

async fn session(app: SharedApp, mut socket: WebSocket) -> anyhow::Result<()> {
    // The futures of rare steps are boxed, so an idle session (the common state of a
    // connected phone) holds only what its loop needs between frames.
    // The device record goes out of scope before the session starts: a value merely
    // dropped would keep its place in the future.
    let (id, key, turn) = {
        let Some((device, turn)) = Box::pin(authenticate(&app, &mut socket)).await? else {
            return Ok(());
        };
        let key = VerifyingKey::from_bytes(&device.public_key)
            .map_err(|_| anyhow::anyhow!("the stored key of {} is unusable", device.id))?;
        (device.id, key, turn)
    };
    let (ticket, mut pushes) = app.hub.register(&id);
    tracing::info!(device = %id, "device connected");
    let result = run(&app, &mut socket, &id, &key, &mut pushes, turn).await;
    app.hub.unregister(&id, ticket);
    tracing::info!(device = %id, "device disconnected");
    result
}

async fn run(
    app: &SharedApp,
    socket: &mut WebSocket,
    id: &DeviceId,
    key: &VerifyingKey,
    pushes: &mut tokio::sync::mpsc::Receiver<Push>,
    turn: StartTurn<'_>,
) -> anyhow::Result<()> {
    let mut shutdown = app.shutdown.clone();
    Box::pin(send(
        socket,
        &ServerFrame::Welcome {
            server_time: Timestamp::now(),
        },
    ))
    .await?;
    // What the session keeps of its device between frames: a few bytes, not the
    // record (its bundle and latest report would cost kilobytes per connected phone).
    // Boxed like every store call here: a future held inline would count in every idle
    // session's memory, for as long as it stays connected.
    let mut held = Held {
        key,
        bundle_version: Box::pin(send_bundle(app, socket, id, None)).await?,
    };
    Box::pin(send_commands(app, socket, id)).await?;
    // Started: the next session may take its turn.
    drop(turn);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = socket.close().await;
                return Ok(());
            }
            push = pushes.recv() => match push {
                // The hub replaced this session with a newer connection.
                None => {
                    Box::pin(refuse(socket, "replaced", "another connection of this device took over")).await;
                    return Ok(());
                }
                Some(Push::BundleChanged) => held.bundle_version = Box::pin(send_bundle(app, socket, id, Some(held.bundle_version))).await?,
                Some(Push::CommandsChanged) => Box::pin(send_commands(app, socket, id)).await?,
                Some(Push::Resync) => held.bundle_version = Box::pin(resync(app, socket, id, held.bundle_version)).await?,
                Some(Push::Revoked) => {
                    Box::pin(refuse(socket, "unauthorized", "this device was revoked")).await;
                    return Ok(());
                }
            },
            _ = ping.tick() => socket.send(Message::Ping(Vec::new().into())).await?,
            msg = socket.next() => {
                let text = match msg {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                // Handled in a boxed future: what a report's handling holds is not
                // kept in every idle session.
                if !Box::pin(on_frame(app, socket, id, &mut held, &text)).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Tells the phone a frame was not taken: storage unavailable ends the session (the
/// phone keeps what it sent and sends it again later); any other refusal leaves it open.
/// False when the session ends.
async fn not_taken(
    socket: &mut WebSocket,
    id: &DeviceId,
    e: ServiceError,
    what: &str,
) -> anyhow::Result<bool> {
    let (frame, go_on) = match e {
        ServiceError::Unavailable(e) => {
            tracing::error!(device = %id, error = %e, "{what} not stored");
            let message = format!("storage unavailable; {what} kept for later");
            (
                ServerFrame::Error {
                    code: "unavailable".into(),
                    message,
                    fatal: true,
                },
                false,
            )
        }
        e => {
            let api = e.to_api();
            (
                ServerFrame::Error {
                    code: api.code,
                    message: api.message,
                    fatal: false,
                },
                true,
            )
        }
    };
    send(socket, &frame).await?;
    Ok(go_on)
}

/// Handles one text frame of an authenticated session; false when the session ends.
async fn on_frame(
    app: &SharedApp,
    socket: &mut WebSocket,
    id: &DeviceId,
    held: &mut Held<'_>,
    text: &str,
) -> anyhow::Result<bool> {
    let frame = match serde_json::from_str::<AgentFrame>(text) {
        Ok(f) => f,
        Err(e) => {
            send(
                socket,
                &ServerFrame::Error {
                    code: "bad_request".into(),
                    message: format!("unreadable frame: {e}"),
                    fatal: false,
                },
            )
            .await?;
            return Ok(true);
        }
    };
    match frame {
        AgentFrame::Hello { .. } => {
            send(
                socket,
                &ServerFrame::Error {
                    code: "bad_request".into(),
                    message: "already authenticated".into(),
                    fatal: false,
                },
            )
            .await?;
        }
        AgentFrame::Report { report } => {
            match Box::pin(app.accept_report(id, held.key, &report)).await {
                Ok((seq, outcome, fresh)) => {
                    send(socket, &ServerFrame::ReportAck { seq }).await?;
                    if matches!(outcome, ReportOutcome::Stored(_)) {
                        // A report is also a check-in: keep the bundle fresh (the
                        // device as the report's batch read it).
                        if fresh.revoked_at.is_some() {
                            held.bundle_version = fresh.bundle_version;
                        } else if fresh.bundle_version > held.bundle_version {
                            // Normally a push is on its way with it; a node that
                            // missed the signal (another node changed the
                            // bundle) catches up here, at the phone's check-in.
                            send(
                                socket,
                                &ServerFrame::Bundle {
                                    bundle: fresh.bundle.clone(),
                                },
                            )
                            .await?;
                            held.bundle_version = fresh.bundle_version;
                        } else {
                            let renewed = Box::pin(app.renew_if_aging(fresh))
                                .await
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                            if renewed.bundle_version != held.bundle_version {
                                send(
                                    socket,
                                    &ServerFrame::Bundle {
                                        bundle: renewed.bundle.clone(),
                                    },
                                )
                                .await?;
                            }
                            held.bundle_version = renewed.bundle_version;
                        }
                    }
                }
                // Not stored, not acked: the agent keeps it and sends it again.
                Err(e) => return not_taken(socket, id, e, "report").await,
            }
        }
        AgentFrame::CommandAck {
            id: cmd,
            accepted,
            reason,
        } => {
            if let Err(e) = Box::pin(app.command_ack(id, &cmd, accepted, reason.as_deref())).await {
                return not_taken(socket, id, e, "command acknowledgement").await;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn of two owned arguments returns.
    fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The same for four owned arguments.
    fn future_size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connected_messenger_holds_a_small_push_channel_future() {
        // Held for as long as the phone's messenger stays connected.
        let size = future_size4(crate::messenger_ws::run);
        eprintln!("messenger push channel future: {size} bytes");
        assert!(size <= 1536, "the push channel future is {size} bytes");
    }

    #[test]
    fn a_connected_phone_holds_a_small_session_future() {
        // Each connected phone holds one such future for as long as it stays connected
        // (the task's memory); rare steps are boxed so that they do not count here.
        let size = future_size(session);
        eprintln!("device session future: {size} bytes");
        assert!(size <= 1536, "the device session future is {size} bytes");
    }
}
