//! `dialbackd`'s flags ([`Cli`], in `cli.rs`) and their validation into a
//! [`Config`] before anything is bound.

mod cli;
mod units;

use std::path::PathBuf;
use std::time::Duration;

use dialback_channel::{KeepAlive, Timeouts, Transports};

pub use cli::{BridgeProtocol, CallStreams, CertsCommand, Cli, Command, RunArgs};
pub use units::{MAX_DURATION, parse_duration, parse_size};

/// How the sidecar reaches its app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// No app configured: invocations fail with a clear error.
    None,
    /// Classic: dial the app's gRPC server.
    Classic {
        /// host:port of the app's server.
        address: String,
    },
    /// The app dials in over the callback channel.
    Callback,
}

/// Identity source for the callback channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files given by flags.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generated once into the state dir.
    Generated,
}

/// A validated sidecar configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The served app's id.
    pub app_id: String,
    /// HTTP API listen addresses (port 0 allowed).
    pub http_addrs: Vec<std::net::SocketAddr>,
    /// gRPC API listen addresses (port 0 allowed).
    pub grpc_addrs: Vec<std::net::SocketAddr>,
    /// How the app is reached.
    pub mode: AppMode,
    /// Callback listener address.
    pub callback_addr: std::net::SocketAddr,
    /// Callback transports accepted.
    pub transports: Transports,
    /// Where apps are told to dial (`--callback-advertise-address`), if set.
    pub advertise: Option<Advertise>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Bound on waiting for a down channel.
    pub wait_timeout: Duration,
    /// Channel timeouts.
    pub timeouts: Timeouts,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Where the identity comes from.
    pub certs: CertSource,
    /// Client CA for mTLS.
    pub client_ca: Option<PathBuf>,
    /// Extra SANs.
    pub server_names: Vec<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// API token.
    pub api_token: Option<String>,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// What one caller or stranger may hold.
    pub limits: Limits,
    /// Bridge mode: where daprd's `--app-port` points (callback mode only), and how.
    pub bridge: Option<BridgeSettings>,
    /// The daprd behind dialbackd: its gRPC API (HOST:PORT).
    pub upstream_grpc: Option<String>,
    /// The daprd behind dialbackd: its HTTP API (HOST:PORT).
    pub upstream_http: Option<String>,
    /// QUIC's congestion controller on the channel (for what the sidecar sends).
    pub congestion: dialback_channel::Congestion,
    /// How calls to an app on QUIC travel: one stream, or one each.
    pub call_streams: CallStreams,
    /// Whether an app's own API calls may ride its QUIC channel as HTTP/3.
    pub api_over_http3: bool,
    /// Where the metrics server binds; `None`: no metrics server.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where the hop's spans are exported (OTLP/gRPC), and the sampling
    /// rate of traces the sidecar starts; `None`: no export.
    pub otlp: Option<(http::Uri, f64)>,
}

/// Bridge mode: the port daprd's `--app-port` points at and what daprd speaks there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSettings {
    /// Where the bridge port binds.
    pub addr: std::net::SocketAddr,
    /// daprd's `--app-protocol`.
    pub protocol: BridgeProtocol,
    /// daprd's `--app-health-check-path` (HTTP app protocol).
    pub health_path: String,
    /// daprd's `APP_API_TOKEN`, required on the bridge port when set.
    pub app_token: Option<String>,
    /// `--bridge-reload-daprd-pid-file`: whom to send SIGHUP when the app
    /// declares input bindings daprd was not told of.
    pub reload_daprd_pid_file: Option<std::path::PathBuf>,
}

/// The bounds on calls and API connections (see the flags of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `--max-body-size` in bytes.
    pub max_body_size: usize,
    /// `--app-max-concurrency`; `None`: the channel's stream limit.
    pub app_max_concurrency: Option<usize>,
    /// `--app-max-pending`.
    pub app_max_pending: usize,
    /// `--app-call-timeout`.
    pub app_call_timeout: Duration,
    /// `--max-body-bytes-in-flight`.
    pub body_bytes_in_flight: usize,
    /// `--api-max-connections`.
    pub api_max_connections: usize,
    /// `--api-header-timeout`.
    pub api_header_timeout: Duration,
    /// `--api-idle-timeout`.
    pub api_idle_timeout: Duration,
    /// `--callback-max-handshakes`.
    pub callback_max_handshakes: usize,
    /// `--callback-max-handshakes-per-ip`.
    pub callback_max_handshakes_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: 4 << 20,
            app_max_concurrency: None,
            app_max_pending: 512,
            app_call_timeout: Duration::from_secs(60),
            body_bytes_in_flight: 256 << 20,
            api_max_connections: 1000,
            api_header_timeout: Duration::from_secs(10),
            api_idle_timeout: Duration::from_secs(60),
            callback_max_handshakes: 128,
            callback_max_handshakes_per_ip: 16,
        }
    }
}

