//! The sidecar's side: accept channels over QUIC and TCP+TLS on one port
//! number, run the handshake under a deadline, and hand up only the
//! channels the [`Authenticator`] accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{AcceptError, BindError};
use crate::handshake::{self, FrameError};
use crate::io::{Channel, ChannelInfo, CloseCode, Connection, Io};
use crate::lograte::RateLimited;
use crate::notice::CredentialKind;
use crate::reset::{CidLog, RecordingCids, reset_previous};
use crate::{Hello, RefusalReason, Timeouts, Transport, Transports};

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
    /// connection IDs it had issued: each gets a stateless reset before the
    /// listener starts, so those apps learn of the restart at once (needs `reset_key`).
    pub reset_previous: (Vec<SocketAddr>, Vec<Vec<u8>>),
}

/// What the authenticator sees of a hello.
#[derive(Debug)]
pub struct HelloContext<'a> {
    /// The hello, already checked for version, app-id and a credential.
    pub hello: &'a Hello,
    /// The hello's credential, for the authenticator to check.
    pub credential: &'a crate::Credential,
    /// The transport it came over.
    pub transport: Transport,
    /// Where it came from.
    pub peer_addr: SocketAddr,
    /// The TLS client certificate, verified against the configured client
    /// CA, when one was presented.
    pub client_cert: Option<&'a CertificateDer<'static>>,
}

/// A refused hello: the reason code and text the app is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The machine-readable reason.
    pub reason: RefusalReason,
    /// The explanation for the app's logs.
    pub message: String,
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
}

/// What an accepted hello is given back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// A credential for redialing without ConnectAppCallback (empty: none).
    pub reconnect_token: String,
}

/// Decides whether a hello's credential proves its app-id.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok` accepts the channel; `Err` refuses it with the given reason.
    fn authenticate(&self, ctx: &HelloContext<'_>) -> Result<Grant, Refusal>;

    /// Called instead of [`Authenticator::authenticate`] for a hello refused
    /// before its credential was looked at (wrong ALPN, version or app-id
    /// shape): spend whatever single-use credential it carries.
    fn discard(&self, _hello: &Hello) {}
}

/// Accepts app channels. Dropping it stops accepting; live channels stay.
pub struct Listener {
    addr: SocketAddr,
    rx: mpsc::Receiver<Channel>,
    stop: CancellationToken,
    cids: Arc<CidLog>,
}

struct Shared {
    auth: Arc<dyn Authenticator>,
    timeouts: Timeouts,
    tx: mpsc::Sender<Channel>,
    /// Handshake slots, one budget per transport.
    quic_slots: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// One log line per interval for each kind of turned-away connection.
    log_refused: RateLimited,
    log_full: RateLimited,
    log_per_ip: RateLimited,
}

/// How long a TCP peer has to send its whole TLS ClientHello: a stranger
/// that connects and says nothing holds a slot this long, not the whole
/// handshake timeout.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Above this share of QUIC slots in use, a QUIC client must prove its
/// address with a Retry round trip before it gets a slot.
const RETRY_ABOVE: f64 = 0.5;

