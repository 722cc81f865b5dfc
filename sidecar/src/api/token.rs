//! The API token check: one tower layer in front of everything an API
//! serves, HTTP and gRPC alike. Only daprd's health routes are exempt, and
//! only exactly (`GET`/`HEAD` `/v1.0/healthz` and `/v1.0/healthz/outbound`):
//! a prefix match let `POST /v1.0/healthzX` with `dapr-app-id` reach the app.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::error::error_body;

/// The header (HTTP) and metadata key (gRPC) that carries the API token.
pub const API_TOKEN_HEADER: &str = "dapr-api-token";

/// Which API a layer guards: it decides the exemptions and the refusal's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The HTTP API: 401 with Dapr's JSON error body; health checks exempt.
    Http,
    /// The gRPC API: `UNAUTHENTICATED`; nothing exempt.
    Grpc,
}

/// Adds the API token check in front of a service.
#[derive(Clone, Debug)]
pub struct ApiTokenLayer {
    sha: Option<[u8; 32]>,
    api: Api,
}

impl ApiTokenLayer {
    /// Checks against the token whose SHA-256 is `sha` (`None`: no token, every call passes).
    pub fn new(sha: Option<[u8; 32]>, api: Api) -> ApiTokenLayer {
        ApiTokenLayer { sha, api }
    }
}

impl<S> tower::Layer<S> for ApiTokenLayer {
    type Service = ApiToken<S>;

    fn layer(&self, inner: S) -> ApiToken<S> {
        ApiToken { inner, sha: self.sha, api: self.api }
    }
}

/// The service [`ApiTokenLayer`] makes.
#[derive(Clone, Debug)]
pub struct ApiToken<S> {
    inner: S,
    sha: Option<[u8; 32]>,
    api: Api,
}

/// Whether `method path` is one of the routes daprd serves without the token.
pub fn exempt(api: Api, method: &Method, path: &str) -> bool {
    api == Api::Http
        && (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/v1.0/healthz" | "/v1.0/healthz/outbound")
}

/// Whether `value` is the token whose SHA-256 is `want` (compared by digest,
/// so the time taken does not depend on where they differ).
pub(crate) fn matches(value: Option<&HeaderValue>, want: &[u8; 32]) -> bool {
    value.map(|v| crate::auth::sha256_bytes(v.as_bytes()) == *want).unwrap_or(false)
}

fn refusal(api: Api) -> Response<Body> {
    match api {
        Api::Http => error_body(StatusCode::UNAUTHORIZED, "ERR_UNAUTHORIZED", "missing or invalid dapr-api-token"),
        Api::Grpc => tonic::Status::unauthenticated("missing or invalid dapr-api-token metadata")
            .into_http::<tonic::body::Body>()
            .map(Body::new),
    }
}

impl<S, B> tower::Service<Request<B>> for ApiToken<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(want) = &self.sha {
            let ok =
                matches(req.headers().get(API_TOKEN_HEADER), want) || exempt(self.api, req.method(), req.uri().path());
            if !ok {
                let resp = refusal(self.api);
                return Box::pin(async move { Ok(resp) });
            }
        }
        // The token is this hop's business; it never travels further.
        req.headers_mut().remove(API_TOKEN_HEADER);
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};

    fn guarded(api: Api) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> {
        let inner = tower::service_fn(|req: Request<Body>| async move {
            let saw = req.headers().contains_key(API_TOKEN_HEADER);
            Ok::<_, Infallible>(Response::new(Body::from(if saw { "token leaked" } else { "reached" })))
        });
        ApiTokenLayer::new(Some(crate::auth::sha256("secret")), api).layer(inner)
    }

    async fn status(api: Api, method: &str, path: &str, token: Option<&str>) -> (u16, Option<String>) {
        let mut req = Request::builder().method(method).uri(path).header("dapr-app-id", "echo");
        if let Some(t) = token {
            req = req.header(API_TOKEN_HEADER, t);
        }
        let resp = guarded(api).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let grpc = resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), grpc)
    }

    #[tokio::test]
    async fn only_the_exact_health_routes_are_exempt() {
        assert_eq!(status(Api::Http, "GET", "/v1.0/healthz", None).await.0, 200);
        assert_eq!(status(Api::Http, "HEAD", "/v1.0/healthz/outbound", None).await.0, 200);
        for (method, path) in [
            ("POST", "/v1.0/healthzX"),
            ("PUT", "/v1.0/healthz/../../admin"),
            ("POST", "/v1.0/healthz"),
            ("GET", "/v1.0/healthz/"),
            ("GET", "/v1.0/healthz/x"),
            ("GET", "/v1.0/%68ealthz"),
            ("GET", "/v1.0/invoke/echo/method/m"),
        ] {
            assert_eq!(status(Api::Http, method, path, None).await.0, 401, "{method} {path}");
            assert_eq!(status(Api::Http, method, path, Some("wrong")).await.0, 401, "{method} {path}");
        }
        assert_eq!(status(Api::Http, "POST", "/anything", Some("secret")).await.0, 200);
    }

    #[tokio::test]
    async fn grpc_refuses_with_unauthenticated_and_exempts_nothing() {
        let (code, grpc) = status(Api::Grpc, "POST", "/v1.0/healthz", None).await;
        assert_eq!((code, grpc.as_deref()), (200, Some("16")));
        let (_, grpc) = status(Api::Grpc, "POST", "/dapr.proto.runtime.v1.Dapr/InvokeService", Some("secret")).await;
        assert_eq!(grpc, None, "a good token passes");
    }

    #[tokio::test]
    async fn the_token_is_not_passed_on() {
        let resp = guarded(Api::Http)
            .oneshot(Request::builder().uri("/x").header(API_TOKEN_HEADER, "secret").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
        assert_eq!(&body[..], b"reached");
    }
}
