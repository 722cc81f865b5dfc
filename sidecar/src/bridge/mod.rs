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
//! What the bridge answers itself:
//! - daprd's app health probe (gRPC `AppCallbackHealthCheck/HealthCheck`,
//!   HTTP `GET --bridge-app-health-path`): healthy exactly while the app's
//!   channel is up, so with `--enable-app-health-check` daprd pauses
//!   deliveries while the app is away and resumes them when it is back.
//! - With a daprd API behind it (`--dapr-upstream-grpc`), daprd's question
//!   for the app's subscriptions (`ListTopicSubscriptions`,
//!   `GET /dapr/subscribe`): none. daprd asks it once per runtime, so the
//!   answer could not follow an app that comes back with other
//!   subscriptions; [`relay`] holds them for the app instead, as streaming
//!   subscriptions that live exactly as long as its channel.
//! - With `APP_API_TOKEN` set: calls without it are refused here and never
//!   reach the app.
//! - dialbackd's own control stream with the app (`DaprAppChannelCallback`,
//!   the Ping and close notices) is never carried: PERMISSION_DENIED.
//!
//! Two answers are read on their way back, unchanged: a gRPC app's answer
//! to daprd's `ListInputBindings` and an HTTP app's to `GET /dapr/config`
//! (its actor types), which daprd keeps for its whole run, so that a later
//! channel whose app declares others is warned about, or daprd reloaded
//! ([`bindings`]).

use std::convert::Infallible;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use dialback_channel::h2::is_grpc;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::api::token::API_TOKEN_HEADER;
use crate::appchannel::Registry;
use crate::config::{BridgeProtocol, BridgeSettings};
use crate::error::error_body;

pub mod bindings;
pub mod cloudevent;
pub mod relay;

/// The error code of an HTTP request the bridge could not carry.
pub const ERR_APP_CHANNEL: &str = "ERR_APP_CHANNEL";

/// daprd's gRPC health probe of its app.
pub const HEALTH_CHECK_PATH: &str = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck";

/// daprd's gRPC question for the app's subscriptions.
pub const LIST_SUBSCRIPTIONS_PATH: &str = "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions";

/// daprd's gRPC question for the app's input bindings.
pub const LIST_BINDINGS_PATH: &str = "/dapr.proto.runtime.v1.AppCallback/ListInputBindings";

/// Where daprd reads an HTTP app's configuration (its actor types).
pub const APP_CONFIG_PATH: &str = "/dapr/config";

/// dialbackd's own control service on the channel (Ping, close notices):
/// between dialbackd and the app only, never carried for anyone else.
pub const CONTROL_SERVICE_PREFIX: &str = "/dapr.proto.runtime.v1.DaprAppChannelCallback/";

/// daprd's HTTP question for the app's subscriptions.
pub const HTTP_SUBSCRIBE_PATH: &str = "/dapr/subscribe";

/// The bridge's service: one per bridge port, cheap to clone.
#[derive(Clone, Debug)]
pub struct Bridge {
    registry: Arc<Registry>,
    wait: Duration,
    protocol: BridgeProtocol,
    health_path: Arc<str>,
    /// SHA-256 of `APP_API_TOKEN`, when set.
    token_sha: Option<[u8; 32]>,
    /// Whether [`relay`] holds the app's subscriptions (daprd is told none).
    relaying: bool,
    /// What daprd was told of the app's input bindings or actor types (see [`bindings`]).
    told: Arc<bindings::Told>,
    /// Where calls waiting for the channel are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Bridge {
    /// Carries requests to the app channel in `registry`, waiting up to
    /// `wait` for one while none is up; `relaying` when [`relay`] holds the
    /// app's subscriptions; the app's answers to daprd's once-a-run
    /// questions are noted in `told`; waits are counted in `metrics`.
    pub fn new(
        registry: Arc<Registry>,
        wait: Duration,
        settings: &BridgeSettings,
        relaying: bool,
        told: Arc<bindings::Told>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Bridge {
        Bridge {
            registry,
            wait,
            protocol: settings.protocol,
            health_path: settings.health_path.as_str().into(),
            token_sha: settings.app_token.as_deref().map(|t| crate::auth::sha256_bytes(t.as_bytes())),
            relaying,
            told,
            metrics,
        }
    }

    /// What the bridge answers itself, if anything, before the token check.
    fn own_answer(&self, grpc: bool, method: &Method, path: &str) -> Option<Response<Body>> {
        let up = self.registry.is_taken();
        if grpc && path == HEALTH_CHECK_PATH {
            return Some(if up { grpc_empty_ok() } else { unavailable(true, "the app is not connected") });
        }
        if !grpc && self.protocol == BridgeProtocol::Http && method == Method::GET && path == &*self.health_path {
            return Some(if up {
                Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).unwrap_or_default()
            } else {
                unavailable(false, "the app is not connected")
            });
        }
        if self.relaying && grpc && path == LIST_SUBSCRIPTIONS_PATH {
            return Some(grpc_empty_ok());
        }
        if self.relaying && !grpc && method == Method::GET && path == HTTP_SUBSCRIBE_PATH {
            let mut r = Response::new(Body::from("[]"));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            return Some(r);
        }
        None
    }

