//! One channel being served ([`Session`]) and how its connected phase
//! ended ([`End`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dialback_channel::{Connection, Transport, h2};
use dialback_proto::runtime::dapr_app_channel_callback_server::DaprAppChannelCallbackServer;
use tokio::task::JoinHandle;

use crate::health::Health;
use crate::ping::{PingService, PingState};
use crate::state::CallContext;

/// How the connected phase ended.
pub(super) enum End {
    /// Reconnect per the backoff.
    Lost(String),
    /// Another instance took over: stand by.
    Replaced,
    /// The app asked to stop.
    Stopped,
}

/// One channel being served.
pub(super) struct Session {
    pub(super) transport: Transport,
    pub(super) channel_id: u64,
    pub(super) sidecar: SocketAddr,
    /// The local IP the channel sends from, as far as the SDK knows (see
    /// `Runner::local_ip_of`); what a network change is checked against.
    pub(super) local_ip: Option<IpAddr>,
    pub(super) conn: Connection,
    pub(super) ping: Arc<PingState>,
    pub(super) health: Health,
    pub(super) serving: JoinHandle<Result<(), ServeError>>,
    pub(super) up: Instant,
}

/// The error `h2::serve` ends with, boxed.
pub(super) type ServeError = Box<dyn std::error::Error + Send + Sync>;

impl Session {
    /// Resolves when the channel is gone, saying why.
    pub(super) async fn ended(&mut self) -> String {
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

/// With a stream per call (dialback/2): serves `svc` on each stream the
/// sidecar opens, an HTTP/2 connection per stream, until the channel is gone.
pub(super) async fn serve_streams<S>(conn: dialback_channel::Connection, svc: S)
where
    S: tower::Service<http::Request<dialback_channel::h2::Incoming>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Some(stream) = conn.accept_stream().await {
        let svc = svc.clone();
        tokio::spawn(async move {
            if let Err(e) = dialback_channel::h2::serve(stream, svc, None).await {
                tracing::debug!(error = %e, "a call's own HTTP/2 connection ended with an error");
            }
        });
    }
}

/// The app's services on a channel: `routes` and the Ping service (on
/// `ping`), each request told its [`CallContext`] (the channel id read
/// from `channel_id` when the request comes: 0 before the verdict).
pub(super) fn service(
    routes: Option<tonic::service::Routes>,
    transport: Transport,
    ping: &Arc<PingState>,
    channel_id: Arc<AtomicU64>,
) -> tower::util::MapRequest<
    tonic::service::Routes,
    impl FnMut(http::Request<h2::Incoming>) -> http::Request<h2::Incoming> + Clone + Send + 'static,
> {
    let ping_svc = DaprAppChannelCallbackServer::new(PingService(ping.clone()));
    let routes = match routes {
        Some(r) => r.add_service(ping_svc),
        None => tonic::service::Routes::new(ping_svc),
    };
    let layer = tower::util::MapRequestLayer::new(move |mut req: http::Request<h2::Incoming>| {
        let ctx = CallContext { transport, channel_id: channel_id.load(Ordering::Relaxed) };
        req.extensions_mut().insert(ctx);
        req
    });
    tower::Layer::layer(&layer, routes)
}

/// The calls a sidecar sends before its verdict, served from the end of
/// the TLS handshake (a resumed QUIC session: see
/// `dialback_channel::EarlyChannel`); the session that follows takes them
/// over. Dropped before that (the hello failed), it stops serving.
pub(super) struct Early {
    pub(super) ping: Arc<PingState>,
    pub(super) channel_id: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Early {
    /// Serves the sidecar's streams on `pending`'s connection, where it
    /// may send calls before the verdict; `None` where it may not.
    pub(super) fn start(pending: &dialback_channel::Pending, routes: Option<tonic::service::Routes>) -> Option<Early> {
        let conn = pending.early_connection()?;
        let ping = Arc::new(PingState::new());
        let channel_id = Arc::new(AtomicU64::new(0));
        let svc = service(routes, pending.transport(), &ping, channel_id.clone());
        Some(Early { ping, channel_id, task: Some(tokio::spawn(serve_streams(conn, svc))) })
    }

    /// The serving task, for the session to keep.
    pub(super) fn into_task(mut self) -> Option<JoinHandle<()>> {
        self.task.take()
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
