//! Which of a caller's headers reach the app as gRPC metadata: one list for
//! both APIs.

use http::HeaderMap;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use super::token::Api;

/// Headers that describe the hop to the sidecar, not the call; never
/// forwarded (nor `grpc-*` and pseudo-headers).
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

/// The caller's headers as the metadata of the call to the app. On the
/// gRPC API `user-agent` names the caller's gRPC library (the sidecar's
/// own client sends its own), so it stays behind; on the HTTP API it names
/// the caller and goes through, as daprd passes it.
pub fn forwardable(headers: &HeaderMap, api: Api) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if HOP_HEADERS.contains(&name)
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
    fn user_agent_goes_through_on_http_only() {
        let h = headers(&[("user-agent", "curl/8")]);
        assert_eq!(forwardable(&h, Api::Http).get("user-agent").unwrap(), "curl/8");
        assert!(forwardable(&h, Api::Grpc).get("user-agent").is_none());
    }
}
