//! `dialbackd`, the dialback sidecar: a Dapr-style HTTP and gRPC API in
//! front of one app, which it reaches either by dialing the app's gRPC
//! server (classic `--app-port`) or over a callback channel the app dialed.
//!
//! Entry points: [`Config`] (validated flags), [`start`] (binds everything
//! and returns a [`Running`] sidecar), [`run`] (start, wait, shut down).

mod api;
mod app;
mod appchannel;
mod auth;
mod bridge;
pub mod config;
mod error;
mod guarded;
mod hex;
mod invoke;
mod issued;
mod metrics;
mod reconnect;
mod state;
pub mod statedir;
mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dialback_certs::Identity;
use dialback_channel::{CloseCode, Listener, ListenerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use api::{raise_fd_limit, to_invoke_request};
pub use config::{AppMode, CertSource, Cli, Config, ConfigError};
pub use error::InvokeError;

use crate::app::AppChannel;
use crate::appchannel::{CallbackPolicy, Registry};
use crate::state::{CallbackInfo, Sidecar};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An API port could not be bound.
    #[error("cannot bind the {api} API on {addr}: {source}")]
    Bind {
        /// `HTTP` or `gRPC`.
        api: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The callback listener could not be bound.
    #[error(transparent)]
    Callback(#[from] dialback_channel::BindError),
    /// The certificate or key could not be loaded or generated.
    #[error("callback channel identity: {0}")]
    Identity(#[from] dialback_certs::LoadError),
    /// The client CA (`--callback-client-ca-file`) could not be loaded.
    #[error("callback channel client CA: {0}")]
    ClientCa(dialback_certs::LoadError),
    /// The CA of the app's client certificates could not be loaded or made.
    #[error("state dir: the app's client certificate CA: {0}")]
    AppCa(String),
    /// The TLS configuration could not be built from the identity.
    #[error("callback channel TLS: {0}")]
    Tls(#[from] dialback_certs::ConfigError),
    /// A file in the state directory could not be written.
    #[error("state dir: {0}")]
    StateFile(dialback_certs::SaveError),
    /// The state directory could not be used.
    #[error("state dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metrics port could not be bound.
    #[error(
        "cannot bind the metrics server on {addr} (--metrics-port, --metrics-listen-address; \
         --enable-metrics=false turns it off): {source}"
    )]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metrics could not be set up (a programming error).
    #[error("metrics: {0}")]
    Metrics(String),
    /// An upstream daprd address is not usable.
    #[error("{0}")]
    Upstream(String),
    /// The classic app address is not a valid URI.
    #[error("--app-port: bad app address {0}")]
    AppAddress(String),
}

/// A started sidecar: its bound addresses and the handle to stop it.
pub struct Running {
    /// HTTP API addresses.
    pub http: Vec<SocketAddr>,
    /// gRPC API addresses.
    pub grpc: Vec<SocketAddr>,
    /// The callback listener's address, in callback mode.
    pub callback: Option<SocketAddr>,
    /// The bridge port (where daprd's `--app-port` points), in bridge mode.
    pub bridge: Option<SocketAddr>,
    /// The metrics server's address, unless `--enable-metrics=false`.
    pub metrics: Option<SocketAddr>,
    state: Arc<Sidecar>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    grace: Duration,
    grace_deadline: Arc<OnceLock<tokio::time::Instant>>,
}

impl Running {
    /// The one line printed once every listener is bound; scripts and tests wait for it.
    pub fn ready_line(&self) -> String {
        let list = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let mut line =
            format!("dialbackd ready app_id={} http={} grpc={}", self.state.app_id, list(&self.http), list(&self.grpc));
        match &self.state.callback {
            Some(cb) => line.push_str(&format!(
                " callback={} transports={} cert_sha256={}",
                cb.listen,
                cb.transports,
                cb.fingerprint.to_hex()
            )),
            None => line.push_str(match &self.state.app {
                AppChannel::Classic(_) => " mode=classic",
                _ => " mode=none",
            }),
        }
        if let Some(bridge) = self.bridge {
            line.push_str(&format!(" bridge={bridge}"));
        }
        if let Some(metrics) = self.metrics {
            line.push_str(&format!(" metrics={metrics}"));
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            line.push_str(&format!(" workers={}", rt.metrics().num_workers()));
        }
        line
    }

    /// Stops accepting, lets calls in flight finish (bounded by the
    /// configured grace), closes the app channel, and returns.
    ///
    /// Everything drains at once against one deadline: the whole shutdown
    /// takes at most the grace period (plus a moment to close).
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = self.grace_deadline.set(deadline);
        self.stop.cancel();
        let retiring = async {
            if let Some(cb) = &self.state.callback
                && let Some(live) = cb.registry.take()
            {
                live.retire(CloseCode::ShuttingDown, self.grace);
                live.ended().await;
            }
        };
        let tasks = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout_at(deadline, async { tokio::join!(retiring, tasks) }).await;
    }
}

/// Starts the sidecar: loads or makes its identity, binds the callback
/// listener and both APIs. Fails when anything cannot be bound or loaded.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let api_token_sha = config.api_token.as_deref().map(auth::sha256);
    let tokens = Arc::new(Mutex::new(auth::TokenStore::default()));
    let metrics = Arc::new(metrics::Metrics::new(&config.app_id).map_err(|e| StartError::Metrics(e.to_string()))?);
    // The APIs, once bound, for the apps' HTTP/3 calls on their channels
    // (a channel may come up before they are).
    let (channel_api, api_for_channels) = tokio::sync::watch::channel(None);

    // The resets for the apps of the previous run go out once the API is
    // bound: an app that hears of the restart asks it at once.
    let mut previous_run = None;
    let (app, callback) = match &config.mode {
        AppMode::None => (AppChannel::None, None),
        AppMode::Classic { address } => {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .map_err(|_| StartError::AppAddress(address.clone()))?
                .tcp_nodelay(true)
                .initial_stream_window_size(dialback_channel::h2::STREAM_WINDOW)
                .initial_connection_window_size(dialback_channel::h2::CONN_WINDOW)
                .max_frame_size(dialback_channel::h2::MAX_FRAME)
                .connect_timeout(Duration::from_secs(5));
            (AppChannel::Classic(ep.connect_lazy()), None)
        }
        AppMode::Callback => {
            let (info, mut listener) = bind_callback(&config, api_token_sha, tokens.clone(), metrics.clone()).await?;
            previous_run = listener.previous_run();
            let policy = CallbackPolicy {
                app_id: config.app_id.clone(),
                keep_alive: config.timeouts.keep_alive,
                ping_interval: config.ping_interval,
                handshake: config.timeouts.handshake,
                drain: config.shutdown_grace,
                stream_per_call: config.call_streams == config::CallStreams::PerCall,
                state_dir: config.state_dir.clone(),
                metrics: metrics.clone(),
                api: api_for_channels,
                probes: Default::default(),
            };
            tasks.push(tokio::spawn(appchannel::accept_loop(listener, info.registry.clone(), policy, stop.clone())));
            (AppChannel::Callback(info.registry.clone()), Some(info))
        }
    };

    let spans = match &config.otlp {
        Some((endpoint, rate)) => {
            let (exporter, task) =
                trace::otlp::Exporter::start(endpoint.clone(), &config.app_id, *rate, metrics.registry(), stop.clone())
                    .map_err(|e| StartError::Metrics(e.to_string()))?;
            tasks.push(task);
            Some(exporter)
        }
        None => None,
    };
    let state = Arc::new(Sidecar {
        app_id: config.app_id.clone(),
        app,
        wait_timeout: config.wait_timeout,
        tokens,
        token_ttl: config.token_ttl,
        callback,
        limits: config.limits,
        gate: app::CallGate::new(
            config.limits.app_max_concurrency.unwrap_or(dialback_channel::h2::APP_CALL_STREAMS),
            config.limits.app_max_pending,
        ),
        body_budget: Arc::new(tokio::sync::Semaphore::new(
            (config.limits.body_bytes_in_flight / 1024).min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        upstream_grpc: (config.upstream_grpc.as_deref())
            .map(|a| api::upstream::GrpcUpstream::new(a, config.api_token.as_deref()))
            .transpose()
            .map_err(StartError::Upstream)?,
        upstream_http: (config.upstream_http.as_deref())
            .map(|a| api::upstream::HttpUpstream::new(a, config.api_token.as_deref()))
            .transpose()
            .map_err(StartError::Upstream)?,
        own_calls_via_daprd: config.bridge.as_ref().is_some_and(|b| b.protocol == config::BridgeProtocol::Http),
        metrics,
        spans,
    });

    let grace_deadline = Arc::new(OnceLock::new());
    let apis = api::start(&config, state.clone(), api_token_sha, &stop, &grace_deadline).await?;
    if let Some(previous) = previous_run {
        previous.reset();
    }
    channel_api.send_replace(Some(apis.channel));
    tasks.extend(apis.tasks);
    let bridge = apis.bridge;
    let callback_addr = state.callback.as_ref().map(|c| c.listen);
    Ok(Running {
        http: apis.http,
        grpc: apis.grpc,
        callback: callback_addr,
        bridge,
        metrics: apis.metrics,
        state,
        stop,
        tasks,
        grace: config.shutdown_grace,
        grace_deadline,
    })
}

async fn bind_callback(
    config: &Config,
    api_token_sha: Option<[u8; 32]>,
    tokens: Arc<Mutex<auth::TokenStore>>,
    metrics: Arc<metrics::Metrics>,
) -> Result<(CallbackInfo, Listener), StartError> {
    let state_dir = statedir::ensure(&config.state_dir)?;
    let mut names = dialback_certs::default_server_names();
    names.extend(config.server_names.iter().cloned());
    if let Some(adv) = &config.advertise {
        names.push(adv.name().to_string());
    }
    names.dedup();
    let identity = match &config.certs {
        CertSource::Files { cert, key } => Identity::load_pem(cert, key)?,
        CertSource::Generated => Identity::load_or_generate(&state_dir, &names)?,
    };
    // Client certificates are verified against the configured client CA
    // and the sidecar's own, which issues the app the certificate it
    // presents in later dials (see `issued`).
    let issuer = Arc::new(issued::Issuer::load_or_generate(&state_dir, &config.app_id)?);
    let mut client_roots = issuer.roots();
    let mtls = match &config.client_ca {
        Some(path) => {
            let user = dialback_certs::load_roots(path).map_err(StartError::ClientCa)?;
            client_roots.roots.extend(user.roots);
            true
        }
        None => false,
    };
    let mut tls = dialback_certs::server_config(&identity, Some(Arc::new(client_roots)))?;
    // Session tickets sealed under a kept key: an app's redial resumes its
    // session even after a restart, and the session names the app.
    tls.ticketer = Arc::new(dialback_certs::SealedTickets::new(&statedir::ticket_key(&state_dir)?));
    let reset_key = statedir::reset_key(&state_dir)?;
    let reconnect = reconnect::ReconnectKey::new(&statedir::reconnect_key(&state_dir)?);
    let registry = Arc::new(Registry::default());
    // Where the previous run last saw its QUIC app: where a resumed redial
    // may come from early (see `appchannel::driver::try_early`).
    let previous = statedir::load_peers(&state_dir);
    if let Some(peer) = previous.0.first() {
        registry.seed_peer(*peer);
    }
    let auth = Arc::new(auth::ChannelAuth {
        app_id: config.app_id.clone(),
        api_token_sha,
        tokens,
        mtls,
        issuer: issuer.clone(),
        registry: registry.clone(),
        reconnect,
    });
    let listener = Listener::bind(
        ListenerConfig {
            addr: config.callback_addr,
            transports: config.transports,
            tls: Arc::new(tls),
            timeouts: config.timeouts,
            reset_key: Some(reset_key),
            max_handshakes: config.limits.callback_max_handshakes,
            max_handshakes_per_ip: config.limits.callback_max_handshakes_per_ip,
            reset_previous: previous,
            events: metrics,
            congestion: config.congestion,
            api_over_http3: config.api_over_http3,
        },
        auth,
    )
    .await?;
    let info = CallbackInfo {
        listen: listener.local_addr(),
        transports: config.transports,
        advertise: config.advertise.clone(),
        fingerprint: identity.fingerprint(),
        server_name: dialback_certs::DEFAULT_SERVER_NAME.to_string(),
        registry,
        issuer,
    };
    Ok((info, listener))
}

/// Runs the sidecar until `shutdown` resolves: starts it, prints the ready
/// line on stdout, then shuts down gracefully. Fails when it cannot start.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config).await?;
    let line = running.ready_line();
    info!("{line}");
    println!("{line}");
    shutdown.await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}
