//! The callback server: keeps one channel to the sidecar up for the life of
//! the process and serves the app's gRPC services on it.
//!
//! Loop: ConnectAppCallback, dial (QUIC, TCP or a race of both), serve
//! HTTP/2 until the channel ends, then reconnect per [`Backoff`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialback_certs::{Fingerprint, Identity, ServerTrust};
use dialback_channel::h2;
use dialback_channel::{Channel, CloseCode, Credential, DialConfig, Dialer, Hello, Timeouts, Transport, Transports};
use dialback_proto::runtime::ConnectAppCallbackResponse;
use dialback_proto::runtime::dapr_app_channel_callback_server::DaprAppChannelCallbackServer;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::error::Error;
use crate::handlers::InvokeHandlers;
use crate::ping::{PingService, PingState};
use crate::sidecar::{SidecarClient, SidecarOptions};
use crate::state::{CallContext, ChannelState, Connected};

/// How the app proves itself on the channel.
#[derive(Clone, Debug, Default)]
pub enum CredentialChoice {
    /// The one-time token from ConnectAppCallback (the default).
    #[default]
    OneTimeToken,
    /// The sidecar's API token (`DAPR_API_TOKEN`).
    ApiToken,
    /// An mTLS client certificate naming the app-id.
    ClientCertificate(Identity),
}

/// How the app trusts the sidecar's certificate.
#[derive(Clone, Debug, Default)]
pub enum TrustChoice {
    /// Pin the fingerprint ConnectAppCallback reports (the default; the
    /// API call itself is the trust anchor).
    #[default]
    FromSidecar,
    /// Verify against these roots (e.g. the dev CA).
    Roots(Arc<rustls::RootCertStore>),
}

/// Everything about the channel the app may tune.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Which transports to try: QUIC, TCP, or both (`auto`: QUIC first, TCP after a head start).
    pub transports: Transports,
    /// How long QUIC may try alone before TCP joins the race.
    pub tcp_head_start: Duration,
    /// Credential to present.
    pub credential: CredentialChoice,
    /// Trust in the sidecar.
    pub trust: TrustChoice,
    /// Handshake deadline and keepalive.
    pub timeouts: Timeouts,
    /// Local IP to dial from (`None`: any).
    pub local_ip: Option<IpAddr>,
    /// Reconnect pacing.
    pub backoff: Backoff,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            transports: Transports::AUTO,
            tcp_head_start: Duration::from_millis(250),
            credential: CredentialChoice::default(),
            trust: TrustChoice::default(),
            timeouts: Timeouts::default(),
            local_ip: None,
            backoff: Backoff::default(),
        }
    }
}

/// Builds a [`CallbackServer`].
#[derive(Debug, Default)]
pub struct CallbackServerBuilder {
    sidecar: Option<SidecarOptions>,
    options: ChannelOptions,
    routes: Option<tonic::service::Routes>,
    names: Vec<&'static str>,
    handlers: InvokeHandlers,
}

impl CallbackServerBuilder {
    /// Where the sidecar is; default: [`SidecarOptions::from_env`].
    pub fn sidecar(mut self, options: SidecarOptions) -> Self {
        self.sidecar = Some(options);
        self
    }

    /// Channel options.
    pub fn options(mut self, options: ChannelOptions) -> Self {
        self.options = options;
        self
    }

    /// Which transports to use.
    pub fn transports(mut self, transports: Transports) -> Self {
        self.options.transports = transports;
        self
    }

