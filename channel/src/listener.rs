//! The sidecar's side: accept channels over QUIC and TCP+TLS on one port
//! number and hand up only the channels the [`Authenticator`] accepts.
//! What both transports' accept loops share (budgets, the hello exchange,
//! the hand-up) is in `accept.rs`; each transport's loop is in its own file
//! under `transport/`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::accept::Shared;
use crate::auth::Authenticator;
use crate::config::ListenerConfig;
use crate::error::BindError;
use crate::io::Channel;
use crate::reset::{CidLog, PreviousRun};
use crate::transport::{quic, quic_accept, tcp};

/// Accepts app channels. Dropping it stops accepting; live channels stay.
pub struct Listener {
    addr: SocketAddr,
    rx: mpsc::Receiver<Channel>,
    early: Option<mpsc::Receiver<crate::EarlyChannel>>,
    stop: CancellationToken,
    cids: Arc<CidLog>,
    previous: Option<PreviousRun>,
}

impl Listener {
    /// Binds UDP (QUIC) and/or TCP on `config.addr`, the same port number
    /// for both. Fails when a socket cannot be bound or the TLS config does
    /// not fit QUIC.
    pub async fn bind(config: ListenerConfig, auth: Arc<dyn Authenticator>) -> Result<Listener, BindError> {
        if config.transports.is_empty() {
            return Err(BindError::NoTransport);
        }
        // With port 0 and both transports, the TCP bind may find the UDP
        // port's number taken; pick again a few times.
        let mut last_err = None;
        for _ in 0..16 {
            match bind_sockets(&config).await {
                Ok(bound) => return Ok(start(config, bound, auth)),
                Err(e @ BindError::Bind { .. }) if config.addr.port() == 0 && config.transports.quic => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(BindError::NoTransport))
    }

    /// The bound address (UDP and TCP share its port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next accepted channel; `None` once the listener is closed.
    pub async fn accept(&mut self) -> Option<Channel> {
        self.rx.recv().await
    }

    /// The connections offered before their hello (see
    /// [`crate::EarlyChannel`]), to receive beside [`Listener::accept`];
    /// `None` after the first call. While nobody takes them, no more than
    /// a few are offered, and their channels come by `accept` as usual.
    pub fn early_channels(&mut self) -> Option<mpsc::Receiver<crate::EarlyChannel>> {
        self.early.take()
    }

    /// The stateless resets for the apps of a previous run
    /// ([`ListenerConfig::reset_previous`]), not yet sent: send them
    /// ([`PreviousRun::reset`]) once whatever those apps ask on their way
    /// back (the sidecar's API) is up. `None` after the first call, or when
    /// there is nobody to reset.
    pub fn previous_run(&mut self) -> Option<PreviousRun> {
        self.previous.take()
    }

    /// The QUIC connection IDs issued lately (for [`ListenerConfig::reset_previous`] after a restart),
    /// oldest first; the last is the one the app at [`Listener::watch_peer`] sends to, once seen.
    pub fn recent_cids(&self) -> Vec<Vec<u8>> {
        self.cids.snapshot()
    }

    /// Names the live QUIC app's address (again after it moves): the
    /// connection ID its packets carry stays in [`Listener::recent_cids`]
    /// however many handshakes strangers start.
    pub fn watch_peer(&self, addr: SocketAddr) {
        self.cids.watch(addr);
    }

    /// Stops accepting new connections; channels already handed up live on.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Bound {
    cids: Arc<CidLog>,
    previous: Option<PreviousRun>,
    addr: SocketAddr,
    quic: Option<quinn::Endpoint>,
    tcp: Option<tokio::net::TcpListener>,
}

async fn bind_sockets(config: &ListenerConfig) -> Result<Bound, BindError> {
    let mut addr = config.addr;
    let cids = Arc::new(CidLog::default());
    let (quic, previous) = if config.transports.quic {
        let (endpoint, bound, previous) = quic::bind(config, addr, &cids)?;
        addr = bound;
        (Some(endpoint), previous)
    } else {
        (None, None)
    };
    let tcp = if config.transports.tcp {
        let (listener, bound) = tcp::bind(addr).await?;
        addr = bound;
        Some(listener)
    } else {
        None
    };
    Ok(Bound { cids, previous, addr, quic, tcp })
}

fn start(config: ListenerConfig, bound: Bound, auth: Arc<dyn Authenticator>) -> Listener {
    let (tx, rx) = mpsc::channel(16);
    let (early_tx, early) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared::new(&config, auth, tx, early_tx, stop.clone()));
    if let Some(endpoint) = bound.quic {
        tokio::spawn(quic_accept::accept_loop(endpoint, shared.clone()));
    }
    if let Some(listener) = bound.tcp {
        tokio::spawn(tcp::accept_loop(listener, config.tls, shared));
    }
    Listener { addr: bound.addr, rx, early: Some(early), stop, cids: bound.cids, previous: bound.previous }
}
