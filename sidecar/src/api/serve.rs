//! Serving an API port (HTTP/1.1 and HTTP/2 on one listener) with bounds on
//! what a stranger can hold, before any token is checked:
//!
//! - **connections**: at most `max_connections`; at the limit, the connection
//!   idle the longest is closed to make room (so held-open idle connections
//!   cannot lock out a new client such as a restarted app's
//!   ConnectAppCallback); when none is idle the newcomer is closed;
//! - **time**: a request's headers must arrive within `header_timeout`
//!   (HTTP/1: hyper's header timer, which also bounds an idle keep-alive
//!   connection; a connection that has not even sent its first bytes
//!   gets the same bound), and a connection with no request in flight is
//!   closed after `idle_timeout` (HTTP/2);
//! - **bytes**: headers are capped (64 KiB); bodies are bounded by the routes.
//!
//! Shutdown stops accepting, asks every connection to finish (HTTP/2
//! GOAWAY, HTTP/1 close after the current response), and waits for them up
//! to the grace period: one deadline shared by every listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use dialback_channel::lograte::RateLimited;

/// The bounds of one API listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Bound on a request's headers (and on an idle HTTP/1 connection).
    pub header_timeout: Duration,
    /// Bound on a connection with no request in flight.
    pub idle_timeout: Duration,
}

/// Largest header block accepted (HTTP/1 buffer and HTTP/2 header list).
const MAX_HEADERS: usize = 64 * 1024;

/// What the watchdog and the eviction need to know of a connection.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not finished.
    inflight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last finished a request (or opened).
    last_ms: AtomicU64,
    /// Bytes read from the peer so far (saturating at a small number).
    bytes_in: AtomicU64,
    /// Cancelled to close the connection at once.
    evict: CancellationToken,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last_ms.store(ms_since(epoch), Ordering::Relaxed);
    }

    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(Duration::from_millis(ms_since(epoch).saturating_sub(self.last_ms.load(Ordering::Relaxed))))
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The live connections of one listener.
#[derive(Debug, Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Arc<Activity>>,
}

impl Table {
    /// Makes room for one more connection: evicts the one idle the longest
    /// when at `max`. Returns false when full of busy connections.
    fn make_room(&mut self, max: usize, epoch: Instant) -> bool {
        if self.conns.len() < max {
            return true;
        }
        let victim =
            self.conns.iter().filter_map(|(id, a)| a.idle_for(epoch).map(|idle| (*id, idle))).max_by_key(|(_, i)| *i);
        match victim {
            Some((id, _)) => {
                if let Some(a) = self.conns.remove(&id) {
                    a.evict.cancel();
                }
                true
            }
            None => false,
        }
    }
}

/// Serves `svc` on `listener` until `stop`, then lets the connections finish
/// until the deadline set in `grace` before `stop` was cancelled (none set:
/// no bound). `name` is for logs ("HTTP", "gRPC").
pub async fn serve<S>(
    listener: TcpListener,
    svc: S,
    limits: ServeLimits,
    name: &'static str,
    stop: CancellationToken,
    grace: Arc<OnceLock<Instant>>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let epoch = Instant::now();
    let table = Arc::new(Mutex::new(Table::default()));
    let tasks = tokio_util::task::TaskTracker::new();
    let full_log = RateLimited::new(Duration::from_secs(10));
    let accept_log = RateLimited::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            // Out of file descriptors and the like: logged, a short pause, and on.
            s = dialback_channel::accept_with_backoff(&listener, &accept_log, name) => s,
            () = stop.cancelled() => break,
        };
        let activity = {
            let Ok(mut t) = table.lock() else { return };
            if !t.make_room(limits.max_connections, epoch) {
                if let Some(n) = full_log.hit() {
                    warn!(api = name, %peer, max = limits.max_connections, suppressed = n,
                        "API connection limit reached and every connection is busy; closing a new one");
                }
                continue;
            }
            let a = Arc::new(Activity {
                inflight: AtomicUsize::new(0),
                last_ms: AtomicU64::new(ms_since(epoch)),
                bytes_in: AtomicU64::new(0),
                evict: CancellationToken::new(),
            });
            t.next += 1;
            let id = t.next;
            t.conns.insert(id, a.clone());
            (id, a)
        };
        let svc = svc.clone();
        let table = table.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let (id, activity) = activity;
            connection(stream, peer, svc, activity, limits, epoch, stop).await;
            if let Ok(mut t) = table.lock() {
                t.conns.remove(&id);
            }
        });
    }
    tasks.close();
    // Wait for the connections to finish, within the shared grace deadline.
    match grace.get().copied() {
        Some(d) => {
            if tokio::time::timeout_at(d, tasks.wait()).await.is_err() {
                debug!(api = name, "grace period over; closing the remaining connections");
            }
        }
        None => tasks.wait().await,
    }
    if let Ok(t) = table.lock() {
        for a in t.conns.values() {
            a.evict.cancel();
        }
    }
}

