//! Relay counters.

use std::fmt;

/// A snapshot of the relay's cumulative counters (taken with [`crate::Relay::stats`]); never fails.
///
/// `Display` renders it as `udp_forwarded=.. udp_dropped=.. tcp_bytes_forwarded=.. tcp_connections=..
/// udp_sessions=.. rebinds=.. udp_up=..`, the `netsim` control socket's answer to `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams delivered, both directions.
    pub udp_forwarded: u64,
    /// Of those, the datagrams from clients to the target (the rest went back to clients).
    pub udp_up: u64,
    /// Datagrams dropped by a fault (blackhole, blocked UDP, loss, full delay queue) or a send error.
    pub udp_dropped: u64,
    /// TCP payload bytes delivered, both directions.
    pub tcp_bytes_forwarded: u64,
    /// TCP connections accepted.
    pub tcp_connections: u64,
    /// UDP sessions (distinct client addresses) created.
    pub udp_sessions: u64,
    /// Calls to [`crate::Relay::rebind`].
    pub rebinds: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "udp_forwarded={} udp_dropped={} tcp_bytes_forwarded={} tcp_connections={} udp_sessions={} rebinds={} udp_up={}",
            self.udp_forwarded,
            self.udp_dropped,
            self.tcp_bytes_forwarded,
            self.tcp_connections,
            self.udp_sessions,
            self.rebinds,
            self.udp_up
        )
    }
}
