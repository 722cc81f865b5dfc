//! The app's half of the liveness stream (`DaprAppChannelCallback/Ping`):
//! answer every ping, remember when the last one came, and take the
//! sidecar's in-band close notice.

use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dialback_channel::CloseNotice;
use dialback_channel::notice::{CLOSE_NOTICE_KEY, PING_INTERVAL_KEY, PROBE_KEY};
use dialback_proto::runtime::dapr_app_channel_callback_server::DaprAppChannelCallback;
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// What one channel's Ping service has seen.
#[derive(Debug)]
pub struct PingState {
    inner: Mutex<Seen>,
    /// Set when the regular Ping stream opens: the sidecar has installed the channel.
    installed: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct Seen {
    last: Instant,
    interval: Option<Duration>,
    notice: Option<CloseNotice>,
}

impl PingState {
    /// A fresh state; the channel counts as pinged now.
    pub fn new() -> PingState {
        PingState {
            inner: Mutex::new(Seen { last: Instant::now(), interval: None, notice: None }),
            installed: tokio::sync::watch::Sender::new(false),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut s| f(&mut s))
    }

    /// When the last ping arrived, and the interval the sidecar announced.
    pub fn last(&self) -> (Instant, Option<Duration>) {
        self.with(|s| (s.last, s.interval)).unwrap_or((Instant::now(), None))
    }

    /// Becomes true once the sidecar has installed the channel (its regular
    /// Ping stream opened); a probe before that does not count.
    pub fn installed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.installed.subscribe()
    }

    /// The sidecar's close notice, if it sent one this version knows.
    pub fn notice(&self) -> Option<CloseNotice> {
        self.with(|s| s.notice).flatten()
    }
}

impl Default for PingState {
    fn default() -> Self {
        PingState::new()
    }
}

/// The Ping service for one channel.
#[derive(Clone, Debug)]
pub struct PingService(pub std::sync::Arc<PingState>);

type PingStream = Pin<Box<dyn Stream<Item = Result<(), Status>> + Send>>;

#[tonic::async_trait]
impl DaprAppChannelCallback for PingService {
    type PingStream = PingStream;

    async fn ping(&self, request: Request<Streaming<()>>) -> Result<Response<PingStream>, Status> {
        if let Some(words) = request.metadata().get(CLOSE_NOTICE_KEY).and_then(|v| v.to_str().ok()) {
            let notice = CloseNotice::parse(words);
            self.0.with(|s| s.notice = notice);
            return Ok(Response::new(Box::pin(futures_util::stream::empty())));
        }
        let probe = request.metadata().contains_key(PROBE_KEY);
        let interval = request
            .metadata()
            .get(PING_INTERVAL_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        self.0.with(|s| {
            s.last = Instant::now();
            if !probe {
                s.interval = interval;
            }
        });
        if !probe {
            self.0.installed.send_replace(true);
        }
        let state = self.0.clone();
        let out = request.into_inner().map(move |msg| {
            msg?;
            state.with(|s| s.last = Instant::now());
            Ok(())
        });
        Ok(Response::new(Box::pin(out)))
    }
}
