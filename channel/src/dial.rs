//! The app's side: dial the sidecar over QUIC or TCP+TLS and run the hello.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{DialError, quic_io};
use crate::handshake::{self, FrameError};
use crate::io::{Channel, ChannelInfo, CloseCode, Connection, Io};
use crate::{Hello, RefusalReason, Timeouts, Transport, Verdict};

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
}

/// A connection whose TLS handshake is done but whose hello is not sent:
/// the sidecar has not seen it as a channel yet, so dropping it is free.
pub struct Pending {
    transport: Transport,
    addr: SocketAddr,
    deadline: Instant,
    after: std::time::Duration,
    inner: PendingInner,
}

enum PendingInner {
    Quic(quinn::Connection),
    Tcp(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("transport", &self.transport).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Pending {
    /// The transport this connection runs on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Sends `hello` and reads the verdict, within what is left of the
    /// handshake deadline. Fails when the sidecar refuses or time runs out.
    pub async fn hello(self, hello: &Hello) -> Result<Channel, DialError> {
        let (addr, after) = (self.addr, self.after);
        tokio::time::timeout_at(self.deadline, async move {
            match self.inner {
                PendingInner::Quic(conn) => hello_quic(conn, addr, hello).await,
                PendingInner::Tcp(tls) => hello_tcp(*tls, addr, hello).await,
            }
        })
        .await
        .map_err(|_| DialError::Timeout { addr, after })?
    }

    /// Abandons the connection before the hello.
    pub fn abandon(self) {
        if let PendingInner::Quic(conn) = &self.inner {
            conn.close(quinn::VarInt::from_u32(CloseCode::Done as u32), b"not needed");
        }
    }
}

/// Dials channels. Keeps one QUIC endpoint (one UDP socket, no server
/// config, so it never accepts anything) across dials, so that later dials
/// and migrations reuse it.
#[derive(Debug)]
pub struct Dialer {
    local_ip: Option<IpAddr>,
    quic: Option<quinn::Endpoint>,
}

impl Dialer {
    /// A dialer whose sockets bind `local_ip` (any address when `None`) and an ephemeral port.
    pub fn new(local_ip: Option<IpAddr>) -> Dialer {
        Dialer { local_ip, quic: None }
    }

    /// Dials later channels from `local_ip` (`None`: any address).
    pub fn set_local_ip(&mut self, local_ip: Option<IpAddr>) {
        self.local_ip = local_ip;
    }

    /// The QUIC endpoint's current local address, once one exists.
    pub fn quic_local_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Moves the QUIC endpoint, and every connection on it, to a new UDP
    /// socket on `local_ip` (or the current IP): the QUIC connection
    /// migrates. Fails when the socket cannot be bound or no endpoint exists yet.
    pub fn rebind(&mut self, local_ip: Option<IpAddr>) -> Result<SocketAddr, DialError> {
        if local_ip.is_some() {
            self.local_ip = local_ip;
        }
        let Some(endpoint) = &self.quic else {
            return Err(DialError::Socket(std::io::Error::other("no QUIC endpoint to rebind yet")));
        };
        let current = endpoint.local_addr().map_err(DialError::Socket)?;
        let ip = self.local_ip.unwrap_or(current.ip());
        let socket = crate::config::udp_socket(SocketAddr::new(ip, 0)).map_err(DialError::Socket)?;
        endpoint.rebind(socket).map_err(DialError::Socket)?;
        endpoint.local_addr().map_err(DialError::Socket)
    }

    fn bind_ip(&self, peer: SocketAddr) -> IpAddr {
        self.local_ip.unwrap_or(match peer {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        })
    }

    fn endpoint(&mut self, peer: SocketAddr) -> Result<quinn::Endpoint, DialError> {
        let ip = self.bind_ip(peer);
        if let Some(e) = &self.quic {
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
        self.quic = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Dials over `transport`, presents the hello and reads the verdict,
    /// all within `config.timeouts.handshake`. Fails when the sidecar cannot
    /// be reached, TLS fails, time runs out, or the sidecar refuses.
    pub async fn dial(
        &mut self,
        transport: Transport,
        config: &DialConfig,
        hello: &Hello,
    ) -> Result<Channel, DialError> {
        self.connect(transport, config).await?.hello(hello).await
    }

    /// Connects and finishes TLS over `transport`, without the hello.
    /// Fails when the sidecar cannot be reached, TLS fails or time runs out.
    pub async fn connect(&mut self, transport: Transport, config: &DialConfig) -> Result<Pending, DialError> {
        let deadline = Instant::now() + config.timeouts.handshake;
        let (addr, after) = (config.addr, config.timeouts.handshake);
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|e| DialError::Config(format!("bad server name {:?}: {e}", config.server_name)))?;
        let inner = match transport {
            Transport::Quic => {
                let endpoint = self.endpoint(config.addr)?;
                tokio::time::timeout_at(deadline, connect_quic(&endpoint, config, &server_name))
                    .await
                    .map_err(|_| DialError::Timeout { addr, after })??
            }
            Transport::TcpTls => {
                let ip = self.bind_ip(config.addr);
                tokio::time::timeout_at(deadline, connect_tcp(ip, config, server_name))
                    .await
                    .map_err(|_| DialError::Timeout { addr, after })??
            }
        };
        Ok(Pending { transport, addr, deadline, after, inner })
    }

    /// Connects over every transport in `transports`: QUIC first, TCP after
    /// `head_start` unless QUIC has finished by then, or at once when QUIC
    /// fails. Keeps the first that completes TLS and abandons the other, so
    /// only one hello is ever sent. Fails when every transport failed; the
    /// error is the last one seen.
    pub async fn connect_any(
        &mut self,
        transports: crate::Transports,
        head_start: std::time::Duration,
        config: &DialConfig,
    ) -> Result<Pending, DialError> {
        let (quic, tcp) = (transports.quic, transports.tcp);
        if !(quic && tcp) {
            let t = if quic { Transport::Quic } else { Transport::TcpTls };
            return self.connect(t, config).await;
        }
        // The QUIC endpoint is made up front so both legs can borrow `self` immutably.
        let endpoint = self.endpoint(config.addr)?;
        let tcp_ip = self.bind_ip(config.addr);
        let deadline = Instant::now() + config.timeouts.handshake;
        let (addr, after) = (config.addr, config.timeouts.handshake);
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|e| DialError::Config(format!("bad server name {:?}: {e}", config.server_name)))?;
        let quic_failed = tokio::sync::Notify::new();
        let quic_leg = connect_quic(&endpoint, config, &server_name);
        let tcp_leg = async {
            // QUIC failing outright ends the head start at once.
            tokio::select! {
                () = tokio::time::sleep(head_start) => {}
                () = quic_failed.notified() => {}
            }
            connect_tcp(tcp_ip, config, server_name.clone()).await
        };
        tokio::pin!(quic_leg, tcp_leg);
        let race = async {
            let (mut quic_done, mut tcp_done) = (false, false);
            loop {
                let err = tokio::select! {
                    r = &mut quic_leg, if !quic_done => match r {
                        Ok(inner) => return Ok((Transport::Quic, inner)),
                        Err(e) => {
                            quic_done = true;
                            quic_failed.notify_one();
                            e
                        }
                    },
                    r = &mut tcp_leg, if !tcp_done => match r {
                        Ok(inner) => return Ok((Transport::TcpTls, inner)),
                        Err(e) => {
                            tcp_done = true;
                            e
                        }
                    },
                };
                debug!(error = %err, "one transport of the race failed");
                if quic_done && tcp_done {
                    return Err(err);
                }
            }
        };
        let (transport, inner) =
            tokio::time::timeout_at(deadline, race).await.map_err(|_| DialError::Timeout { addr, after })??;
        Ok(Pending { transport, addr, deadline, after, inner })
    }
}

async fn connect_quic(
    endpoint: &quinn::Endpoint,
    config: &DialConfig,
    server_name: &ServerName<'static>,
) -> Result<PendingInner, DialError> {
    let addr = config.addr;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config.tls.clone())
        .map_err(|e| DialError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(config.timeouts.keep_alive.quic_transport());
    let name = match server_name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        _ => dialback_certs::DEFAULT_SERVER_NAME.to_string(),
    };
    let connecting = endpoint
        .connect_with(client, addr, &name)
        .map_err(|e| DialError::Connect { addr, source: std::io::Error::other(e) })?;
    let conn = connecting.await.map_err(|e| quic_dial_error(addr, e))?;
    Ok(PendingInner::Quic(conn))
}

async fn hello_quic(conn: quinn::Connection, addr: SocketAddr, hello: &Hello) -> Result<Channel, DialError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| quic_dial_error(addr, e))?;
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
    check_verdict(&verdict)?;
    let gone = CancellationToken::new();
    let connection = Connection::from_quic(conn, gone.clone());
    let watch = connection.clone();
    let watch_gone = gone.clone();
    tokio::spawn(async move {
        watch.closed().await;
        watch_gone.cancel();
    });
    let info = info(hello, Transport::Quic, addr, &verdict);
    debug!(channel_id = info.channel_id, %addr, "QUIC channel up");
    Ok(Channel { io: Io::quic(send, recv, gone), info, conn: connection })
}