/// Handshakes in flight per source IP.
struct PerIp {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One handshake counted against its source IP until dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot { per_ip: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.per_ip.counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Listener {
    /// Binds UDP (QUIC) and/or TCP on `config.addr`, the same port number
    /// for both. Fails when a socket cannot be bound or the TLS config does
    /// not fit QUIC.
    pub async fn bind(config: ListenerConfig, auth: Arc<dyn Authenticator>) -> Result<Listener, BindError> {
        if !config.transports.quic && !config.transports.tcp {
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

    /// The QUIC connection IDs issued lately (for [`ListenerConfig::reset_previous`] after a restart).
    pub fn recent_cids(&self) -> Vec<Vec<u8>> {
        self.cids.snapshot()
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
    addr: SocketAddr,
    quic: Option<quinn::Endpoint>,
    tcp: Option<TcpListener>,
}

/// A CID-generator key derived from the reset key (never the key itself).
fn cid_key(reset_key: &[u8; 32]) -> u64 {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key), b"dialback cid key");
    let mut k = [0u8; 8];
    k.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(k)
}

async fn bind_sockets(config: &ListenerConfig) -> Result<Bound, BindError> {
    let mut addr = config.addr;
    let cids = Arc::new(CidLog::default());
    let quic = if config.transports.quic {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config.tls.clone())
            .map_err(|e| BindError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(config.timeouts.keep_alive.quic_transport_before_hello());
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
        let socket =
            crate::config::udp_socket(addr).map_err(|source| BindError::Bind { transport: "udp", addr, source })?;
        if let Some(key) = &config.reset_key {
            let (peers, previous) = &config.reset_previous;
            let sent = reset_previous(&socket, key, peers, previous);
            if sent > 0 {
                info!(sent, peers = peers.len(), "sent stateless resets to the apps of the previous run");
            }
        }
        let runtime =
            quinn::default_runtime().ok_or_else(|| BindError::Tls("no async runtime for quinn".to_string()))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime)
            .map_err(|source| BindError::Bind { transport: "udp", addr, source })?;
        addr = endpoint.local_addr().map_err(|source| BindError::Bind { transport: "udp", addr, source })?;
        Some(endpoint)
    } else {
        None
    };
    let tcp = if config.transports.tcp {
        let l = TcpListener::bind(addr).await.map_err(|source| BindError::Bind { transport: "tcp", addr, source })?;
        addr = l.local_addr().map_err(|source| BindError::Bind { transport: "tcp", addr, source })?;
        Some(l)
    } else {
        None
    };
    Ok(Bound { cids, addr, quic, tcp })
}

fn start(config: ListenerConfig, bound: Bound, auth: Arc<dyn Authenticator>) -> Listener {
    let (tx, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let every = Duration::from_secs(5);
    let shared = Arc::new(Shared {
        auth,
        timeouts: config.timeouts,
        tx,
        quic_slots: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
        tcp_slots: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
        per_ip: Arc::new(PerIp { max: config.max_handshakes_per_ip.max(1), counts: Default::default() }),
        next_id: AtomicU64::new(1),
        stop: stop.clone(),
        log_refused: RateLimited::new(every),
        log_full: RateLimited::new(every),
        log_per_ip: RateLimited::new(every),
    });
    if let Some(endpoint) = bound.quic {
        tokio::spawn(accept_quic(endpoint, config.max_handshakes.max(1), shared.clone()));
    }
    if let Some(tcp) = bound.tcp {
        tokio::spawn(accept_tcp(tcp, config.tls, shared));
    }
    Listener { addr: bound.addr, rx, stop, cids: bound.cids }
}

async fn accept_quic(endpoint: quinn::Endpoint, slots: usize, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            () = shared.stop.cancelled() => return,
        };
        let peer = incoming.remote_address();
        // Under load, make the client prove its address first (a Retry round
        // trip): spoofed or bare Initials then cost no slot.
        let in_use = slots.saturating_sub(shared.quic_slots.available_permits());
        if in_use as f64 >= slots as f64 * RETRY_ABOVE && !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                debug!(%peer, error = %e, "QUIC Retry failed");
            }
            continue;
        }
        let Some(ip_slot) = shared.per_ip.take(peer.ip()) else {
            if let Some(n) = shared.log_per_ip.hit() {
                warn!(%peer, suppressed = n, "too many channel handshakes from one address; refusing QUIC connections");
            }
            incoming.refuse();
            continue;
        };
        let Ok(permit) = shared.quic_slots.clone().try_acquire_owned() else {
            if let Some(n) = shared.log_full.hit() {
                warn!(%peer, suppressed = n, "too many QUIC channel handshakes in flight; refusing connections");
            }
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = quic_handshake(incoming, &shared).await
                && let Some(n) = shared.log_refused.hit()
            {
                warn!(%peer, transport = "quic", error = %e, suppressed = n, "callback channel refused");
            }
            drop((permit, ip_slot));
        });
    }
}

