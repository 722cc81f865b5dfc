//! The app's side: dial the sidecar over QUIC or TCP+TLS (or race both),
//! run the hello, and move the channel when the network changes. Each
//! transport's dial lives in its own file under `transport/`; this file
//! picks one once, and races them.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::auth::Grant;
use crate::config::DialConfig;
use crate::error::DialError;
use crate::io::{Channel, ChannelInfo, Connection};
use crate::notice::CredentialKind;
use crate::transport::{Handshake, quic, tcp};
use crate::{Hello, Transport, Transports};

/// A connection whose TLS handshake is done but whose hello is not sent:
/// the sidecar has not seen it as a channel yet, so dropping it is free.
pub struct Pending {
    transport: Transport,
    addr: SocketAddr,
    deadline: Instant,
    after: Duration,
    inner: Box<dyn Handshake>,
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

    /// Where the sidecar may send calls on streams of their own before the
    /// verdict (a resumed QUIC session with `dialback/2`; see
    /// [`crate::EarlyChannel`]): serve it before [`Pending::hello`] to
    /// answer them a round trip sooner. `None` elsewhere.
    pub fn early_connection(&self) -> Option<Connection> {
        self.inner.early()
    }

    /// Sends `hello` and reads the verdict, within what is left of the
    /// handshake deadline. Returns the channel and what the sidecar granted
    /// (a reconnect token). Fails when the sidecar refuses or time runs out.
    pub async fn hello(self, hello: &Hello) -> Result<(Channel, Grant), DialError> {
        let Pending { transport, addr, deadline, after, inner } = self;
        let (io, conn, verdict) = tokio::time::timeout_at(deadline, inner.hello(addr, hello))
            .await
            .map_err(|_| DialError::Timeout { addr, after })??;
        if !verdict.accepted {
            return Err(DialError::Refused { reason: verdict.reason(), message: verdict.message.clone() });
        }
        // A sidecar refuses a hello without a credential; one that accepts it is broken.
        let Some(credential) = hello.credential.as_ref().map(CredentialKind::of) else {
            conn.close(crate::CloseCode::Done, "accepted a hello without a credential");
            return Err(DialError::Config("the sidecar accepted a hello without a credential".into()));
        };
        let info = ChannelInfo {
            app_id: hello.app_id.clone(),
            instance: hello.instance.clone(),
            transport,
            peer_addr: addr,
            channel_id: verdict.channel_id,
            credential,
            standby: hello.standby,
            max_message_bytes: hello.max_message_bytes,
            beat: crate::Liveness::from_hello(hello.liveness_beat_ms).beat(),
            serves_early_streams: hello.serves_early_streams,
        };
        debug!(channel_id = info.channel_id, %addr, %transport, "channel up");
        Ok((
            Channel { io, info, conn },
            Grant {
                client_credential: crate::auth::ClientCredential::from_verdict(&verdict),
                reconnect_token: verdict.reconnect_token,
            },
        ))
    }

    /// Abandons the connection before the hello.
    pub fn abandon(self) {
        self.inner.abandon();
    }
}

/// What a network change did to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkChange {
    /// The connection moved to a new local socket, this one, and lives on.
    Migrated(SocketAddr),
    /// The transport cannot move a connection: dial a new channel (from
    /// the new address) and drain the old one.
    NeedsRedial,
}

/// Dials channels. Keeps one QUIC endpoint across dials, so that later
/// dials and migrations reuse it.
#[derive(Debug)]
pub struct Dialer {
    local_ip: Option<IpAddr>,
    quic: quic::ClientEndpoint,
    /// Whether a pending QUIC dial races fresh attempts (see [`Dialer::set_quic_racing`]).
    racing: bool,
}

impl Dialer {
    /// A dialer whose sockets bind `local_ip` (any address when `None`) and an ephemeral port.
    pub fn new(local_ip: Option<IpAddr>) -> Dialer {
        Dialer { local_ip, quic: quic::ClientEndpoint::default(), racing: true }
    }

    /// Whether a QUIC dial whose handshake is pending starts a fresh attempt
    /// every 250 ms (on, the default: back within a round trip or two of a
    /// dead path's return) or waits for its one attempt's Initial to be
    /// resent on QUIC's own backed-off timer (off: a few packets a dial, for
    /// an app on a battery whose path has been dead for a while).
    pub fn set_quic_racing(&mut self, on: bool) {
        self.racing = on;
    }

    /// The local IP dials and migrations bind, when the app chose one
    /// (`None`: any, the kernel picks the source per destination).
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    /// Binds any address from now on: the chosen local IP went away (the
    /// next [`Dialer::network_changed`] moves to the kernel's choice).
    pub fn forget_local_ip(&mut self) {
        self.local_ip = None;
    }