    /// Serves any tonic service on the channel, e.g. an `AppCallbackServer`
    /// of your own or of the `dapr` crate.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        if self.names.contains(&S::NAME) {
            // Adding a service twice would make the router panic; keep the first.
            warn!(service = S::NAME, "service added twice; keeping the first");
            return self;
        }
        self.names.push(S::NAME);
        self.routes = Some(match self.routes.take() {
            Some(r) => r.add_service(svc),
            None => tonic::service::Routes::new(svc),
        });
        self
    }

    /// Handles OnInvoke for `method` with `f` (a built-in `AppCallback`;
    /// do not combine with an `AppCallbackServer` of your own).
    pub fn invoke_handler<F, Fut>(mut self, method: &str, f: F) -> Self
    where
        F: Fn(tonic::Request<dialback_proto::common::InvokeRequest>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<dialback_proto::common::InvokeResponse, tonic::Status>>
            + Send
            + 'static,
    {
        self.handlers = std::mem::take(&mut self.handlers).on(method, f);
        self
    }

    /// Starts keeping the channel up in the background; call from inside a
    /// tokio runtime. Fails when the sidecar endpoint is not a valid URI, or
    /// when invoke handlers are combined with an `AppCallback` service.
    pub fn start(mut self) -> Result<Handle, Error> {
        if !self.handlers.is_empty() {
            use dialback_proto::runtime::app_callback_server::SERVICE_NAME;
            if self.names.contains(&SERVICE_NAME) {
                return Err(Error::Config(
                    "invoke_handler() and an AppCallback service of your own cannot be combined".into(),
                ));
            }
            let handlers = std::mem::take(&mut self.handlers).into_service();
            self = self.add_service(handlers);
        }
        let sidecar = SidecarClient::new(self.sidecar.unwrap_or_else(SidecarOptions::from_env))?;
        let (state_tx, state_rx) = watch::channel(ChannelState::Connecting { attempt: 0 });
        let stop = CancellationToken::new();
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = Runner {
            sidecar,
            options: self.options,
            routes: self.routes,
            state: state_tx,
            stop: stop.clone(),
            commands: cmd_rx,
        };
        let task = tokio::spawn(runner.run());
        Ok(Handle { state: state_rx, stop, task: Some(task), commands: cmd_tx })
    }
}

/// The entry point: serve gRPC services to the sidecar over a channel the app dials.
#[derive(Debug)]
pub struct CallbackServer;

impl CallbackServer {
    /// A builder with default options.
    pub fn builder() -> CallbackServerBuilder {
        CallbackServerBuilder::default()
    }
}

enum Command {
    Rebind(Option<IpAddr>, tokio::sync::oneshot::Sender<Result<SocketAddr, Error>>),
}

/// Controls a started callback server. Dropping it stops the server.
#[derive(Debug)]
pub struct Handle {
    state: watch::Receiver<ChannelState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    /// The current state.
    pub fn state(&self) -> ChannelState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<ChannelState> {
        self.state.clone()
    }

    /// Waits until a channel is up; fails after `limit`, or when the server
    /// stopped or was replaced.
    pub async fn wait_connected(&self, limit: Duration) -> Result<Connected, Error> {
        let mut rx = self.state.clone();
        let got = tokio::time::timeout(
            limit,
            rx.wait_for(|s| matches!(s, ChannelState::Connected(_) | ChannelState::Replaced | ChannelState::Stopped)),
        )
        .await
        .map_err(|_| Error::Timeout(limit))?
        .map_err(|_| Error::Stopped)?
        .clone();
        match got {
            ChannelState::Connected(c) => Ok(c),
            ChannelState::Replaced => Err(Error::Replaced),
            _ => Err(Error::Stopped),
        }
    }

    /// Moves the QUIC channel to a new local socket (on `local_ip`, or the
    /// same IP): use it when the OS reports a network change. Fails when no
    /// QUIC endpoint exists or the socket cannot be bound.
    pub async fn rebind(&self, local_ip: Option<IpAddr>) -> Result<SocketAddr, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Rebind(local_ip, tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Closes the channel (calls in flight end) and stops reconnecting.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Runner {
    sidecar: SidecarClient,
    options: ChannelOptions,
    routes: Option<tonic::service::Routes>,
    state: watch::Sender<ChannelState>,
    stop: CancellationToken,
    commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
}

/// How one channel ended.
enum End {
    /// Reconnect per the backoff.
    Lost(String),
    /// Another instance took over: stop.
    Replaced,
    /// The app asked to stop.
    Stopped,
}

impl Runner {
    async fn run(mut self) {
        let mut dialer = Dialer::new(self.options.local_ip);
        let mut backoff = self.options.backoff.clone();
        let mut channels = 0u64;
        loop {
            let delay = backoff.next_delay(rand::rng().random::<f64>());
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.cancelled() => break,
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
            self.state.send_replace(ChannelState::Connecting { attempt: backoff.attempts() });
            let channel = tokio::select! {
                c = self.connect(&mut dialer) => c,
                () = self.stop.cancelled() => break,
            };
            let channel = match channel {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "callback channel not up");
                    self.state.send_replace(ChannelState::Disconnected { reason: e.to_string() });
                    continue;
                }
            };
            channels += 1;
            let up = Instant::now();
            let sidecar_addr = channel.info.peer_addr;
            info!(transport = %channel.info.transport, channel_id = channel.info.channel_id, sidecar = %sidecar_addr, "callback channel up");
            self.state.send_replace(ChannelState::Connected(Connected {
                transport: channel.info.transport,
                channel_id: channel.info.channel_id,
                sidecar: sidecar_addr,
                since: up,
                channels,
            }));
            let end = self.serve(channel, &mut dialer).await;
            backoff.on_channel_end(up.elapsed());
            match end {
                End::Lost(reason) => {
                    warn!(%reason, "callback channel down; reconnecting");
                    self.state.send_replace(ChannelState::Disconnected { reason });
                }
                End::Replaced => {
                    warn!("another instance of this app took over the channel; stopping");
                    self.state.send_replace(ChannelState::Replaced);
                    return;
                }
                End::Stopped => break,
            }
        }
        self.state.send_replace(ChannelState::Stopped);
    }

