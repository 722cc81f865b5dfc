//! How the sidecar reaches its app: [`AppChannel`] (classic, or whatever
//! callback channel is live), the connection under a call ([`AppConn`]),
//! and the bound on calls in flight and waiting ([`CallGate`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use dialback_channel::h2::H2Client;
use dialback_proto::runtime::app_callback_client::AppCallbackClient;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;

use crate::appchannel::{CallGuard, Registry};
use crate::error::InvokeError;

/// How the sidecar reaches its app.
#[derive(Clone, Debug)]
pub enum AppChannel {
    /// No app configured.
    None,
    /// Classic mode: a lazily connected HTTP/2 channel to the app's server.
    Classic(tonic::transport::Channel),
    /// Callback mode: whatever channel the app has dialed.
    Callback(Arc<Registry>),
}

/// The transport under an `AppCallbackClient`: either kind of connection.
#[derive(Clone, Debug)]
pub enum AppConn {
    /// Classic mode.
    Classic(tonic::transport::Channel),
    /// A callback channel.
    Callback(H2Client),
}

impl tower::Service<http::Request<Body>> for AppConn {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            AppConn::Classic(c) => c.poll_ready(cx).map_err(Into::into),
            AppConn::Callback(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            AppConn::Classic(c) => {
                let f = c.call(req);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            AppConn::Callback(c) => c.call(req),
        }
    }
}

/// The largest message the app accepts when its hello does not say
/// (gRPC's default, which tonic and grpc-go servers use).
pub const APP_DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;

impl AppChannel {
    /// A client to the app, waiting up to `wait` for a callback channel;
    /// also the largest message the app takes, when known. Fails when no
    /// app is configured or no channel came up in time.
    pub async fn client(
        &self,
        wait: Duration,
        max_message: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(AppCallbackClient<AppConn>, Option<CallGuard>, Option<usize>), InvokeError> {
        let (conn, guard, app_limit) = match self {
            AppChannel::None => return Err(InvokeError::NoApp),
            AppChannel::Classic(c) => (AppConn::Classic(c.clone()), None, None),
            AppChannel::Callback(reg) => match metrics.waiting_for_channel(reg.wait(wait)).await {
                Some(live) => {
                    let limit = match live.info.max_message_bytes {
                        0 => APP_DEFAULT_MAX_MESSAGE,
                        n => usize::try_from(n).unwrap_or(usize::MAX),
                    };
                    (AppConn::Callback(live.client.clone()), Some(live.begin_call()), Some(limit))
                }
                None => return Err(InvokeError::ChannelDown { waited: wait }),
            },
        };
        let client =
            AppCallbackClient::new(conn).max_decoding_message_size(max_message).max_encoding_message_size(max_message);
        Ok((client, guard, app_limit))
    }
}

/// Calls in flight to the app are bounded, and so are the calls waiting for
/// a slot: past both, a call is refused at once (429/RESOURCE_EXHAUSTED)
/// instead of queueing without bound behind slow ones.
#[derive(Debug)]
pub struct CallGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A call's slot; the next waiting call gets it when this drops.
pub type Slot = OwnedSemaphorePermit;

impl CallGate {
    /// `slots` calls in flight at once, `max_waiting` more waiting.
    pub fn new(slots: usize, max_waiting: usize) -> CallGate {
        CallGate { slots: Arc::new(Semaphore::new(slots.max(1))), waiting: AtomicUsize::new(0), max_waiting }
    }

    /// Takes a slot, waiting until `deadline` at most. Fails with
    /// [`InvokeError::Busy`] when the waiting line is full, and with
    /// [`InvokeError::Timeout`] when the deadline passes first.
    pub async fn enter(&self, deadline: Instant, timeout: Duration) -> Result<Slot, InvokeError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(InvokeError::Busy { waiting: self.max_waiting });
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(InvokeError::NoApp),
            Err(_) => Err(InvokeError::Timeout(timeout)),
        }
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gate_bounds_calls_in_flight_and_waiting() {
        let gate = Arc::new(CallGate::new(2, 1));
        let far = Instant::now() + Duration::from_secs(60);
        let a = gate.enter(far, Duration::from_secs(60)).await.unwrap();
        let _b = gate.enter(far, Duration::from_secs(60)).await.unwrap();
        // The third waits; the fourth finds the line full and is refused at once.
        let g = gate.clone();
        let third = tokio::spawn(async move { g.enter(far, Duration::from_secs(60)).await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 1);
        assert!(matches!(gate.enter(far, Duration::from_secs(60)).await, Err(InvokeError::Busy { waiting: 1 })));
        drop(a);
        third.await.unwrap().unwrap();
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gives_up_at_its_deadline() {
        let gate = CallGate::new(1, 8);
        let _held = gate.enter(Instant::now() + Duration::from_secs(60), Duration::from_secs(60)).await.unwrap();
        let t = Duration::from_secs(2);
        let r = gate.enter(Instant::now() + t, t).await;
        assert!(matches!(r, Err(InvokeError::Timeout(d)) if d == t), "{r:?}");
        assert_eq!(gate.waiting(), 0, "a call that gave up no longer counts as waiting");
    }
}