/// A flag combination that cannot work; `main` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--app-id` is required to run.
    #[error("--app-id is required (or APP_ID)")]
    NoAppId,
    /// The app-id has characters that do not fit in a URL path or header.
    #[error("--app-id {0:?} must be 1-256 characters of [A-Za-z0-9._-]")]
    BadAppId(String),
    /// Classic and callback modes exclude each other.
    #[error(
        "--app-port and --enable-callback-channel are mutually exclusive: the sidecar either dials the app (--app-port) or the app dials the sidecar (--enable-callback-channel)"
    )]
    ModeConflict,
    /// The bridge carries daprd's calls over the callback channel.
    #[error(
        "--bridge-app-port needs --enable-callback-channel: the bridge carries daprd's calls to the app over its callback channel"
    )]
    BridgeNeedsCallback,
    /// The advertise address is not HOST:PORT.
    #[error("--callback-advertise-address {0:?} is not HOST:PORT")]
    BadAdvertise(String),
    /// A timeout of zero would fail every call.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The OTLP endpoint is not `http://HOST:PORT`.
    #[error(
        "--otlp-endpoint {0:?} must be http://HOST:PORT (OTLP over gRPC, e.g. a local collector's 4317; TLS to a collector is not built in: run a collector beside dialbackd)"
    )]
    BadOtlpEndpoint(String),
    /// The sampling rate is a share.
    #[error("--trace-sampling-rate {0} must be between 0 and 1")]
    BadSamplingRate(f64),
    /// Keepalive must be shorter than the idle timeout.
    #[error("--callback-keepalive-interval must be shorter than --callback-idle-timeout")]
    KeepAliveTooLong,
    /// No listen address.
    #[error("--dapr-listen-addresses needs at least one address")]
    NoListenAddress,
    /// A count that must be at least one.
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    /// The body size limit is larger than the protocol allows.
    #[error("--max-body-size must be between 1 byte and 2Gi")]
    BadBodySize,
    /// The in-flight budget cannot hold even one body of the largest size.
    #[error("--max-body-bytes-in-flight must be at least --max-body-size")]
    BudgetTooSmall,
}

