//! `dialbackd`'s flags, named like daprd's where daprd has them, and their
//! validation into a [`Config`] before anything is bound.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dialback_channel::{KeepAlive, Timeouts, Transports};

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

    /// Keepalive interval on a quiet channel (QUIC keepalive, TCP keepalive, HTTP/2 PING).
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

    /// Callback-channel handshakes in flight at once, per transport.
    #[arg(long, default_value_t = 128)]
    pub callback_max_handshakes: usize,

    /// Callback-channel handshakes in flight at once from one IP address.
    #[arg(long, default_value_t = 16)]
    pub callback_max_handshakes_per_ip: usize,

    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

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
    /// Advertised HOST:PORT, if any.
    pub advertise: Option<String>,
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
    /// The advertise address is not HOST:PORT.
    #[error("--callback-advertise-address {0:?} is not HOST:PORT")]
    BadAdvertise(String),
    /// A timeout of zero would fail every call.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
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
        if let Some(adv) = &a.callback_advertise_address {
            let ok = adv.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                return Err(ConfigError::BadAdvertise(adv.clone()));
            }
        }
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
            advertise: a.callback_advertise_address,
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
            app_id,
        })
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

/// Parses a size as daprd's `--max-body-size` does (a Kubernetes-style
/// quantity): a bare number of bytes, or one with a suffix `Ki`, `Mi`, `Gi`
/// (powers of 1024) or `k`, `M`, `G` (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 4Mi, 512Ki or 1048576"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use Ki, Mi, Gi, k, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest duration a flag takes: far beyond any sensible timeout, and
/// far below where adding it to a clock would overflow (and panic).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds; fails on
/// anything else or on more than [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the limit of {}s (100 years)", MAX_DURATION.as_secs()));
    }
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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
