//! The app's own API calls (Dapr's gRPC and HTTP APIs: invoke, state,
//! publish, ...) as HTTP/3 on its channel's QUIC connection, so that a
//! phone needs one UDP flow and its outbound calls migrate with it.
//!
//! Here the app is the QUIC client and the HTTP/3 client, as RFC 9114
//! expects: its request streams are the bidirectional streams it opens
//! after the hello's; the sidecar ([`serve_api`]) is the HTTP/3 server.
//! Both ends agree in the hello and verdict (`api_over_http3`), never by
//! ALPN, so old peers on either side just go on without it.
//!
//! Two things the channel's other streams need from h3 (`h3` with
//! `h3-quinn`), handled by the [`Shared`] wrapper around the connection:
//! - the sidecar opens a bidirectional stream per reverse call (dialback/2),
//!   which an h3 client would take as a server-initiated request stream and
//!   close the connection over (RFC 9114 §6.1): the app's h3 never accepts
//!   bidirectional streams, the channel does;
//! - h3 closes its QUIC connection when dropped: the connection belongs to
//!   the channel, so only an HTTP/3 protocol error closes it (the channel
//!   then ends and is redialed; what a broken peer costs is its own channel).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3::quic::{ConnectionErrorIncoming, StreamErrorIncoming};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame};
use tracing::debug;

use crate::Connection;

/// HTTP/3 requests an app may have in flight at once on its channel.
pub(crate) const API_STREAMS: u32 = 256;
/// Unidirectional streams an app may open: HTTP/3's control stream and
/// QPACK's encoder and decoder streams.
pub(crate) const UNI_STREAMS: u32 = 3;
/// Largest header block either end takes.
const MAX_FIELD_SECTION: u64 = 64 * 1024;
/// The authority sent where a request names none (tonic's clients send a
/// path only): the sidecar routes on the path.
const AUTHORITY: &str = "dialbackd";

/// The channel's QUIC connection as h3 sees it (see the module's doc).
struct Shared {
    inner: h3_quinn::Connection,
    /// What h3 opens streams with (the control and QPACK streams too).
    opener: Opener,
    /// The sidecar's side takes the app's request streams; the app's side
    /// leaves the sidecar's call streams to the channel.
    accept_bidi: bool,
}

impl Shared {
    fn new(conn: quinn::Connection, accept_bidi: bool) -> Shared {
        let inner = h3_quinn::Connection::new(conn.clone());
        let opener = Opener { inner: <h3_quinn::Connection as h3::quic::Connection<Bytes>>::opener(&inner), conn };
        Shared { inner, opener, accept_bidi }
    }
}

impl<B: Buf> h3::quic::Connection<B> for Shared {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        <h3_quinn::Connection as h3::quic::Connection<B>>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        if self.accept_bidi { self.inner.poll_accept_bidi(cx) } else { Poll::Pending }
    }

    fn opener(&self) -> Opener {
        self.opener.clone()
    }
}

impl<B: Buf> h3::quic::OpenStreams<B> for Shared {
    type BidiStream = h3_quinn::BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <Opener as h3::quic::OpenStreams<B>>::close(&mut self.opener, code, reason);
    }
}

/// Opens h3's streams; closes the channel's connection only for an HTTP/3
/// error, never for h3's orderly close (H3_NO_ERROR, sent when dropped).
#[derive(Clone)]
struct Opener {
    inner: h3_quinn::OpenStreams,
    conn: quinn::Connection,
}

impl<B: Buf> h3::quic::OpenStreams<B> for Opener {
    type BidiStream = h3_quinn::BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.inner.poll_open_bidi(cx)
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        if code != Code::H3_NO_ERROR {
            debug!(code = %code, reason = %String::from_utf8_lossy(reason), "HTTP/3 error; closing the channel");
            if let Ok(v) = quinn::VarInt::from_u64(code.value()) {
                self.conn.close(v, reason);
            }
        }
    }
}

