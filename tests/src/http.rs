//! A small HTTP/1 client for the sidecar's HTTP API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What the sidecar answered.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Content-Type, if any.
    pub content_type: Option<String>,
    /// Body.
    pub body: Bytes,
    /// All response headers.
    pub headers: http::HeaderMap,
}

impl HttpReply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Calls `method url` with headers and body; fails on a transport error or after 30 s.
pub async fn http_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpReply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await??;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(HttpReply { status, content_type, body, headers })
}

/// `GET /v1.0/metadata` as JSON.
pub async fn metadata(http_port: u16) -> anyhow::Result<serde_json::Value> {
    let r = http_call("GET", &format!("http://127.0.0.1:{http_port}/v1.0/metadata"), &[], Bytes::new()).await?;
    anyhow::ensure!(r.status == 200, "metadata answered {}: {}", r.status, r.text());
    Ok(r.json())
}
