//! What the accept loops of both transports share on the sidecar: the
//! handshake budgets (per transport, per source address), the hello
//! exchange under a deadline, and handing an accepted channel up to the
//! [`crate::Listener`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{Authenticator, Grant, HelloContext, Refusal};
use crate::config::ListenerConfig;
use crate::error::AcceptError;
use crate::events::{ListenerEvents, Refused};
use crate::handshake::{self, FrameError};
use crate::io::{Channel, ChannelInfo, CloseCode, Connection, Io};
use crate::lograte::RateLimited;
use crate::notice::CredentialKind;
use crate::{Hello, RefusalReason, Timeouts, Transport};

/// What the accept loops of both transports share.
pub(crate) struct Shared {
    auth: Arc<dyn Authenticator>,
    pub(crate) events: Arc<dyn ListenerEvents>,
    pub(crate) timeouts: Timeouts,
    tx: mpsc::Sender<Channel>,
    early_tx: mpsc::Sender<crate::EarlyChannel>,
    /// Handshake slots, one budget per transport.
    max_handshakes: usize,
    quic_slots: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    next_id: AtomicU64,
    /// Whether QUIC apps may send their API calls as HTTP/3 on the channel.
    api_over_http3: bool,
    pub(crate) stop: CancellationToken,
    /// One log line per interval for each kind of turned-away connection.
    log_refused: RateLimited,
    log_full: RateLimited,
    log_per_ip: RateLimited,
}

/// A handshake's hold on its transport's budget and its source's, until dropped.
pub(crate) struct Admitted {
    _slot: OwnedSemaphorePermit,
    _ip: IpSlot,
}

impl Shared {
    /// The budgets and hooks for a listener set up per `config`, handing
    /// accepted channels to `tx` until `stop`.
    pub(crate) fn new(
        config: &ListenerConfig,
        auth: Arc<dyn Authenticator>,
        tx: mpsc::Sender<Channel>,
        early_tx: mpsc::Sender<crate::EarlyChannel>,
        stop: CancellationToken,
    ) -> Shared {
        let every = Duration::from_secs(5);
        let max_handshakes = config.max_handshakes.max(1);
        Shared {
            auth,
            events: config.events.clone(),
            timeouts: config.timeouts,
            tx,
            early_tx,
            max_handshakes,
            quic_slots: Arc::new(Semaphore::new(max_handshakes)),
            tcp_slots: Arc::new(Semaphore::new(max_handshakes)),
            per_ip: Arc::new(PerIp { max: config.max_handshakes_per_ip.max(1), counts: Default::default() }),
            next_id: AtomicU64::new(1),
            api_over_http3: config.api_over_http3,
            stop,
            log_refused: RateLimited::new(every),
            log_full: RateLimited::new(every),
            log_per_ip: RateLimited::new(every),
        }
    }

    /// Whether `cert`, named by a resumed session, proves the app.
    pub(crate) fn names_app(&self, cert: &CertificateDer<'static>) -> bool {
        self.auth.names_app(cert)
    }

    /// Hands up a connection before its hello, with the channel id its hello
    /// will get and whether its session names the app; the sender says how
    /// the hello went. `None` when nobody takes early channels now (the
    /// queue is full or closed).
    pub(crate) fn offer_early(
        &self,
        conn: Connection,
        peer: SocketAddr,
        names_app: bool,
    ) -> Option<(u64, oneshot::Sender<bool>)> {
        let channel_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, decided) = oneshot::channel();
        let early = crate::EarlyChannel { conn, channel_id, peer_addr: peer, names_app, decided };
        self.early_tx.try_send(early).ok().map(|()| (channel_id, tx))
    }

    fn slots(&self, transport: Transport) -> &Arc<Semaphore> {
        match transport {
            Transport::Quic => &self.quic_slots,
            Transport::TcpTls => &self.tcp_slots,
        }
    }

    /// The share of `transport`'s handshake slots in use, 0 to 1.
    pub(crate) fn load(&self, transport: Transport) -> f64 {
        let in_use = self.max_handshakes.saturating_sub(self.slots(transport).available_permits());
        in_use as f64 / self.max_handshakes as f64
    }

    /// A handshake slot for a connection from `peer`; `None`, logged at a
    /// bounded rate, when its source or its transport is at the bound: the
    /// caller turns the connection away.
    pub(crate) fn admit(&self, peer: SocketAddr, transport: Transport) -> Option<Admitted> {
        let Some(ip) = self.per_ip.take(peer.ip()) else {
            self.events.refused(transport, Refused::PerAddress);
            if let Some(n) = self.log_per_ip.hit() {
                warn!(%peer, %transport, suppressed = n, "too many channel handshakes from one address; turning connections away");
            }
            return None;
        };
        let Ok(slot) = self.slots(transport).clone().try_acquire_owned() else {
            self.events.refused(transport, Refused::Busy);
            if let Some(n) = self.log_full.hit() {
                warn!(%peer, %transport, suppressed = n, "too many channel handshakes in flight; turning connections away");
            }
            return None;
        };
        Some(Admitted { _slot: slot, _ip: ip })
    }

    /// Logs a connection that did not become a channel, at a bounded rate.
    /// Also tells the events hook.
    pub(crate) fn log_refused(&self, peer: SocketAddr, transport: Transport, e: &AcceptError) {
        self.events.refused(transport, Refused::of(e));
        if let Some(n) = self.log_refused.hit() {
            warn!(%peer, transport = transport.as_str(), error = %e, suppressed = n, "callback channel refused");
        }
    }
}