async fn accept_tcp(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let accept_log = RateLimited::new(Duration::from_secs(5));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    if let Some(n) = accept_log.hit() {
                        warn!(error = %e, suppressed = n, "accepting a TCP connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.stop.cancelled() => return,
        };
        let Some(ip_slot) = shared.per_ip.take(peer.ip()) else {
            if let Some(n) = shared.log_per_ip.hit() {
                warn!(%peer, suppressed = n, "too many channel handshakes from one address; dropping TCP connections");
            }
            continue;
        };
        let Ok(permit) = shared.tcp_slots.clone().try_acquire_owned() else {
            if let Some(n) = shared.log_full.hit() {
                warn!(%peer, suppressed = n, "too many TCP channel handshakes in flight; dropping connections");
            }
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_handshake(stream, peer, tls, &shared).await
                && let Some(n) = shared.log_refused.hit()
            {
                warn!(%peer, transport = "tcp", error = %e, suppressed = n, "callback channel refused");
            }
            drop((permit, ip_slot));
        });
    }
}

async fn quic_handshake(incoming: quinn::Incoming, shared: &Shared) -> Result<(), AcceptError> {
    let deadline = Instant::now() + shared.timeouts.handshake;
    let peer = incoming.remote_address();
    let limit = shared.timeouts.handshake;
    let conn = tokio::time::timeout_at(deadline, incoming).await.map_err(|_| AcceptError::Timeout(limit))??;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let Ok(accepted) = tokio::time::timeout_at(deadline, conn.accept_bi()).await else {
        conn.close(quinn::VarInt::from_u32(CloseCode::Refused as u32), b"no hello within the handshake timeout");
        return Err(AcceptError::Timeout(limit));
    };
    let (mut send, mut recv) = accepted?;
    let certs = conn.peer_identity().and_then(|c| c.downcast::<Vec<CertificateDer<'static>>>().ok());
    let client_cert = certs.as_ref().and_then(|c| c.first());
    let outcome =
        exchange(&mut recv, &mut send, Transport::Quic, peer, alpn.as_deref(), client_cert, deadline, shared).await;
    match outcome {
        Ok((hello, channel_id, credential)) => {
            // Proven: open the window that was kept small for strangers.
            conn.set_receive_window(quinn::VarInt::from_u32(crate::config::CONN_RECEIVE_WINDOW));
            let gone = CancellationToken::new();
            let gone_for_io = gone.clone();
            let connection = Connection::from_quic(conn.clone(), gone.clone());
            // When the QUIC connection dies, so does the channel.
            let watch = connection.clone();
            tokio::spawn(async move {
                watch.closed().await;
                gone.cancel();
            });
            let io = Io::quic(send, recv, gone_for_io);
            deliver(shared, (hello, credential), Transport::Quic, peer, channel_id, io, connection).await;
            Ok(())
        }
        Err(e) => {
            // Let the verdict reach the app before the connection closes.
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            let reason = e.to_string();
            conn.close(quinn::VarInt::from_u32(CloseCode::Refused as u32), reason.as_bytes());
            Err(e)
        }
    }
}

async fn tcp_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: &Shared,
) -> Result<(), AcceptError> {
    let deadline = Instant::now() + shared.timeouts.handshake;
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
    let (mut r, mut w) = tokio::io::split(&mut tls_stream);
    let outcome =
        exchange(&mut r, &mut w, Transport::TcpTls, peer, alpn.as_deref(), client_cert.as_ref(), deadline, shared)
            .await;
    match outcome {
        Ok((hello, channel_id, credential)) => {
            let gone = CancellationToken::new();
            let connection = Connection::from_tcp(peer, gone.clone());
            let io = Io::tls(tokio_rustls::TlsStream::Server(tls_stream), gone);
            deliver(shared, (hello, credential), Transport::TcpTls, peer, channel_id, io, connection).await;
            Ok(())
        }
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), tls_stream.shutdown()).await;
            Err(e)
        }
    }
}