// ---- Bodies both ways ----

/// The receiving half of a request stream (the server's or the client's).
trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, StreamError>>;
}

/// The sending half of a request stream (the server's or the client's).
trait SendHalf: Send + 'static {
    fn data(&mut self, b: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send + '_;
    fn trailers(&mut self, t: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send + '_;
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send + '_;
    fn cancel(&mut self);
}

type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

macro_rules! halves {
    ($recv:ty, $send:ty) => {
        impl RecvHalf for $recv {
            fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
                self.poll_recv_data(cx).map_ok(|b| b.map(|mut b| b.copy_to_bytes(b.remaining())))
            }

            fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, StreamError>> {
                self.poll_recv_trailers(cx)
            }
        }

        impl SendHalf for $send {
            fn data(&mut self, b: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send + '_ {
                self.send_data(b)
            }

            fn trailers(&mut self, t: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send + '_ {
                self.send_trailers(t)
            }

            fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send + '_ {
                <$send>::finish(self)
            }

            fn cancel(&mut self) {
                self.stop_stream(Code::H3_REQUEST_CANCELLED);
            }
        }
    };
}

halves!(ServerRecv, ServerSend);
halves!(ClientRecv, ClientSend);

/// A body read off an HTTP/3 request stream: its DATA, then its trailers.
struct Received<R> {
    recv: R,
    data_done: bool,
    done: bool,
}

impl<R: RecvHalf> HttpBody for Received<R> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let failed = |e: StreamError| Some(Err(tonic::Status::unavailable(format!("HTTP/3 stream: {e}"))));
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Ok(Some(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(failed(e));
                }
            }
        }
        let r = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match r {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => failed(e),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn received<R: RecvHalf>(recv: R) -> tonic::body::Body {
    tonic::body::Body::new(Received { recv, data_done: false, done: false })
}

/// Sends `body` on `send` (DATA, then trailers) and finishes the stream;
/// a body that fails cancels the stream instead.
async fn send_body<S: SendHalf, B>(body: B, send: &mut S) -> Result<(), String>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                send.cancel();
                return Err(format!("the body failed: {e}"));
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.data(data).await.map_err(|e| e.to_string())?,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    send.trailers(t).await.map_err(|e| e.to_string())?;
                    // Trailers end a message.
                    break;
                }
            }
        }
    }
    send.finish().await.map_err(|e| e.to_string())
}

// ---- The sidecar's side ----

/// Serves `svc` as HTTP/3 on the app's request streams of `conn` until the
/// connection ends (at once, where the channel does not carry the app's
/// API calls). Each request runs in a task of its own; at most
/// [`API_STREAMS`] at once (QUIC's stream limit), each header block at
/// most 64 KiB, each body bounded by QUIC's flow control and the routes.
pub async fn serve_api<S, RB>(conn: &Connection, svc: S)
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<RB>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: std::fmt::Display + Send,
{
    let Some(quic) = conn.http3_quic() else { return };
    let shared = Shared::new(quic, true);
    let built = h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .send_grease(false)
        .build::<_, Bytes>(shared)
        .await;
    let mut h3 = match built {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "HTTP/3 for the app's API calls did not start");
            return;
        }
    };
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                tokio::spawn(answer(resolver, svc.clone()));
            }
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "HTTP/3 for the app's API calls ended");
                return;
            }
        }
    }
}

/// Answers one request.
async fn answer<S, RB>(resolver: h3::server::RequestResolver<Shared, Bytes>, svc: S)
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<RB>, Error = Infallible> + Send,
    S::Future: Send,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: std::fmt::Display + Send,
{
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "an HTTP/3 request from the app was malformed");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let req = req.map(|()| received(recv));
    let Ok(resp) = tower::ServiceExt::oneshot(svc, req).await;
    let (parts, body) = resp.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        debug!(error = %e, "could not answer an HTTP/3 request");
        return;
    }
    if let Err(e) = send_body(body, &mut send).await {
        debug!(error = %e, "an HTTP/3 response body did not finish");
    }
}

