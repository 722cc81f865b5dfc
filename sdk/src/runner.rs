//! The loop behind a [`crate::Handle`]: get a channel up, serve on it,
//! watch it, move it when the network changes or QUIC comes back, and
//! reconnect per the backoff when it dies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialback_certs::{Fingerprint, ServerTrust};
use dialback_channel::h2;
use dialback_channel::{
    Channel, CloseCode, CloseNotice, Connection, Credential, DialConfig, Dialer, Hello, KeepAlive, Transport,
    Transports,
};
use dialback_proto::runtime::ConnectAppCallbackResponse;
use dialback_proto::runtime::dapr_app_channel_callback_server::DaprAppChannelCallbackServer;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::ping::{PingService, PingState};
use crate::server::{ChannelOptions, Command, CredentialChoice, TrustChoice};
use crate::sidecar::SidecarClient;
use crate::state::{CallContext, ChannelState, Connected};

/// How the connected phase ended.
enum End {
    /// Reconnect per the backoff.
    Lost(String),
    /// Another instance took over: stand by.
    Replaced,
    /// The app asked to stop.
    Stopped,
}

/// One channel being served.
struct Session {
    transport: Transport,
    channel_id: u64,
    sidecar: SocketAddr,
    conn: Connection,
    ping: Arc<PingState>,
    serving: JoinHandle<Result<(), ServeError>>,
    up: Instant,
}

/// The error `h2::serve` ends with, boxed.
type ServeError = Box<dyn std::error::Error + Send + Sync>;

impl Session {
    /// Resolves when the channel is gone, saying why.
    async fn ended(&mut self) -> String {
        tokio::select! {
            r = &mut self.serving => match r {
                Ok(Ok(())) => "the sidecar closed the channel".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("serving task failed: {e}"),
            },
            c = self.conn.closed() => match c {
                Some((code, why)) => format!("closed by the sidecar ({code:?}): {why}"),
                None => "connection lost".into(),
            },
        }
    }
}

/// What the Ping watchdog saw.
enum Watch {
    /// Pings are late: the path may be dead. Carries the last ping's time.
    Suspect(Instant),
    /// Pings stopped for longer than the idle timeout.
    Dead(String),
}

pub(crate) struct Runner {
    sidecar: SidecarClient,
    options: ChannelOptions,
    routes: Option<tonic::service::Routes>,
    state: watch::Sender<ChannelState>,
    stop: CancellationToken,
    commands: mpsc::UnboundedReceiver<Command>,
    dialer: Dialer,
    channels: u64,
    cache: Option<Cached>,
    /// Replaced by another instance: hellos ask for the channel only if it is free.
    standby: bool,
}

/// What the SDK keeps from the last channel to redial the same sidecar
/// process directly, without a ConnectAppCallback round trip.
#[derive(Clone)]
struct Cached {
    config: DialConfig,
    app_id: String,
    offered: Transports,
    reconnect_token: String,
}

impl Runner {
    pub(crate) fn new(
        sidecar: SidecarClient,
        options: ChannelOptions,
        routes: Option<tonic::service::Routes>,
        state: watch::Sender<ChannelState>,
        stop: CancellationToken,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Runner {
        let dialer = Dialer::new(options.local_ip);
        Runner { sidecar, options, routes, state, stop, commands, dialer, channels: 0, cache: None, standby: false }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = self.options.backoff.clone();
        loop {
            let delay = if self.standby {
                // Slow and jittered: replicas standing by do not probe in step.
                let jitter = rand::rng().random::<f64>() * 0.5;
                self.options.standby_probe_interval.mul_f64(1.0 + jitter)
            } else {
                backoff.next_delay(rand::rng().random::<f64>())
            };
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.cancelled() => break,
                    cmd = self.commands.recv() => self.refuse(cmd),
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
            if !self.standby {
                self.state.send_replace(ChannelState::Connecting { attempt: backoff.attempts() });
            }
            let transports = self.options.transports;
            let stop = self.stop.clone();
            let channel = tokio::select! {
                c = self.connect(transports) => c,
                () = stop.cancelled() => break,
            };
            let mut session = match channel {
                // Standing by ends only once the sidecar installs this channel
                // (see `connected`): one refused at install stays a standby.
                Ok(c) => self.start_session(c),
                Err(e) if self.standby => {
                    debug!(error = %e, "standing by: the channel is not free");
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "callback channel not up");
                    self.state.send_replace(ChannelState::Disconnected { reason: e.to_string() });
                    continue;
                }
            };
            let end = self.connected(&mut session).await;
            backoff.on_channel_end(session.up.elapsed());
            match end {
                End::Lost(reason) if self.standby => {
                    debug!(%reason, "standing by: the channel went to another instance")
                }
                End::Lost(reason) => {
                    warn!(%reason, "callback channel down; reconnecting");
                    self.state.send_replace(ChannelState::Disconnected { reason });
                }
                End::Replaced => {
                    warn!("another instance of this app took over the channel; standing by");
                    self.state.send_replace(ChannelState::Replaced);
                    self.standby = true;
                }
                End::Stopped => break,
            }
        }
        self.state.send_replace(ChannelState::Stopped);
    }

