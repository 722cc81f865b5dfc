//! Bridge mode: dialbackd stands where a real daprd's `--app-port` points
//! and carries every request daprd sends there to the app over its callback
//! channel, as is: any gRPC service and method, unary or streaming, with
//! metadata and trailers, or (with daprd's `--app-protocol http`) any HTTP
//! method, path, headers and body. Nothing is parsed on the way, so an
//! `AppCallback` RPC that a future Dapr adds works without a change here.
//!
//! While no channel is up, a request waits for one (bounded by
//! `--callback-wait-timeout`), then fails as an unreachable app does:
//! gRPC `UNAVAILABLE`, HTTP 503, never an answer that makes daprd drop a
//! message (see docs/dapr.md).
//!
//! One call the bridge answers itself: daprd's gRPC app health probe
//! (`AppCallbackHealthCheck/HealthCheck`). The app is healthy exactly
//! while its channel is up, so with `--enable-app-health-check` daprd
//! pauses deliveries while the app is away and resumes them when it is
//! back, whether or not the app serves the health service.

use std::convert::Infallible;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Frame;
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::appchannel::Registry;
use crate::error::error_body;

/// The error code of an HTTP request the bridge could not carry.
pub const ERR_APP_CHANNEL: &str = "ERR_APP_CHANNEL";

/// The bridge's service: one per bridge port, cheap to clone.
#[derive(Clone, Debug)]
pub struct Bridge {
    registry: Arc<Registry>,
    wait: Duration,
}

impl Bridge {
    /// Carries requests to the app channel in `registry`, waiting up to
    /// `wait` for one while none is up.
    pub fn new(registry: Arc<Registry>, wait: Duration) -> Bridge {
        Bridge { registry, wait }
    }
}

impl tower::Service<Request<Incoming>> for Bridge {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (registry, wait) = (self.registry.clone(), self.wait);
        Box::pin(async move { Ok(forward(&registry, wait, req).await) })
    }
}

/// daprd's gRPC health probe of its app.
pub const HEALTH_CHECK_PATH: &str = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck";

/// Carries one request over the app channel and its answer back.
async fn forward(registry: &Registry, wait: Duration, req: Request<Incoming>) -> Response<Body> {
    let grpc = is_grpc(req.headers());
    if grpc && req.uri().path() == HEALTH_CHECK_PATH {
        return if registry.is_taken() { healthy() } else { unavailable(true, "the app is not connected") };
    }
    let Some(live) = registry.wait(wait).await else {
        return unavailable(grpc, &format!("the app is not connected (waited {wait:?} for its callback channel)"));
    };
    let guard = live.begin_call();
    let (mut parts, body) = req.into_parts();
    crate::api::headers::strip_hop(&mut parts.headers);
    parts.version = Version::HTTP_2;
    let req = Request::from_parts(parts, tonic::body::Body::new(body));
    match live.client.clone().oneshot(req).await {
        // Counted as a call in flight on its channel until the answer is
        // done, so a retiring channel drains it.
        Ok(resp) => resp.map(|body| Body::new(crate::guarded::Guarded::new(body, guard))),
        Err(e) => unavailable(grpc, &format!("the app channel failed during the call: {e}")),
    }
}

/// A gRPC answer of one empty message (`HealthCheckResponse`) and status OK.
fn healthy() -> Response<Body> {
    let frames = [
        Ok::<_, Infallible>(Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(HeaderMap::from_iter([(
            http::HeaderName::from_static("grpc-status"),
            http::HeaderValue::from_static("0"),
        )]))),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut resp = Response::new(Body::new(body));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    resp
}

/// Whether a request is gRPC (its failures are then gRPC statuses).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// What an unreachable app looks like to daprd: gRPC `UNAVAILABLE`, or a 503.
fn unavailable(grpc: bool, message: &str) -> Response<Body> {
    if grpc {
        tonic::Status::unavailable(message).into_http()
    } else {
        error_body(StatusCode::SERVICE_UNAVAILABLE, ERR_APP_CHANNEL, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_app_fails_as_daprd_expects() {
        let r = unavailable(true, "down");
        assert_eq!(r.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"14"[..]));
        let r = unavailable(false, "down");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc+proto"));
        assert!(is_grpc(&h));
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