    /// ConnectAppCallback, then dial and hello.
    async fn connect(&self, dialer: &mut Dialer) -> Result<Channel, Error> {
        let answer = self.sidecar.connect_app_callback().await?;
        let offered = offered(&answer);
        let transports = Transports {
            quic: offered.quic && self.options.transports.quic,
            tcp: offered.tcp && self.options.transports.tcp,
        };
        if !transports.quic && !transports.tcp {
            return Err(Error::BadAnswer(format!(
                "the sidecar offers {offered}, this app allows {}",
                self.options.transports
            )));
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
        let pending = dialer.connect_any(transports, self.options.tcp_head_start, &config).await?;
        let credential = match &self.options.credential {
            CredentialChoice::OneTimeToken => Credential::OneTimeToken(answer.token.clone()),
            CredentialChoice::ApiToken => {
                Credential::ApiToken(self.sidecar.options().api_token.clone().unwrap_or_default())
            }
            CredentialChoice::ClientCertificate(_) => Credential::ClientCertificate(true),
        };
        let hello = Hello {
            version: dialback_channel::handshake::VERSION,
            app_id: answer.app_id.clone(),
            credential: Some(credential),
            instance: format!("pid {}", std::process::id()),
        };
        Ok(pending.hello(&hello).await?)
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

    /// Serves the app's services on `channel` until it ends.
    async fn serve(&mut self, channel: Channel, dialer: &mut Dialer) -> End {
        let Channel { io, info, conn } = channel;
        let ping = Arc::new(PingState::new());
        let ping_svc = DaprAppChannelCallbackServer::new(PingService(ping.clone()));
        let routes = match &self.routes {
            Some(r) => r.clone().add_service(ping_svc),
            None => tonic::service::Routes::new(ping_svc),
        };
        let ctx = CallContext { transport: info.transport, channel_id: info.channel_id };
        let svc = tower::util::MapRequestLayer::new(move |mut req: http::Request<h2::Incoming>| {
            req.extensions_mut().insert(ctx.clone());
            req
        });
        let svc = tower::Layer::layer(&svc, routes);
        let keep_alive = self.options.timeouts.keep_alive;
        let serving = h2::serve(io, svc, keep_alive);
        tokio::pin!(serving);
        let watchdog = ping_watchdog(&ping, keep_alive.idle_timeout);
        tokio::pin!(watchdog);
        loop {
            tokio::select! {
                r = &mut serving => {
                    if ping.notice().as_deref() == Some("replaced") {
                        return End::Replaced;
                    }
                    return End::Lost(match r { Ok(()) => "the sidecar closed the channel".into(), Err(e) => e.to_string() });
                }
                c = conn.closed() => {
                    if ping.notice().as_deref() == Some("replaced") || matches!(c, Some((CloseCode::Replaced, _))) {
                        return End::Replaced;
                    }
                    return End::Lost(match c { Some((code, why)) => format!("closed by the sidecar ({code:?}): {why}"), None => "connection lost".into() });
                }
                why = &mut watchdog => {
                    conn.close(CloseCode::PingTimeout, &why);
                    return End::Lost(why);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Rebind(ip, reply)) => { let _ = reply.send(dialer.rebind(ip).map_err(Error::from)); }
                    None => {}
                },
                () = self.stop.cancelled() => {
                    conn.close(CloseCode::ShuttingDown, "app shutting down");
                    return End::Stopped;
                }
            }
        }
    }
}

/// Resolves when the sidecar's pings stop: nothing for the announced
/// interval plus `idle`. The app learns of a dead sidecar even when the
/// transport has not noticed yet.
async fn ping_watchdog(ping: &PingState, idle: Duration) -> String {
    loop {
        let (last, interval) = ping.last();
        let limit = interval.unwrap_or(Duration::from_secs(2)) + idle;
        let elapsed = last.elapsed();
        if elapsed >= limit {
            return format!("no Ping from the sidecar for {elapsed:?}");
        }
        tokio::time::sleep(limit - elapsed).await;
    }
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
