//! Why a relay failed to start.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// Why [`crate::Relay::start`] failed; every variant is a configuration or binding problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Both `udp` and `tcp` were disabled, so there is nothing to relay.
    #[error("nothing to relay: both udp and tcp are disabled")]
    NothingToRelay,
    /// `upstream_ip` and the target are of different address families.
    #[error("upstream ip {upstream_ip} cannot reach target {target}: address families differ")]
    FamilyMismatch {
        /// The configured source IP for upstream sockets.
        upstream_ip: IpAddr,
        /// The configured target.
        target: SocketAddr,
    },
    /// No socket could be bound on `upstream_ip` (not a local address?).
    #[error("cannot bind upstream sockets on {upstream_ip}: {source}")]
    Upstream {
        /// The configured source IP for upstream sockets.
        upstream_ip: IpAddr,
        /// The bind error.
        source: io::Error,
    },
    /// The front UDP socket could not be bound.
    #[error("cannot bind udp {addr}: {source}")]
    BindUdp {
        /// The address we tried.
        addr: SocketAddr,
        /// The bind error.
        source: io::Error,
    },
    /// The front TCP listener could not be bound.
    #[error("cannot bind tcp {addr}: {source}")]
    BindTcp {
        /// The address we tried.
        addr: SocketAddr,
        /// The bind error.
        source: io::Error,
    },
    /// With port 0, no port number was free for both UDP and TCP after several attempts.
    #[error("no port free for both udp and tcp on {ip} after {attempts} attempts")]
    PortUnavailable {
        /// The listen IP.
        ip: IpAddr,
        /// How many port numbers were tried.
        attempts: usize,
    },
}
