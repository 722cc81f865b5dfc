//! Timeouts and keepalive policy shared by both ends.

use std::sync::Arc;
use std::time::Duration;

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
    /// quinn's transport config for this policy.
    pub(crate) fn quic_transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.interval));
        // An idle timeout beyond QUIC's varint range falls back to quinn's default.
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        // One stream carries every call: give it room for large payloads.
        t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
        t.receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
        t.send_window(16 * 1024 * 1024);
        Arc::new(t)
    }

    /// Applies TCP keepalive probes and disables Nagle on a TCP socket.
    pub(crate) fn apply_tcp(&self, stream: &tokio::net::TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(stream);
        let ka = socket2::TcpKeepalive::new().with_time(self.interval).with_interval(self.interval);
        sock.set_tcp_keepalive(&ka)?;
        // Bound how long unacknowledged data may sit before the kernel gives up.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.set_tcp_user_timeout(Some(self.idle_timeout))?;
        Ok(())
    }
}