/// Sorts a QUIC connection error into "TLS said no" and "could not connect".
fn quic_dial_error(addr: SocketAddr, e: quinn::ConnectionError) -> DialError {
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

async fn connect_tcp(
    local_ip: IpAddr,
    config: &DialConfig,
    server_name: ServerName<'static>,
) -> Result<PendingInner, DialError> {
    let addr = config.addr;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(DialError::Socket)?;
    if !local_ip.is_unspecified() {
        socket.bind(SocketAddr::new(local_ip, 0)).map_err(DialError::Socket)?;
    }
    let stream = socket.connect(addr).await.map_err(|source| DialError::Connect { addr, source })?;
    let _ = config.timeouts.keep_alive.apply_tcp(&stream);
    let connector = tokio_rustls::TlsConnector::from(config.tls.clone());
    let tls = connector.connect(server_name, stream).await.map_err(|source| DialError::Tls { addr, source })?;
    Ok(PendingInner::Tcp(Box::new(tls)))
}

async fn hello_tcp(
    mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: SocketAddr,
    hello: &Hello,
) -> Result<Channel, DialError> {
    handshake::write(&mut tls, hello).await.map_err(|source| DialError::Connect { addr, source })?;
    let verdict: Verdict = handshake::read(&mut tls).await.map_err(|source| match source {
        FrameError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => DialError::Tls { addr, source: e },
        source => DialError::Verdict { addr, source },
    })?;
    check_verdict(&verdict)?;
    let gone = CancellationToken::new();
    let info = info(hello, Transport::TcpTls, addr, &verdict);
    Ok(Channel {
        io: Io::tls(tokio_rustls::TlsStream::Client(tls), gone.clone()),
        info,
        conn: Connection::from_tcp(addr, gone),
    })
}

fn check_verdict(v: &Verdict) -> Result<(), DialError> {
    if v.accepted { Ok(()) } else { Err(DialError::Refused { reason: v.reason(), message: v.message.clone() }) }
}

fn info(hello: &Hello, transport: Transport, addr: SocketAddr, v: &Verdict) -> ChannelInfo {
    ChannelInfo {
        app_id: hello.app_id.clone(),
        instance: hello.instance.clone(),
        transport,
        peer_addr: addr,
        channel_id: v.channel_id,
        reconnect_token: v.reconnect_token.clone(),
        credential: hello.credential.as_ref().map_or(crate::CredentialKind::OneTimeToken, crate::CredentialKind::of),
        standby: hello.standby,
        max_message_bytes: hello.max_message_bytes,
    }
}
