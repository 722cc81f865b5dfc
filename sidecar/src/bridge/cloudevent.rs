//! The pub/sub shapes the subscription relay translates between: an app's
//! declared subscriptions (gRPC `ListTopicSubscriptions` or HTTP
//! `GET /dapr/subscribe`), an event as daprd streams it
//! (`TopicEventRequest`) and as daprd would POST it to an HTTP app (a
//! CloudEvent in JSON), and an HTTP app's answer. Pure functions, tested
//! here.

use std::collections::HashMap;

use dialback_proto::runtime::topic_event_response::TopicEventResponseStatus;
use dialback_proto::runtime::{TopicEventRequest, TopicSubscription};
use serde_json::{Map, Value, json};

/// One subscription the app declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The pubsub component.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// Where events go in the app: the default route (routing rules are
    /// not supported by daprd's streaming subscriptions; see docs/dapr.md).
    pub route: String,
    /// Metadata for the component.
    pub metadata: HashMap<String, String>,
    /// The dead-letter topic, if any.
    pub dead_letter_topic: Option<String>,
    /// Whether the app declared routing rules (they cannot be honoured).
    pub has_rules: bool,
}

impl Subscription {
    /// From a gRPC app's answer.
    pub fn from_grpc(s: TopicSubscription) -> Subscription {
        let (route, has_rules) = match s.routes {
            Some(r) => {
                let route = if r.default.is_empty() {
                    r.rules.first().map(|x| x.path.clone()).unwrap_or_default()
                } else {
                    r.default
                };
                (route, !r.rules.is_empty())
            }
            None => (String::new(), false),
        };
        Subscription {
            pubsub: s.pubsub_name,
            topic: s.topic,
            route,
            metadata: s.metadata,
            dead_letter_topic: Some(s.dead_letter_topic).filter(|d| !d.is_empty()),
            has_rules,
        }
    }
}

/// Parses an HTTP app's `GET /dapr/subscribe` answer: a JSON array of
/// `{pubsubname, topic, route | routes: {rules, default}, metadata,
/// deadLetterTopic}`, as daprd reads it.
pub fn parse_http_subscriptions(body: &[u8]) -> Result<Vec<Subscription>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("/dapr/subscribe is not JSON: {e}"))?;
    let Value::Array(items) = v else {
        return Err("/dapr/subscribe must answer a JSON array".into());
    };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    items
        .iter()
        .map(|item| {
            let pubsub = text(item, "pubsubname");
            let topic = text(item, "topic");
            if pubsub.is_empty() || topic.is_empty() {
                return Err(format!("/dapr/subscribe: an entry without pubsubname or topic: {item}"));
            }
            let routes = item.get("routes");
            let rules = routes.and_then(|r| r.get("rules")).and_then(Value::as_array);
            let mut route = routes.map(|r| text(r, "default")).unwrap_or_default();
            if route.is_empty() {
                route = text(item, "route");
            }
            if route.is_empty() {
                route = rules.and_then(|r| r.first()).map(|r| text(r, "path")).unwrap_or_default();
            }
            if route.is_empty() {
                route = topic.clone();
            }
            if !route.starts_with('/') {
                route.insert(0, '/');
            }
            let metadata = (item.get("metadata").and_then(Value::as_object))
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            Ok(Subscription {
                pubsub,
                topic,
                route,
                metadata,
                dead_letter_topic: Some(text(item, "deadLetterTopic")).filter(|d| !d.is_empty()),
                has_rules: rules.is_some_and(|r| !r.is_empty()),
            })
        })
        .collect()
}

/// The CloudEvent an HTTP app receives for `ev`, as daprd POSTs it: the
/// envelope's attributes and extensions, with `data` as JSON when the
/// content type says JSON, as text when it is UTF-8, else `data_base64`.
pub fn to_json(ev: &TopicEventRequest) -> Value {
    let mut m = Map::new();
    if let Some(ext) = &ev.extensions {
        for (k, v) in &ext.fields {
            m.insert(k.clone(), prost_to_json(v));
        }
    }
    for (k, v) in [
        ("id", &ev.id),
        ("source", &ev.source),
        ("type", &ev.r#type),
        ("specversion", &ev.spec_version),
        ("datacontenttype", &ev.data_content_type),
        ("topic", &ev.topic),
        ("pubsubname", &ev.pubsub_name),
    ] {
        m.insert(k.into(), json!(v));
    }
    let json_data = ev.data_content_type.contains("json") || ev.data_content_type.is_empty();
    match (json_data.then(|| serde_json::from_slice::<Value>(&ev.data).ok()).flatten(), std::str::from_utf8(&ev.data)) {
        (Some(v), _) => m.insert("data".into(), v),
        (None, Ok(text)) => m.insert("data".into(), json!(text)),
        (None, Err(_)) => m.insert("data_base64".into(), json!(base64(&ev.data))),
    };
    Value::Object(m)
}

/// What an HTTP app's answer to an event means, as daprd reads it: 2xx
/// with `{"status": "SUCCESS" | "RETRY" | "DROP"}` (or no status: success),
/// 404 drop, anything else retry.
pub fn http_status(code: u16, body: &[u8]) -> TopicEventResponseStatus {
    match code {
        200..=299 => match serde_json::from_slice::<Value>(body).ok().as_ref().and_then(|v| v.get("status")) {
            Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
                "SUCCESS" | "" => TopicEventResponseStatus::Success,
                "DROP" => TopicEventResponseStatus::Drop,
                _ => TopicEventResponseStatus::Retry,
            },
            _ => TopicEventResponseStatus::Success,
        },
        404 => TopicEventResponseStatus::Drop,
        _ => TopicEventResponseStatus::Retry,
    }
}

