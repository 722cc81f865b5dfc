//! Where the app's own calls to the sidecar's API go: as HTTP/3 on the
//! channel's QUIC connection while it carries them (one UDP flow, and the
//! calls migrate with the channel), else over TCP to the API endpoint of
//! their kind: gRPC calls to the gRPC port, HTTP API requests to the HTTP
//! port.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dialback_channel::Connection;
use dialback_channel::http3::ApiClient;
use tonic::body::Body;

/// The error an [`ApiChannel`] call fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set in a response's extensions when it came over HTTP/3 on the
/// channel (tonic: `response.extensions().get::<ViaChannel>()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViaChannel;

/// The channel's HTTP/3 client while it has one; shared by every clone of
/// a [`crate::SidecarClient`] and the runner that sets it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiRoute(Arc<Mutex<Option<ApiClient>>>);

impl ApiRoute {
    /// Starts HTTP/3 on a new channel's connection and routes calls to it.
    pub(crate) async fn start(self, conn: Connection) {
        if let Some(client) = ApiClient::start(&conn).await
            && let Ok(mut slot) = self.0.lock()
        {
            tracing::debug!("the app's API calls go over HTTP/3 on the channel");
            *slot = Some(client);
        }
    }

    /// The client to use now: `None` once its channel is gone.
    fn current(&self) -> Option<ApiClient> {
        self.0.lock().ok().and_then(|c| c.clone()).filter(|c| !c.is_closed())
    }
}

/// A tower service for tonic's generated clients (`DaprClient::new`) and
/// for HTTP API requests that sends each call over the channel when it can
/// and to the API endpoint of its kind otherwise (gRPC or HTTP, told apart
/// by the content type). Get one from [`crate::SidecarClient::api`].
#[derive(Clone, Debug)]
pub struct ApiChannel {
    grpc: tonic::transport::Channel,
    http: tonic::transport::Channel,
    route: ApiRoute,
    timeout: Duration,
}

impl ApiChannel {
    pub(crate) fn new(
        grpc: tonic::transport::Channel,
        http: tonic::transport::Channel,
        route: ApiRoute,
        timeout: Duration,
    ) -> ApiChannel {
        ApiChannel { grpc, http, route, timeout }
    }

    /// Whether a call made now would go over HTTP/3 on the channel.
    pub fn over_channel(&self) -> bool {
        self.route.current().is_some()
    }
}

impl tower::Service<http::Request<Body>> for ApiChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call readies the path it takes.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use tower::ServiceExt;
        match self.route.current() {
            Some(h3) => {
                let limit = self.timeout;
                Box::pin(async move {
                    let mut resp = tokio::time::timeout(limit, h3.oneshot(req)).await.map_err(|_| {
                        format!("the sidecar did not answer within {limit:?} (HTTP/3 on the channel)")
                    })??;
                    resp.extensions_mut().insert(ViaChannel);
                    Ok(resp)
                })
            }
            None => {
                let tcp =
                    if dialback_channel::h2::is_grpc(req.headers()) { self.grpc.clone() } else { self.http.clone() };
                Box::pin(async move { Ok(tcp.oneshot(req).await?.map(Body::new)) })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tower::ServiceExt;

    /// A listener that reports the first bytes of the first connection.
    async fn first_bytes() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let got = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 24];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        (url, got)
    }

    #[tokio::test]
    async fn without_the_channel_each_request_goes_to_the_endpoint_of_its_kind() {
        let (grpc_url, grpc_got) = first_bytes().await;
        let (http_url, http_got) = first_bytes().await;
        let lazy = |u: String| tonic::transport::Endpoint::from_shared(u).unwrap().connect_lazy();
        let api = ApiChannel::new(lazy(grpc_url), lazy(http_url), ApiRoute::default(), Duration::from_secs(1));
        assert!(!api.over_channel());

        let http_req = http::Request::get("/v1.0/metadata").body(Body::empty()).unwrap();
        let http_call = tokio::spawn(api.clone().oneshot(http_req));
        let grpc_req = http::Request::post("/dapr.proto.runtime.v1.Dapr/GetMetadata")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap();
        let grpc_call = tokio::spawn(api.oneshot(grpc_req));

        // Each endpoint sees an HTTP/2 connection open: the request of its kind.
        let limit = Duration::from_secs(30);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let http_seen = tokio::time::timeout(limit, http_got).await.expect("the HTTP endpoint was not dialed");
        assert_eq!(http_seen.unwrap(), preface);
        let grpc_seen = tokio::time::timeout(limit, grpc_got).await.expect("the gRPC endpoint was not dialed");
        assert_eq!(grpc_seen.unwrap(), preface);
        http_call.abort();
        grpc_call.abort();
    }
}