    /// The network changed under `conn` (or its path seems dead): dial from
    /// `local_ip` from now on, when given, and move `conn` to a new socket
    /// if its transport migrates. Fails when the new socket cannot be bound.
    pub fn network_changed(&mut self, conn: &Connection, local_ip: Option<IpAddr>) -> Result<NetworkChange, DialError> {
        if local_ip.is_some() {
            self.local_ip = local_ip;
        }
        if !conn.can_migrate() {
            return Ok(NetworkChange::NeedsRedial);
        }
        self.quic.rebind(self.local_ip).map(NetworkChange::Migrated)
    }

    /// Dials QUIC from a new local port from now on: a NAT or load-balancer
    /// mapping that still leads to a sidecar that moved away is left
    /// behind (TCP gets a new port with every dial anyway). Fails when the
    /// new socket cannot be bound.
    pub fn new_socket(&mut self) -> Result<SocketAddr, DialError> {
        self.quic.rebind(self.local_ip)
    }

    fn bind_ip(&self, peer: SocketAddr) -> IpAddr {
        self.local_ip.unwrap_or(match peer {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        })
    }

    /// Dials over `transport`, presents the hello and reads the verdict,
    /// all within `config.timeouts.handshake`. Fails when the sidecar cannot
    /// be reached, TLS fails, time runs out, or the sidecar refuses.
    pub async fn dial(
        &mut self,
        transport: Transport,
        config: &DialConfig,
        hello: &Hello,
    ) -> Result<(Channel, Grant), DialError> {
        self.connect(transport, config).await?.hello(hello).await
    }

    /// Connects and finishes TLS over `transport`, without the hello.
    /// Fails when the sidecar cannot be reached, TLS fails or time runs out.
    pub async fn connect(&mut self, transport: Transport, config: &DialConfig) -> Result<Pending, DialError> {
        let deadline = Instant::now() + config.timeouts.handshake;
        let (addr, after) = (config.addr, config.timeouts.handshake);
        let leg = self.leg(transport, config)?;
        let inner = tokio::time::timeout_at(deadline, leg).await.map_err(|_| DialError::Timeout { addr, after })??;
        Ok(Pending { transport, addr, deadline, after, inner })
    }

    /// The connect over one transport, ready to run: the one place that
    /// picks a transport's dial.
    fn leg<'a>(
        &mut self,
        transport: Transport,
        config: &'a DialConfig,
    ) -> Result<impl Future<Output = Result<Box<dyn Handshake>, DialError>> + 'a, DialError> {
        let server_name = config.server_name()?;
        let ip = self.bind_ip(config.addr);
        let endpoint = match transport {
            Transport::Quic => Some(self.quic.get(ip)?),
            Transport::TcpTls => None,
        };
        let racing = self.racing;
        Ok(async move {
            match endpoint {
                Some(endpoint) => quic::connect(&endpoint, config, &server_name, racing).await,
                None => tcp::connect(ip, config, server_name).await,
            }
        })
    }

    /// Connects over every transport in `transports`: QUIC first, TCP after
    /// `head_start` unless QUIC has finished by then, or at once when QUIC
    /// fails. Keeps the first that completes TLS and abandons the other, so
    /// only one hello is ever sent. Fails when every transport failed; the
    /// error is the last one seen.
    pub async fn connect_any(
        &mut self,
        transports: Transports,
        head_start: Duration,
        config: &DialConfig,
    ) -> Result<Pending, DialError> {
        let (first, second) = match (transports.quic, transports.tcp) {
            (true, true) => (Transport::Quic, Transport::TcpTls),
            (true, false) => return self.connect(Transport::Quic, config).await,
            (false, true) => return self.connect(Transport::TcpTls, config).await,
            (false, false) => return Err(DialError::Config("no transport to dial".into())),
        };
        let deadline = Instant::now() + config.timeouts.handshake;
        let (addr, after) = (config.addr, config.timeouts.handshake);
        let first_failed = tokio::sync::Notify::new();
        let first_leg = self.leg(first, config)?;
        let second_leg = {
            let leg = self.leg(second, config)?;
            let first_failed = &first_failed;
            async move {
                // The first transport failing outright ends the head start at once.
                tokio::select! {
                    () = tokio::time::sleep(head_start) => {}
                    () = first_failed.notified() => {}
                }
                leg.await
            }
        };
        tokio::pin!(first_leg, second_leg);
        let race = async {
            let (mut first_done, mut second_done) = (false, false);
            loop {
                let err = tokio::select! {
                    r = &mut first_leg, if !first_done => match r {
                        Ok(inner) => return Ok((first, inner)),
                        Err(e) => {
                            first_done = true;
                            first_failed.notify_one();
                            e
                        }
                    },
                    r = &mut second_leg, if !second_done => match r {
                        Ok(inner) => return Ok((second, inner)),
                        Err(e) => {
                            second_done = true;
                            e
                        }
                    },
                };
                debug!(error = %err, "one transport of the race failed");
                if first_done && second_done {
                    return Err(err);
                }
            }
        };
        let (transport, inner) =
            tokio::time::timeout_at(deadline, race).await.map_err(|_| DialError::Timeout { addr, after })??;
        Ok(Pending { transport, addr, deadline, after, inner })
    }
}
