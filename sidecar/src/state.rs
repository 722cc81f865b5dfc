//! What the API handlers share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dialback_certs::Fingerprint;
use dialback_channel::Transports;
use serde_json::{Value, json};

use crate::app::AppChannel;
use crate::appchannel::Registry;
use crate::auth::TokenStore;

/// The callback listener, as ConnectAppCallback describes it.
#[derive(Clone, Debug)]
pub struct CallbackInfo {
    /// The bound listener address.
    pub listen: SocketAddr,
    /// Accepted transports.
    pub transports: Transports,
    /// The advertised HOST:PORT, if set.
    pub advertise: Option<crate::config::Advertise>,
    /// The sidecar certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// The TLS server name the certificate carries.
    pub server_name: String,
    /// The registry of the live channel.
    pub registry: Arc<Registry>,
    /// Issues the app's client certificates (ConnectAppCallback's answer).
    pub issuer: Arc<crate::issued::Issuer>,
}

/// Shared sidecar state.
#[derive(Debug)]
pub struct Sidecar {
    /// The app this sidecar serves.
    pub app_id: String,
    /// How to reach it.
    pub app: AppChannel,
    /// Bound on waiting for a down channel.
    pub wait_timeout: Duration,
    /// Outstanding one-time tokens.
    pub tokens: Arc<Mutex<TokenStore>>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// The callback listener, in callback mode.
    pub callback: Option<CallbackInfo>,
    /// Bounds on calls and bodies.
    pub limits: crate::config::Limits,
    /// Calls in flight to the app and waiting for a slot.
    pub gate: crate::app::CallGate,
    /// HTTP request bodies held in memory at once, in KiB.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// The daprd behind dialbackd, for gRPC calls not served here.
    pub upstream_grpc: Option<crate::api::upstream::GrpcUpstream>,
    /// The daprd behind dialbackd, for HTTP calls not served here.
    pub upstream_http: Option<crate::api::upstream::HttpUpstream>,
    /// Bridge mode with daprd's HTTP app protocol: the app serves HTTP
    /// routes, not `AppCallback`, so invocations of this app go through
    /// daprd, which speaks HTTP to it through the bridge.
    pub own_calls_via_daprd: bool,
    /// What the metrics server serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where sampled hops' spans go (`--otlp-endpoint`), if anywhere.
    pub spans: Option<crate::trace::otlp::Exporter>,
}

/// What `runtimeVersion` says.
const RUNTIME_VERSION: &str = concat!("dialback-", env!("CARGO_PKG_VERSION"));

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

impl Sidecar {
    /// `Dapr/GetMetadata`: the app-id, the version, how the app is reached,
    /// and the app channel's state (the `appChannel` fields of
    /// `/v1.0/metadata`) as extended metadata under `appChannel.`.
    pub fn grpc_metadata(&self) -> dialback_proto::runtime::GetMetadataResponse {
        let extended = self.channel_extended();
        let channel_address = match &self.app {
            AppChannel::Callback(_) => "callback".to_string(),
            AppChannel::Classic(_) | AppChannel::None => String::new(),
        };
        dialback_proto::runtime::GetMetadataResponse {
            id: self.app_id.clone(),
            extended_metadata: extended,
            app_connection_properties: Some(dialback_proto::runtime::AppConnectionProperties {
                port: 0,
                protocol: "grpc".to_string(),
                channel_address,
                max_concurrency: i32::try_from(
                    self.limits.app_max_concurrency.unwrap_or(dialback_channel::h2::APP_CALL_STREAMS),
                )
                .unwrap_or(i32::MAX),
            }),
            runtime_version: RUNTIME_VERSION.to_string(),
            enabled_features: Vec::new(),
        }
    }

    /// The app channel's state (the `appChannel` fields of `/v1.0/metadata`)
    /// as Dapr's extended metadata, under keys that start with `appChannel.`.
    pub fn channel_extended(&self) -> std::collections::HashMap<String, String> {
        extended_of(&self.metadata()["appChannel"])
    }

    /// `/v1.0/metadata`: Dapr's fields plus `appChannel`, the channel's state.
    pub fn metadata(&self) -> Value {
        let channel = match (&self.app, &self.callback) {
            (AppChannel::Callback(reg), Some(cb)) => {
                let live = reg.current();
                let down = reg.last_down();
                json!({
                    "mode": "callback",
                    "listenAddress": cb.listen.to_string(),
                    "advertiseAddress": cb.advertise.as_ref().map(ToString::to_string),
                    "transports": cb.transports.to_string(),
                    "certSha256": cb.fingerprint.to_hex(),
                    "state": if live.is_some() { "connected" } else { "disconnected" },
                    "transport": live.as_ref().map(|l| l.info.transport.as_str()),
                    "channelId": live.as_ref().map(|l| l.info.channel_id),
                    "instance": live.as_ref().map(|l| l.info.instance.clone()),
                    "credential": live.as_ref().map(|l| l.info.credential.as_str()),
                    "liveness": live.as_ref().map(|l| if l.info.beat.is_some() { "mobile" } else { "default" }),
                    "streams": live.as_ref().map(|l| if l.client.is_stream_per_call() { "per-call" } else { "single" }),
                    "apiOverHttp3": live.as_ref().map(|l| l.conn.api_over_http3()),
                    "beatMs": live.as_ref().and_then(|l| l.info.beat).map(|b| b.as_millis()),
                    "peerAddress": live.as_ref().map(|l| l.conn.peer_addr().to_string()),
                    "connectedSinceUnixMs": live.as_ref().map(|l| unix_ms(l.since)),
                    "rttMs": live.as_ref().and_then(|l| l.rtt()).map(|d| d.as_secs_f64() * 1000.0),
                    "inflight": live.as_ref().map(|l| l.inflight()),
                    "waitingCalls": self.gate.waiting(),
                    "reconnects": reg.reconnects(),
                    "lastDownUnixMs": down.as_ref().map(|d| unix_ms(d.at)),
                    "lastDownReason": down.map(|d| d.reason),
                })
            }
            (AppChannel::Classic(_), _) => json!({ "mode": "classic", "state": "configured" }),
            _ => json!({ "mode": "none", "state": "disconnected" }),
        };
        json!({
            "id": self.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "appConnectionProperties": { "protocol": "grpc" },
            "appChannel": channel,
        })
    }
}

/// `appChannel` fields (a JSON object) as Dapr's extended metadata: keys
/// prefixed `appChannel.`, values as text, nulls left out.
pub fn extended_of(channel: &Value) -> std::collections::HashMap<String, String> {
    let mut extended = std::collections::HashMap::new();
    for (k, v) in channel.as_object().into_iter().flatten() {
        let v = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        extended.insert(format!("appChannel.{k}"), v);
    }
    extended
}