impl Config {
    /// Validates flags into a config; fails on any combination that cannot work.
    pub fn from_args(a: RunArgs) -> Result<Config, ConfigError> {
        let app_id = a.app_id.ok_or(ConfigError::NoAppId)?;
        if app_id.is_empty()
            || app_id.len() > 256
            || !app_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::BadAppId(app_id));
        }
        let mode = match (a.app_port, a.enable_callback_channel) {
            (Some(_), true) => return Err(ConfigError::ModeConflict),
            (Some(port), false) => AppMode::Classic { address: format!("{}:{port}", a.app_channel_address) },
            (None, true) => AppMode::Callback,
            (None, false) => AppMode::None,
        };
        if a.bridge_app_port.is_some() && !a.enable_callback_channel {
            return Err(ConfigError::BridgeNeedsCallback);
        }
        let advertise = match &a.callback_advertise_address {
            Some(adv) => Some(Advertise::parse(adv).ok_or_else(|| ConfigError::BadAdvertise(adv.clone()))?),
            None => None,
        };
        for (name, d) in [
            ("--callback-token-ttl", a.callback_token_ttl),
            ("--callback-wait-timeout", a.callback_wait_timeout),
            ("--callback-handshake-timeout", a.callback_handshake_timeout),
            ("--callback-keepalive-interval", a.callback_keepalive_interval),
            ("--callback-idle-timeout", a.callback_idle_timeout),
            ("--callback-ping-interval", a.callback_ping_interval),
            ("--app-call-timeout", a.app_call_timeout),
            ("--api-header-timeout", a.api_header_timeout),
            ("--api-idle-timeout", a.api_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if a.callback_keepalive_interval >= a.callback_idle_timeout {
            return Err(ConfigError::KeepAliveTooLong);
        }
        if a.dapr_listen_addresses.is_empty() {
            return Err(ConfigError::NoListenAddress);
        }
        for (name, n) in [
            ("--app-max-pending", a.app_max_pending),
            ("--api-max-connections", a.api_max_connections),
            ("--callback-max-handshakes", a.callback_max_handshakes),
            ("--callback-max-handshakes-per-ip", a.callback_max_handshakes_per_ip),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        if a.app_max_concurrency == 0 {
            return Err(ConfigError::ZeroCount("--app-max-concurrency (or -1 for no limit)"));
        }
        // gRPC's length prefix is 32 bits; keep a margin for the envelope.
        let max_body_size = match usize::try_from(a.max_body_size) {
            Ok(n) if n > 0 && n <= 2 << 30 => n,
            _ => return Err(ConfigError::BadBodySize),
        };
        let body_bytes_in_flight = usize::try_from(a.max_body_bytes_in_flight).unwrap_or(usize::MAX);
        if body_bytes_in_flight < max_body_size {
            return Err(ConfigError::BudgetTooSmall);
        }
        let otlp = otlp_endpoint(a.otlp_endpoint.as_deref(), a.trace_sampling_rate)?;
        let limits = Limits {
            max_body_size,
            app_max_concurrency: usize::try_from(a.app_max_concurrency).ok(),
            app_max_pending: a.app_max_pending,
            app_call_timeout: a.app_call_timeout,
            body_bytes_in_flight,
            api_max_connections: a.api_max_connections,
            api_header_timeout: a.api_header_timeout,
            api_idle_timeout: a.api_idle_timeout,
            callback_max_handshakes: a.callback_max_handshakes,
            callback_max_handshakes_per_ip: a.callback_max_handshakes_per_ip,
        };
        let addrs = |port| a.dapr_listen_addresses.iter().map(|ip| std::net::SocketAddr::new(*ip, port)).collect();
        let certs = match (a.callback_cert_file, a.callback_key_file) {
            (Some(cert), Some(key)) => CertSource::Files { cert, key },
            _ => CertSource::Generated,
        };
        let state_dir = a.state_dir.unwrap_or_else(|| default_state_dir(&app_id));
        Ok(Config {
            http_addrs: addrs(a.dapr_http_port),
            grpc_addrs: addrs(a.dapr_grpc_port),
            mode,
            callback_addr: std::net::SocketAddr::new(a.callback_listen_address, a.callback_channel_port),
            transports: a.callback_transport,
            advertise,
            token_ttl: a.callback_token_ttl,
            wait_timeout: a.callback_wait_timeout,
            timeouts: Timeouts {
                handshake: a.callback_handshake_timeout,
                keep_alive: KeepAlive {
                    interval: a.callback_keepalive_interval,
                    idle_timeout: a.callback_idle_timeout,
                },
            },
            ping_interval: a.callback_ping_interval,
            certs,
            client_ca: a.callback_client_ca_file,
            server_names: a.callback_server_names,
            state_dir,
            api_token: a.dapr_api_token.filter(|t| !t.is_empty()),
            shutdown_grace: Duration::from_secs(a.dapr_graceful_shutdown_seconds),
            limits,
            bridge: a.bridge_app_port.map(|p| BridgeSettings {
                addr: std::net::SocketAddr::new(a.bridge_app_address, p),
                protocol: a.bridge_app_protocol,
                health_path: a.bridge_app_health_path,
                app_token: a.bridge_app_token.filter(|t| !t.is_empty()),
                reload_daprd_pid_file: a.bridge_reload_daprd_pid_file,
            }),
            upstream_grpc: a.dapr_upstream_grpc,
            upstream_http: a.dapr_upstream_http,
            metrics_addr: a.enable_metrics.then(|| std::net::SocketAddr::new(a.metrics_listen_address, a.metrics_port)),
            otlp,
            congestion: a.callback_quic_congestion,
            call_streams: a.callback_quic_streams,
            api_over_http3: a.callback_api_over_http3,
            app_id,
        })
    }
}

/// The OTLP collector's endpoint, if given (empty: none), with the sampling rate.
fn otlp_endpoint(endpoint: Option<&str>, rate: f64) -> Result<Option<(http::Uri, f64)>, ConfigError> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::BadSamplingRate(rate));
    }
    let Some(e) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else { return Ok(None) };
    let uri: http::Uri = e.parse().map_err(|_| ConfigError::BadOtlpEndpoint(e.to_string()))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(Some((uri, rate))),
        _ => Err(ConfigError::BadOtlpEndpoint(e.to_string())),
    }
}

