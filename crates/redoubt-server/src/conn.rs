//! Connection limits and idleness: a global and a per-source cap on open connections
//! (an upgraded WebSocket keeps its slot until it closes), and per-connection activity
//! so that a connection that sends no request — half a request, or nothing after the
//! last answer — is closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::app::Source;
use crate::config::ConnectionLimits;

/// Open connections, in total and per source.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_source: usize,
    per_source: Mutex<HashMap<Source, usize>>,
    total: watch::Sender<usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds its maximum of connections.
    Full,
    /// The source holds its maximum of connections.
    SourceFull,
}

impl Refused {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Full => "global",
            Refused::SourceFull => "per_address",
        }
    }
}

impl ConnectionLimiter {
    /// A limiter with the configured caps.
    pub fn new(limits: &ConnectionLimits) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_address,
            per_source: Mutex::new(HashMap::new()),
            total: watch::Sender::new(0),
        })
    }

    /// Admits a connection from `source`; the slot is freed when the guard drops.
    pub fn admit(self: &Arc<Self>, source: Source) -> Result<Slot, Refused> {
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if *self.total.borrow() >= self.max_total {
            return Err(Refused::Full);
        }
        let n = per.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::SourceFull);
        }
        *n += 1;
        self.total.send_modify(|t| *t += 1);
        Ok(Slot {
            limiter: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.total.borrow()
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        let mut rx = self.total.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One admitted connection's slot.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<ConnectionLimiter>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self
            .limiter
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.source);
            }
        }
        self.limiter.total.send_modify(|t| *t = t.saturating_sub(1));
    }
}

/// A transport that holds its connection's [`Slot`]: the slot lives as long as the
/// socket, also when hyper hands it to a WebSocket after an upgrade.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    _slot: Slot,
}

impl<T> Counted<T> {
    /// Wraps `inner`, holding `slot`.
    pub fn new(inner: T, slot: Slot) -> Self {
        Counted { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What one connection is doing: requests in flight, and when it last did something.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    last: Mutex<Instant>,
}

impl Activity {
    /// A connection opened now.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        })
    }

    /// A request started; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served_any.store(true, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// When the connection is to be closed if nothing happens before: `header` after
    /// it opened while no request came, `idle` after the last request ended. While a
    /// request runs, the time to look again.
    pub fn deadline(&self, limits: &ConnectionLimits) -> (Instant, bool) {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return (Instant::now() + limits.idle_timeout, false);
        }
        let wait: Duration = if self.served_any.load(Ordering::SeqCst) {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        (last + wait, true)
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_address: per,
        }
    }

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn slots_are_capped_per_source_and_in_total_and_freed_on_drop() {
        let l = ConnectionLimiter::new(&limits(3, 2));
        let a1 = l.admit(src("2001:db8::1")).unwrap();
        let _a2 = l.admit(src("2001:db8::2")).unwrap();
        // Same /64: refused.
        assert_eq!(
            l.admit(src("2001:db8::3")).unwrap_err(),
            Refused::SourceFull
        );
        let _b = l.admit(src("192.0.2.1")).unwrap();
        assert_eq!(l.admit(src("192.0.2.2")).unwrap_err(), Refused::Full);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.admit(src("2001:db8::3")).unwrap();
    }
}
