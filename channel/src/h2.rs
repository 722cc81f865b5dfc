//! HTTP/2 over a channel, in reverse: the sidecar is the h2 client
//! ([`client`]) and the app the h2 server ([`serve`]).
//!
//! hyper's connection-level API is used on both ends instead of tonic's
//! `Channel`/`Server` because a channel is exactly one connection: the
//! connection future resolving *is* the "channel gone" signal, nothing
//! reconnects behind our back, and no extra buffer task sits on the call path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;

/// The request body type the app side sees.
pub use hyper::body::Incoming;

/// Whether a request with `headers` is a gRPC call (by its content type):
/// how both ends tell gRPC from plain HTTP on one connection.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

use crate::onetask::OneTask;
use crate::{Connection, Io, KeepAlive};

/// HTTP/2 stream flow-control window: a 1 MiB payload is not window-bound.
/// The classic `--app-port` channel uses the same, so the two compare fairly.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection flow-control window: one channel carries many calls.
pub const CONN_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame either end accepts: fewer frames for large payloads.
pub const MAX_FRAME: u32 = 64 * 1024;
/// Concurrent HTTP/2 streams the app's side of a channel accepts.
pub const MAX_STREAMS: u32 = 256;
/// Of [`MAX_STREAMS`], how many the sidecar uses for calls at most: the
/// rest stay free for the Ping stream and a close notice, so liveness never
/// queues behind slow calls.
pub const APP_CALL_STREAMS: usize = MAX_STREAMS as usize - 4;

/// How long an HTTP/2 PING may go unanswered: what is left of the idle
/// timeout after one interval, and never less than an interval.
fn ping_timeout(keep_alive: KeepAlive) -> std::time::Duration {
    keep_alive.idle_timeout.saturating_sub(keep_alive.interval).max(keep_alive.interval)
}

/// The sidecar's handle for calling the app over a channel: clone it
/// freely; every clone shares the one HTTP/2 connection. Works as the
/// transport of any tonic generated client.
///
/// With [`H2Client::stream_per_call`], each call goes instead on a QUIC
/// stream of its own, as an HTTP/2 connection of its own, so a lost packet
/// stalls only the call it belongs to.
#[derive(Clone, Debug)]
pub struct H2Client {
    /// The first stream's connection (none on an early channel).
    send: Option<hyper::client::conn::http2::SendRequest<Body>>,
    streams: Option<std::sync::Arc<crate::callpool::CallPool>>,
}

/// What a call through [`H2Client`] fails with.
pub type CallError = Box<dyn std::error::Error + Send + Sync>;

/// The connection task returned by [`client`]: drive it (spawn it); it
/// resolves when the connection ends, which is when the channel is gone.
pub type ClientConnection = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Starts HTTP/2 as the client on `io`, with HTTP/2 PINGs per `keep_alive`
/// (`None`: no PINGs, as in the mobile profile). Fails when the app does
/// not complete the HTTP/2 preface.
pub async fn client(io: Io, keep_alive: Option<KeepAlive>) -> Result<(H2Client, ClientConnection), hyper::Error> {
    let exec = OneTask::new();
    let mut builder = client_builder(CONN_WINDOW, exec.clone());
    if let Some(keep_alive) = keep_alive {
        builder
            .keep_alive_interval(keep_alive.interval)
            .keep_alive_timeout(ping_timeout(keep_alive))
            .keep_alive_while_idle(true);
    }
    let (send, conn) = builder.handshake(TokioIo::new(io)).await?;
    Ok((H2Client { send: Some(send), streams: None }, Box::pin(exec.drive(conn))))
}

/// The sidecar's HTTP/2 client settings, with a connection window of
/// `conn_window` (a call stream's connection carries one call at a time),
/// spawning on `exec` (drive the connection with [`OneTask::drive`]).
pub(crate) fn client_builder(conn_window: u32, exec: OneTask) -> hyper::client::conn::http2::Builder<OneTask> {
    let mut builder = hyper::client::conn::http2::Builder::new(exec);
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(conn_window)
        .max_frame_size(MAX_FRAME);
    builder
}

impl H2Client {
    /// This client, with every call on a stream of its own of `conn` where
    /// the channel has streams per call ([`Connection::has_streams`]);
    /// unchanged otherwise.
    pub fn stream_per_call(mut self, conn: &Connection) -> H2Client {
        if conn.has_streams() {
            self.streams = Some(std::sync::Arc::new(crate::callpool::CallPool::new(conn.clone())));
        }
        self
    }

    /// A client with every call on a stream of its own of `conn` and no
    /// first stream: for an early channel (see [`crate::EarlyChannel`]),
    /// whose first stream the app has not opened yet.
    pub fn streams_only(conn: &Connection) -> H2Client {
        H2Client { send: None, streams: Some(std::sync::Arc::new(crate::callpool::CallPool::new(conn.clone()))) }
    }

    /// This client on the channel's first stream only: for the long-lived
    /// Ping stream and the close notice, which must not wait for a stream.
    pub fn first_stream(&self) -> H2Client {
        H2Client { send: self.send.clone(), streams: None }
    }

    /// Whether calls go on a stream each.
    pub fn is_stream_per_call(&self) -> bool {
        self.streams.is_some()
    }
}

impl tower::Service<Request<Body>> for H2Client {
    type Response = Response<Body>;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, CallError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Ready while the channel's first connection is: a stream per call
        // lives and dies with the same QUIC connection.
        match &mut self.send {
            Some(send) => send.poll_ready(cx).map_err(Into::into),
            // An early channel: each call opens its stream, and fails there
            // if the connection is gone.
            None if self.streams.is_some() => Poll::Ready(Ok(())),
            None => Poll::Ready(Err("the channel has no HTTP/2 connection yet".into())),
        }
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // tonic's generated clients send only the path; HTTP/2 wants a
        // scheme and an authority too.
        if req.uri().scheme().is_none() {
            let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            if let Ok(uri) = Uri::builder().scheme("http").authority("app").path_and_query(path).build() {
                *req.uri_mut() = uri;
            }
        }
        if let Some(pool) = &self.streams {
            return Box::pin(pool.clone().call(req));
        }
        let Some(send) = &mut self.send else {
            return Box::pin(async { Err("the channel has no HTTP/2 connection yet".into()) });
        };
        let fut = send.send_request(req);
        Box::pin(async move { Ok(fut.await?.map(Body::new)) })
    }
}

/// Serves `service` (e.g. tonic `Routes`) as the HTTP/2 server on `io`
/// (the channel's [`Io`] or a [`crate::CallStream`]) until the connection
/// ends, with HTTP/2 PINGs per `keep_alive` (`None`: none). Resolves with
/// the error that ended it, if any.
pub async fn serve<T, S>(io: T, service: S, keep_alive: Option<KeepAlive>) -> Result<(), hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own executor here: a call's stream task runs the app's
    // handler, which must not share one task with every other call
    // (docs/benchmarks.md: one task on this side too bought little).
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(keep_alive.map(|k| k.interval));
    if let Some(keep_alive) = keep_alive {
        builder.keep_alive_timeout(ping_timeout(keep_alive));
    }
    builder.serve_connection(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service)).await
}
