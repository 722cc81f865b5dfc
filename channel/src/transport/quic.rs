//! QUIC (quinn): the app dials from one client endpoint that it can move
//! to a new socket (the connection migrates); the sidecar accepts on an
//! endpoint that keeps strangers small (one stream, a small window, a Retry
//! under load) until their hello is accepted. The channel is one
//! bidirectional stream; the connection's close codes carry [`CloseCode`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Handshake, HelloFuture};
use crate::config::{DialConfig, ListenerConfig};
use crate::error::{BindError, DialError, quic_io};
use crate::handshake;
use crate::io::{CallStream, CloseCode, Connection, Io, Link, PathCounts, StreamFuture};
use crate::reset::{CidLog, PreviousRun, RecordingCids, WatchedSocket, cid_key};
use crate::{Hello, RefusalReason, Transport, Verdict, coalesce::Coalesced};

/// A live QUIC connection, whether it carries a stream per call, and
/// whether the app's API calls ride on it as HTTP/3.
#[derive(Debug)]
pub(super) struct QuicLink(quinn::Connection, bool, bool);

impl Link for QuicLink {
    fn transport(&self) -> Transport {
        Transport::Quic
    }

    fn peer_addr(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.0.rtt())
    }

    fn path_counts(&self) -> Option<PathCounts> {
        Some((&self.0.stats()).into())
    }

    fn close(&self, code: CloseCode, reason: &str) {
        self.0.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes());
    }

    fn is_closed(&self) -> bool {
        self.0.close_reason().is_some()
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.0.closed().await;
        })
    }

    fn peer_close(&self) -> Option<(CloseCode, String)> {
        match self.0.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => Some((
                CloseCode::from_u64(close.error_code.into_inner()),
                String::from_utf8_lossy(&close.reason).into_owned(),
            )),
            _ => None,
        }
    }

    fn streams(&self) -> bool {
        self.1
    }

    fn open_stream(&self) -> StreamFuture<'_, std::io::Result<CallStream>> {
        Box::pin(async move {
            if !self.1 {
                return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "dialback/1: one stream only"));
            }
            let (send, recv) = self.0.open_bi().await.map_err(quic_io)?;
            Ok(CallStream::new(Box::new(Coalesced::new(tokio::io::join(recv, send)))))
        })
    }

    fn accept_stream(&self) -> StreamFuture<'_, Option<CallStream>> {
        Box::pin(async move {
            if !self.1 {
                return None;
            }
            let (send, recv) = self.0.accept_bi().await.ok()?;
            Some(CallStream::new(Box::new(Coalesced::new(tokio::io::join(recv, send)))))
        })
    }

    fn api_over_http3(&self) -> Option<quinn::Connection> {
        self.2.then(|| self.0.clone())
    }
}

/// The ALPN id `conn` negotiated, if any.
pub(super) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}

/// Whether `conn` negotiated `dialback/2` (a stream per call).
pub(super) fn negotiated_streams(conn: &quinn::Connection) -> bool {
    alpn(conn).is_some_and(|p| p == dialback_certs::ALPN_STREAMS)
}

/// The ALPN ids a QUIC end offers, from those of its TLS config: where
/// that offers `dialback/1`, a stream per call (`dialback/2`) first. Any
/// other list (none at all, say) is left as it is, to be refused as such.
fn quic_alpn(tls: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut alpn = tls.to_vec();
    if alpn.iter().any(|p| p == dialback_certs::ALPN) && !alpn.iter().any(|p| p == dialback_certs::ALPN_STREAMS) {
        alpn.insert(0, dialback_certs::ALPN_STREAMS.to_vec());
    }
    alpn
}

/// The channel's byte stream and connection handle over `conn`'s stream
/// pair; `api`: the verdict said the app's API calls ride on it as HTTP/3.
pub(super) fn channel_parts(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    api: bool,
) -> (Io, Connection) {
    let gone = CancellationToken::new();
    let streams = negotiated_streams(&conn);
    let connection = Connection::new(Arc::new(QuicLink(conn, streams, api)), gone.clone());
    (Io::new(Box::new(Coalesced::new(tokio::io::join(recv, send))), gone), connection)
}

/// A handle on `conn` for calls on streams of their own only, before its
/// first stream is up (0.5-RTT on the sidecar, before the verdict on the
/// app): see [`crate::EarlyChannel`].
pub(super) fn early_connection(conn: &quinn::Connection) -> Connection {
    Connection::new(Arc::new(QuicLink(conn.clone(), true, false)), CancellationToken::new())
}

// ---- The app's side ----

/// The app's one QUIC endpoint (one UDP socket, no server config, so it
/// never accepts anything), kept across dials so that later dials and
/// migrations reuse it.
#[derive(Debug, Default)]
pub(crate) struct ClientEndpoint(Option<quinn::Endpoint>);