async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    svc: S,
    activity: Arc<Activity>,
    limits: ServeLimits,
    epoch: Instant,
    stop: CancellationToken,
) where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADERS.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADERS).unwrap_or(u32::MAX))
        .initial_stream_window_size(dialback_channel::h2::STREAM_WINDOW)
        .initial_connection_window_size(dialback_channel::h2::CONN_WINDOW)
        .max_frame_size(dialback_channel::h2::MAX_FRAME);
    let tracked = Tracked { inner: svc, activity: activity.clone(), epoch };
    let io = TokioIo::new(Counted { inner: stream, activity: activity.clone() });
    let conn = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(tracked));
    tokio::pin!(conn);
    let tick = (limits.idle_timeout.min(limits.header_timeout) / 4).max(Duration::from_millis(50));
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let opened = Instant::now();
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.evict.cancelled() => {
                debug!(%peer, "API connection closed to make room for a new one");
                return;
            }
            _ = watchdog.tick() => {
                // Not even a request line or the HTTP/2 preface yet.
                let silent = activity.bytes_in.load(Ordering::Relaxed) < 24
                    && activity.inflight.load(Ordering::Acquire) == 0
                    && opened.elapsed() >= limits.header_timeout;
                let idle = activity.idle_for(epoch).is_some_and(|d| d >= limits.idle_timeout);
                if silent || idle {
                    debug!(%peer, silent, "closing an idle API connection");
                    return;
                }
            }
        }
    }
}

/// Counts requests in flight (until their response body is done) per connection.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl<S> tower::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.activity.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard { activity: self.activity.clone(), epoch: self.epoch };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // The request stays in flight until its body has been sent (or dropped).
            Ok(resp.map(|b| Body::new(crate::guarded::Guarded::new(b, guard))))
        })
    }
}

struct InflightGuard {
    activity: Arc<Activity>,
    epoch: Instant,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.activity.touch(self.epoch);
        self.activity.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP stream that counts the bytes its peer sent (up to a small cap).
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 && self.activity.bytes_in.load(Ordering::Relaxed) < 1024 {
            self.activity.bytes_in.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the soft limit on open files to the hard limit (best effort), so
/// that the process is not held to the common default of 1024; returns
/// the soft limit now in force, if it can be read.
pub fn raise_fd_limit() -> Option<u64> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        debug!(error = %e, "could not raise the open-files limit");
    }
    fd_limit()
}

/// The soft limit on open files, if it can be read.
pub fn fd_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
}

/// File descriptors kept free of the API listeners: the callback listener's
/// handshakes, live channels, the state dir, logs.
pub const FD_RESERVE: u64 = 512;

/// The connection limit per API listener: the flag, lowered so that all
/// `listeners` together leave [`FD_RESERVE`] descriptors of `fd_limit` free.
pub fn connection_cap(flag: usize, listeners: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else { return flag };
    let share = limit.saturating_sub(FD_RESERVE) / u64::try_from(listeners.max(1)).unwrap_or(1);
    flag.min(usize::try_from(share).unwrap_or(usize::MAX)).max(16)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn activity(inflight: usize, last_ms: u64) -> Arc<Activity> {
        Arc::new(Activity {
            inflight: AtomicUsize::new(inflight),
            last_ms: AtomicU64::new(last_ms),
            bytes_in: AtomicU64::new(0),
            evict: CancellationToken::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let epoch = Instant::now();
        tokio::time::advance(Duration::from_secs(100)).await;
        let mut t = Table::default();
        let busy = activity(1, 0);
        let old_idle = activity(0, 10_000);
        let new_idle = activity(0, 90_000);
        t.conns.insert(1, busy.clone());
        t.conns.insert(2, old_idle.clone());
        t.conns.insert(3, new_idle.clone());
        assert!(t.make_room(4, epoch), "below the limit there is room");
        assert!(t.conns.len() == 3 && !old_idle.evict.is_cancelled());
        assert!(t.make_room(3, epoch));
        assert!(old_idle.evict.is_cancelled(), "the connection idle the longest goes");
        assert!(!busy.evict.is_cancelled() && !new_idle.evict.is_cancelled());
        assert!(t.make_room(2, epoch), "the other idle one goes next");
        assert!(new_idle.evict.is_cancelled());
        assert!(!t.make_room(1, epoch), "a busy connection is never evicted");
        assert!(!busy.evict.is_cancelled());
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_app_channel() {
        assert_eq!(connection_cap(1000, 2, Some(1024)), 256);
        assert_eq!(connection_cap(1000, 2, Some(1_048_576)), 1000);
        assert_eq!(connection_cap(1000, 2, None), 1000);
        assert_eq!(connection_cap(1000, 2, Some(100)), 16, "never below a handful");
    }
}
