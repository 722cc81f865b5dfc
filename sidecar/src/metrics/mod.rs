//! dialbackd's Prometheus metrics, served like daprd's: on `--metrics-port`
//! (default 9090) at any path, in Prometheus' classic text format.
//!
//! Where daprd has the thing, the name, labels, units and buckets are
//! daprd's own (`dapr_http_server_*`, `dapr_grpc_io_server_*`,
//! `dapr_runtime_service_invocation_*`; read off daprd 1.18's
//! `pkg/diagnostics` and its scraped output), so Dapr dashboards and alerts
//! work unchanged. The callback channel's are dialback's own, under
//! `dialback_`, named by Prometheus' conventions. The API servers' are
//! recorded by the layer in [`api`]; the channel's by the listener's event
//! hooks ([`ListenerEvents`]) and the channel drivers.
//!
//! Labels that a caller chooses (an HTTP path, a gRPC method) come from a
//! bounded set ([`LabelBudget`]): a stranger cannot grow the exposition,
//! and so the sidecar's memory, without bound.

pub(crate) mod api;
mod paths;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialback_channel::{CredentialKind, ListenerEvents, Refused, Transport};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::appchannel::ChannelEnd;

pub use paths::dapr_path_label;

/// daprd's latency buckets, in milliseconds (`pkg/config`, the default of
/// `spec.metrics.latencyDistributionBuckets`).
const LATENCY_MS: [f64; 34] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0, 100.0, 130.0, 160.0,
    200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// daprd's size buckets, in bytes (`pkg/diagnostics/metrics.go`).
