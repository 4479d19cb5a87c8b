//! `GET /api/v1/messenger/ws`: a push channel for a device session. The server sends
//! [`MessengerPush`] frames (`ready`, then `queue_changed` whenever the device's queue
//! may hold something new, `key_packages_low`); the messenger fetches and acknowledges
//! over HTTPS, so delivery stays at-least-once whatever happens to the socket.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use redoubt_proto::Timestamp;
use redoubt_proto::messaging::MessengerPush;
use tokio::sync::broadcast::error::RecvError;

use crate::app::SharedApp;
use crate::http::{Device, HttpState};
use crate::messaging::DeviceSession;

const PING_EVERY: Duration = Duration::from_secs(30);

/// Upgrades an authenticated device session to the push channel.
pub async fn messenger_ws(
    State(s): State<HttpState>,
    Device(session): Device,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Device "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    upgrade
        .max_message_size(4096)
        .max_frame_size(4096)
        .read_buffer_size(crate::ws::READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run(s.app, socket, session, token).await {
                tracing::debug!(error = %e, "messenger push channel ended");
            }
        })
}

async fn send(socket: &mut WebSocket, push: &MessengerPush) -> anyhow::Result<()> {
    socket
        .send(Message::Text(serde_json::to_string(push)?.into()))
        .await?;
    Ok(())
}

pub(crate) async fn run(
    app: SharedApp,
    mut socket: WebSocket,
    session: DeviceSession,
    token: String,
) -> anyhow::Result<()> {
    let device = session.device.clone();
    let mut pushes = app.doorbells.subscribe(&device);
    let result = async {
        let mut shutdown = app.shutdown.clone();
        send(&mut socket, &MessengerPush::Ready).await?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let _ = socket.close().await;
                    return Ok(());
                }
                push = pushes.recv() => {
                    // A revoked device's sessions end; so does its push channel.
                    if app.sessions.check(&token, Timestamp::now()).is_none() {
                        let _ = socket.close().await;
                        return Ok(());
                    }
                    match push {
                        Ok(p) => send(&mut socket, &p).await?,
                        Err(RecvError::Lagged(_)) => send(&mut socket, &MessengerPush::QueueChanged).await?,
                        Err(RecvError::Closed) => return Ok(()),
                    }
                }
                _ = ping.tick() => socket.send(Message::Ping(Vec::new().into())).await?,
                msg = socket.next() => match msg {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    .await;
    drop(pushes);
    app.doorbells.tidy(&device);
    result
}