impl ClientEndpoint {
    /// The endpoint on `ip` (its address family), made on first use.
    pub(crate) fn get(&mut self, ip: IpAddr) -> Result<quinn::Endpoint, DialError> {
        if let Some(e) = &self.0 {
            let same_family = e.local_addr().map(|a| a.is_ipv4() == ip.is_ipv4()).unwrap_or(false);
            if same_family {
                return Ok(e.clone());
            }
        }
        let socket = crate::config::udp_socket(SocketAddr::new(ip, 0)).map_err(DialError::Socket)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| DialError::Socket(std::io::Error::other("no async runtime for quinn")))?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).map_err(DialError::Socket)?;
        self.0 = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Moves the endpoint, and every connection on it, to a new UDP socket
    /// on `ip` (or the wildcard address of its family, so the kernel picks
    /// the source): the connections migrate. Fails when the socket cannot
    /// be bound or no endpoint exists yet.
    pub(crate) fn rebind(&mut self, ip: Option<IpAddr>) -> Result<SocketAddr, DialError> {
        let Some(endpoint) = &self.0 else {
            return Err(DialError::Socket(std::io::Error::other("no QUIC endpoint to rebind yet")));
        };
        let current = endpoint.local_addr().map_err(DialError::Socket)?;
        let any = match current {
            SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let socket = crate::config::udp_socket(SocketAddr::new(ip.unwrap_or(any), 0)).map_err(DialError::Socket)?;
        endpoint.rebind(socket).map_err(DialError::Socket)?;
        endpoint.local_addr().map_err(DialError::Socket)
    }
}

/// Connects and finishes TLS, without the hello; with `racing`, a fresh
/// attempt starts every [`RACE_EVERY`] while the handshake is pending.
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    config: &DialConfig,
    server_name: &ServerName<'static>,
    racing: bool,
) -> Result<Box<dyn Handshake>, DialError> {
    let addr = config.addr;
    let mut tls = (*config.tls).clone();
    tls.alpn_protocols = quic_alpn(&tls.alpn_protocols);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| DialError::Config(format!("the TLS configuration is not usable for QUIC: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(config.timeouts.keep_alive.quic_transport(config.congestion));
    let name = match server_name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        _ => dialback_certs::DEFAULT_SERVER_NAME.to_string(),
    };
    let start = || {
        endpoint
            .connect_with(client.clone(), addr, &name)
            .map_err(|e| DialError::Connect { addr, source: std::io::Error::other(e) })
    };
    let first = start()?;
    let conn = if racing { race(first, start).await } else { first.await };
    let conn = conn.map_err(|e| dial_error(addr, e))?;
    Ok(Box::new(PendingQuic(conn)))
}

/// While a QUIC dial is pending, a fresh attempt starts this often.
const RACE_EVERY: Duration = Duration::from_millis(250);
/// Attempts of one dial in flight at most; a new one replaces the second oldest.
const MAX_ATTEMPTS: usize = 4;

/// Waits for `first` to finish its handshake, starting a fresh attempt
/// (`start`) every [`RACE_EVERY`] while none has, and keeps the first to
/// finish; the others are dropped (quinn closes them with code 0, which the
/// sidecar takes as abandoned, not refused).
///
/// Why: a lost Initial is resent on QUIC's probe timeout, which starts
/// from a 333 ms RTT guess and doubles (1 s, 2 s, ...). A dial made while
/// the path is dead (a blackhole, the sidecar restarting) would wait that
/// long after the path is back; a fresh attempt sends its Initial at once.
/// On a live path the first attempt finishes long before the next starts.
/// The oldest attempt in flight is never the one replaced: on a slow path
/// (a round trip near `MAX_ATTEMPTS * RACE_EVERY`, 1 s, or more: a
/// congested cellular link) it is the one that finishes, and replacing
/// attempts in turn would drop each before its handshake could complete.
/// Fails when an attempt fails for any reason but a timeout with others
/// still pending (a TLS or refusal error would be the same for all).
async fn race(
    first: quinn::Connecting,
    start: impl Fn() -> Result<quinn::Connecting, DialError>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut attempts = std::collections::VecDeque::from([first]);
    let mut next = tokio::time::interval_at(Instant::now() + RACE_EVERY, RACE_EVERY);
    // A busy runtime that polls late starts one attempt, not a burst that
    // would replace every attempt in flight, the first one included.
    next.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let finished = std::future::poll_fn(|cx| {
            for i in 0..attempts.len() {
                if let Some(a) = attempts.get_mut(i)
                    && let std::task::Poll::Ready(r) = Pin::new(a).poll(cx)
                {
                    attempts.remove(i);
                    return std::task::Poll::Ready(r);
                }
            }
            std::task::Poll::Pending
        });
        tokio::select! {
            r = finished => match r {
                Ok(conn) => return Ok(conn),
                Err(quinn::ConnectionError::TimedOut) if !attempts.is_empty() => {}
                Err(e) => return Err(e),
            },
            _ = next.tick() => match start() {
                Ok(a) => {
                    if attempts.len() >= MAX_ATTEMPTS {
                        // The second oldest: the oldest stays (see above).
                        attempts.remove(1);
                    }
                    debug!(attempts = attempts.len() + 1, "QUIC handshake still pending; racing a fresh attempt");
                    attempts.push_back(a);
                }
                Err(e) => debug!(error = %e, "could not start another QUIC attempt"),
            },
        }
    }
}

