//! The callback server: keeps one channel to the sidecar up for the life of
//! the process and serves the app's gRPC services on it.
//!
//! Loop: ConnectAppCallback, dial (QUIC, TCP or a race of both), serve
//! HTTP/2 until the channel ends, then reconnect per [`Backoff`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use dialback_channel::Transports;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tracing::warn;

use crate::error::Error;
use crate::handlers::InvokeHandlers;
use crate::options::ChannelOptions;
use crate::runner::{Command, Runner};
use crate::sidecar::{SidecarClient, SidecarOptions};
use crate::state::{ChannelState, Connected};

/// Builds a [`CallbackServer`].
#[derive(Debug, Default)]
pub struct CallbackServerBuilder {
    sidecar: Option<SidecarOptions>,
    options: ChannelOptions,
    routes: Option<tonic::service::Routes>,
    names: Vec<&'static str>,
    handlers: InvokeHandlers,
    http: Option<axum::Router>,
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

    /// Serves an HTTP app beside the gRPC services, e.g. an axum `Router`
    /// written for daprd's `--app-protocol http` (`/dapr/subscribe`, event
    /// and binding routes, invoked methods): every request that is not gRPC
    /// goes to it. A gRPC request for a service not added is answered
    /// UNIMPLEMENTED, as before. Calling it again replaces the service.
    pub fn http_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<axum::body::Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.http = Some(axum::Router::new().fallback_service(svc));
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
            let handlers = std::mem::take(&mut self.handlers)
                .into_service()
                .max_decoding_message_size(self.options.max_message_size);
            self = self.add_service(handlers);
        }
        let sidecar = SidecarClient::new(self.sidecar.unwrap_or_else(SidecarOptions::from_env))?;
        let (state_tx, state_rx) = watch::channel(ChannelState::Connecting { attempt: 0 });
        let stop = CancellationToken::new();
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let routes = Some(with_http(self.routes.take(), self.http.take()));
        let runner = Runner::new(sidecar.clone(), self.options, routes, state_tx, stop.clone(), cmd_rx);
        let task = tokio::spawn(runner.run());
        Ok(Handle { state: state_rx, stop, task: Some(task), commands: cmd_tx, sidecar })
    }
}

/// The gRPC `routes` with `http` behind them: requests no gRPC service
/// claims go to `http`, but a gRPC one stays a gRPC UNIMPLEMENTED. Without
/// an HTTP service, an HTTP request gets a plain 404 (not tonic's
/// UNIMPLEMENTED, which an HTTP client such as daprd with
/// `--app-protocol http` would read as 200).
fn with_http(routes: Option<tonic::service::Routes>, http: Option<axum::Router>) -> tonic::service::Routes {
    let fallback = tower::service_fn(move |req: http::Request<axum::body::Body>| {
        let http = http.clone();
        async move {
            if dialback_channel::h2::is_grpc(req.headers()) {
                let path = req.uri().path().to_string();
                return Ok::<_, Infallible>(
                    tonic::Status::unimplemented(format!("no gRPC service serves {path}")).into_http(),
                );
            }
            let Some(http) = http else {
                let mut resp = axum::response::Response::new(axum::body::Body::from(
                    "this app serves no HTTP routes: it serves gRPC (daprd's --app-protocol grpc), \
                     or add HTTP routes with CallbackServerBuilder::http_service",
                ));
                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                return Ok(resp);
            };
            Ok(tower::ServiceExt::oneshot(http, req).await.unwrap_or_else(|never| match never {}))
        }
    });
    let router = routes.map(tonic::service::Routes::into_axum_router).unwrap_or_default();
    tonic::service::Routes::from(router.fallback_service(fallback))
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

/// Controls a started callback server. Dropping it stops the server.
#[derive(Debug)]
pub struct Handle {
    state: watch::Receiver<ChannelState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    sidecar: SidecarClient,
}

impl Handle {
    /// A client to the sidecar's API whose calls go as HTTP/3 on the
    /// channel while it is QUIC and up (one UDP flow; the calls migrate
    /// with it), and to the API endpoint otherwise.
    pub fn sidecar(&self) -> SidecarClient {
        self.sidecar.clone()
    }

    /// The current state.
    pub fn state(&self) -> ChannelState {
        self.state.borrow().clone()
    }

    /// A receiver woken at every state change, which reads the latest state:
    /// a brief one (`Disconnected` just before a redial that goes out at
    /// once) can be replaced before it is read. The log's "callback channel
    /// down" line and the reconnects metric count every outage.
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

    /// Tells the SDK the network changed (call it when the OS reports one),
    /// optionally with the new local IP. On QUIC the connection migrates to
    /// a new socket, without a new handshake; on TCP a new channel is made
    /// from the new address and the old one drained (make-before-break).
    /// Fails when no channel is up (the SDK then redials at once, and in the
    /// mobile profile tries hard again) or the new socket or channel fails.
    pub async fn rebind(&self, local_ip: Option<IpAddr>) -> Result<(), Error> {
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
