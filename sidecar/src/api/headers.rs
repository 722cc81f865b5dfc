//! Which of a caller's headers go on: as gRPC metadata to the app (one list
//! for both APIs), and through the two forwarders (the bridge to the app,
//! the upstream to daprd), which drop the same hop headers.

use http::HeaderMap;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use super::token::Api;

/// Headers of one HTTP connection, not of the call: a forwarder never
/// passes them on, and HTTP/2 forbids them.
const CONNECTION_HEADERS: &[&str] =
    &["host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// Headers that frame the call to the sidecar or address the sidecar;
/// they never become the app's metadata (nor `grpc-*` and pseudo-headers).
const CALL_FRAMING: &[&str] =
    &["te", "trailer", "content-length", "content-type", "dapr-api-token", "dapr-app-id", "expect"];

/// Drops the connection's own headers before a request is forwarded;
/// `te` stays only as `trailers` (all that HTTP/2 allows, and what gRPC needs).
pub fn strip_hop(headers: &mut HeaderMap) {
    for name in CONNECTION_HEADERS {
        headers.remove(*name);
    }
    if headers.get(http::header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(http::header::TE);
    }
}

/// The caller's headers as the metadata of the call to the app. On the
/// gRPC API `user-agent` names the caller's gRPC library (the sidecar's
/// own client sends its own), so it stays behind; on the HTTP API it names
/// the caller and goes through, as daprd passes it.
pub fn forwardable(headers: &HeaderMap, api: Api) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if CONNECTION_HEADERS.contains(&name)
            || CALL_FRAMING.contains(&name)
            || name.starts_with("grpc-")
            || name.starts_with(':')
            || (api == Api::Grpc && name == "user-agent")
        {
            continue;
        }
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(name.as_bytes()), MetadataValue::try_from(value.as_bytes())) {
            md.append(k, v);
        }
    }
    md
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn the_hop_stays_behind_and_the_call_goes_through() {
        let h = headers(&[
            ("x-trace", "1"),
            ("dapr-api-token", "secret"),
            ("dapr-app-id", "echo"),
            ("grpc-timeout", "5S"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("traceparent", "00-ab-cd-01"),
        ]);
        for api in [Api::Http, Api::Grpc] {
            let md = forwardable(&h, api);
            let keys: Vec<_> = md.keys().map(|k| format!("{k:?}")).collect();
            assert_eq!(md.len(), 2, "{api:?}: {keys:?}");
            assert_eq!(md.get("x-trace").unwrap(), "1");
            assert_eq!(md.get("traceparent").unwrap(), "00-ab-cd-01");
        }
    }

    #[test]
    fn a_forwarded_request_drops_the_connections_headers() {
        let mut h =
            headers(&[("connection", "keep-alive"), ("host", "127.0.0.1:3000"), ("te", "gzip"), ("x-call", "1")]);
        strip_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-call"));
        let mut g = headers(&[("te", "trailers")]);
        strip_hop(&mut g);
        assert_eq!(g.get(http::header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]), "gRPC keeps te: trailers");
    }

    #[test]
    fn user_agent_goes_through_on_http_only() {
        let h = headers(&[("user-agent", "curl/8")]);
        assert_eq!(forwardable(&h, Api::Http).get("user-agent").unwrap(), "curl/8");
        assert!(forwardable(&h, Api::Grpc).get("user-agent").is_none());
    }
}
