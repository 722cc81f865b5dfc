//! `dialbackd`'s flags (clap), named like daprd's where daprd has them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dialback_channel::Transports;

use super::units::{parse_duration, parse_size};

/// dialbackd: a Dapr-style sidecar that calls its app back over a channel
/// the app dialed (QUIC or TCP+TLS), so the app needs no listening socket.
#[derive(Parser, Debug)]
#[command(name = "dialbackd", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A maintenance command instead of running the sidecar.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The sidecar's flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Maintenance commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Development certificates.
    Certs {
        /// What to do with them.
        #[command(subcommand)]
        command: CertsCommand,
    },
}

/// `dialbackd certs ...`
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a dev PKI: a CA, a server certificate and client certificates naming app-ids.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// App-ids to mint client certificates for (repeatable).
        #[arg(long = "app-id", default_value = "app")]
        app_ids: Vec<String>,
        /// Extra DNS names or IPs for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// The flags of a running sidecar.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The id of the app this sidecar serves.
    #[arg(long, env = "APP_ID")]
    pub app_id: Option<String>,

    /// Port of the Dapr-style HTTP API.
    #[arg(long, env = "DAPR_HTTP_PORT", default_value_t = 3500)]
    pub dapr_http_port: u16,

    /// Port of the Dapr-style gRPC API (InvokeService, ConnectAppCallback).
    #[arg(long, env = "DAPR_GRPC_PORT", default_value_t = 50001)]
    pub dapr_grpc_port: u16,

    /// Addresses the HTTP and gRPC APIs listen on, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub dapr_listen_addresses: Vec<IpAddr>,

    /// Classic mode: the app's own gRPC server port, which the sidecar dials.
    #[arg(long, env = "APP_PORT")]
    pub app_port: Option<u16>,

    /// Classic mode: the host the app's gRPC server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub app_channel_address: String,

    /// Accept app callback channels instead of dialing the app.
    #[arg(long)]
    pub enable_callback_channel: bool,

    /// Bridge mode: the gRPC API of the daprd behind dialbackd (HOST:PORT).
    /// gRPC calls dialbackd does not serve itself go on to it.
    #[arg(long)]
    pub dapr_upstream_grpc: Option<String>,

    /// Bridge mode: the HTTP API of the daprd behind dialbackd (HOST:PORT).
    /// HTTP calls dialbackd does not serve itself go on to it.
    #[arg(long)]
    pub dapr_upstream_http: Option<String>,

    /// Bridge mode: the port a real daprd's `--app-port` points at. Every
    /// request daprd sends there (any gRPC method, or HTTP with daprd's
    /// `--app-protocol http`) goes to the app over its callback channel, as is.
    /// Needs --enable-callback-channel; 0 picks a free port.
    #[arg(long)]
    pub bridge_app_port: Option<u16>,

    /// Address the bridge port binds (keep it on loopback, next to daprd).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bridge_app_address: IpAddr,

    /// Bridge mode: daprd's `--app-protocol` (grpc or http). It decides how
    /// the bridge answers daprd's health probe and how the app's
    /// subscriptions are asked for and delivered.
    #[arg(long, value_enum, default_value = "grpc")]
    pub bridge_app_protocol: BridgeProtocol,

    /// Bridge mode, HTTP app protocol: daprd's `--app-health-check-path`,
    /// answered by the bridge itself (2xx exactly while the app's channel is up).
    #[arg(long, default_value = "/healthz")]
    pub bridge_app_health_path: String,

    /// Bridge mode: daprd's `APP_API_TOKEN`. Calls on the bridge port must
    /// carry it as `dapr-api-token` (daprd sends it on invocations, events
    /// and bindings), else they are refused and never reach the app; it
    /// passes on to the app as daprd sent it. daprd's listing and health
    /// calls, which carry no token, are exempt.
    #[arg(long, env = "APP_API_TOKEN", hide_env_values = true)]
    pub bridge_app_token: Option<String>,

    /// Bridge mode, gRPC app protocol: a file holding daprd's pid. daprd
    /// asks a gRPC app for its input bindings once per run; when the app
    /// comes back declaring one daprd was not told of, dialbackd sends
    /// that daprd SIGHUP, which restarts its runtime in place and asks
    /// again. Without it, dialbackd only warns. daprd must run on this
    /// host, in this PID namespace; keep the file writable by its owner only.
    #[arg(long, value_name = "PATH")]
    pub bridge_reload_daprd_pid_file: Option<std::path::PathBuf>,

    /// UDP (QUIC) and TCP port of the callback channel listener; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub callback_channel_port: u16,

    /// Address the callback channel listener binds.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub callback_listen_address: IpAddr,

    /// Transports the callback channel accepts: quic, tcp or auto (both).
    #[arg(long, default_value = "auto")]
    pub callback_transport: Transports,

    /// HOST:PORT that ConnectAppCallback tells apps to dial (NAT, load balancer, relay).
    #[arg(long)]
    pub callback_advertise_address: Option<String>,

    /// How long a ConnectAppCallback token stays valid (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub callback_token_ttl: Duration,

    /// How long a call waits for a down channel to come back before failing with 503/UNAVAILABLE.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub callback_wait_timeout: Duration,

    /// Bound on a channel's TLS handshake plus hello.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub callback_handshake_timeout: Duration,

    /// Keepalive interval on a quiet channel (TCP keepalive, HTTP/2 PING;
    /// QUIC keepalives come from the app; none for an app in the mobile profile).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub callback_keepalive_interval: Duration,

    /// A channel that hears nothing from the app this long is closed.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub callback_idle_timeout: Duration,

    /// Interval of the Ping stream; a ping unanswered for the idle timeout closes the channel.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub callback_ping_interval: Duration,

    /// Callback channel certificate (PEM); default: generated once and kept in the state dir.
    #[arg(long, requires = "callback_key_file")]
    pub callback_cert_file: Option<PathBuf>,

    /// Private key of --callback-cert-file (PEM).
    #[arg(long, requires = "callback_cert_file")]
    pub callback_key_file: Option<PathBuf>,

    /// CA (PEM) for app client certificates: enables mTLS app identity.
    #[arg(long)]
    pub callback_client_ca_file: Option<PathBuf>,

    /// Extra DNS names or IPs for the generated certificate (repeatable).
    #[arg(long = "callback-server-name")]
    pub callback_server_names: Vec<String>,

    /// Where the generated identity and the QUIC stateless-reset key live across restarts.
    #[arg(long, env = "DIALBACK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// API token every API call must carry (header/metadata `dapr-api-token`); apps may also dial with it.
    #[arg(long, env = "DAPR_API_TOKEN", hide_env_values = true)]
    pub dapr_api_token: Option<String>,

    /// How long calls in flight may run on shutdown before the sidecar exits.
    #[arg(long, default_value_t = 5)]
    pub dapr_graceful_shutdown_seconds: u64,

    /// Largest request body (HTTP) or message (gRPC) either API accepts, as a
    /// quantity (4Mi, 512Ki, 1048576); bigger calls get 413/RESOURCE_EXHAUSTED
    /// before anything reaches the app. The app's own limit, sent in its
    /// hello, lowers it for that app.
    #[arg(long, default_value = "4Mi", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Calls in flight to the app at once; -1: as many as the channel
    /// carries (its HTTP/2 stream limit).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub app_max_concurrency: i64,

    /// Calls that may wait for a free slot when the app is at its concurrency
    /// limit; beyond it a call gets 429/RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 512)]
    pub app_max_pending: usize,

    /// Bound on one invocation, from arrival to the app's answer, waiting for
    /// a channel or a slot included (504/DEADLINE_EXCEEDED); a gRPC caller's
    /// shorter grpc-timeout wins.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub app_call_timeout: Duration,

    /// Request bodies the HTTP API holds in memory at once, all calls
    /// together, as a quantity; a call that would exceed it waits (within
    /// its timeout) for room.
    #[arg(long, default_value = "256Mi", value_parser = parse_size)]
    pub max_body_bytes_in_flight: u64,

    /// Connections each API listener holds at once; at the limit the
    /// connection idle the longest is closed to make room.
    #[arg(long, default_value_t = 1000)]
    pub api_max_connections: usize,

    /// Bound on receiving a request's headers, and on an idle HTTP/1
    /// keep-alive connection (slow or silent clients are closed).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub api_header_timeout: Duration,

    /// An API connection with no request in flight for this long is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub api_idle_timeout: Duration,

    /// QUIC's congestion controller for calls to the app: cubic, newreno, bbr or tolerant.
    #[arg(long, default_value_t)]
    pub callback_quic_congestion: dialback_channel::Congestion,

    /// How calls to an app on QUIC travel: `single` (one stream carries
    /// them all, as over TCP) or `per-call` (a QUIC stream each, so a lost
    /// packet stalls only its own call; apps that do not speak dialback/2
    /// get `single`).
    #[arg(long, value_enum, default_value = "single")]
    pub callback_quic_streams: CallStreams,

    /// Serve an app's own calls to the APIs as HTTP/3 on its QUIC channel
    /// when its hello asks (one UDP flow; the calls migrate with the
    /// channel; the same token check as the API ports);
    /// `--callback-api-over-http3=false` sends them to the API ports.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub callback_api_over_http3: bool,

    /// Callback-channel handshakes in flight at once, per transport.
    #[arg(long, default_value_t = 128)]
    pub callback_max_handshakes: usize,

    /// Callback-channel handshakes in flight at once from one IP address.
    #[arg(long, default_value_t = 16)]
    pub callback_max_handshakes_per_ip: usize,

    /// Serve Prometheus metrics (as daprd does); `--enable-metrics=false` turns them off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_metrics: bool,

    /// Port of the metrics server (daprd's default, 9090; next to a daprd
    /// on the same host, give one of them another); 0 picks a free port.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,

    /// Address the metrics server binds (daprd's default: every interface).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub metrics_listen_address: IpAddr,

    /// Export the channel hop's spans over OTLP/gRPC to this collector
    /// (`http://HOST:PORT`, e.g. a local OpenTelemetry Collector's 4317);
    /// calls without a trace then start one.
    // A flag only: OTEL_EXPORTER_OTLP_ENDPOINT, set for other processes,
    // must not change or stop this one.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,

    /// Share of calls without a caller's trace that start a sampled one,
    /// 0 to 1 (daprd's `samplingRate`); a caller's trace keeps its own flag.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sampling_rate: f64,

    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Threads that run the sidecar's work (default: one per core, or
    /// TOKIO_WORKER_THREADS). Next to one app on a box of two cores or
    /// so, 1 measured faster and cheaper (docs/benchmarks.md).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// How calls to an app on QUIC travel (`--callback-quic-streams`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallStreams {
    /// One QUIC stream carries every call (one HTTP/2 connection).
    #[default]
    Single,
    /// Each call on a QUIC stream (an HTTP/2 connection) of its own.
    PerCall,
}

/// daprd's app protocols the bridge speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// gRPC: Dapr's `AppCallback` services.
    Grpc,
    /// HTTP: the app's routes (`/dapr/subscribe`, event routes, methods).
    Http,
}
