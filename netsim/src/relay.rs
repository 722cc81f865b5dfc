//! The relay handle: configuration, start-up (binding UDP and TCP on one port) and the fault switches.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::Control;
use crate::{StartError, Stats, tcp, udp};

/// How many port numbers to try when `listen` has port 0 and the UDP port turns out taken for TCP.
const BIND_ATTEMPTS: usize = 16;

/// What a [`Relay`] listens on and where it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Front address apps dial, e.g. `127.0.0.1:0`; UDP and TCP share its port number.
    pub listen: SocketAddr,
    /// Where traffic goes: the sidecar's callback address (UDP and TCP on the same port).
    pub target: SocketAddr,
    /// Source IP for upstream sockets, e.g. `127.0.0.1`; must be of the target's family.
    pub upstream_ip: IpAddr,
    /// Relay UDP (QUIC).
    pub udp: bool,
    /// Relay TCP (TCP+TLS).
    pub tcp: bool,
}

impl RelayConfig {
    /// Relays UDP and TCP from `listen` to `target`, with upstream sockets on the target family's loopback;
    /// never fails.
    pub fn new(listen: SocketAddr, target: SocketAddr) -> Self {
        let upstream_ip = match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Self { listen, target, upstream_ip, udp: true, tcp: true }
    }
}

/// A running relay; dropping it stops all its tasks and closes every socket.
pub struct Relay {
    addr: SocketAddr,
    control: Arc<Control>,
    /// Dropping this wakes every task with "shut down".
    _shutdown: watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Binds the front UDP socket and TCP listener on the same port and starts forwarding; fails with a
    /// [`StartError`] if the config is inconsistent or a socket cannot be bound. Must run inside a Tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<Relay, StartError> {
        if !config.udp && !config.tcp {
            return Err(StartError::NothingToRelay);
        }
        if config.upstream_ip.is_ipv4() != config.target.is_ipv4() {
            return Err(StartError::FamilyMismatch { upstream_ip: config.upstream_ip, target: config.target });
        }
        std::net::UdpSocket::bind((config.upstream_ip, 0))
            .map_err(|source| StartError::Upstream { upstream_ip: config.upstream_ip, source })?;

        let (udp_socket, tcp_listener) = bind_front(config.listen, config.udp, config.tcp).await?;
        let addr = match (&udp_socket, &tcp_listener) {
            (Some(s), _) => s.local_addr().map_err(|source| StartError::BindUdp { addr: config.listen, source })?,
            (None, Some(l)) => l.local_addr().map_err(|source| StartError::BindTcp { addr: config.listen, source })?,
            (None, None) => return Err(StartError::NothingToRelay),
        };

        let control = Arc::new(Control::new(config.target));
        let (shutdown, shutdown_rx) = watch::channel(());
        let mut tasks = Vec::new();
        if let Some(socket) = udp_socket {
            let relay = udp::UdpRelay::new(socket, config.upstream_ip, Arc::clone(&control));
            tasks.push(tokio::spawn(relay.run(shutdown_rx.clone())));
        }
        if let Some(listener) = tcp_listener {
            let relay = tcp::TcpRelay::new(config.upstream_ip, Arc::clone(&control));
            tasks.push(tokio::spawn(relay.run(listener, shutdown_rx.clone())));
        }
        tracing::debug!(%addr, target = %config.target, "netsim relay started");
        Ok(Relay { addr, control, _shutdown: shutdown, tasks })
    }

    /// The front address apps dial (UDP and TCP); never fails.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Simulates NAT rebinding; never fails (a failed upstream re-bind shows up as dropped datagrams).
    ///
    /// UDP: every session gets a fresh upstream socket (new source port), so the target sees the next packet
    /// from a new address; replies to the old socket are dropped. TCP: every existing forwarded connection is
    /// silently blackholed forever (sockets stay open, so nothing tells the endpoints); new connections work.
    pub fn rebind(&self) {
        self.control.rebind();
    }

    /// The client side's own NAT forgets its mappings (UDP): datagrams from
    /// and to every client address seen so far are dropped for good, while a
    /// new client address (a new source port) gets a working session. An app
    /// recovers only by moving its socket; never fails.
    pub fn forget_clients(&self) {
        self.control.forget_clients();
    }

    /// Sends new UDP sessions and TCP connections to `target` (existing ones keep theirs), for a
    /// relay started before what it fronts; never fails.
    pub fn set_target(&self, target: SocketAddr) {
        self.control.set_target(target);
    }

    /// Silently drops everything both ways while `on`; never fails.
    ///
    /// UDP datagrams are dropped; TCP forwarding pauses (no bytes lost) and resumes when turned off, and new
    /// TCP connections are accepted but not forwarded until then.
    pub fn set_blackhole(&self, on: bool) {
        self.control.set_blackhole(on);
    }

    /// Drops all UDP both ways while `on` (a network that blocks QUIC); TCP is unaffected; never fails.
    pub fn set_block_udp(&self, on: bool) {
        self.control.set_block_udp(on);
    }

    /// Delivers each datagram / TCP chunk `one_way` later in each direction (RTT grows by twice that), keeping
    /// order per direction; zero turns delay off; never fails.
    pub fn set_delay(&self, one_way: Duration) {
        self.control.set_delay(one_way);
    }

    /// Drops each UDP datagram with probability `p` (clamped to `0..=1`, NaN means 0), each direction
    /// independently; TCP is unaffected; never fails.
    pub fn set_loss(&self, p: f64) {
        self.control.set_loss(p);
    }

    /// A snapshot of the counters; never fails.
    pub fn stats(&self) -> Stats {
        self.control.stats()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The accept / receive loops own the front sockets: abort them so those close now. Per-session and
        // per-connection tasks exit when `_shutdown` is dropped right after this.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).field("stats", &self.stats()).finish()
    }
}

/// Binds the front sockets; with port 0 and both protocols, binds UDP first and TCP on that port, retrying.
async fn bind_front(
    listen: SocketAddr,
    udp: bool,
    tcp: bool,
) -> Result<(Option<UdpSocket>, Option<TcpListener>), StartError> {
    let bind_udp = |addr: SocketAddr| async move {
        UdpSocket::bind(addr).await.map_err(|source| StartError::BindUdp { addr, source })
    };
    let bind_tcp = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::BindTcp { addr, source })
    };
    if !(udp && tcp) {
        let socket = if udp { Some(bind_udp(listen).await?) } else { None };
        let listener = if tcp { Some(bind_tcp(listen).await?) } else { None };
        return Ok((socket, listener));
    }
    if listen.port() != 0 {
        let socket = bind_udp(listen).await?;
        let listener = bind_tcp(listen).await?;
        return Ok((Some(socket), Some(listener)));
    }
    for _ in 0..BIND_ATTEMPTS {
        let socket = bind_udp(listen).await?;
        let addr = socket.local_addr().map_err(|source| StartError::BindUdp { addr: listen, source })?;
        match bind_tcp(addr).await {
            Ok(listener) => return Ok((Some(socket), Some(listener))),
            Err(StartError::BindTcp { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StartError::PortUnavailable { ip: listen.ip(), attempts: BIND_ATTEMPTS })
}