fn prost_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => {
            Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), prost_to_json(v))).collect())
        }
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(prost_to_json).collect()),
    }
}

/// Standard base64 with padding (CloudEvents' `data_base64`).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dialback_proto::runtime::{TopicRoutes, TopicRule};

    #[test]
    fn http_subscriptions_are_read_as_daprd_reads_them() {
        let body = br#"[
            {"pubsubname":"pubsub","topic":"orders","route":"orders"},
            {"pubsubname":"pubsub","topic":"a","routes":{"default":"/a","rules":[{"match":"x","path":"/b"}]},
             "metadata":{"k":"v"},"deadLetterTopic":"dead"},
            {"pubsubname":"pubsub","topic":"c"}
        ]"#;
        let subs = parse_http_subscriptions(body).unwrap();
        assert_eq!(subs.len(), 3);
        assert_eq!((subs[0].route.as_str(), subs[0].has_rules), ("/orders", false));
        assert_eq!((subs[1].route.as_str(), subs[1].has_rules), ("/a", true));
        assert_eq!(subs[1].metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("dead"));
        assert_eq!(subs[2].route, "/c");
        assert!(parse_http_subscriptions(b"").unwrap().is_empty());
        assert!(parse_http_subscriptions(b"{}").is_err());
        assert!(parse_http_subscriptions(b"[{\"topic\":\"x\"}]").is_err());
        assert!(parse_http_subscriptions(b"\xff").is_err());
    }

    #[test]
    fn grpc_subscriptions_keep_the_default_route() {
        let s = Subscription::from_grpc(TopicSubscription {
            pubsub_name: "p".into(),
            topic: "t".into(),
            routes: Some(TopicRoutes {
                rules: vec![TopicRule { r#match: "m".into(), path: "/r".into() }],
                default: "".into(),
            }),
            ..TopicSubscription::default()
        });
        assert_eq!((s.route.as_str(), s.has_rules, s.dead_letter_topic), ("/r", true, None));
    }

    #[test]
    fn events_become_cloudevents_with_their_data_in_the_right_shape() {
        let mut ev = TopicEventRequest {
            id: "1".into(),
            source: "app".into(),
            r#type: "com.dapr.event.sent".into(),
            spec_version: "1.0".into(),
            data_content_type: "application/json".into(),
            data: br#"{"n":1}"#.to_vec(),
            topic: "orders".into(),
            pubsub_name: "pubsub".into(),
            ..TopicEventRequest::default()
        };
        let v = to_json(&ev);
        assert_eq!(
            (v["id"].as_str(), v["data"]["n"].as_i64(), v["topic"].as_str()),
            (Some("1"), Some(1), Some("orders"))
        );
        ev.data_content_type = "text/plain".into();
        ev.data = b"hello".to_vec();
        assert_eq!(to_json(&ev)["data"], json!("hello"));
        ev.data_content_type = "application/octet-stream".into();
        ev.data = vec![0xff, 0, 1];
        assert_eq!(to_json(&ev)["data_base64"], json!("/wAB"));
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"he"), "aGU=");
    }

    #[test]
    fn http_answers_mean_what_they_mean_to_daprd() {
        assert_eq!(http_status(200, b""), TopicEventResponseStatus::Success);
        assert_eq!(http_status(200, br#"{"status":"RETRY"}"#), TopicEventResponseStatus::Retry);
        assert_eq!(http_status(204, br#"{"status":"drop"}"#), TopicEventResponseStatus::Drop);
        assert_eq!(http_status(404, b""), TopicEventResponseStatus::Drop);
        assert_eq!(http_status(500, br#"{"status":"SUCCESS"}"#), TopicEventResponseStatus::Retry);
    }
}
