//! OTLP export of the channel hop's spans (`--otlp-endpoint`): each
//! sampled hop becomes one OpenTelemetry span with the very ids the app and
//! the caller were sent, batched (up to 512 spans, or every second) and sent
//! over OTLP/gRPC to a collector. Exporting never holds a call up: spans go
//! through a bounded queue (4096) and are dropped, counted, when it is full
//! or the collector is away.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Hop;

/// Spans waiting for the exporter at most; more are dropped.
const QUEUE: usize = 4096;
/// Spans in one export request at most.
const MAX_BATCH: usize = 512;
/// How often a partial batch is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take before its spans are given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: the sender side of the exporter task's queue.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    sampling_rate: f64,
    spans: IntCounterVec,
}

/// How one hop ended, for its span's status.
pub enum Outcome<'a> {
    /// The app answered.
    Ok,
    /// The call failed: the error as the caller sees it.
    Failed(&'a str),
}

impl Exporter {
    /// Starts exporting to the OTLP/gRPC collector at `endpoint` (connected
    /// lazily: a collector that is not up yet costs nothing but dropped
    /// spans) under the service name `app_id`, as daprd names its spans'
    /// service; counts spans in `registry`. Calls without a trace start one
    /// sampled at `sampling_rate`. Flushes what is queued when `stop` fires.
    pub fn start(
        endpoint: http::Uri,
        app_id: &str,
        sampling_rate: f64,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> prometheus::Result<(Exporter, tokio::task::JoinHandle<()>)> {
        let spans = IntCounterVec::new(
            prometheus::Opts::new(
                "dialback_trace_spans_total",
                "Channel-hop spans by outcome: exported, dropped (queue full) or failed (the collector refused or was away).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(spans.clone()))?;
        let channel = tonic::transport::Endpoint::from(endpoint).connect_timeout(Duration::from_secs(5)).connect_lazy();
        let (queue, rx) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: vec![attribute("service.name", app_id), attribute("telemetry.sdk.name", "dialbackd")],
            ..Default::default()
        };
        let task = tokio::spawn(run(rx, TraceServiceClient::new(channel), resource, spans.clone(), stop));
        Ok((Exporter { queue, sampling_rate, spans }, task))
    }

    /// The share of calls without a trace that start one.
    pub fn sampling_rate(&self) -> f64 {
        self.sampling_rate
    }

    /// Queues the span of `hop`, a call to `app_id`'s `method`, now ended
    /// with `outcome`, if its trace is sampled.
    pub fn finish(&self, hop: &Hop, app_id: &str, method: &str, outcome: Outcome<'_>) {
        if !hop.sampled() {
            return;
        }
        let status = match outcome {
            Outcome::Ok => Status { code: status::StatusCode::Ok as i32, message: String::new() },
            Outcome::Failed(why) => Status { code: status::StatusCode::Error as i32, message: why.to_string() },
        };
        let span = Span {
            trace_id: unhex(&hop.trace_id),
            span_id: unhex(&hop.span_id),
            parent_span_id: unhex(&hop.parent_id),
            // W3C flags, and (0x100) whether the parent is remote is known:
            // it is (0x200) when the caller sent the trace.
            flags: 0x100 | if hop.parent_id.is_empty() { 0 } else { 0x200 } | u32::from(u8::from(hop.sampled())),
            name: "channel_hop".into(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: unix_nanos(hop.started),
            end_time_unix_nano: unix_nanos(SystemTime::now()),
            attributes: vec![
                attribute("rpc.system", "grpc"),
                attribute("rpc.service", "dapr.proto.runtime.v1.AppCallback"),
                attribute("rpc.method", "OnInvoke"),
                attribute("dapr.app_id", app_id),
                attribute("dapr.method", method),
            ],
            status: Some(status),
            ..Default::default()
        };
        if self.queue.try_send(span).is_err() {
            self.spans.with_label_values(&["dropped"]).inc();
        }
    }
}

/// The exporter task: batches what arrives and sends it.
async fn run(
    mut rx: mpsc::Receiver<Span>,
    mut client: TraceServiceClient<tonic::transport::Channel>,
    resource: Resource,
    spans: IntCounterVec,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let last = tokio::select! {
            s = rx.recv() => match s {
                Some(s) => {
                    batch.push(s);
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
            () = stop.cancelled() => {
                rx.close();
                while let Ok(s) = rx.try_recv() {
                    batch.push(s);
                }
                true
            }
        };
        while !batch.is_empty() {
            let take = batch.len().min(MAX_BATCH);
            let part: Vec<Span> = batch.drain(..take).collect();
            export(&mut client, &resource, part, &spans, &mut warned).await;
        }
        if last {
            return;
        }
    }
}

/// Sends one batch; says once per outage that the collector is away.
async fn export(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    resource: &Resource,
    part: Vec<Span>,
    spans: &IntCounterVec,
    warned: &mut bool,
) {
    let n = part.len() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "dialbackd".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: part,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
        Ok(Ok(_)) => {
            spans.with_label_values(&["exported"]).inc_by(n);
            if std::mem::take(warned) {
                debug!("the OTLP collector takes spans again");
            }
        }
        Ok(Err(status)) => failed(spans, n, warned, &status.to_string()),
        Err(_) => failed(spans, n, warned, "timed out"),
    }
}

fn failed(spans: &IntCounterVec, n: u64, warned: &mut bool, why: &str) {
    spans.with_label_values(&["failed"]).inc_by(n);
    if !std::mem::replace(warned, true) {
        warn!(error = why, spans = n, "exporting spans to the OTLP collector failed; dropping them until it answers");
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// The bytes of a hex id (the hop's ids are valid hex by construction);
/// empty for an empty id (no parent).
fn unhex(id: &str) -> Vec<u8> {
    crate::hex::decode(id).unwrap_or_default()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_on_the_wire_as_their_bytes() {
        assert_eq!(unhex("00f067aa0ba902b7"), vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(unhex("").is_empty());
    }
}