/// Handshakes in flight per source IP.
struct PerIp {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One handshake counted against its source IP until dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
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

/// What the transport saw of a connection before its hello.
pub(crate) struct Seen<'a> {
    pub(crate) transport: Transport,
    pub(crate) peer: SocketAddr,
    pub(crate) alpn: Option<&'a [u8]>,
    pub(crate) client_cert: Option<&'a CertificateDer<'static>>,
    /// The TLS session was resumed (over QUIC: with a client certificate).
    pub(crate) resumed: bool,
    /// The channel id given when it was offered early.
    pub(crate) channel_id: Option<u64>,
}

/// An accepted hello: the hello, the channel id given and how it proved itself.
pub(crate) struct Accepted {
    hello: Hello,
    channel_id: u64,
    credential: CredentialKind,
    api_over_http3: bool,
    resumed: bool,
}

impl Accepted {
    /// Whether the verdict said the API is served as HTTP/3 on the connection.
    pub(crate) fn api_over_http3(&self) -> bool {
        self.api_over_http3
    }

    /// The mobile profile's beat, when the hello asked for it.
    pub(crate) fn beat(&self) -> Option<Duration> {
        crate::Liveness::from_hello(self.hello.liveness_beat_ms).beat()
    }
}

/// Reads the hello, decides, and writes the verdict: the part of the
/// handshake both transports share.
pub(crate) async fn exchange<R, W>(
    r: &mut R,
    w: &mut W,
    seen: &Seen<'_>,
    deadline: Instant,
    shared: &Shared,
) -> Result<Accepted, AcceptError>
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
        Ok(Ok(hello)) => decide(&hello, seen, shared).map(|g| (hello, g)),
    };
    match decided {
        Ok((hello, (grant, credential))) => {
            let channel_id = seen.channel_id.unwrap_or_else(|| shared.next_id.fetch_add(1, Ordering::Relaxed));
            let api_over_http3 = hello.api_over_http3 && seen.transport == Transport::Quic && shared.api_over_http3;
            let verdict = handshake::accepted(channel_id, grant, api_over_http3);
            // The verdict write is bounded too: a peer that stops reading cannot pin us.
            match tokio::time::timeout_at(deadline, handshake::write(w, &verdict)).await {
                Ok(Ok(())) => Ok(Accepted { hello, channel_id, credential, api_over_http3, resumed: seen.resumed }),
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

fn decide(hello: &Hello, seen: &Seen<'_>, shared: &Shared) -> Result<(Grant, CredentialKind), Refusal> {
    let known = seen.alpn == Some(dialback_certs::ALPN)
        || (seen.transport == Transport::Quic && seen.alpn == Some(dialback_certs::ALPN_STREAMS));
    let pre = if !known {
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
    let ctx = HelloContext {
        hello,
        credential,
        transport: seen.transport,
        peer_addr: seen.peer,
        client_cert: seen.client_cert,
    };
    let grant = shared.auth.authenticate(&ctx)?;
    Ok((grant, CredentialKind::of(credential)))
}

/// Hands an accepted channel up to [`crate::Listener::accept`]; `arrived`
/// is when its connection did (for the handshake's duration).
pub(crate) async fn deliver(
    shared: &Shared,
    accepted: Accepted,
    transport: Transport,
    peer: SocketAddr,
    io: Io,
    conn: Connection,
    arrived: Instant,
) {
    let Accepted { hello, channel_id, credential, resumed, .. } = accepted;
    shared.events.accepted(transport, credential, resumed, arrived.elapsed());
    let info = ChannelInfo {
        app_id: hello.app_id,
        instance: hello.instance,
        transport,
        peer_addr: peer,
        channel_id,
        credential,
        standby: hello.standby,
        max_message_bytes: hello.max_message_bytes,
        beat: crate::Liveness::from_hello(hello.liveness_beat_ms).beat(),
        serves_early_streams: hello.serves_early_streams,
    };
    info!(app_id = %info.app_id, %transport, %peer, channel_id, tls_resumed = resumed, "callback channel authenticated");
    if shared.tx.send(Channel { io, info, conn: conn.clone() }).await.is_err() {
        conn.close(CloseCode::ShuttingDown, "sidecar is shutting down");
    }
}