    /// Whether a call may go on without `APP_API_TOKEN`: the ones daprd
    /// sends without it (listing the app's subscriptions and bindings).
    fn token_exempt(&self, grpc: bool, method: &Method, path: &str) -> bool {
        if grpc {
            return path == LIST_SUBSCRIPTIONS_PATH || path == LIST_BINDINGS_PATH;
        }
        // HTTP: daprd lists subscriptions, reads the app's config and asks
        // whether a binding route exists without the token.
        (method == Method::GET && (path == HTTP_SUBSCRIBE_PATH || path == APP_CONFIG_PATH)) || method == Method::OPTIONS
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
        // A gRPC request's failures are gRPC statuses.
        let grpc = is_grpc(req.headers());
        // The channel's own liveness and close-notice stream is dialbackd's:
        // a process on the bridge port must not ping the app or tell it the
        // sidecar is going away.
        if req.uri().path().starts_with(CONTROL_SERVICE_PREFIX) {
            let resp =
                tonic::Status::permission_denied("the app channel's control stream is dialbackd's own").into_http();
            return Box::pin(async move { Ok(resp) });
        }
        if let Some(resp) = self.own_answer(grpc, req.method(), req.uri().path()) {
            return Box::pin(async move { Ok(resp) });
        }
        if let Some(want) = &self.token_sha
            && !self.token_exempt(grpc, req.method(), req.uri().path())
            && !crate::api::token::matches(req.headers().get(API_TOKEN_HEADER), want)
        {
            let resp = refusal(grpc);
            return Box::pin(async move { Ok(resp) });
        }
        // daprd speaking the other protocol than the bridge expects: say so
        // plainly (daprd then sees an unhealthy app, and logs why).
        if grpc != (self.protocol == BridgeProtocol::Grpc) {
            let resp = protocol_mismatch(grpc);
            return Box::pin(async move { Ok(resp) });
        }
        let (registry, wait, metrics) = (self.registry.clone(), self.wait, self.metrics.clone());
        let watch = match (grpc, req.uri().path()) {
            (true, LIST_BINDINGS_PATH) => Some((self.told.clone(), bindings::Asked::Bindings)),
            (false, APP_CONFIG_PATH) if req.method() == Method::GET => {
                Some((self.told.clone(), bindings::Asked::ActorTypes))
            }
            _ => None,
        };
        Box::pin(async move { Ok(forward(&registry, wait, grpc, req, watch, &metrics).await) })
    }
}

/// Carries one request over the app channel and its answer back; with
/// `watch`, a successful answer to that question (`ListInputBindings`,
/// `GET /dapr/config`) is noted there on the way.
async fn forward(
    registry: &Registry,
    wait: Duration,
    grpc: bool,
    req: Request<Incoming>,
    watch: Option<(Arc<bindings::Told>, bindings::Asked)>,
    metrics: &crate::metrics::Metrics,
) -> Response<Body> {
    let Some(live) = metrics.waiting_for_channel(registry.wait(wait)).await else {
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
        Ok(resp) => {
            let watch = watch.filter(|_| resp.status() == StatusCode::OK);
            resp.map(|body| match watch {
                Some((told, asked)) => {
                    Body::new(crate::guarded::Guarded::new(bindings::Watched::new(body, told, asked), guard))
                }
                None => Body::new(crate::guarded::Guarded::new(body, guard)),
            })
        }
        Err(e) => unavailable(grpc, &format!("the app channel failed during the call: {e}")),
    }
}

/// A request in the other app protocol than `--bridge-app-protocol`.
fn protocol_mismatch(grpc: bool) -> Response<Body> {
    if grpc {
        tonic::Status::failed_precondition(
            "daprd sends gRPC but dialbackd's --bridge-app-protocol is http: start daprd with --app-protocol http \
             or dialbackd with --bridge-app-protocol grpc",
        )
        .into_http()
    } else {
        error_body(
            StatusCode::BAD_GATEWAY,
            "ERR_APP_PROTOCOL",
            "daprd sends HTTP but dialbackd's --bridge-app-protocol is grpc: start daprd with --app-protocol grpc \
             or dialbackd with --bridge-app-protocol http",
        )
    }
}

/// A call on the bridge port without daprd's `APP_API_TOKEN`.
fn refusal(grpc: bool) -> Response<Body> {
    if grpc {
        tonic::Status::unauthenticated("missing or invalid dapr-api-token (APP_API_TOKEN) on the bridge port")
            .into_http()
    } else {
        error_body(
            StatusCode::UNAUTHORIZED,
            "ERR_UNAUTHORIZED",
            "missing or invalid dapr-api-token (APP_API_TOKEN) on the bridge port",
        )
    }
}

/// A gRPC answer of one empty message (`HealthCheckResponse`, an empty
/// `ListTopicSubscriptionsResponse`) and status OK.
fn grpc_empty_ok() -> Response<Body> {
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
