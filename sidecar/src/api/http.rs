//! The Dapr-style HTTP API: invoke, healthz, metadata.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use dialback_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
use tonic::metadata::MetadataMap;

use crate::error::{ERR_DIRECT_INVOKE, InvokeError, error_body};
use crate::invoke::{Invoked, invoke};
use crate::state::Sidecar;
use crate::trace::TRACEPARENT;

/// The HTTP API's router. The API token is checked in front of it (see
/// `api_token`), so every route here, the `dapr-app-id` fallback included,
/// sits behind the token.
pub fn router(state: Arc<Sidecar>) -> Router {
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/invoke/{app_id}/method/{*method}", any(invoke_path))
        .fallback(invoke_header)
        .with_state(state)
}

async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn metadata(State(s): State<Arc<Sidecar>>, req: Request) -> Response {
    // Bridge mode: daprd's metadata, with the channel's state added.
    if s.upstream_http.is_some() {
        return super::merged::http_metadata(&s, req).await;
    }
    axum::Json(s.metadata()).into_response()
}

async fn invoke_path(
    State(s): State<Arc<Sidecar>>,
    Path((app_id, method)): Path<(String, String)>,
    req: Request,
) -> Response {
    // Bridge mode: another app is daprd's to reach (and this one too when
    // it speaks HTTP to daprd).
    if (app_id != s.app_id || s.own_calls_via_daprd)
        && let Some(up) = &s.upstream_http
    {
        return up.forward(req).await;
    }
    // As daprd: the method is the decoded path after `/method/`, cleaned.
    let method = clean_path(&method);
    let method = if method == "." { String::new() } else { method };
    call(&s, &app_id, &method, req).await
}

/// The `dapr-app-id` header form: any path, the target in a header.
async fn invoke_header(State(s): State<Arc<Sidecar>>, req: Request) -> Response {
    let Some(app_id) = req.headers().get("dapr-app-id").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        // Bridge mode: what is not served here goes on to daprd.
        if let Some(up) = &s.upstream_http {
            return up.forward(req).await;
        }
        return error_body(StatusCode::NOT_FOUND, "ERR_NOT_FOUND", &format!("no route for {}", req.uri().path()));
    };
    if app_id == s.app_id
        && s.own_calls_via_daprd
        && let Some(up) = &s.upstream_http
    {
        return up.forward(req).await;
    }
    let Ok(path) = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8() else {
        return error_body(StatusCode::BAD_REQUEST, ERR_DIRECT_INVOKE, "the path is not valid UTF-8 once decoded");
    };
    // As daprd: the whole decoded path, cleaned, without its leading slash.
    let method = clean_path(&path).trim_start_matches('/').to_string();
    call(&s, &app_id, &method, req).await
}

/// Go's `path.Clean`, which daprd applies to the method name: repeated
/// slashes fold, `.` segments go, `..` removes the segment before it (and
/// stays at the front of a relative path); an empty result is `.`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    match (rooted, out.is_empty()) {
        (true, _) => format!("/{}", out.join("/")),
        (false, true) => ".".to_string(),
        (false, false) => out.join("/"),
    }
}

/// Dapr's error code for a body over `--max-body-size`.
const ERR_BODY_TOO_LARGE: &str = "ERR_BODY_TOO_LARGE";

async fn call(s: &Sidecar, app_id: &str, method: &str, req: Request) -> Response {
    if req.method() == Method::CONNECT {
        // CONNECT asks for a tunnel; answering it 200 would tell a client
        // the connection is now one. It is no invocation verb here.
        return error_body(StatusCode::METHOD_NOT_ALLOWED, ERR_DIRECT_INVOKE, "CONNECT cannot invoke a method");
    }
    if method.is_empty() {
        return error_body(StatusCode::BAD_REQUEST, ERR_DIRECT_INVOKE, "no method name");
    }
    let timeout = s.limits.app_call_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let max = s.limits.max_body_size;
    let (parts, body) = req.into_parts();
    // The body's length as the request framing says (Content-Length, or
    // known empty); unknown for a chunked or streamed body.
    let hint = http_body::Body::size_hint(&body);
    if hint.lower() > max as u64 {
        return too_large(hint.lower(), max);
    }
    // Bodies held at once are bounded, all calls together: reserve this
    // one's room (its known length, else the most it may be) first.
    let known = hint.exact().map(|n| usize::try_from(n).unwrap_or(max));
    let reserve = known.unwrap_or(max).div_ceil(1024).max(1);
    let reserve = u32::try_from(reserve).unwrap_or(u32::MAX);
    let budget = s.body_budget.clone();
    let _room = match tokio::time::timeout_at(deadline, budget.acquire_many_owned(reserve)).await {
        Ok(Ok(room)) => room,
        Ok(Err(_)) => return InvokeError::NoApp.into_response(),
        Err(_) => return InvokeError::Timeout(timeout).into_response(),
    };
    let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max)).await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return too_large(max as u64 + 1, max);
        }
        Err(e) => {
            return error_body(StatusCode::BAD_REQUEST, ERR_DIRECT_INVOKE, &format!("reading the body failed: {e}"));
        }
    };
    let (req, md) = to_invoke_request(&parts.method, method, parts.uri.query(), &parts.headers, body);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match invoke(s, app_id, req, md, left).await {
        Ok(Invoked { response: resp, traceparent }) => {
            let data = resp.data.map(|a| a.value).unwrap_or_default();
            let mut out = (StatusCode::OK, data).into_response();
            if let Some(v) = traceparent.and_then(|t| http::HeaderValue::try_from(t).ok()) {
                out.headers_mut().insert(TRACEPARENT, v);
            }
            if !resp.content_type.is_empty()
                && let Ok(v) = resp.content_type.parse()
            {
                out.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            out
        }
        Err(InvokeError::Timeout(_)) => InvokeError::Timeout(timeout).into_response(),
        Err(e) => e.into_response(),
    }
}

fn too_large(size: u64, max: usize) -> Response {
    error_body(
        StatusCode::PAYLOAD_TOO_LARGE,
        ERR_BODY_TOO_LARGE,
        &format!("the request body ({size} bytes or more) is over the limit of {max} bytes (--max-body-size)"),
    )
}

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
        // Moves the bytes when the buffer is not shared (no copy).
        data: Some(prost_types::Any { type_url: String::new(), value: Vec::from(body) }),
        content_type,
        http_extension: Some(HttpExtension {
            verb: verb_of(verb) as i32,
            querystring: query.unwrap_or_default().to_string(),
        }),
    };
    (req, super::headers::forwardable(headers, super::token::Api::Http))
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
    fn methods_are_cleaned_as_daprd_cleans_them() {
        for (raw, want) in [
            ("a/b", "a/b"),
            ("a//b/./c", "a/b/c"),
            ("a/b/..", "a"),
            ("../admin", "../admin"),
            ("a/../../admin", "../admin"),
            ("/../admin", "/admin"),
            ("/a/b/", "/a/b"),
            ("", "."),
            ("a\0b", "a\0b"),
        ] {
            assert_eq!(clean_path(raw), want, "{raw:?}");
        }
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
