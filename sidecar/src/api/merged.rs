//! Bridge mode's metadata: daprd's own answer (its components,
//! subscriptions, actors, workflows, ...), with the app channel's state
//! added, so an app behind dialbackd sees everything daprd would tell it
//! and how its channel is doing.
//!
//! HTTP `GET /v1.0/metadata`: daprd's JSON with `appChannel` and the
//! `appChannel.*` keys of `extended` added. gRPC `Dapr/GetMetadata`:
//! daprd's message, undecoded, with `extended_metadata` entries appended
//! (a protobuf message is the concatenation of its fields, and map entries
//! appended are added to the map), so fields this build does not know
//! pass through intact.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use serde_json::Value;
use tower::ServiceExt;

use crate::state::Sidecar;

/// The largest metadata answer read from daprd.
const MAX_METADATA: usize = 4 * 1024 * 1024;

/// daprd's JSON metadata with the app channel's state (`channel`, the
/// `appChannel` object) added; `None` for anything but a JSON object.
pub fn merge_json(daprd: &[u8], channel: &Value) -> Option<Vec<u8>> {
    let extended = crate::state::extended_of(channel);
    let mut v: Value = serde_json::from_slice(daprd).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("appChannel".into(), channel.clone());
    let ext = obj.entry("extended").or_insert_with(|| Value::Object(Default::default()));
    if let Some(ext) = ext.as_object_mut() {
        for (k, val) in extended {
            ext.insert(k, Value::String(val));
        }
    }
    serde_json::to_vec(&v).ok()
}

/// daprd's gRPC answer (one uncompressed message frame) with `extended`
/// appended to its `extended_metadata`; `None` when it is not that shape.
pub fn merge_grpc_frame(frame: &[u8], extended: HashMap<String, String>) -> Option<Bytes> {
    let (&flag, rest) = frame.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let msg = rest.get(4..)?;
    if flag != 0 || msg.len() != len {
        return None;
    }
    let extra = dialback_proto::runtime::GetMetadataResponse { extended_metadata: extended, ..Default::default() }
        .encode_to_vec();
    let total = u32::try_from(msg.len() + extra.len()).ok()?;
    let mut out = BytesMut::with_capacity(5 + total as usize);
    out.put_u8(0);
    out.put_u32(total);
    out.put_slice(msg);
    out.put_slice(&extra);
    Some(out.freeze())
}

/// `Dapr/GetMetadata` in bridge mode: asks daprd and adds the channel.
pub async fn grpc_metadata(state: Arc<Sidecar>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let Some(up) = state.upstream_grpc.clone() else {
        return Ok(tonic::Status::internal("no daprd behind dialbackd").into_http());
    };
    let Ok(resp) = up.oneshot(req).await;
    let (parts, body) = resp.into_parts();
    let collected = match http_body_util::Limited::new(body, MAX_METADATA).collect().await {
        Ok(c) => c,
        Err(e) => return Ok(tonic::Status::unavailable(format!("reading daprd's metadata: {e}")).into_http()),
    };
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let ok = trailers.as_ref().and_then(|t| t.get("grpc-status")).is_some_and(|s| s == "0");
    let data = match ok.then(|| merge_grpc_frame(&data, state.channel_extended())).flatten() {
        Some(merged) => merged,
        None => data,
    };
    let mut parts = parts;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let frames = [Some(Ok::<_, Infallible>(Frame::data(data))), trailers.map(|t: HeaderMap| Ok(Frame::trailers(t)))];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames.into_iter().flatten()));
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// `GET /v1.0/metadata` in bridge mode: asks daprd and adds the channel.
pub async fn http_metadata(state: &Sidecar, req: axum::extract::Request) -> Response<Body> {
    let Some(up) = &state.upstream_http else {
        return axum::response::IntoResponse::into_response(axum::Json(state.metadata()));
    };
    let resp = up.forward(req).await;
    if resp.status() != http::StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, MAX_METADATA).collect().await else {
        return crate::error::error_body(
            http::StatusCode::BAD_GATEWAY,
            super::upstream::ERR_UPSTREAM,
            "reading daprd's metadata failed",
        );
    };
    let data = collected.to_bytes();
    let merged = merge_json(&data, &state.metadata()["appChannel"]);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(merged.map(Bytes::from).unwrap_or(data)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grpc_entries_are_appended_and_decode_with_daprds_fields() {
        let daprd = dialback_proto::runtime::GetMetadataResponse {
            id: "app".into(),
            extended_metadata: HashMap::from([("daprRuntimeVersion".into(), "1.18.1".into())]),
            runtime_version: "1.18.1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0];
        frame.extend((daprd.len() as u32).to_be_bytes());
        frame.extend(&daprd);
        let merged =
            merge_grpc_frame(&frame, HashMap::from([("appChannel.state".into(), "connected".into())])).unwrap();
        let back = dialback_proto::runtime::GetMetadataResponse::decode(&merged[5..]).unwrap();
        assert_eq!(u32::from_be_bytes(merged[1..5].try_into().unwrap()) as usize, merged.len() - 5);
        assert_eq!((back.id.as_str(), back.runtime_version.as_str()), ("app", "1.18.1"));
        assert_eq!(back.extended_metadata.get("daprRuntimeVersion").map(String::as_str), Some("1.18.1"));
        assert_eq!(back.extended_metadata.get("appChannel.state").map(String::as_str), Some("connected"));
        // Not one plain message: left alone.
        assert!(merge_grpc_frame(&[1, 0, 0, 0, 0], HashMap::new()).is_none());
        assert!(merge_grpc_frame(&[0, 0, 0, 0, 9, 1], HashMap::new()).is_none());
        assert!(merge_grpc_frame(&[], HashMap::new()).is_none());
    }

    #[test]
    fn json_gets_the_channel_and_keeps_daprds_fields() {
        let channel = serde_json::json!({"state": "connected"});
        let merged = merge_json(br#"{"id":"a","components":[{"name":"s"}],"extended":{"x":"1"}}"#, &channel).unwrap();
        let v: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(v["components"][0]["name"], "s");
        assert_eq!(v["appChannel"]["state"], "connected");
        assert_eq!(
            (v["extended"]["x"].as_str(), v["extended"]["appChannel.state"].as_str()),
            (Some("1"), Some("connected"))
        );
        assert!(merge_json(b"[1]", &channel).is_none());
        assert!(merge_json(b"not json", &channel).is_none());
    }
}
