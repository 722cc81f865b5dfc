//! TLS 1.3 over TCP (tokio-rustls): the fallback where UDP is blocked. The
//! channel is the TLS stream itself; there are no close codes on the wire
//! (the sidecar tells the app in-band, see [`crate::notice`]), and the
//! connection is over when the stream ends.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Handshake, HelloFuture};
use crate::accept::Shared;
use crate::config::DialConfig;
use crate::error::{AcceptError, BindError, DialError};
use crate::handshake::{self, FrameError};
use crate::io::{CloseCode, Connection, Io, Link};
use crate::lograte::RateLimited;
use crate::{Hello, Transport, Verdict};

/// A live TCP+TLS connection: all it knows is where either end is.
#[derive(Debug)]
struct TcpLink {
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl Link for TcpLink {
    fn transport(&self) -> Transport {
        Transport::TcpTls
    }

    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    fn rtt(&self) -> Option<Duration> {
        None
    }

    fn close(&self, _code: CloseCode, _reason: &str) {
        // Closing is the byte stream failing from now on (the `Io`'s part).
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }

    fn peer_close(&self) -> Option<(CloseCode, String)> {
        None
    }
}

/// The channel's byte stream and connection handle over `stream`.
fn channel_parts(stream: tokio_rustls::TlsStream<TcpStream>, peer: SocketAddr) -> (Io, Connection) {
    let gone = CancellationToken::new();
    let local = stream.get_ref().0.local_addr().ok();
    let connection = Connection::new(Arc::new(TcpLink { peer, local }), gone.clone());
    (Io::new(Box::new(stream), gone), connection)
}

// ---- The app's side ----

/// Connects from `local_ip` (any, when unspecified) and finishes TLS, without the hello.
pub(crate) async fn connect(
    local_ip: IpAddr,
    config: &DialConfig,
    server_name: ServerName<'static>,
) -> Result<Box<dyn Handshake>, DialError> {
    let addr = config.addr;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(DialError::Socket)?;
    if !local_ip.is_unspecified() {
        socket.bind(SocketAddr::new(local_ip, 0)).map_err(DialError::Socket)?;
    }
    let stream = socket.connect(addr).await.map_err(|source| DialError::Connect { addr, source })?;
    let _ = config.timeouts.keep_alive.apply_tcp(&stream);
    let connector = tokio_rustls::TlsConnector::from(config.tls.clone());
    let tls = connector.connect(server_name, stream).await.map_err(|source| DialError::Tls { addr, source })?;
    Ok(Box::new(PendingTcp(tls)))
}

/// A TLS stream whose hello is not sent yet.
struct PendingTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl Handshake for PendingTcp {
    fn hello<'a>(self: Box<Self>, addr: SocketAddr, hello: &'a Hello) -> HelloFuture<'a> {
        Box::pin(async move {
            let mut tls = self.0;
            handshake::write(&mut tls, hello).await.map_err(|source| DialError::Connect { addr, source })?;
            let verdict: Verdict = handshake::read(&mut tls).await.map_err(|source| match source {
                FrameError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => DialError::Tls { addr, source: e },
                source => DialError::Verdict { addr, source },
            })?;
            let (io, connection) = channel_parts(tokio_rustls::TlsStream::Client(tls), addr);
            Ok((io, connection, verdict))
        })
    }

    fn abandon(self: Box<Self>) {}
}

// ---- The sidecar's side ----

/// How long a TCP peer has to send its whole TLS ClientHello: a stranger
/// that connects and says nothing holds a slot this long, not the whole
/// handshake timeout.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the sidecar's TCP listener on `addr`. Returns it and its address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let l = TcpListener::bind(addr).await.map_err(|source| BindError::Bind { transport: "tcp", addr, source })?;
    let addr = l.local_addr().map_err(|source| BindError::Bind { transport: "tcp", addr, source })?;
    Ok((l, addr))
}

/// The next connection on `listener`. An accept that fails (out of file
/// descriptors and the like) is logged at most once per `log` interval,
/// with a count of those held back, and retried after a short pause: a
/// listener never stops serving for it. `what` names the listener in the log.
pub async fn accept_with_backoff(listener: &TcpListener, log: &RateLimited, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(s) => return s,
            Err(e) => {
                if let Some(n) = log.hit() {
                    warn!(listener = what, error = %e, suppressed = n, "accepting a TCP connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts TCP connections until the listener stops, each handshake in a
/// task of its own, within the TCP budget and the per-source bound.
pub(crate) async fn accept_loop(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let accept_log = RateLimited::new(Duration::from_secs(5));
    loop {
        let (stream, peer) = tokio::select! {
            s = accept_with_backoff(&listener, &accept_log, "callback") => s,
            () = shared.stop.cancelled() => return,
        };
        let Some(admitted) = shared.admit(peer, Transport::TcpTls) else { continue };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = handshake(stream, peer, tls, &shared).await {
                shared.log_refused(peer, Transport::TcpTls, &e);
            }
            drop(admitted);
        });
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: &Shared,
) -> Result<(), AcceptError> {
    let arrived = Instant::now();
    let deadline = arrived + shared.timeouts.handshake;
    let limit = shared.timeouts.handshake;
    if let Err(e) = shared.timeouts.keep_alive.apply_tcp(&stream) {
        debug!(%peer, error = %e, "could not set TCP keepalive");
    }
    // The ClientHello first, under a short deadline of its own.
    let hello_limit = CLIENT_HELLO_TIMEOUT.min(limit);
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::time::timeout(hello_limit, start)
        .await
        .map_err(|_| AcceptError::Timeout(hello_limit))?
        .map_err(AcceptError::Tls)?;
    let mut tls_stream = tokio::time::timeout_at(deadline, start.into_stream(tls))
        .await
        .map_err(|_| AcceptError::Timeout(limit))?
        .map_err(AcceptError::Tls)?;
    let (_, session) = tls_stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let client_cert = session.peer_certificates().and_then(|c| c.first()).cloned();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (mut r, mut w) = tokio::io::split(&mut tls_stream);
    let seen = crate::accept::Seen {
        transport: Transport::TcpTls,
        peer,
        alpn: alpn.as_deref(),
        client_cert: client_cert.as_ref(),
        resumed,
        channel_id: None,
    };
    let outcome = crate::accept::exchange(&mut r, &mut w, &seen, deadline, shared).await;
    match outcome {
        Ok(accepted) => {
            // A mobile app keeps the connection alive itself, at its beat:
            // no probes from here to wake its radio.
            if accepted.beat().is_some() {
                let (tcp, _) = tls_stream.get_ref();
                if let Err(e) = socket2::SockRef::from(tcp).set_keepalive(false) {
                    debug!(%peer, error = %e, "could not turn TCP keepalive off");
                }
            }
            let (io, connection) = channel_parts(tokio_rustls::TlsStream::Server(tls_stream), peer);
            crate::accept::deliver(shared, accepted, Transport::TcpTls, peer, io, connection, arrived).await;
            Ok(())
        }
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), tls_stream.shutdown()).await;
            Err(e)
        }
    }
}