// ---- The app's side ----

/// The app's HTTP/3 client on its channel's QUIC connection: a tower
/// service for tonic's clients (`DaprClient::new(client)`) and plain HTTP
/// requests alike. Cheap to clone; fails its calls once the channel is gone.
#[derive(Clone)]
pub struct ApiClient {
    send: h3::client::SendRequest<Opener, Bytes>,
    conn: Connection,
    /// Cancelled when the HTTP/3 connection ended (its driver returned).
    ended: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("closed", &self.conn.is_closed()).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Starts HTTP/3 on `conn`; `None` where the channel does not carry the
    /// app's API calls (TCP, or a sidecar that did not agree) or it failed
    /// to start.
    pub async fn start(conn: &Connection) -> Option<ApiClient> {
        let quic = conn.http3_quic()?;
        let shared = Shared::new(quic, false);
        let built = h3::client::builder()
            .max_field_section_size(MAX_FIELD_SECTION)
            .send_grease(false)
            .build::<_, _, Bytes>(shared)
            .await;
        let (mut driver, send) = match built {
            Ok(b) => b,
            Err(e) => {
                debug!(error = %e, "HTTP/3 for the API calls did not start");
                return None;
            }
        };
        let gone = conn.clone();
        let ended = tokio_util::sync::CancellationToken::new();
        let end = ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                e = driver.wait_idle() => debug!(error = %e, "HTTP/3 for the API calls ended"),
                _ = gone.closed() => {}
            }
            end.cancel();
        });
        Some(ApiClient { send, conn: conn.clone(), ended })
    }

    /// Whether it can no longer carry calls: the channel under it is gone,
    /// or HTTP/3 on it ended.
    pub fn is_closed(&self) -> bool {
        self.ended.is_cancelled() || self.conn.is_closed()
    }
}

impl<B> tower::Service<Request<B>> for ApiClient
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    type Response = Response<tonic::body::Body>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut send = self.send.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut head = Request::from_parts(parts, ());
            with_authority(&mut head)?;
            let stream = send.send_request(head).await.map_err(io::Error::other)?;
            let (mut tx, mut rx) = stream.split();
            // The request body goes on while the response comes (a gRPC
            // stream both ways).
            let mut pump = Box::pin(async move {
                if let Err(e) = send_body(body, &mut tx).await {
                    debug!(error = %e, "an HTTP/3 request body did not finish");
                }
            });
            // A body that is all there (a unary call) is sent here; one
            // still coming goes on in a task of its own.
            if std::future::poll_fn(|cx| Poll::Ready(pump.as_mut().poll(cx).is_pending())).await {
                tokio::spawn(pump);
            }
            let resp = rx.recv_response().await.map_err(io::Error::other)?;
            Ok(resp.map(|()| received(rx)))
        })
    }
}

/// Gives a request that names no scheme or authority (tonic's clients send
/// a path only) `https://dialbackd`, which HTTP/3 requires.
fn with_authority(req: &mut Request<()>) -> Result<(), io::Error> {
    let uri = req.uri();
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(());
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = http::Uri::builder()
        .scheme("https")
        .authority(AUTHORITY)
        .path_and_query(path)
        .build()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_path_only_request_gets_an_authority() {
        let mut r = Request::builder().uri("/dapr.proto.runtime.v1.Dapr/InvokeService").body(()).unwrap();
        with_authority(&mut r).unwrap();
        assert_eq!(r.uri().to_string(), "https://dialbackd/dapr.proto.runtime.v1.Dapr/InvokeService");
        let mut r = Request::builder().uri("http://sidecar:3500/v1.0/state/s?x=1").body(()).unwrap();
        with_authority(&mut r).unwrap();
        assert_eq!(r.uri().to_string(), "http://sidecar:3500/v1.0/state/s?x=1", "left alone");
    }
}
