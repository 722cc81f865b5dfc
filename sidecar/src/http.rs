//! The Dapr-style HTTP API: invoke, healthz, metadata.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use dialback_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::error::{ERR_DIRECT_INVOKE, error_body};
use crate::invoke::{MAX_MESSAGE, invoke};
use crate::state::Sidecar;

/// The HTTP API's router.
pub fn router(state: Arc<Sidecar>) -> Router {
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/invoke/{app_id}/method/{*method}", any(invoke_path))
        .fallback(invoke_header)
        .layer(axum::middleware::from_fn_with_state(state.clone(), api_token))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE))
        .with_state(state)
}

/// Rejects calls without the API token, except the health checks (as daprd does).
async fn api_token(State(s): State<Arc<Sidecar>>, req: Request, next: Next) -> Response {
    if let Some(want) = &s.api_token_sha
        && !req.uri().path().starts_with("/v1.0/healthz")
    {
        let ok = req
            .headers()
            .get("dapr-api-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| crate::auth::sha256(t) == *want);
        if !ok {
            return error_body(StatusCode::UNAUTHORIZED, "ERR_UNAUTHORIZED", "missing or invalid dapr-api-token");
        }
    }
    next.run(req).await
}

async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn metadata(State(s): State<Arc<Sidecar>>) -> Response {
    axum::Json(s.metadata()).into_response()
}

async fn invoke_path(
    State(s): State<Arc<Sidecar>>,
    Path((app_id, method)): Path<(String, String)>,
    verb: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    call(&s, &app_id, &method, &verb, &uri, &headers, body).await
}

/// The `dapr-app-id` header form: any path, the target in a header.
async fn invoke_header(
    State(s): State<Arc<Sidecar>>,
    verb: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(app_id) = headers.get("dapr-app-id").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return error_body(StatusCode::NOT_FOUND, "ERR_NOT_FOUND", &format!("no route for {}", uri.path()));
    };
    let method = uri.path().trim_start_matches('/').to_string();
    call(&s, &app_id, &method, &verb, &uri, &headers, body).await
}

async fn call(
    s: &Sidecar,
    app_id: &str,
    method: &str,
    verb: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if method.is_empty() {
        return error_body(StatusCode::BAD_REQUEST, ERR_DIRECT_INVOKE, "no method name");
    }
    let (req, md) = to_invoke_request(verb, method, uri.query(), headers, body);
    match invoke(&s.app, &s.app_id, app_id, req, md, s.wait_timeout).await {
        Ok(resp) => {
            let data = resp.data.map(|a| a.value).unwrap_or_default();
            let mut out = (StatusCode::OK, data).into_response();
            if !resp.content_type.is_empty()
                && let Ok(v) = resp.content_type.parse()
            {
                out.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            out
        }
        Err(e) => e.into_response(),
    }
}

/// Headers that describe the HTTP hop, not the call; never forwarded.
const HOP_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "content-type",
    "dapr-api-token",
    "dapr-app-id",
    "expect",
];

/// Maps an HTTP call to Dapr's InvokeRequest as daprd does: the verb and
/// query string in HTTPExtension, the body as `data.value`, the content
/// type in its field, and the other headers as gRPC metadata.
pub fn to_invoke_request(
    verb: &Method,
    method: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> (InvokeRequest, MetadataMap) {
    let content_type =
        headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let req = InvokeRequest {
        method: method.to_string(),
        data: Some(prost_types::Any { type_url: String::new(), value: body.to_vec() }),
        content_type,
        http_extension: Some(HttpExtension {
            verb: verb_of(verb) as i32,
            querystring: query.unwrap_or_default().to_string(),
        }),
    };
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if HOP_HEADERS.contains(&name) || name.starts_with("grpc-") || name.starts_with(':') {
            continue;
        }
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(name.as_bytes()), MetadataValue::try_from(value.as_bytes())) {
            md.append(k, v);
        }
    }
    (req, md)
}

fn verb_of(m: &Method) -> Verb {
    match *m {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::POST => Verb::Post,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        Method::CONNECT => Verb::Connect,
        Method::OPTIONS => Verb::Options,
        Method::TRACE => Verb::Trace,
        Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn maps_like_daprd() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-custom", "yes".parse().unwrap());
        h.insert("dapr-api-token", "secret".parse().unwrap());
        h.insert("host", "localhost".parse().unwrap());
        let (req, md) =
            to_invoke_request(&Method::PATCH, "orders/42/items", Some("a=1&b=2"), &h, Bytes::from_static(b"{}"));
        assert_eq!(req.method, "orders/42/items");
        assert_eq!(req.content_type, "application/json");
        assert_eq!(req.data.unwrap().value, b"{}");
        let ext = req.http_extension.unwrap();
        assert_eq!(ext.verb(), Verb::Patch);
        assert_eq!(ext.querystring, "a=1&b=2");
        assert_eq!(md.get("x-custom").unwrap(), "yes");
        assert!(md.get("dapr-api-token").is_none(), "the token must not reach the app");
        assert!(md.get("host").is_none());
    }

    #[test]
    fn every_verb_maps() {
        for (m, v) in [
            (Method::GET, Verb::Get),
            (Method::DELETE, Verb::Delete),
            (Method::PUT, Verb::Put),
            (Method::HEAD, Verb::Head),
        ] {
            assert_eq!(verb_of(&m), v);
        }
        assert_eq!(verb_of(&Method::from_bytes(b"PURGE").unwrap()), Verb::None);
    }
}
