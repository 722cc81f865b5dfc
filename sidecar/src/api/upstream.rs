//! The app's own Dapr API calls that dialbackd does not serve itself
//! (state, publish, secrets, configuration, actors, workflows, streaming
//! subscriptions, invoking other apps, ...) go on to the daprd behind it:
//! `--dapr-upstream-grpc` and `--dapr-upstream-http`. Nothing is parsed:
//! any method, unary or streaming, any path. The caller's API token was
//! checked (and taken off) by the token layer; daprd gets the sidecar's
//! own token, as daprd's `--dapr-api-token` expects.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use tower::ServiceExt;

use super::token::API_TOKEN_HEADER;
use crate::error::error_body;

/// The error code of an API call the upstream daprd could not take.
pub const ERR_UPSTREAM: &str = "ERR_DAPR_UPSTREAM";

/// Forwards gRPC calls to the upstream daprd.
#[derive(Clone, Debug)]
pub struct GrpcUpstream {
    channel: tonic::transport::Channel,
    token: Option<HeaderValue>,
}

impl GrpcUpstream {
    /// A lazily connected HTTP/2 channel to `addr` (HOST:PORT). Fails when
    /// it does not make a valid URI.
    pub fn new(addr: &str, token: Option<&str>) -> Result<GrpcUpstream, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("--dapr-upstream-grpc {addr:?}: {e}"))?
            .tcp_nodelay(true);
        Ok(GrpcUpstream { channel: endpoint.connect_lazy(), token: token.and_then(|t| HeaderValue::from_str(t).ok()) })
    }

    /// Sends a decoded call on to daprd with `DaprClient` (for the calls
    /// dialbackd serves itself but passes on in part, such as invoking
    /// another app), with the sidecar's token.
    pub fn client<T>(
        &self,
        mut req: tonic::Request<T>,
    ) -> (dialback_proto::runtime::dapr_client::DaprClient<tonic::transport::Channel>, tonic::Request<T>) {
        if let Some(t) = self.token.clone().and_then(|t| tonic::metadata::MetadataValue::try_from(t.as_bytes()).ok()) {
            req.metadata_mut().insert(API_TOKEN_HEADER, t);
        }
        (dialback_proto::runtime::dapr_client::DaprClient::new(self.channel.clone()), req)
    }
}

impl tower::Service<Request<Body>> for GrpcUpstream {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (channel, token) = (self.channel.clone(), self.token.clone());
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            if let Some(t) = token {
                parts.headers.insert(API_TOKEN_HEADER, t);
            }
            // The channel adds its own origin; keep only the path.
            if let Some(pq) = parts.uri.path_and_query().cloned() {
                parts.uri = Uri::from(pq);
            }
            let req = Request::from_parts(parts, tonic::body::Body::new(body));
            Ok(match channel.oneshot(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => tonic::Status::unavailable(format!("the Dapr sidecar behind dialbackd is unreachable: {e}"))
                    .into_http(),
            })
        })
    }
}

/// Forwards HTTP calls to the upstream daprd.
#[derive(Clone, Debug)]
pub struct HttpUpstream {
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    authority: http::uri::Authority,
    token: Option<HeaderValue>,
}

impl HttpUpstream {
    /// A client for `addr` (HOST:PORT). Fails when it is not a valid authority.
    pub fn new(addr: &str, token: Option<&str>) -> Result<HttpUpstream, String> {
        let authority = addr.parse().map_err(|e| format!("--dapr-upstream-http {addr:?}: {e}"))?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Body>();
        Ok(HttpUpstream { client, authority, token: token.and_then(|t| HeaderValue::from_str(t).ok()) })
    }

    /// Sends `req` on to daprd and its answer back (502 when daprd cannot be reached).
    pub async fn forward(&self, req: Request<Body>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::builder().scheme("http").authority(self.authority.clone()).path_and_query(pq).build();
        let Ok(uri) = uri else {
            return error_body(StatusCode::BAD_REQUEST, ERR_UPSTREAM, "the request's path cannot be forwarded");
        };
        parts.uri = uri;
        super::headers::strip_hop(&mut parts.headers);
        if let Some(t) = &self.token {
            parts.headers.insert(API_TOKEN_HEADER, t.clone());
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp.map(Body::new),
            Err(e) => error_body(
                StatusCode::BAD_GATEWAY,
                ERR_UPSTREAM,
                &format!("the Dapr sidecar behind dialbackd is unreachable: {e}"),
            ),
        }
    }
}