    fn refuse(&self, cmd: Option<Command>) {
        if let Some(Command::Rebind(_, reply)) = cmd {
            let _ = reply.send(Err(Error::NotConnected));
        }
    }

    /// Serves `channel` in the background and reports it connected.
    fn start_session(&mut self, channel: Channel) -> Session {
        let Channel { io, info, conn } = channel;
        let ping = Arc::new(PingState::new());
        let ping_svc = DaprAppChannelCallbackServer::new(PingService(ping.clone()));
        let routes = match &self.routes {
            Some(r) => r.clone().add_service(ping_svc),
            None => tonic::service::Routes::new(ping_svc),
        };
        let ctx = CallContext { transport: info.transport, channel_id: info.channel_id };
        let layer = tower::util::MapRequestLayer::new(move |mut req: http::Request<h2::Incoming>| {
            req.extensions_mut().insert(ctx.clone());
            req
        });
        let svc = tower::Layer::layer(&layer, routes);
        let keep_alive = self.options.timeouts.keep_alive;
        let serving = tokio::spawn(async move { h2::serve(io, svc, keep_alive).await.map_err(Into::into) });
        self.channels += 1;
        let session = Session {
            transport: info.transport,
            channel_id: info.channel_id,
            sidecar: info.peer_addr,
            conn,
            ping,
            serving,
            up: Instant::now(),
        };
        info!(transport = %session.transport, channel_id = session.channel_id, sidecar = %session.sidecar, "callback channel up");
        // Reported connected once the sidecar has installed it (see `connected`).
        session
    }

    fn publish(&self, s: &Session) {
        self.state.send_replace(ChannelState::Connected(Connected {
            transport: s.transport,
            channel_id: s.channel_id,
            sidecar: s.sidecar,
            since: s.up,
            channels: self.channels,
        }));
    }