/// Reads the hello, decides, and writes the verdict: the part of the
/// handshake both transports share.
#[allow(clippy::too_many_arguments)]
async fn exchange<R, W>(
    r: &mut R,
    w: &mut W,
    transport: Transport,
    peer: SocketAddr,
    alpn: Option<&[u8]>,
    client_cert: Option<&CertificateDer<'static>>,
    deadline: Instant,
    shared: &Shared,
) -> Result<(Hello, u64, CredentialKind), AcceptError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let decided = match tokio::time::timeout_at(deadline, handshake::read::<Hello, _>(r)).await {
        Err(_) => Err(Refusal::new(
            RefusalReason::HandshakeTimeout,
            format!("no complete hello within {:?}", shared.timeouts.handshake),
        )),
        Ok(Err(FrameError::Io(e))) => return Err(AcceptError::Frame(FrameError::Io(e))),
        Ok(Err(e)) => Err(Refusal::new(RefusalReason::Malformed, e.to_string())),
        Ok(Ok(hello)) => decide(&hello, transport, peer, alpn, client_cert, shared).map(|g| (hello, g)),
    };
    match decided {
        Ok((hello, (grant, credential))) => {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let verdict = handshake::accepted(id, grant.reconnect_token);
            // The verdict write is bounded too: a peer that stops reading cannot pin us.
            match tokio::time::timeout_at(deadline, handshake::write(w, &verdict)).await {
                Ok(Ok(())) => Ok((hello, id, credential)),
                Ok(Err(e)) => Err(AcceptError::Frame(FrameError::Io(e))),
                Err(_) => Err(AcceptError::Timeout(shared.timeouts.handshake)),
            }
        }
        Err(refusal) => {
            let verdict = handshake::refused(refusal.reason, refusal.message.clone());
            let _ = tokio::time::timeout(Duration::from_secs(1), handshake::write(w, &verdict)).await;
            Err(AcceptError::Refused { reason: refusal.reason, message: refusal.message })
        }
    }
}

fn decide(
    hello: &Hello,
    transport: Transport,
    peer: SocketAddr,
    alpn: Option<&[u8]>,
    client_cert: Option<&CertificateDer<'static>>,
    shared: &Shared,
) -> Result<(Grant, CredentialKind), Refusal> {
    let pre = if alpn != Some(dialback_certs::ALPN) {
        Err(Refusal::new(
            RefusalReason::WrongProtocol,
            format!("ALPN must be {:?}", String::from_utf8_lossy(dialback_certs::ALPN)),
        ))
    } else {
        handshake::check_hello(hello).map_err(|(reason, message)| Refusal { reason, message })
    };
    let credential = match pre {
        Ok(c) => c,
        Err(refusal) => {
            shared.auth.discard(hello);
            return Err(refusal);
        }
    };
    let grant =
        shared.auth.authenticate(&HelloContext { hello, credential, transport, peer_addr: peer, client_cert })?;
    Ok((grant, CredentialKind::of(credential)))
}

async fn deliver(
    shared: &Shared,
    (hello, credential): (Hello, CredentialKind),
    transport: Transport,
    peer: SocketAddr,
    channel_id: u64,
    io: Io,
    conn: Connection,
) {
    let info = ChannelInfo {
        app_id: hello.app_id,
        instance: hello.instance,
        transport,
        peer_addr: peer,
        channel_id,
        reconnect_token: String::new(),
        credential,
        standby: hello.standby,
        max_message_bytes: hello.max_message_bytes,
    };
    info!(app_id = %info.app_id, %transport, %peer, channel_id, "callback channel authenticated");
    if shared.tx.send(Channel { io, info, conn: conn.clone() }).await.is_err() {
        conn.close(CloseCode::ShuttingDown, "sidecar is shutting down");
    }
}
