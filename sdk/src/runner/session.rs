//! One channel being served ([`Session`]) and how its connected phase
//! ended ([`End`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use dialback_channel::{Connection, Transport};
use tokio::task::JoinHandle;

use crate::health::Health;
use crate::ping::PingState;

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
