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
    /// How far the regular Pings' gaps stray from the interval (a smoothed
    /// mean deviation, RFC 6298's RTTVAR with gain 1/4); none before the
    /// second Ping.
    jitter: Option<Duration>,
    /// When the regular stream's last Ping message came (not its opening,
    /// which the first message follows at once; probes do not count).
    regular: Option<Instant>,
    notice: Option<CloseNotice>,
}

/// What the runner reads from [`PingState::last`].
#[derive(Clone, Copy, Debug)]
pub struct Heard {
    /// When the last ping arrived.
    pub at: Instant,
    /// The interval the sidecar announced, if it did.
    pub interval: Option<Duration>,
    /// How much the regular Pings' arrival strays, once two have come.
    pub jitter: Option<Duration>,
}

impl Seen {
    /// A regular Ping came at `now`: update the arrival jitter.
    fn regular(&mut self, now: Instant) {
        if let (Some(prev), Some(interval)) = (self.regular, self.interval) {
            let gap = now.saturating_duration_since(prev);
            let dev = gap.abs_diff(interval);
            self.jitter = Some(match self.jitter {
                None => dev,
                Some(j) => (j * 3 + dev) / 4,
            });
        }
        self.regular = Some(now);
        self.last = now;
    }
}

impl PingState {
    /// A fresh state; the channel counts as pinged now.
    pub fn new() -> PingState {
        PingState {
            inner: Mutex::new(Seen { last: Instant::now(), interval: None, jitter: None, regular: None, notice: None }),
            installed: tokio::sync::watch::Sender::new(false),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut s| f(&mut s))
    }

    /// When the last ping arrived, the interval the sidecar announced, and
    /// how regular its Pings have been.
    pub fn last(&self) -> Heard {
        self.with(|s| Heard { at: s.last, interval: s.interval, jitter: s.jitter }).unwrap_or(Heard {
            at: Instant::now(),
            interval: None,
            jitter: None,
        })
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
            state.with(|s| if probe { s.last = Instant::now() } else { s.regular(Instant::now()) });
            Ok(())
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn seen(interval: Duration) -> Seen {
        Seen { last: Instant::now(), interval: Some(interval), jitter: None, regular: None, notice: None }
    }

    #[test]
    fn jitter_is_the_smoothed_deviation_of_the_gaps_from_the_interval() {
        let t0 = Instant::now();
        let mut s = seen(2000 * MS);
        s.regular(t0);
        assert_eq!(s.jitter, None, "one Ping shows no gap");
        s.regular(t0 + 2010 * MS);
        assert_eq!(s.jitter, Some(10 * MS));
        // Early counts as much as late.
        s.regular(t0 + 4000 * MS);
        assert_eq!(s.jitter, Some(10 * MS));
        // On time: the deviation shrinks by a quarter.
        s.regular(t0 + 6000 * MS);
        assert_eq!(s.jitter, Some(7500 * Duration::from_micros(1)));
        assert_eq!(s.last, t0 + 6000 * MS);
    }

    #[test]
    fn no_interval_announced_no_jitter() {
        let t0 = Instant::now();
        let mut s = seen(2000 * MS);
        s.interval = None;
        s.regular(t0);
        s.regular(t0 + 5000 * MS);
        assert_eq!(s.jitter, None);
    }
}
