//! The sidecar's two APIs, Dapr-style: HTTP (`http.rs`) and gRPC
//! (`grpc.rs`), each behind the one API-token layer (`token.rs`) and
//! served by a bounded accept loop per port (`serve.rs`); which of a
//! caller's headers reach the app is decided once for both (`headers.rs`).

mod grpc;
pub(crate) mod headers;
mod http;
mod merged;
mod serve;
pub(crate) mod token;
pub(crate) mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use http::to_invoke_request;
pub use serve::raise_fd_limit;
pub use token::Api;

use crate::StartError;
use crate::config::Config;
use crate::state::Sidecar;

/// The bound API ports and the tasks serving them.
pub(crate) struct Apis {
    /// HTTP API addresses.
    pub http: Vec<SocketAddr>,
    /// gRPC API addresses.
    pub grpc: Vec<SocketAddr>,
    /// The bridge port daprd's `--app-port` points at, in bridge mode.
    pub bridge: Option<SocketAddr>,
    /// The metrics server's address, when it is on.
    pub metrics: Option<SocketAddr>,
    /// One accept loop per port.
    pub tasks: Vec<JoinHandle<()>>,
    /// Both APIs as one service, for the app's HTTP/3 calls on its channel.
    pub channel: ChannelApi,
}

/// What the API ports serve, as one service: the app's own calls as
/// HTTP/3 on its QUIC channel (see `dialback_channel::http3`) go through
/// the same layers (metrics, API token) to the gRPC API when their content
/// type is gRPC's and to the HTTP API otherwise.
pub(crate) type ChannelApi = tower::util::BoxCloneSyncService<
    ::http::Request<tonic::body::Body>,
    ::http::Response<axum::body::Body>,
    Infallible,
>;

/// Binds both APIs on the configured ports and serves `state` on them
/// until `stop`; after it, connections drain until the deadline set in
/// `grace`. Fails when a port cannot be bound.
pub(crate) async fn start(
    config: &Config,
    state: Arc<Sidecar>,
    api_token_sha: Option<[u8; 32]>,
    stop: &CancellationToken,
    grace: &Arc<OnceLock<tokio::time::Instant>>,
) -> Result<Apis, StartError> {
    // Each API port bounds what a stranger can hold before the token check;
    // the open-files limit was raised at start, and the caps keep a reserve
    // of descriptors for the app channel.
    let limits = config.limits;
    let listeners = config.http_addrs.len()
        + config.grpc_addrs.len()
        + usize::from(config.bridge.is_some())
        + usize::from(config.metrics_addr.is_some());
    let serve_limits = serve::ServeLimits {
        max_connections: serve::connection_cap(limits.api_max_connections, listeners, serve::fd_limit()),
        header_timeout: limits.api_header_timeout,
        idle_timeout: limits.api_idle_timeout,
    };
    // Outermost, so that refused calls are counted too (without their path).
    let metered = |kind| crate::metrics::api::ApiMetricsLayer::new(state.metrics.clone(), kind);
    let http_svc = tower::ServiceBuilder::new()
        .layer(metered(crate::metrics::api::Kind::Http))
        .layer(token::ApiTokenLayer::new(api_token_sha, Api::Http))
        .service(http::router(state.clone()));
    let grpc_svc = tower::ServiceBuilder::new()
        .layer(metered(crate::metrics::api::Kind::Grpc))
        .layer(token::ApiTokenLayer::new(api_token_sha, Api::Grpc))
        .map_response(|r: ::http::Response<tonic::body::Body>| {
            grpc::too_large_is_resource_exhausted(r).map(axum::body::Body::new)
        })
        .service(grpc::routes(state.clone()));
    let channel = {
        let (http_svc, grpc_svc) = (http_svc.clone(), grpc_svc.clone());
        ChannelApi::new(tower::service_fn(move |req: ::http::Request<tonic::body::Body>| {
            let (http_svc, grpc_svc) = (http_svc.clone(), grpc_svc.clone());
            async move {
                use tower::ServiceExt;
                if dialback_channel::h2::is_grpc(req.headers()) {
                    grpc_svc.oneshot(req).await
                } else {
                    http_svc.oneshot(req).await
                }
            }
        }))
    };
    let mut apis = Apis { http: Vec::new(), grpc: Vec::new(), bridge: None, metrics: None, tasks: Vec::new(), channel };
    if let Some(addr) = config.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::MetricsBind { addr, source })?;
        apis.metrics = Some(l.local_addr().map_err(|source| StartError::MetricsBind { addr, source })?);
        let registry = state.callback.as_ref().map(|c| c.registry.clone());
        let up = move || registry.as_ref().and_then(|r| r.current()).map(|live| live.info.transport);
        let svc = crate::metrics::service(state.metrics.clone(), up);
        apis.tasks.push(tokio::spawn(serve::serve(l, svc, serve_limits, "metrics", stop.clone(), grace.clone())));
    }
    for addr in &config.http_addrs {
        let l = bind("HTTP", *addr).await?;
        apis.http.push(l.local_addr().map_err(|source| StartError::Bind { api: "HTTP", addr: *addr, source })?);
        let serving = serve::serve(l, http_svc.clone(), serve_limits, "HTTP", stop.clone(), grace.clone());
        apis.tasks.push(tokio::spawn(serving));
    }
    for addr in &config.grpc_addrs {
        let l = bind("gRPC", *addr).await?;
        apis.grpc.push(l.local_addr().map_err(|source| StartError::Bind { api: "gRPC", addr: *addr, source })?);
        let serving = serve::serve(l, grpc_svc.clone(), serve_limits, "gRPC", stop.clone(), grace.clone());
        apis.tasks.push(tokio::spawn(serving));
    }
    // Bridge mode: daprd's app port, served like the API ports (the same
    // bounds on what a connection may hold) but carrying daprd's calls to
    // the app instead of serving them.
    if let (Some(settings), Some(cb)) = (&config.bridge, &state.callback) {
        let addr = settings.addr;
        let l = bind("bridge", addr).await?;
        apis.bridge = Some(l.local_addr().map_err(|source| StartError::Bind { api: "bridge", addr, source })?);
        // With daprd's gRPC API at hand, the app's subscriptions are held
        // as streaming subscriptions that follow its channel.
        let relaying = state.upstream_grpc.is_some();
        let told = Arc::new(crate::bridge::bindings::Told::default());
        if let Some(upstream) = state.upstream_grpc.clone() {
            let relay = crate::bridge::relay::Relay {
                told: told.clone(),
                registry: cb.registry.clone(),
                upstream,
                protocol: settings.protocol,
                app_token: settings.app_token.as_deref().and_then(|t| ::http::HeaderValue::from_str(t).ok()),
                call_timeout: limits.app_call_timeout,
                reload_daprd: settings.reload_daprd_pid_file.clone(),
                reloads: Arc::default(),
            };
            apis.tasks.push(tokio::spawn(relay.run(stop.clone())));
        }
        let bridge = crate::bridge::Bridge::new(
            cb.registry.clone(),
            state.wait_timeout,
            settings,
            relaying,
            told,
            state.metrics.clone(),
        );
        let serving = serve::serve(l, bridge, serve_limits, "bridge", stop.clone(), grace.clone());
        apis.tasks.push(tokio::spawn(serving));
    }
    Ok(apis)
}

async fn bind(api: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { api, addr, source })
}