/// A QUIC connection whose hello is not sent yet.
struct PendingQuic(quinn::Connection);

impl Handshake for PendingQuic {
    fn hello<'a>(self: Box<Self>, addr: SocketAddr, hello: &'a Hello) -> HelloFuture<'a> {
        Box::pin(async move {
            let conn = self.0;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| dial_error(addr, e))?;
            handshake::write(&mut send, hello).await.map_err(|source| DialError::Connect { addr, source })?;
            let verdict = match handshake::read::<Verdict, _>(&mut recv).await {
                Ok(v) => v,
                Err(source) => {
                    // A refusal may have closed the connection before we read the verdict.
                    if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason()
                        && c.error_code == quinn::VarInt::from_u32(CloseCode::Refused as u32)
                    {
                        return Err(DialError::Refused {
                            reason: RefusalReason::Unspecified,
                            message: String::from_utf8_lossy(&c.reason).into_owned(),
                        });
                    }
                    return Err(DialError::Verdict { addr, source });
                }
            };
            debug!(channel_id = verdict.channel_id, %addr, "QUIC channel verdict read");
            let api = verdict.api_over_http3 && hello.api_over_http3;
            let (io, connection) = channel_parts(conn, send, recv, api);
            Ok((io, connection, verdict))
        })
    }

    fn abandon(self: Box<Self>) {
        self.0.close(quinn::VarInt::from_u32(CloseCode::Done as u32), b"not needed");
    }

    fn early(&self) -> Option<Connection> {
        negotiated_streams(&self.0).then(|| early_connection(&self.0))
    }
}

/// Sorts a QUIC connection error into "TLS said no" and "could not connect".
fn dial_error(addr: SocketAddr, e: quinn::ConnectionError) -> DialError {
    match &e {
        quinn::ConnectionError::TransportError(t) if t.code.to_string().contains("crypto") => {
            DialError::Tls { addr, source: quic_io(e) }
        }
        quinn::ConnectionError::ConnectionClosed(c) if c.error_code.to_string().contains("crypto") => {
            DialError::Tls { addr, source: quic_io(e) }
        }
        _ => DialError::Connect { addr, source: quic_io(e) },
    }
}

// ---- The sidecar's side ----

/// Above this share of QUIC slots in use, a QUIC client must prove its
/// address with a Retry round trip before it gets a slot.
pub(super) const RETRY_ABOVE: f64 = 0.5;

/// Binds the sidecar's QUIC endpoint on `addr`. Returns it, its address,
/// and the stateless resets for the apps of a previous run, to send when
/// the caller is ready.
pub(crate) fn bind(
    config: &ListenerConfig,
    addr: SocketAddr,
    cids: &Arc<CidLog>,
) -> Result<(quinn::Endpoint, SocketAddr, Option<PreviousRun>), BindError> {
    let mut tls = (*config.tls).clone();
    tls.alpn_protocols = quic_alpn(&tls.alpn_protocols);
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| BindError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(config.timeouts.keep_alive.quic_transport_before_hello(config.congestion));
    server.migration(true);
    let mut endpoint_config = quinn::EndpointConfig::default();
    if let Some(key) = config.reset_key {
        endpoint_config.reset_key(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)));
        // quinn drops short-header packets whose connection ID its CID
        // generator does not recognise, before any stateless reset. Key
        // the generator from the persisted key too, so a restarted
        // sidecar recognises its previous life's IDs and resets them.
        let cid_key = cid_key(&key);
        let log = cids.clone();
        endpoint_config.cid_generator(move || Box::new(RecordingCids::new(cid_key, log.clone())));
    }
    let bind_err = |source| BindError::Bind { transport: "udp", addr, source };
    let socket = crate::config::udp_socket(addr).map_err(bind_err)?;
    let runtime = quinn::default_runtime().ok_or_else(|| BindError::Tls("no async runtime for quinn".to_string()))?;
    let (socket, previous): (Arc<dyn quinn::AsyncUdpSocket>, _) = match &config.reset_key {
        None => (runtime.wrap_udp_socket(socket).map_err(bind_err)?, None),
        Some(key) => {
            let previous =
                PreviousRun::new(&socket, *key, &config.reset_previous, config.events.clone()).map_err(bind_err)?;
            let inner = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
            (Arc::new(WatchedSocket::new(inner, cid_key(key), cids.clone())), previous)
        }
    };
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime).map_err(bind_err)?;
    let addr = endpoint.local_addr().map_err(bind_err)?;
    Ok((endpoint, addr, previous))
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