const SIZE_BYTES: [f64; 13] = [
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// Handshake durations, in seconds.
const HANDSHAKE_S: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Ping round trips, in seconds.
const RTT_S: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Distinct values a caller-chosen label (an HTTP path, a gRPC method) may
/// take; past it, new values are counted under [`OTHER`].
pub const LABEL_BUDGET: usize = 256;

/// The label value of everything past the budget.
pub const OTHER: &str = "_other";

/// A bounded set of label values: the first [`LABEL_BUDGET`] distinct
/// values pass as they are, later new ones become [`OTHER`].
#[derive(Debug, Default)]
pub struct LabelBudget(Mutex<HashSet<String>>);

impl LabelBudget {
    /// `value` when it is known or there is room for it, else [`OTHER`].
    pub fn admit(&self, value: &str) -> String {
        let Ok(mut seen) = self.0.lock() else { return OTHER.to_string() };
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= LABEL_BUDGET {
            return OTHER.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }
}

/// daprd's HTTP API server metrics (`pkg/diagnostics/http_monitoring.go`).
pub(crate) struct HttpServer {
    pub request_count: IntCounterVec,
    pub response_count: IntCounterVec,
    pub latency: HistogramVec,
    pub request_bytes: HistogramVec,
    pub response_bytes: HistogramVec,
    pub paths: LabelBudget,
}

/// daprd's gRPC API server metrics (`pkg/diagnostics/grpc_monitoring.go`).
pub(crate) struct GrpcServer {
    pub completed_rpcs: IntCounterVec,
    pub latency: HistogramVec,
    pub received_bytes: HistogramVec,
    pub sent_bytes: HistogramVec,
    pub methods: LabelBudget,
}

/// Every metric dialbackd serves, and the registry they are gathered from.
pub struct Metrics {
    registry: Registry,
    /// The served app's id: the `app_id` label of daprd's metrics.
    pub(crate) app_id: String,
    pub(crate) http: HttpServer,
    pub(crate) grpc: GrpcServer,
    invoke_sent: IntCounterVec,
    invoke_recv: IntCounterVec,
    invoke_latency: HistogramVec,
    channels_up: IntGaugeVec,
    opens: IntCounterVec,
    resumed: IntCounterVec,
    refusals: IntCounterVec,
    handshake: HistogramVec,
    ping_rtt: HistogramVec,
    migrations: IntCounterVec,
    ends: IntCounterVec,
    waiting: IntGauge,
    wait_timeouts: IntCounter,
    transport_changes: IntCounterVec,
    resets: IntCounter,
    last_transport: Mutex<Option<Transport>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

/// Builds metrics and registers them; the names and labels are constants,
/// so this fails only on a programming error, which a unit test catches.
struct Builder(Registry);

impl Builder {
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
        let m = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn counter1(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let m = IntCounter::new(name, help)?;
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> prometheus::Result<HistogramVec> {
        let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
        self.0.register(Box::new(m.clone()))?;
        Ok(m)
    }
}

impl Metrics {
    /// A fresh set for the app `app_id`, all at zero.
    pub fn new(app_id: &str) -> prometheus::Result<Metrics> {
        let b = Builder(Registry::new());
        let http_tags = ["app_id", "method", "path", "status"];
        let grpc_tags = ["app_id", "grpc_server_method", "grpc_server_status"];
        let http = HttpServer {
            request_count: b.counter(
                "dapr_http_server_request_count",
                "Number of HTTP requests started in server.",
                &http_tags,
            )?,
            response_count: b.counter("dapr_http_server_response_count", "The number of HTTP responses", &http_tags)?,
            latency: b.histogram(
                "dapr_http_server_latency",
                "HTTP request end-to-end latency in server.",
                &LATENCY_MS,
                &http_tags,
            )?,
            request_bytes: b.histogram(
                "dapr_http_server_request_bytes",
                "HTTP request size in bytes in server.",
                &SIZE_BYTES,
                &["app_id"],
            )?,
            response_bytes: b.histogram(
                "dapr_http_server_response_bytes",
                "HTTP response size in bytes in server.",
                &SIZE_BYTES,
                &["app_id"],
            )?,
            paths: LabelBudget::default(),
        };
        let grpc = GrpcServer {
            // daprd's help text, word for word (it is a count, whatever it says).
            completed_rpcs: b.counter(
                "dapr_grpc_io_server_completed_rpcs",
                "Distribution of bytes sent per RPC, by method.",
                &grpc_tags,
            )?,
            latency: b.histogram(
                "dapr_grpc_io_server_server_latency",
                "Distribution of server latency in milliseconds, by method.",
                &LATENCY_MS,
                &grpc_tags,
            )?,
            received_bytes: b.histogram(
                "dapr_grpc_io_server_received_bytes_per_rpc",
                "Distribution of bytes received per RPC, by method.",
                &SIZE_BYTES,
                &["app_id", "grpc_server_method"],
            )?,
            sent_bytes: b.histogram(
                "dapr_grpc_io_server_sent_bytes_per_rpc",
                "Distribution of total bytes sent per RPC, by method.",
                &SIZE_BYTES,
                &["app_id", "grpc_server_method"],
            )?,
            methods: LabelBudget::default(),
        };
        Ok(Metrics {
            app_id: app_id.to_string(),
            http,
            grpc,
            invoke_sent: b.counter(
                "dapr_runtime_service_invocation_req_sent_total",
                "The number of requests sent via service invocation.",
                &["app_id", "dst_app_id", "type"],
            )?,
            invoke_recv: b.counter(
                "dapr_runtime_service_invocation_res_recv_total",
                "The number of responses received via service invocation.",
                &["app_id", "src_app_id", "status", "type"],
            )?,
            invoke_latency: b.histogram(
                "dapr_runtime_service_invocation_res_recv_latency_ms",
                "The latency of service invocation response.",
                &LATENCY_MS,
                &["app_id", "src_app_id", "status"],
            )?,
            channels_up: b.gauge(
                "dialback_channels_up",
                "App callback channels up (0 or 1), by transport.",
                &["transport"],
            )?,
            resumed: b.counter(
                "dialback_channel_tls_resumed_total",
                "Callback channels accepted on a resumed TLS session (over QUIC: one that named the app's \
                 client certificate from its ClientHello), by transport.",
                &["transport"],
            )?,
            opens: b.counter(
                "dialback_channel_opens_total",
                "Callback channels accepted (hello proven), by transport and credential.",
                &["transport", "credential"],
            )?,
            refusals: b.counter(
                "dialback_channel_refusals_total",
                "Connections to the callback listener that did not become a channel, by reason.",
                &["transport", "reason"],
            )?,
            handshake: b.histogram(
                "dialback_channel_handshake_duration_seconds",
                "From a connection's arrival to its accepted hello (TLS or QUIC handshake, hello, verdict).",
                &HANDSHAKE_S,
                &["transport"],
            )?,
            ping_rtt: b.histogram(
                "dialback_ping_rtt_seconds",
                "Round trips of the Ping stream on live channels.",
                &RTT_S,
                &["transport"],
            )?,
            migrations: b.counter(
                "dialback_channel_migrations_total",
                "Times a live channel's app address changed under it (QUIC migration, NAT rebinding).",
                &["transport"],
            )?,
            ends: b.counter(
                "dialback_channel_ends_total",
                "Callback channels ended, by transport and reason.",
                &["transport", "reason"],
            )?,
            waiting: {
                let g = IntGauge::new(
                    "dialback_calls_waiting_for_channel",
                    "Calls waiting now for a callback channel to come up.",
                )?;
                b.0.register(Box::new(g.clone()))?;
                g
            },
            wait_timeouts: b.counter1(
                "dialback_channel_wait_timeouts_total",
                "Calls that failed because no channel came up within --callback-wait-timeout.",
            )?,
            transport_changes: b.counter(
                "dialback_transport_changes_total",
                "A channel on one transport followed by one on the other: falling back to TCP, or returning to QUIC.",
                &["from", "to"],
            )?,
            resets: b.counter1(
                "dialback_stateless_resets_sent_total",
                "QUIC stateless resets sent at start to the apps of the previous run.",
            )?,
            last_transport: Mutex::new(None),
            registry: b.0,
        })
    }

    /// The registry, for metrics of parts that come and go with a flag (the OTLP exporter's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition, in Prometheus' text format, with the channel gauge
    /// set from `up` (the transport of the live channel, if any).
    pub fn encode(&self, up: Option<Transport>) -> Vec<u8> {
        for t in Transport::ALL {
            self.channels_up.with_label_values(&[t.as_str()]).set(i64::from(up == Some(t)));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        out
    }

    /// A call to the app via service invocation ended with gRPC `code`
    /// (`0` for OK; daprd's numeric status for a gRPC app) after `took`.
    pub fn invoked(&self, target: &str, code: i32, took: Duration) {
        let status = code.to_string();
        self.invoke_sent.with_label_values(&[&self.app_id, target, "unary"]).inc();
        self.invoke_recv.with_label_values(&[&self.app_id, target, &status, "unary"]).inc();
        self.invoke_latency.with_label_values(&[&self.app_id, target, &status]).observe(took.as_secs_f64() * 1000.0);
    }

    /// A channel went live on `transport`: counts a change of transport
    /// from the previous live channel.
    pub fn channel_up(&self, transport: Transport) {
        let Ok(mut last) = self.last_transport.lock() else { return };
        if let Some(prev) = *last
            && prev != transport
        {
            self.transport_changes.with_label_values(&[prev.as_str(), transport.as_str()]).inc();
        }
        *last = Some(transport);
    }

    /// A channel on `transport` ended.
    pub fn channel_end(&self, transport: Transport, end: &ChannelEnd) {
        self.ends.with_label_values(&[transport.as_str(), end.label()]).inc();
    }

    /// A Ping on `transport` was answered after `rtt`.
    pub fn ping(&self, transport: Transport, rtt: Duration) {
        self.ping_rtt.with_label_values(&[transport.as_str()]).observe(rtt.as_secs_f64());
    }

    /// A live channel's app address changed.
    pub fn migrated(&self, transport: Transport) {
        self.migrations.with_label_values(&[transport.as_str()]).inc();
    }

    /// Waits for `f` (a wait for a channel), counted as waiting meanwhile;
    /// a `None` answer is a wait timeout.
    pub async fn waiting_for_channel<T>(&self, f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
        self.waiting.inc();
        let _done = Dec(&self.waiting);
        let got = f.await;
        if got.is_none() {
            self.wait_timeouts.inc();
        }
        got
    }
}

/// Takes one off a gauge when dropped (a wait given up counts too).
struct Dec<'a>(&'a IntGauge);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ListenerEvents for Metrics {
    fn refused(&self, transport: Transport, reason: Refused) {
        self.refusals.with_label_values(&[transport.as_str(), reason.as_str()]).inc();
    }

    fn accepted(&self, transport: Transport, credential: CredentialKind, resumed: bool, took: Duration) {
        self.opens.with_label_values(&[transport.as_str(), credential.as_str()]).inc();
        if resumed {
            self.resumed.with_label_values(&[transport.as_str()]).inc();
        }
        self.handshake.with_label_values(&[transport.as_str()]).observe(took.as_secs_f64());
    }

    fn resets_sent(&self, count: usize) {
        self.resets.inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }
}

/// Serves the exposition on `listener` until `stop`: any path, GET or HEAD
/// (as daprd's metrics port does), with the API ports' bounds on what a
/// connection may hold. `up` tells the live channel's transport.
pub(crate) fn service(
    metrics: Arc<Metrics>,
    up: impl Fn() -> Option<Transport> + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let metrics = metrics.clone();
        let up = up.clone();
        async move {
            let resp = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
                let body = metrics.encode(up());
                http::Response::builder()
                    .header(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                    .body(axum::body::Body::from(body))
            } else {
                http::Response::builder()
                    .status(http::StatusCode::METHOD_NOT_ALLOWED)
                    .header(http::header::ALLOW, "GET, HEAD")
                    .body(axum::body::Body::empty())
            };
            Ok(resp.unwrap_or_default())
        }
    })
}

#[cfg(test)]
mod tests;
