//! Where the app's own calls to the sidecar's API go: as HTTP/3 on the
//! channel's QUIC connection while it carries them (one UDP flow, and the
//! calls migrate with the channel), else to the API endpoint over TCP.

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

/// A tower service for tonic's generated clients (`DaprClient::new`) that
/// sends each call over the channel when it can and to the API endpoint
/// otherwise. Get one from [`crate::SidecarClient::api`].
#[derive(Clone, Debug)]
pub struct ApiChannel {
    tcp: tonic::transport::Channel,
    route: ApiRoute,
    timeout: Duration,
}

impl ApiChannel {
    pub(crate) fn new(tcp: tonic::transport::Channel, route: ApiRoute, timeout: Duration) -> ApiChannel {
        ApiChannel { tcp, route, timeout }
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
            // The endpoint is the gRPC API's: an HTTP API request sent
            // there would get a confusing answer, so it fails here, clearly.
            None if !dialback_channel::h2::is_grpc(req.headers()) => {
                let path = req.uri().path().to_string();
                Box::pin(async move {
                    Err(format!(
                        "{path}: an HTTP API request goes only over the channel (HTTP/3), which is not up; \
                         this client's other way is the gRPC API endpoint"
                    )
                    .into())
                })
            }
            None => {
                let tcp = self.tcp.clone();
                Box::pin(async move { Ok(tcp.oneshot(req).await?.map(Body::new)) })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn without_the_channel_an_http_request_fails_clearly() {
        // Nothing listens there, and nothing is dialed: the request is refused first.
        let tcp = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let api = ApiChannel::new(tcp, ApiRoute::default(), Duration::from_secs(1));
        assert!(!api.over_channel());
        let req = http::Request::get("/v1.0/metadata").body(Body::empty()).unwrap();
        let err = api.oneshot(req).await.unwrap_err().to_string();
        assert!(err.contains("/v1.0/metadata") && err.contains("only over the channel"), "{err}");
    }
}
