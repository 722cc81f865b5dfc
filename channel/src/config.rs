//! Timeouts and keepalive policy shared by both ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::Transports;
use crate::congestion::Congestion;
use crate::error::DialError;

/// How a live channel notices a dead path.
///
/// QUIC uses them as its keepalive interval and idle timeout; TCP uses the
/// interval for TCP keepalive probes and HTTP/2 PINGs. Defaults detect a
/// dead path within a few seconds while sending one small packet every
/// couple of seconds, a fair trade on mobile links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// Send a keepalive when the connection has been quiet this long.
    pub interval: Duration,
    /// Declare the connection dead after this long without hearing the peer.
    pub idle_timeout: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive { interval: Duration::from_secs(2), idle_timeout: Duration::from_secs(6) }
    }
}

/// How a channel proves itself alive while idle: the app chooses in its
/// hello, since the app knows it is on a battery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// Both ends keep the channel alive, every [`KeepAlive::interval`]:
    /// QUIC keepalives (TCP keepalive probes), HTTP/2 PINGs and the
    /// sidecar's Ping stream. A dead path is found in seconds, at the cost
    /// of a radio that never sleeps.
    #[default]
    Default,
    /// For a phone: the app sends one keepalive every `beat` (a QUIC PING
    /// or a TCP keepalive probe, which the sidecar acknowledges) and
    /// neither end sends anything else while idle: no HTTP/2 PINGs, no
    /// periodic Ping, no keepalive from the sidecar. A dead path is found
    /// by the app's idle timeout, i.e. after a few beats.
    Mobile {
        /// The keepalive period; UDP mappings on carrier NATs last about
        /// 30 s, so 25 s keeps them ([`MOBILE_BEAT`]).
        beat: Duration,
    },
}

/// The mobile profile's default beat: under the ~30 s that UDP mappings on
/// carrier NATs last, and no more often than RFC 9308 advises.
pub const MOBILE_BEAT: Duration = Duration::from_secs(25);

/// The longest QUIC idle timeout the sidecar accepts (the effective one is
/// the smaller of both ends'), so a mobile app's own timeout of a few beats
/// holds; the default profile's apps ask for seconds.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Liveness {
    /// The profile a hello's `liveness_beat_ms` asks for.
    pub fn from_hello(beat_ms: u32) -> Liveness {
        match beat_ms {
            0 => Liveness::Default,
            ms => Liveness::Mobile { beat: Duration::from_millis(u64::from(ms)) },
        }
    }

    /// The hello's `liveness_beat_ms` for this profile.
    pub fn to_hello(self) -> u32 {
        match self {
            Liveness::Default => 0,
            Liveness::Mobile { beat } => u32::try_from(beat.as_millis()).unwrap_or(u32::MAX).max(1),
        }
    }

    /// The mobile beat, if any.
    pub fn beat(self) -> Option<Duration> {
        match self {
            Liveness::Default => None,
            Liveness::Mobile { beat } => Some(beat),
        }
    }
}

/// Every time bound of the channel layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Bound on connect + TLS + hello/verdict, on both sides.
    pub handshake: Duration,
    /// Liveness of an established connection.
    pub keep_alive: KeepAlive,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { handshake: Duration::from_secs(5), keep_alive: KeepAlive::default() }
    }
}

impl KeepAlive {
    /// quinn's transport config for this policy, with congestion controller `cc`.
    pub(crate) fn quic_transport(&self, cc: Congestion) -> Arc<quinn::TransportConfig> {
        Arc::new(self.quic_transport_config(cc))
    }

    fn quic_transport_config(&self, cc: Congestion) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.congestion_controller_factory(cc.factory());
        t.keep_alive_interval(Some(self.interval));
        // An idle timeout beyond QUIC's varint range falls back to quinn's default.
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        // One stream carries every call: give it room for large payloads.
        t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
        t.receive_window(quinn::VarInt::from_u32(CONN_RECEIVE_WINDOW));
        t.send_window(u64::from(CONN_RECEIVE_WINDOW));
        // With a stream per call (dialback/2) the sidecar opens one per call
        // in flight: as many as the HTTP/2 connection would carry.
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(crate::h2::MAX_STREAMS));
        // No QUIC datagrams: nothing uses them, and quinn's default keeps up
        // to 1.25 MB of them unread per connection, which a peer that has
        // only finished TLS could park in the sidecar. A DATAGRAM frame now
        // closes the connection (PROTOCOL_VIOLATION).
        t.datagram_receive_buffer_size(None);
        t
    }

    /// The sidecar's transport config: as [`KeepAlive::quic_transport`], but
    /// with no keepalive of its own (the app's keepalive, and in the default
    /// profile the Ping stream, keep the path alive; a mobile app's radio
    /// must not be woken by the sidecar) and an idle timeout of at least
    /// [`MAX_IDLE_TIMEOUT`] (the app's own, smaller, is the one in force).
    /// What a peer that has not yet proven itself can make it hold is small:
    /// one bidirectional stream (the hello's), no unidirectional streams, no
    /// datagrams, and a connection window of [`PRE_HELLO_WINDOW`]. The window opens to
    /// [`CONN_RECEIVE_WINDOW`] once the hello is accepted.
    pub(crate) fn quic_transport_before_hello(&self, cc: Congestion) -> Arc<quinn::TransportConfig> {
        let mut t = self.quic_transport_config(cc);
        t.keep_alive_interval(None);
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout.max(MAX_IDLE_TIMEOUT)) {
            t.max_idle_timeout(Some(idle));
        }
        t.receive_window(quinn::VarInt::from_u32(PRE_HELLO_WINDOW));
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        Arc::new(t)
    }

    /// Keepalive probes after the first quiet interval that span the idle
    /// timeout (at least one).
    pub(crate) fn probes(&self) -> u32 {
        let rest = self.idle_timeout.saturating_sub(self.interval);
        u32::try_from(rest.as_millis().div_ceil(self.interval.as_millis().max(1))).unwrap_or(u32::MAX).max(1)
    }

    /// Applies TCP keepalive probes and disables Nagle on a TCP socket.
    pub(crate) fn apply_tcp(&self, stream: &tokio::net::TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(stream);
        // Enough probes, one per interval, to span the idle timeout: an idle
        // channel on a dead path is given up after it, not after the
        // kernel's default of nine probes.
        let ka = socket2::TcpKeepalive::new().with_time(self.interval).with_interval(self.interval);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let ka = ka.with_retries(self.probes());
        sock.set_tcp_keepalive(&ka)?;
        // Bound how long unacknowledged data may sit before the kernel gives up.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.set_tcp_user_timeout(Some(self.idle_timeout))?;
        Ok(())
    }
}

