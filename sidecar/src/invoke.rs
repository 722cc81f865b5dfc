//! The one invocation path both APIs share: check the message's size, find
//! the app's connection (classic or callback, waiting a bounded time for a
//! down channel), take a slot, call `AppCallback/OnInvoke` within the
//! call's deadline, and classify what went wrong. A caller's W3C trace
//! context gets its channel-hop span here too ([`crate::trace`]).

use std::time::Duration;

use prost::Message;
use tokio::time::Instant;

use dialback_proto::common::{InvokeRequest, InvokeResponse};
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use crate::error::InvokeError;
use crate::state::Sidecar;
use crate::trace::Hop;
use crate::trace::otlp::Outcome;

/// Room over `--max-body-size` for a message's envelope (method, content
/// type, metadata): the limit holds the data, not the few bytes around it.
pub const ENVELOPE: usize = 64 * 1024;

/// The app's answer, and the channel hop's `traceparent` for the caller
/// when the call carried a valid one.
#[derive(Debug)]
pub struct Invoked {
    /// What the app answered.
    pub response: InvokeResponse,
    /// The hop's `traceparent`, to send back.
    pub traceparent: Option<String>,
}

/// Invokes `req` on the app `target` within `timeout` (waiting for a
/// channel and a slot included), in the channel hop's span; the app gets
/// the hop's `traceparent` in place of the caller's. Fails when `target` is
/// not this sidecar's app, when the message is larger than this sidecar or
/// the app accepts (before anything is sent), when the channel is down past
/// the wait bound, when too many calls are waiting, when the time is up,
/// when the call breaks in flight, or with the app's own error status.
pub async fn invoke(
    s: &Sidecar,
    target: &str,
    req: InvokeRequest,
    mut metadata: MetadataMap,
    timeout: Duration,
) -> Result<Invoked, InvokeError> {
    let hop = Hop::begin(&mut metadata, s.spans.as_ref().map(|e| e.sampling_rate()));
    let span = Hop::span(hop.as_ref(), target, &req.method);
    let method = (s.spans.is_some() && hop.is_some()).then(|| req.method.clone());
    let response = call_app(s, target, req, metadata, timeout).instrument(span).await;
    if let (Some(exporter), Some(hop), Some(method)) = (&s.spans, &hop, method) {
        let outcome = match &response {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::Failed(&e.to_string()),
        };
        exporter.finish(hop, target, &method, outcome);
    }
    Ok(Invoked { response: response?, traceparent: hop.map(|h| h.traceparent()) })
}

async fn call_app(
    s: &Sidecar,
    target: &str,
    req: InvokeRequest,
    metadata: MetadataMap,
    timeout: Duration,
) -> Result<InvokeResponse, InvokeError> {
    if target != s.app_id {
        return Err(InvokeError::UnknownApp(target.to_string()));
    }
    let max = s.limits.max_body_size;
    let data = req.data.as_ref().map_or(0, |d| d.value.len());
    if data > max {
        return Err(InvokeError::TooLarge { size: data, limit: max, whose: "this sidecar's (--max-body-size)" });
    }
    // What the app decodes: the data and its envelope.
    let size = req.encoded_len();
    let deadline = Instant::now() + timeout;
    let call = async {
        let (mut client, _guard, app_limit) =
            s.app.client(s.wait_timeout.min(timeout), max.saturating_add(ENVELOPE), &s.metrics).await?;
        if let Some(limit) = app_limit
            && size > limit
        {
            return Err(InvokeError::TooLarge { size, limit, whose: "the app's (from its hello)" });
        }
        let _slot = s.gate.enter(deadline, timeout).await?;
        let mut request = tonic::Request::new(req);
        *request.metadata_mut() = metadata;
        let sent = std::time::Instant::now();
        let answer = client.on_invoke(request).await;
        let code = answer.as_ref().map_or_else(|s| s.code() as i32, |_| 0);
        s.metrics.invoked(target, code, sent.elapsed());
        match answer {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => Err(InvokeError::from_status(status)),
        }
    };
    tokio::time::timeout_at(deadline, call).await.unwrap_or(Err(InvokeError::Timeout(timeout)))
}
