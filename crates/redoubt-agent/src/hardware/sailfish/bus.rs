//! The backend's D-Bus thread: zbus 6 is async-only and the [`Hardware`] trait is
//! synchronous, so one dedicated thread runs a current-thread Tokio runtime that owns
//! the connection; the synchronous methods hand it jobs over a bounded channel and wait
//! for the answer with a deadline.
//!
//! Each job runs as its own task, so a service that does not answer delays only the
//! calls to it (every method call also has the connection's own timeout). The channel
//! holds [`QUEUE`] jobs; when it is full the call fails at once as unavailable rather
//! than waiting. A closed connection is reopened at the next job.
//!
//! [`Hardware`]: crate::hardware::Hardware

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc;
use zbus::Connection;

/// How long one D-Bus method call may take before it counts as failed.
pub const METHOD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a synchronous caller waits for a whole job (several calls).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(8);
/// How long connecting to the bus may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How a connection attempt that hung is described (the start of its error).
pub const CONNECT_TIMED_OUT: &str = "connecting took more than";
/// Jobs waiting for the D-Bus thread at most; more are refused.
pub const QUEUE: usize = 32;

/// Which bus to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the well-known socket).
    System,
    /// A bus at this address (tests: a private `dbus-daemon`).
    Address(String),
}

/// Why a job did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// No connection to the bus.
    #[error("the D-Bus bus is not reachable: {0}")]
    NoBus(String),
    /// The job did not finish in time.
    #[error("no answer over D-Bus within {0:?}")]
    Timeout(Duration),
    /// Too many jobs are waiting, or the D-Bus thread is gone.
    #[error("the D-Bus thread is not taking requests ({0})")]
    Busy(&'static str),
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Job = Box<dyn FnOnce(Result<Connection, String>) -> BoxFuture + Send>;

/// Opens a connection to `target`, bounded by [`CONNECT_TIMEOUT`]. Must run inside a
/// Tokio runtime (zbus is built with its Tokio backend only).
pub async fn connect(target: &Target) -> Result<Connection, String> {
    let builder = match target {
        Target::System => zbus::connection::Builder::system(),
        Target::Address(a) => zbus::connection::Builder::address(a.as_str()),
    };
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        builder.method_timeout(METHOD_TIMEOUT).build(),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{CONNECT_TIMED_OUT} {CONNECT_TIMEOUT:?}")),
    }
}

/// Submits jobs to the D-Bus thread without waiting (see [`BusThread::handle`]).
#[derive(Debug, Clone)]
pub struct BusHandle {
    jobs: mpsc::WeakSender<Job>,
}

impl BusHandle {
    /// Runs `f` on the D-Bus thread with the connection (reopened first if it closed),
    /// or the reason there is none. False when the backend is gone or the queue is full.
    pub fn spawn<F, Fut>(&self, f: F) -> bool
    where
        F: FnOnce(Result<Connection, String>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(jobs) = self.jobs.upgrade() else {
            return false;
        };
        let job: Job = Box::new(move |conn| Box::pin(f(conn)));
        jobs.try_send(job).is_ok()
    }
}

/// The handle of the D-Bus thread; dropping it ends the thread (and its watchers).
#[derive(Debug)]
pub struct BusThread {
    jobs: mpsc::Sender<Job>,
}

impl BusThread {
    /// Starts the thread and connects once; fails when the bus cannot be reached now.
    pub fn start(target: Target) -> anyhow::Result<Self> {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUE);
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), String>>(1);
        std::thread::Builder::new()
            .name("redoubt-dbus".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting a Tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut conn = match connect(&target).await {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            Some(c)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some(job) = rx.recv().await {
                        let usable = conn.as_ref().filter(|c| !c.is_closed()).cloned();
                        let current = match usable {
                            Some(c) => Ok(c),
                            None => match connect(&target).await {
                                Ok(c) => {
                                    conn = Some(c.clone());
                                    Ok(c)
                                }
                                Err(e) => {
                                    conn = None;
                                    Err(e)
                                }
                            },
                        };
                        tokio::spawn(job(current));
                    }
                });
            })?;
        match ready_rx.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(2)) {
            Ok(Ok(())) => Ok(BusThread { jobs }),
            Ok(Err(e)) => anyhow::bail!("the D-Bus bus is not reachable: {e}"),
            Err(_) => anyhow::bail!("the D-Bus bus is not reachable: connecting hung"),
        }
    }

    /// Runs `f` on the D-Bus thread with the connection and waits up to `timeout` for
    /// its result.
    pub fn call_within<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel::<Result<T, BusError>>(1);
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                // Bounded here too: a job whose caller gave up is dropped (its D-Bus
                // calls cancelled) instead of piling up behind a hung service.
                let out = match conn {
                    Ok(c) => tokio::time::timeout(timeout, f(c))
                        .await
                        .map_err(|_| BusError::Timeout(timeout)),
                    Err(e) => Err(BusError::NoBus(e)),
                };
                let _ = tx.send(out);
            })
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BusError::Busy("queue full"),
            mpsc::error::TrySendError::Closed(_) => BusError::Busy("thread stopped"),
        })?;
        match rx.recv_timeout(timeout) {
            Ok(out) => out,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(BusError::Timeout(timeout)),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(BusError::Busy("job dropped")),
        }
    }

    /// A handle that submits jobs without waiting for them, for work that lives on the
    /// D-Bus thread (signal subscriptions). It does not keep the thread alive: once the
    /// backend is dropped, its submissions fail.
    pub fn handle(&self) -> BusHandle {
        BusHandle {
            jobs: self.jobs.downgrade(),
        }
    }

    /// [`Self::call_within`] with [`JOB_TIMEOUT`].
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.call_within(JOB_TIMEOUT, f)
    }
}
