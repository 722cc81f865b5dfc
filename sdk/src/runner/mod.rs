//! The loop behind a [`crate::Handle`]: get a channel up, serve on it,
//! watch it, move it when the network changes or a better transport comes
//! back, and reconnect per the backoff when it dies. The decisions are made
//! by pure cores: what to dial ([`crate::plan`]) and whether the channel is
//! healthy ([`crate::health`]); this file does the I/O they ask for.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dialback_channel::h2;
use dialback_channel::{Channel, CloseCode, CloseNotice, Credential, DialConfig, Dialer, Grant, Hello, Transports};
use dialback_proto::runtime::ConnectAppCallbackResponse;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::health::{Health, Verdict};
use crate::netwatch::NetWatch;
use crate::options::{ChannelOptions, CredentialChoice};
use crate::pace::Pace;
use crate::ping::PingState;
use crate::plan::{self, AfterRedial, Remembered};

mod moves;
mod resume;
mod session;
mod wait;

use crate::sidecar::SidecarClient;
use crate::state::{ChannelState, Connected};
use session::{End, Session, serve_streams};
use wait::{until_some, until_true};

/// A request from the [`crate::Handle`] to the runner.
pub(crate) enum Command {
    /// The network changed: move to `local_ip` (or a new port on the same IP).
    Rebind(Option<IpAddr>, tokio::sync::oneshot::Sender<Result<(), Error>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
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
    /// A ConnectAppCallback answer from a new sidecar, found while pings
    /// were late: the next connect dials it at once.
    fresh: Option<ConnectAppCallbackResponse>,
    /// When the last channel in service was lost, until the next is.
    down_since: Option<Instant>,
    /// How hard to dial while there is no channel.
    pace: Pace,
    /// The kernel's network change announcements (opened in `run`, on the runtime).
    net: NetWatch,
    /// The TLS client key, its certificate and the sessions to resume.
    resume: resume::Resume,
    /// Serving the calls sent before the verdict, for the next session.
    early: Option<session::Early>,
}

/// What the SDK keeps from the last channel to redial the same sidecar
/// process directly, without a ConnectAppCallback round trip.
#[derive(Clone)]
struct Cached {
    config: DialConfig,
    app_id: String,
    remembered: Remembered,
}

/// Why a direct redial, raced against ConnectAppCallback, gave no channel.
enum RedialFailed {
    /// The sidecar's API failed too: most likely the sidecar is down.
    ApiDown(Error),
    /// The dial failed after ConnectAppCallback answered: use the answer.
    WithAnswer(Error, ConnectAppCallbackResponse),
    /// The dial failed before ConnectAppCallback answered: wait for it.
    Alone(Error),
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
        let options = options.normalized();
        let dialer = Dialer::new(options.local_ip);
        let pace = Pace::new(options.liveness);
        let resume = resume::Resume::new(matches!(options.credential, CredentialChoice::ClientCertificate(_)));
        Runner {
            sidecar,
            options,
            routes,
            state,
            stop,
            commands,
            dialer,
            channels: 0,
            cache: None,
            standby: false,
            down_since: None,
            pace,
            fresh: None,
            net: NetWatch::new(false),
            resume,
            early: None,
        }
    }