    /// Serves until the channel is gone, moving it when asked or when QUIC
    /// comes back.
    async fn connected(&mut self, current: &mut Session) -> End {
        let mut probe = tokio::time::interval(self.options.quic_probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.reset();
        let mut suspected: Option<Instant> = None;
        let keep_alive = self.options.timeouts.keep_alive;
        let mut published: Option<u64> = None;
        loop {
            let probing = current.transport == Transport::TcpTls && self.options.transports.quic;
            let ping = current.ping.clone();
            let stop = self.stop.clone();
            let mut installed = ping.installed();
            tokio::select! {
                () = until_true(&mut installed), if published != Some(current.channel_id) => {
                    published = Some(current.channel_id);
                    if self.standby {
                        info!("the channel was free again; this instance has it back");
                        self.standby = false;
                    }
                    self.publish(current);
                }
                why = current.ended() => {
                    return if ping.notice() == Some(CloseNotice::Replaced) { End::Replaced } else { End::Lost(why) };
                }
                w = watchdog(&ping, keep_alive, suspected) => match w {
                    Watch::Suspect(last) => {
                        suspected = Some(last);
                        if current.transport == Transport::Quic {
                            // A dead path may be a lost NAT mapping: a new source
                            // port makes a new one. quinn may swallow send errors
                            // after an interface change, so silence is the signal.
                            match self.dialer.rebind(None) {
                                Ok(addr) => info!(%addr, "pings are late; moved the QUIC socket"),
                                Err(e) => debug!(error = %e, "rebind after late pings failed"),
                            }
                        }
                    }
                    Watch::Dead(why) => {
                        current.conn.close(CloseCode::PingTimeout, &why);
                        return End::Lost(why);
                    }
                },
                cmd = self.commands.recv() => {
                    if let Some(Command::Rebind(ip, reply)) = cmd {
                        let r = self.network_changed(current, ip).await;
                        let _ = reply.send(r);
                    }
                }
                _ = probe.tick(), if probing => {
                    match self.connect(Transports::QUIC).await {
                        Ok(ch) => {
                            let new = self.start_session(ch);
                            self.switch(current, new);
                        }
                        Err(e) => debug!(error = %e, "QUIC still unavailable"),
                    }
                }
                () = stop.cancelled() => {
                    current.conn.close(CloseCode::ShuttingDown, "app shutting down");
                    return End::Stopped;
                }
            }
        }
    }

    /// QUIC migrates to a new socket; TCP gets a new channel from the new address.
    async fn network_changed(&mut self, current: &mut Session, ip: Option<std::net::IpAddr>) -> Result<(), Error> {
        if current.transport == Transport::Quic {
            let addr = self.dialer.rebind(ip)?;
            info!(%addr, "network changed; the QUIC connection migrates");
            return Ok(());
        }
        if ip.is_some() {
            self.dialer.set_local_ip(ip);
        }
        let ch = self.connect(self.options.transports).await?;
        let new = self.start_session(ch);
        self.switch(current, new);
        Ok(())
    }

    /// Makes `new` the current channel; the old one keeps serving its calls
    /// in flight until the sidecar, which has switched too, closes it.
    fn switch(&mut self, current: &mut Session, new: Session) {
        let mut old = std::mem::replace(current, new);
        info!(from = %old.transport, to = %current.transport, channel_id = current.channel_id, "channel moved, make-before-break");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), old.ended()).await;
            old.conn.close(CloseCode::Done, "superseded");
        });
    }

    /// Gets a channel over the `allowed` transports: redials the cached
    /// sidecar directly with its reconnect token while asking
    /// ConnectAppCallback in parallel, and falls back to the answer when the
    /// direct dial is refused (e.g. the sidecar restarted) or fails.
    async fn connect(&mut self, allowed: Transports) -> Result<Channel, Error> {
        let cached = self.cache.clone().filter(|c| !c.reconnect_token.is_empty());
        let answer = match cached {
            Some(c) if (c.offered.quic && allowed.quic) || (c.offered.tcp && allowed.tcp) => {
                let transports = Transports { quic: c.offered.quic && allowed.quic, tcp: c.offered.tcp && allowed.tcp };
                let sidecar = self.sidecar.clone();
                let ask = async move { sidecar.connect_app_callback().await };
                tokio::pin!(ask);
                let hello = self.hello(&c.app_id, Credential::ReconnectToken(c.reconnect_token.clone()));
                let head_start = self.options.tcp_head_start;
                let outcome = {
                    let direct = async {
                        let pending = self.dialer.connect_any(transports, head_start, &c.config).await?;
                        Ok::<_, Error>(pending.hello(&hello).await?)
                    };
                    tokio::pin!(direct);
                    tokio::select! {
                        r = &mut direct => match r {
                            Ok(ch) => Ok(ch),
                            Err(e) => Err((e, None)),
                        },
                        a = &mut ask => match a {
                            // The API answers: let the direct dial finish first anyway.
                            Ok(answer) => direct.await.map_err(|e| (e, Some(answer))),
                            // The API is down: the sidecar is most likely down too.
                            Err(e) => return Err(e),
                        },
                    }
                };
                match outcome {
                    Ok(ch) => {
                        self.remember(c.config, c.app_id, c.offered, &ch);
                        return Ok(ch);
                    }
                    Err((e, _)) if slot_taken(&e) => return Err(e),
                    Err((e, answer)) => {
                        debug!(error = %e, "direct redial failed; using ConnectAppCallback");
                        self.cache = None;
                        match answer {
                            Some(a) => a,
                            None => ask.await?,
                        }
                    }
                }
            }
            _ => self.sidecar.connect_app_callback().await?,
        };
        self.dial_answer(answer, allowed).await
    }

    fn remember(&mut self, config: DialConfig, app_id: String, offered: Transports, ch: &Channel) {
        self.cache = Some(Cached { config, app_id, offered, reconnect_token: ch.info.reconnect_token.clone() });
    }

    /// Dials what ConnectAppCallback said, racing `allowed`, and says hello.
    async fn dial_answer(&mut self, answer: ConnectAppCallbackResponse, allowed: Transports) -> Result<Channel, Error> {
        let offered = offered(&answer);
        let transports = Transports { quic: offered.quic && allowed.quic, tcp: offered.tcp && allowed.tcp };
        if !transports.quic && !transports.tcp {
            return Err(Error::BadAnswer(format!("the sidecar offers {offered}, this app allows {allowed}")));
        }
        let addr = self.channel_addr(&answer).await?;
        let trust = match &self.options.trust {
            TrustChoice::FromSidecar => ServerTrust::Pinned(
                Fingerprint::from_slice(&answer.cert_sha256).map_err(|e| Error::BadAnswer(e.to_string()))?,
            ),
            TrustChoice::Roots(r) => ServerTrust::Roots(r.clone()),
        };
        let client_identity = match &self.options.credential {
            CredentialChoice::ClientCertificate(id) => Some(id),
            _ => None,
        };
        let tls = dialback_certs::client_config(&trust, client_identity).map_err(|e| Error::Tls(e.to_string()))?;
        let server_name = if answer.server_name.is_empty() {
            dialback_certs::DEFAULT_SERVER_NAME.to_string()
        } else {
            answer.server_name.clone()
        };
        let config = DialConfig { addr, server_name, tls: Arc::new(tls), timeouts: self.options.timeouts };
        let pending = self.dialer.connect_any(transports, self.options.tcp_head_start, &config).await?;
        let credential = match &self.options.credential {
            CredentialChoice::OneTimeToken => Credential::OneTimeToken(answer.token.clone()),
            CredentialChoice::ApiToken => {
                Credential::ApiToken(self.sidecar.options().api_token.clone().unwrap_or_default())
            }
            CredentialChoice::ClientCertificate(_) => Credential::ClientCertificate(true),
        };
        let ch = pending.hello(&self.hello(&answer.app_id, credential)).await?;
        self.remember(config, answer.app_id, offered, &ch);
        Ok(ch)
    }

    /// Where to dial: the advertised address, else the sidecar's API host and the channel port.
    async fn channel_addr(&self, answer: &ConnectAppCallbackResponse) -> Result<SocketAddr, Error> {
        let target = if answer.address.is_empty() {
            let host = self.sidecar.options().host()?;
            let port = u16::try_from(answer.port).map_err(|_| Error::BadAnswer(format!("port {}", answer.port)))?;
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
        } else {
            answer.address.clone()
        };
        let mut addrs = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| Error::BadAnswer(format!("cannot resolve {target}: {e}")))?;
        addrs.next().ok_or_else(|| Error::BadAnswer(format!("{target} resolves to nothing")))
    }
}

