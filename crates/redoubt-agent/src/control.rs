//! The running agent's control socket, `control.sock` in the state directory (mode
//! 0600 inside the 0700 directory): one JSON line in, one JSON line out, then the
//! connection closes.
//!
//! `redoubt-agent checkpoint` hands a scanned code here when `run` holds the state
//! directory, so that the agent that owns the hardware verifies the code, enforces at
//! once and sends the report when it is connected. The connection task only reads
//! and writes; the run loop does the work ([`ControlCall`]).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::agent::CheckpointOutcome;
use crate::state::{CONTROL_SOCKET, StateDir};

/// The longest request line read.
pub const MAX_REQUEST: u64 = 8 * 1024;
const READ_REQUEST_WITHIN: Duration = Duration::from_secs(10);
/// How long the client waits for the socket to appear (the agent may be starting).
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// How long the client waits for the answer (the hardware may be slow).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// What a client asks of the running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Apply a scanned checkpoint code.
    Checkpoint {
        /// The code (`RDZ1.…`).
        code: String,
    },
}

/// The running agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What an accepted code did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<CheckpointOutcome>,
    /// Why not, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ControlResponse {
    /// A success.
    pub fn done(outcome: CheckpointOutcome) -> Self {
        ControlResponse {
            ok: true,
            outcome: Some(outcome),
            error: None,
        }
    }

    /// A refusal or failure.
    pub fn failed(error: impl Into<String>) -> Self {
        ControlResponse {
            ok: false,
            outcome: None,
            error: Some(error.into()),
        }
    }
}

/// A request handed to the run loop, with the way back to the client.
#[derive(Debug)]
pub struct ControlCall {
    /// What was asked.
    pub request: ControlRequest,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ControlResponse>,
}

/// Binds the control socket of a state directory whose run lock this process holds
/// (so a socket file left there is stale), readable and writable by the owner only.
pub fn bind(dir: &StateDir) -> Result<UnixListener> {
    let path = dir.path(CONTROL_SOCKET);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to its owner", path.display()))?;
    Ok(listener)
}

/// Serves one connection: reads one request line, hands it to the run loop, writes
/// the answer line.
pub async fn serve(stream: UnixStream, calls: mpsc::Sender<ControlCall>) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    let response =
        match tokio::time::timeout(READ_REQUEST_WITHIN, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => match serde_json::from_str::<ControlRequest>(&line) {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if calls.send(ControlCall { request, reply }).await.is_err() {
                        ControlResponse::failed("the agent is stopping")
                    } else {
                        answer
                            .await
                            .unwrap_or_else(|_| ControlResponse::failed("the agent is stopping"))
                    }
                }
                Err(e) => ControlResponse::failed(format!("unreadable request: {e}")),
            },
            _ => return,
        };
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
        let _ = write.shutdown().await;
    }
}

/// Client side: hands a checkpoint code to the agent running on `dir` and returns
/// what it did; a refusal is an error whose message is the agent's reason.
pub fn checkpoint(dir: &StateDir, code: &str) -> Result<CheckpointOutcome> {
    let response = call(
        dir,
        &ControlRequest::Checkpoint {
            code: code.to_owned(),
        },
    )?;
    match (response.ok, response.outcome) {
        (true, Some(outcome)) => Ok(outcome),
        _ => Err(anyhow!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the running agent gave no answer".into())
        )),
    }
}

fn call(dir: &StateDir, request: &ControlRequest) -> Result<ControlResponse> {
    let path = dir.path(CONTROL_SOCKET);
    let deadline = Instant::now() + CONNECT_WITHIN;
    let stream = loop {
        match StdUnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
            {
                // The agent holds the lock but may not have opened its socket yet.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "an agent runs on {} but does not answer on {}",
                        dir.root().display(),
                        path.display()
                    )
                });
            }
        }
    };
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .and_then(|()| stream.set_write_timeout(Some(READ_REQUEST_WITHIN)))
        .context("configuring the control connection")?;
    let mut line = serde_json::to_string(request).context("encoding the request")?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the request to the running agent")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("waiting for the running agent's answer")?;
    if answer.trim().is_empty() {
        bail!("the running agent closed the connection without answering");
    }
    serde_json::from_str(&answer).context("the running agent's answer is unreadable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_have_a_stable_form() {
        let r = ControlRequest::Checkpoint {
            code: "RDZ1.x.y".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"checkpoint","code":"RDZ1.x.y"}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"wipe"}"#).is_err());
        let failed = serde_json::to_string(&ControlResponse::failed("forged")).unwrap();
        assert_eq!(failed, r#"{"ok":false,"error":"forged"}"#);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_reaches_the_run_loop_and_the_answer_comes_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        // A stale socket file is replaced.
        std::fs::write(dir.path(CONTROL_SOCKET), b"").unwrap();
        let listener = bind(&dir).unwrap();
        let mode = std::fs::metadata(dir.path(CONTROL_SOCKET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let ControlRequest::Checkpoint { code } = call.request;
                let answer = if code == "good" {
                    ControlResponse::done(CheckpointOutcome {
                        change: "entered".into(),
                        zone: "lab".parse().unwrap(),
                        checkpoint: None,
                        effective_mode: "secure-site".into(),
                        zones: vec!["lab".parse().unwrap()],
                        message: "entered zone lab: mode secure-site".into(),
                    })
                } else {
                    ControlResponse::failed(format!("refused {code}"))
                };
                call.reply.send(answer).unwrap();
            }
        });
        let d = dir.clone();
        let outcome = tokio::task::spawn_blocking(move || checkpoint(&d, "good"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.effective_mode, "secure-site");
        let err = tokio::task::spawn_blocking(move || checkpoint(&dir, "bad"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.to_string(), "refused bad");
    }
}