/// The callback address apps are told to dial, `HOST:PORT`, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    /// The host as given (an IPv6 literal keeps its brackets).
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

impl Advertise {
    /// `HOST:PORT` with a host and a port other than 0, else `None`.
    pub fn parse(s: &str) -> Option<Advertise> {
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
        (!host.is_empty()).then(|| Advertise { host: host.to_string(), port })
    }

    /// The host as a certificate names it (no brackets).
    pub fn name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl std::fmt::Display for Advertise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `$XDG_STATE_HOME/dialback/<app-id>`, else `~/.local/state/dialback/<app-id>`,
/// else the temp dir.
fn default_state_dir(app_id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("dialback").join(app_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("dialbackd").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        Config::from_args(cli.run).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_daprd() {
        let c = parse(&["--app-id", "a", "--state-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.http_addrs[0].port(), 3500);
        assert_eq!(c.grpc_addrs[0].port(), 50001);
        assert_eq!(c.mode, AppMode::None);
        assert_eq!(c.transports, Transports::AUTO);
        assert_eq!(c.token_ttl, Duration::from_secs(10));
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9090".parse().unwrap()));
    }

    #[test]
    fn metrics_flags_read_as_daprds() {
        let off = parse(&["--app-id", "a", "--enable-metrics=false"]).unwrap();
        assert_eq!(off.metrics_addr, None);
        let on = parse(&["--app-id", "a", "--enable-metrics", "--metrics-port", "0"]).unwrap();
        assert_eq!(on.metrics_addr, Some("0.0.0.0:0".parse().unwrap()));
        let local =
            parse(&["--app-id", "a", "--metrics-listen-address", "127.0.0.1", "--metrics-port", "9091"]).unwrap();
        assert_eq!(local.metrics_addr, Some("127.0.0.1:9091".parse().unwrap()));
    }

    #[test]
    fn app_port_and_callback_conflict() {
        let e = parse(&["--app-id", "a", "--app-port", "6000", "--enable-callback-channel"]).unwrap_err();
        assert!(e.contains("mutually exclusive"), "{e}");
    }

    #[test]
    fn modes() {
        let c = parse(&["--app-id", "a", "--app-port", "6000"]).unwrap();
        assert_eq!(c.mode, AppMode::Classic { address: "127.0.0.1:6000".into() });
        let c = parse(&["--app-id", "a", "--enable-callback-channel", "--callback-transport", "quic"]).unwrap();
        assert_eq!(c.mode, AppMode::Callback);
        assert_eq!(c.transports, Transports::QUIC);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--app-id", "a", "--callback-transport", "udp"]).is_err());
        assert!(parse(&[]).unwrap_err().contains("--app-id"));
        assert!(parse(&["--app-id", "a b"]).is_err());
        assert!(parse(&["--app-id", "a", "--callback-advertise-address", "nohost"]).is_err());
        assert!(parse(&["--app-id", "a", "--callback-advertise-address", "h:0"]).is_err());
        assert!(parse(&["--app-id", "a", "--callback-advertise-address", "relay.example:4433"]).is_ok());
        assert!(parse(&["--app-id", "a", "--callback-wait-timeout", "0s"]).is_err());
        assert!(parse(&["--app-id", "a", "--callback-keepalive-interval", "9s"]).is_err());
        assert!(parse(&["--app-id", "a", "--callback-cert-file", "c.pem"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi").unwrap(), 4 << 20);
        assert_eq!(parse_size("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2M").unwrap(), 2_000_000);
        assert!(parse_size("4MB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999Gi").is_err());
        let c = parse(&["--app-id", "a"]).unwrap();
        assert_eq!(c.limits, Limits::default(), "the flags' defaults and Limits::default() agree");
        assert!(parse(&["--app-id", "a", "--max-body-size", "0"]).is_err());
        assert!(parse(&["--app-id", "a", "--max-body-size", "8Mi", "--max-body-bytes-in-flight", "4Mi"]).is_err());
        assert!(parse(&["--app-id", "a", "--app-max-concurrency", "0"]).is_err());
        let c = parse(&["--app-id", "a", "--app-max-concurrency", "8"]).unwrap();
        assert_eq!(c.limits.app_max_concurrency, Some(8));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