/// Watches the sidecar's pings: `Suspect` once per silence longer than the
/// ping interval plus one keepalive interval, `Dead` past the interval plus
/// the idle timeout. The app learns of a dead sidecar or path even when the
/// transport has not noticed yet.
async fn watchdog(ping: &PingState, keep_alive: KeepAlive, suspected: Option<Instant>) -> Watch {
    loop {
        let (last, interval) = ping.last();
        let interval = interval.unwrap_or(Duration::from_secs(2));
        let suspect_after = interval + keep_alive.interval;
        let dead_after = interval + keep_alive.idle_timeout;
        let silence = last.elapsed();
        if silence >= dead_after {
            return Watch::Dead(format!("no Ping from the sidecar for {silence:?}"));
        }
        let already = suspected == Some(last);
        if silence >= suspect_after && !already {
            return Watch::Suspect(last);
        }
        let next = if already || silence >= suspect_after { dead_after } else { suspect_after };
        tokio::time::sleep(next.saturating_sub(silence)).await;
    }
}

/// Resolves once `rx` holds true (never, if its sender goes away first).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Runner {
    fn hello(&self, app_id: &str, credential: Credential) -> Hello {
        Hello {
            version: dialback_channel::handshake::VERSION,
            app_id: app_id.to_string(),
            credential: Some(credential),
            instance: format!("pid {}", std::process::id()),
            standby: self.standby,
            max_message_bytes: u32::try_from(self.options.max_message_size).unwrap_or(u32::MAX),
        }
    }
}

/// Whether the sidecar refused a standby hello because the slot is taken.
fn slot_taken(e: &Error) -> bool {
    matches!(
        e,
        Error::Dial(dialback_channel::DialError::Refused { reason: dialback_channel::RefusalReason::SlotTaken, .. })
    )
}

fn offered(answer: &ConnectAppCallbackResponse) -> Transports {
    let mut t = Transports { quic: false, tcp: false };
    for v in &answer.transports {
        match Transport::from_proto(*v) {
            Some(Transport::Quic) => t.quic = true,
            Some(Transport::TcpTls) => t.tcp = true,
            None => {}
        }
    }
    t
}