    pub(crate) async fn run(mut self) {
        self.net = NetWatch::new(self.options.watch_network);
        let mut backoff = self.options.backoff.clone();
        loop {
            let delay = if self.standby {
                // Slow and jittered: replicas standing by do not probe in step.
                let jitter = rand::rng().random::<f64>() * 0.5;
                self.options.standby_probe_interval.mul_f64(1.0 + jitter)
            } else {
                self.pace.next_delay(&mut backoff, rand::rng().random::<f64>(), Instant::now())
            };
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.cancelled() => break,
                    cmd = self.commands.recv() => self.refuse(cmd),
                    // A new address or route may be the way back: try it now.
                    () = self.net.changed(), if !self.standby => {
                        debug!("the network changed while reconnecting; dialing now");
                        self.pace.reset();
                    }
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
            if !self.standby {
                self.state.send_replace(ChannelState::Connecting { attempt: backoff.attempts() });
                self.pace.dialing(Instant::now());
            }
            self.dialer.set_quic_racing(!self.pace.eased(Instant::now()));
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
                    crate::metrics::dial_failed();
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
                    crate::metrics::out_of_service();
                    self.down_since = Some(Instant::now());
                    warn!(%reason, "callback channel down; reconnecting");
                    self.state.send_replace(ChannelState::Disconnected { reason });
                }
                End::Replaced => {
                    crate::metrics::out_of_service();
                    warn!("another instance of this app took over the channel; standing by");
                    self.state.send_replace(ChannelState::Replaced);
                    self.standby = true;
                }
                End::Stopped => break,
            }
        }
        crate::metrics::out_of_service();
        self.state.send_replace(ChannelState::Stopped);
    }

    /// Serves `channel` in the background and reports it connected.
    fn start_session(&mut self, channel: Channel) -> Session {
        let Channel { io, info, conn } = channel;
        // The calls sent before the verdict were served on this connection already.
        let early = self.early.take();
        let (ping, id) = match &early {
            Some(e) => (e.ping.clone(), e.channel_id.clone()),
            None => (Arc::new(PingState::new()), Arc::default()),
        };
        id.store(info.channel_id, std::sync::atomic::Ordering::Relaxed);
        let svc = session::service(self.routes.clone(), info.transport, &ping, id);
        let keep_alive = self.options.timeouts.keep_alive;
        let pings = self.options.h2_pings();
        let streams = match early {
            Some(e) => e.into_task(),
            None => conn.has_streams().then(|| tokio::spawn(serve_streams(conn.clone(), svc.clone()))),
        };
        if conn.api_over_http3() {
            tokio::spawn(self.sidecar.route().start(conn.clone()));
        }
        let serving = tokio::spawn(async move {
            let r = h2::serve(io, svc, pings).await.map_err(Into::into);
            if let Some(s) = streams {
                s.abort();
            }
            r
        });
        self.channels += 1;
        crate::metrics::opened(info.transport);
        let health = Health::new(keep_alive, Instant::now()).counting(conn.path_counts());
        let session = Session {
            transport: info.transport,
            channel_id: info.channel_id,
            sidecar: info.peer_addr,
            local_ip: self.local_ip_of(&conn),
            conn,
            ping,
            health,
            serving,
            up: Instant::now(),
        };
        info!(transport = %session.transport, channel_id = session.channel_id, sidecar = %session.sidecar, "callback channel up");
        // Reported connected once the sidecar has installed it (see `connected`).
        session
    }

    fn publish(&mut self, s: &Session) {
        crate::metrics::in_service(self.down_since.take().map(|t| t.elapsed()));
        self.pace.reset();
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
        let mut published: Option<u64> = None;
        // The mobile profile has no periodic Ping to watch: the transport's
        // idle timeout (a few beats) is what notices a dead path.
        let watch_pings = self.options.liveness == dialback_channel::Liveness::Default;
        // ConnectAppCallback asked in parallel while pings are late.
        let mut asking: Option<futures_util::future::BoxFuture<'static, Result<ConnectAppCallbackResponse, Error>>> =
            None;
        loop {
            let better = self.options.transports.preferred_over(current.transport);
            let ping = current.ping.clone();
            let stop = self.stop.clone();
            let mut installed = ping.installed();
            let look = tokio::time::Instant::from_std(current.health.poll_timeout());
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
                () = tokio::time::sleep_until(look), if watch_pings => {
                    let heard = ping.last();
                    current.health.on_ping(heard.at, heard.interval, heard.jitter);
                    let now = Instant::now();
                    match current.health.check(now, current.conn.path_counts()) {
                        Verdict::Healthy => {}
                        // A rescheduled sidecar (new pod, new state dir) sends
                        // no reset: its API, answering with another
                        // certificate, is how the app learns of it.
                        Verdict::AskSidecar => {
                            if asking.is_none() {
                                let (sidecar, key) = (self.sidecar.clone(), self.resume.public_key());
                                asking = Some(Box::pin(async move { sidecar.ask_channel(key).await }));
                            }
                        }
                        Verdict::MoveSocket { nth } => {
                            let late = current.health.pings_overdue(now);
                            self.move_on_late_pings(&current.conn, nth, late);
                        }
                        Verdict::Redial(why) => {
                            current.conn.close(CloseCode::PingTimeout, &why);
                            return End::Lost(why);
                        }
                    }
                }
                answer = until_some(&mut asking) => {
                    asking = None;
                    match answer {
                        Ok(a) if self.is_new_sidecar(&a) => {
                            info!("pings are late and the sidecar's API answers with another certificate: a new sidecar; moving to it");
                            self.fresh = Some(a);
                            current.conn.close(CloseCode::Done, "the sidecar moved");
                            return End::Lost("a new sidecar answers the API (its certificate changed)".into());
                        }
                        Ok(_) => debug!("pings are late; the sidecar's API answers as the same sidecar"),
                        Err(e) => debug!(error = %e, "pings are late; the sidecar's API does not answer"),
                    }
                }
                cmd = self.commands.recv() => {
                    if let Some(Command::Rebind(ip, reply)) = cmd {
                        let r = self.network_changed(current, ip, "rebind").await;
                        let _ = reply.send(r);
                    }
                }
                () = self.net.changed() => self.on_network_change(current).await,
                _ = probe.tick(), if !better.is_empty() => {
                    match self.connect(better).await {
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

    /// Gets a channel over the `allowed` transports: redials the cached
    /// sidecar directly with its reconnect token while asking
    /// ConnectAppCallback in parallel, and falls back to the answer when the
    /// direct dial is refused (e.g. the sidecar restarted) or fails.
    async fn connect(&mut self, allowed: Transports) -> Result<Channel, Error> {
        self.resume.refresh();
        // A new sidecar answered while pings were late: dial it, not the old one.
        if let Some(answer) = self.fresh.take() {
            self.cache = None;
            // From a new port: a mapping on the way may still lead to the old one.
            if let Err(e) = self.dialer.new_socket() {
                debug!(error = %e, "could not move to a new socket before dialing the new sidecar");
            }
            return self.dial_answer(answer, allowed).await;
        }
        let cached = self.cache.clone();
        let redial = cached.as_ref().and_then(|c| plan::redial(Some(&c.remembered), allowed).map(|r| (c.clone(), r)));
        let Some((c, redial)) = redial else {
            let answer = self.sidecar.ask_channel(self.resume.public_key()).await?;
            return self.dial_answer(answer, allowed).await;
        };
        let (sidecar, key) = (self.sidecar.clone(), self.resume.public_key());
        let ask = async move { sidecar.ask_channel(key).await };
        tokio::pin!(ask);
        let hello = self.hello(&c.app_id, redial.credential);
        let head_start = self.options.tcp_head_start;
        let routes = self.routes.clone();
        let outcome = {
            let direct = async {
                crate::metrics::dialing(redial.transports);
                let pending = self.dialer.connect_any(redial.transports, head_start, &c.config).await?;
                let early = session::Early::start(&pending, routes);
                let (ch, grant) = pending.hello(&hello).await?;
                Ok::<_, Error>((ch, grant, early))
            };
            tokio::pin!(direct);
            tokio::select! {
                r = &mut direct => r.map_err(RedialFailed::Alone),
                a = &mut ask => match a {
                    // The API answers: let the direct dial finish first anyway.
                    Ok(answer) => direct.await.map_err(|e| RedialFailed::WithAnswer(e, answer)),
                    Err(e) => Err(RedialFailed::ApiDown(e)),
                },
            }
        };
        let answer = match outcome {
            Ok((ch, grant, early)) => {
                self.early = early;
                self.remember(c.config, c.app_id, c.remembered.offered, c.remembered.fingerprint, grant);
                return Ok(ch);
            }
            Err(RedialFailed::ApiDown(e)) => return Err(e),
            Err(RedialFailed::WithAnswer(e, _) | RedialFailed::Alone(e))
                if plan::after_redial(&e) == AfterRedial::GiveUp =>
            {
                return Err(e);
            }
            Err(RedialFailed::WithAnswer(e, answer)) => {
                debug!(error = %e, "direct redial failed; using ConnectAppCallback");
                self.cache = None;
                answer
            }
            Err(RedialFailed::Alone(e)) => {
                debug!(error = %e, "direct redial failed; using ConnectAppCallback");
                // With the API down too nothing was learnt (the sidecar is
                // most likely restarting): keep the reconnect token for the
                // next try instead of falling back to a one-time token.
                let answer = ask.await?;
                self.cache = None;
                answer
            }
        };
        self.dial_answer(answer, allowed).await
    }

    fn remember(
        &mut self,
        config: DialConfig,
        app_id: String,
        offered: Transports,
        fingerprint: Vec<u8>,
        grant: Grant,
    ) {
        // A renewed certificate, presented from the next dial.
        self.resume.learn(grant.client_credential);
        let remembered = Remembered { offered, reconnect_token: grant.reconnect_token, fingerprint };
        self.cache = Some(Cached { config, app_id, remembered });
    }

    /// Dials what ConnectAppCallback said, racing the transports both ends
    /// allow, and says hello.
    async fn dial_answer(&mut self, answer: ConnectAppCallbackResponse, allowed: Transports) -> Result<Channel, Error> {
        let api = self.sidecar.options();
        let plan = plan::from_answer(&answer, allowed, &self.options, api.host(), api.api_token.as_deref())?;
        let mut addrs = tokio::net::lookup_host(&plan.target)
            .await
            .map_err(|e| Error::BadAnswer(format!("cannot resolve {}: {e}", plan.target)))?;
        let addr = addrs.next().ok_or_else(|| Error::BadAnswer(format!("{} resolves to nothing", plan.target)))?;
        let client_identity = match &self.options.credential {
            CredentialChoice::ClientCertificate(id) => Some(id),
            _ => None,
        };
        // The config kept for this sidecar (its sessions resume only with
        // it), presenting the certificate the sidecar issued for the app's key.
        let tls = self.resume.config(&answer.cert_sha256, &plan.server_name, || {
            dialback_certs::client_config(&plan.trust, client_identity).map_err(|e| Error::Tls(e.to_string()))
        })?;
        self.resume.learn(dialback_channel::ClientCredential::from_answer(&answer));
        let config = DialConfig {
            addr,
            server_name: plan.server_name,
            tls,
            timeouts: self.options.timeouts,
            congestion: self.options.congestion,
        };
        crate::metrics::dialing(plan.transports);
        let pending = self.dialer.connect_any(plan.transports, self.options.tcp_head_start, &config).await?;
        let early = session::Early::start(&pending, self.routes.clone());
        let (ch, grant) = pending.hello(&self.hello(&plan.app_id, plan.credential)).await?;
        self.early = early;
        self.remember(config, plan.app_id, plan.offered, answer.cert_sha256, grant);
        Ok(ch)
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
            liveness_beat_ms: self.options.liveness.to_hello(),
            api_over_http3: self.options.api_over_http3,
            client_public_key: self.resume.public_key(),
            // `session::Early` serves them wherever the connection has them.
            serves_early_streams: true,
        }
    }
}
