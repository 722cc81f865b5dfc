//! The API servers' metrics, under daprd's names: a tower layer in front of
//! each API port that times every request to the end of its response body
//! and counts the bytes both ways.
//!
//! Differences from daprd, on purpose: the gRPC byte counts are the
//! request's and response's bodies as framed on the wire (daprd counts the
//! unframed unary message, 5 bytes less), and streams are counted like
//! unary calls. A caller without the API token cannot add label values:
//! its path or method is recorded as `""`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};

use super::{Metrics, dapr_path_label};

/// Which API a port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The HTTP API (`dapr_http_server_*`).
    Http,
    /// The gRPC API (`dapr_grpc_io_server_*`).
    Grpc,
}

/// Records every request of the wrapped service.
#[derive(Clone, Debug)]
pub struct ApiMetricsLayer {
    metrics: Arc<Metrics>,
    kind: Kind,
}

impl ApiMetricsLayer {
    /// Records into `metrics` as `kind`.
    pub fn new(metrics: Arc<Metrics>, kind: Kind) -> ApiMetricsLayer {
        ApiMetricsLayer { metrics, kind }
    }
}

impl<S> tower::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;

    fn layer(&self, inner: S) -> ApiMetrics<S> {
        ApiMetrics { inner, metrics: self.metrics.clone(), kind: self.kind }
    }
}

/// The service [`ApiMetricsLayer`] makes.
#[derive(Clone, Debug)]
pub struct ApiMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    kind: Kind,
}

impl<S, B> tower::Service<Request<B>> for ApiMetrics<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let received = Arc::new(AtomicU64::new(0));
        let call = Call {
            metrics: self.metrics.clone(),
            kind: self.kind,
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            content_length: content_length(req.headers()),
            received: received.clone(),
        };
        let req = req.map(|b| Body::new(Counted { inner: b, n: received }));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = resp.into_parts();
            let grpc_status = grpc_status(&parts.headers);
            let end = End { call, status: parts.status, grpc_status, sent: 0 };
            Ok(Response::from_parts(parts, Body::new(Observed { inner: body, end: Some(end) })))
        })
    }
}

/// What is known of a request when it arrives.
struct Call {
    metrics: Arc<Metrics>,
    kind: Kind,
    start: Instant,
    method: Method,
    path: String,
    content_length: u64,
    received: Arc<AtomicU64>,
}

/// What is known once its response is under way.
struct End {
    call: Call,
    status: StatusCode,
    grpc_status: Option<i32>,
    sent: u64,
}

impl End {
    /// Records the request; `how` is how the response body ended.
    fn record(self, how: BodyEnd) {
        let End { call, status, grpc_status, sent } = self;
        let m = &call.metrics;
        // daprd truncates to whole milliseconds.
        let ms = call.start.elapsed().as_millis() as f64;
        let app = m.app_id.as_str();
        match call.kind {
            Kind::Http => {
                let status = status.as_u16().to_string();
                let path =
                    if status == "401" { String::new() } else { m.http.paths.admit(&dapr_path_label(&call.path)) };
                let tags = [app, http_method(&call.method), path.as_str(), status.as_str()];
                m.http.request_count.with_label_values(&tags).inc();
                m.http.response_count.with_label_values(&tags).inc();
                m.http.latency.with_label_values(&tags).observe(ms);
                m.http.request_bytes.with_label_values(&[app]).observe(call.content_length as f64);
                m.http.response_bytes.with_label_values(&[app]).observe(sent as f64);
            }
            Kind::Grpc => {
                let code = match (grpc_status, how) {
                    (Some(c), _) => c,
                    (None, BodyEnd::Dropped) => 1,
                    (None, _) => 2,
                };
                const UNAUTHENTICATED: i32 = 16;
                let method = if code == UNAUTHENTICATED { String::new() } else { m.grpc.methods.admit(&call.path) };
                let code = grpc_code_name(code);
                m.grpc.completed_rpcs.with_label_values(&[app, &method, code]).inc();
                m.grpc.latency.with_label_values(&[app, &method, code]).observe(ms);
                let received = call.received.load(Ordering::Relaxed) as f64;
                m.grpc.received_bytes.with_label_values(&[app, &method]).observe(received);
                m.grpc.sent_bytes.with_label_values(&[app, &method]).observe(sent as f64);
            }
        }
    }
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyEnd {
    /// All of it was sent.
    Done,
    /// It failed while being sent.
    Failed,
    /// The caller went away first.
    Dropped,
}

/// A request body that counts its bytes.
struct Counted<B> {
    inner: B,
    n: Arc<AtomicU64>,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.n.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records the request when it ends (or is dropped).
struct Observed {
    inner: Body,
    end: Option<End>,
}

impl Observed {
    fn finish(&mut self, how: BodyEnd) {
        if let Some(end) = self.end.take() {
            end.record(how);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(end) = self.end.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        end.sent += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && let Some(code) = grpc_status(trailers)
                    {
                        end.grpc_status = Some(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(BodyEnd::Failed),
            Poll::Ready(None) => self.finish(BodyEnd::Done),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A body that was complete before it was polled (an empty one) ends here too.
        let how = if self.inner.is_end_stream() { BodyEnd::Done } else { BodyEnd::Dropped };
        self.finish(how);
    }
}

fn content_length(h: &HeaderMap) -> u64 {
    h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn grpc_status(h: &HeaderMap) -> Option<i32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// daprd's `method` label: the standard verbs, else `UNKNOWN`.
fn http_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        _ => "UNKNOWN",
    }
}

/// grpc-go's name of a status code (`codes.Code.String()`), as daprd labels it.
fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_grpc_go_names_them() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(1), "Canceled");
        assert_eq!(grpc_code_name(14), "Unavailable");
        assert_eq!(grpc_code_name(99), "Unknown");
        assert_eq!(http_method(&Method::from_bytes(b"BREW").unwrap_or_default()), "UNKNOWN");
    }
}