/// QUIC stream receive window of a live channel.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;
/// QUIC connection receive window of a live channel.
pub(crate) const CONN_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// QUIC connection receive window before the hello is accepted: room for
/// the largest hello and then some, and no more.
pub(crate) const PRE_HELLO_WINDOW: u32 = 64 * 1024;

/// Socket buffer size asked for on every QUIC socket. The kernel's default
/// (about 208 KiB on Linux) overflows under a burst of a few megabytes and
/// drops datagrams, which QUIC reads as congestion; the kernel caps the ask at
/// `net.core.rmem_max` / `wmem_max`.
pub(crate) const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with [`UDP_BUFFER`]-sized buffers (best effort).
pub(crate) fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not grow the UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not grow the UDP send buffer");
    }
    Ok(socket)
}

/// How the listener is set up.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Where to listen; port 0 picks one free for UDP and TCP alike.
    pub addr: SocketAddr,
    /// Which transports to accept.
    pub transports: Transports,
    /// The sidecar's TLS identity (TLS 1.3, ALPN set by `dialback-certs`).
    pub tls: Arc<rustls::ServerConfig>,
    /// Handshake deadline and keepalive.
    pub timeouts: Timeouts,
    /// The QUIC stateless-reset key; persist it so that a restarted sidecar
    /// resets the app's old connection at once. `None`: a random key.
    pub reset_key: Option<[u8; 32]>,
    /// Handshakes allowed in flight at once, per transport (QUIC and TCP
    /// each have this many); beyond it new ones are turned away.
    pub max_handshakes: usize,
    /// Handshakes allowed in flight at once from one IP address.
    pub max_handshakes_per_ip: usize,
    /// Addresses of the apps of a previous run of this sidecar, and the QUIC
    /// connection IDs it had issued: each gets a stateless reset when the
    /// caller sends them ([`crate::Listener::previous_run`]), so those apps
    /// learn of the restart at once (needs `reset_key`).
    pub reset_previous: (Vec<SocketAddr>, Vec<Vec<u8>>),
    /// Told of refusals, accepted handshakes and resets (metrics).
    pub events: Arc<dyn crate::ListenerEvents>,
    /// QUIC's congestion controller for what the sidecar sends.
    pub congestion: Congestion,
    /// Whether a QUIC app that asks may send its own API calls as HTTP/3
    /// on its channel's connection (the sidecar then serves them, see
    /// [`crate::http3::serve_api`]).
    pub api_over_http3: bool,
}

/// Where and how to dial.
#[derive(Clone, Debug)]
pub struct DialConfig {
    /// The sidecar's channel address.
    pub addr: SocketAddr,
    /// The TLS server name to send and verify (ignored when pinning).
    pub server_name: String,
    /// The app's TLS config: trust and optional client identity (`dialback-certs`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Handshake deadline and keepalive.
    pub timeouts: Timeouts,
    /// QUIC's congestion controller for what the app sends.
    pub congestion: Congestion,
}

impl DialConfig {
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, DialError> {
        ServerName::try_from(self.server_name.clone())
            .map_err(|e| DialError::Config(format!("bad server name {:?}: {e}", self.server_name)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_probes_span_the_idle_timeout() {
        let ka = |i, t| KeepAlive { interval: Duration::from_secs(i), idle_timeout: Duration::from_secs(t) };
        assert_eq!(ka(2, 6).probes(), 2, "2 s quiet, then 2 probes 2 s apart: 6 s");
        assert_eq!(ka(25, 100).probes(), 3, "the mobile profile: 100 s");
        assert_eq!(ka(5, 5).probes(), 1);
    }

    /// QUIC sockets get the larger buffers, as far as the kernel allows.
    #[test]
    fn udp_socket_buffers_grow() {
        let socket = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&socket);
        let cap = |f: &str| std::fs::read_to_string(f).ok().and_then(|v| v.trim().parse::<usize>().ok());
        for (got, cap) in [
            (sock.recv_buffer_size().unwrap(), cap("/proc/sys/net/core/rmem_max")),
            (sock.send_buffer_size().unwrap(), cap("/proc/sys/net/core/wmem_max")),
        ] {
            // Linux reports twice what was set, and caps what is set at the sysctl.
            let want = UDP_BUFFER.min(cap.unwrap_or(UDP_BUFFER));
            assert!(got >= want, "buffer {got} bytes, wanted at least {want}");
        }
    }
}
