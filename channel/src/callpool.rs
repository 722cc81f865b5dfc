//! A stream per call, the sidecar's side: HTTP/2 connections, one per QUIC
//! stream, each carrying one call at a time, kept for the next call once
//! the response has ended (an HTTP/2 handshake and a task per call would
//! cost more CPU than the call; see docs/benchmarks.md).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tonic::body::Body;

use crate::Connection;
use crate::h2::{CallError, STREAM_WINDOW, client_builder};
use crate::onetask::OneTask;

/// At most this many idle connections are kept; each holds a QUIC stream.
const MAX_IDLE: usize = 64;

/// The pool of one channel.
#[derive(Debug)]
pub(crate) struct CallPool {
    conn: Connection,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl CallPool {
    /// An empty pool over `conn`, which has streams per call.
    pub(crate) fn new(conn: Connection) -> CallPool {
        CallPool { conn, idle: Mutex::new(Vec::new()) }
    }

    /// Sends `req` on an idle connection of the pool, or on a new stream.
    pub(crate) async fn call(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, CallError> {
        let mut send = match self.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let resp = send.send_request(req).await?;
        let pool = self.clone();
        Ok(resp.map(move |inner| Body::new(Returning { inner, send: Some(send), pool })))
    }

    /// An idle connection that can take a request now.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Puts a connection whose call has ended back, if there is room.
    fn put(&self, send: SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(send);
        }
    }

    /// A new stream and an HTTP/2 connection on it (no PINGs: the channel's
    /// first stream and QUIC keep the path alive). The connection's task
    /// ends when the pool lets it go or the channel ends.
    async fn open(&self) -> Result<SendRequest<Body>, CallError> {
        let stream = self.conn.open_stream().await?;
        let exec = OneTask::new();
        let (send, connection) = client_builder(STREAM_WINDOW, exec.clone()).handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = exec.drive(connection).await {
                tracing::debug!(error = %e, "a call stream's HTTP/2 connection ended with an error");
            }
        });
        Ok(send)
    }
}

/// A response body that gives its connection back to the pool once it has
/// ended (its last frame read); a body dropped before its end takes the
/// connection with it.
struct Returning {
    inner: Incoming,
    send: Option<SendRequest<Body>>,
    pool: Arc<CallPool>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some(s) = self.send.take() {
            self.pool.put(s);
        }
    }
}

impl HttpBody for Returning {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            // Trailers are a response's last frame.
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => self.give_back(),
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.send = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
