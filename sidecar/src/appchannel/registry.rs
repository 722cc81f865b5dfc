//! The app's live callback channel, if any: installed when a channel is
//! proven, replaced by a newer one, removed when it dies. Calls wait on it
//! (bounded) while it is down. The registry holds [`Live`] handles; each
//! channel's driver (`driver.rs`) owns the channel's life behind its handle.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dialback_channel::h2::H2Client;
use dialback_channel::{ChannelInfo, CloseCode, Connection};
use tokio::sync::{Notify, watch};

use super::end::ChannelEnd;

/// An order to retire a channel: close it with `code` once the calls in
/// flight finished, waiting `drain` at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retire {
    /// The close code (and so the notice the app gets).
    pub code: CloseCode,
    /// How long the calls in flight may take.
    pub drain: Duration,
}

/// The handle on one channel and its driver: what calls need (the HTTP/2
/// client, the in-flight count) and what the registry and shutdown need
/// (retire it, wait for its end).
#[derive(Debug)]
pub struct Live {
    /// Who is on the other end.
    pub info: ChannelInfo,
    /// The connection's life.
    pub conn: Connection,
    /// HTTP/2 to the app.
    pub client: H2Client,
    /// When it was installed (wall clock, for metadata).
    pub since: SystemTime,
    /// A provisional channel, offered before its hello (see
    /// `driver::try_early`): calls may use it, but what belongs to an app's
    /// channel for good (the bridge's subscriptions) waits for its hello's.
    pub early: bool,
    rtt_us: AtomicU64,
    inflight: AtomicUsize,
    idle: Notify,
    retire: watch::Sender<Option<Retire>>,
    end: watch::Sender<Option<ChannelEnd>>,
}

impl Live {
    /// Wraps a channel's parts.
    pub fn new(info: ChannelInfo, conn: Connection, client: H2Client) -> Live {
        Live {
            info,
            conn,
            client,
            since: SystemTime::now(),
            early: false,
            rtt_us: AtomicU64::new(u64::MAX),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            retire: watch::Sender::new(None),
            end: watch::Sender::new(None),
        }
    }

    /// A provisional channel (see [`Live::early`]).
    pub fn new_early(info: ChannelInfo, conn: Connection, client: H2Client) -> Live {
        Live { early: true, ..Live::new(info, conn, client) }
    }

    /// Asks the driver to retire the channel (the first order counts).
    pub fn retire(&self, code: CloseCode, drain: Duration) {
        self.retire.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(Retire { code, drain });
            true
        });
    }

    /// The driver's view of retirement orders.
    pub(crate) fn retire_orders(&self) -> watch::Receiver<Option<Retire>> {
        self.retire.subscribe()
    }

    /// Records how the channel ended (the driver does, once).
    pub(crate) fn set_end(&self, end: ChannelEnd) {
        self.end.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(end);
            true
        });
    }

    /// Resolves once the channel has ended, saying why.
    pub async fn ended(&self) -> ChannelEnd {
        let mut rx = self.end.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(end) => end.clone().unwrap_or(ChannelEnd::ConnectionClosed),
            // The sender lives in `self`: this cannot happen while we are here.
            Err(_) => ChannelEnd::ConnectionClosed,
        }
    }

    /// Woken whenever the last call in flight finishes.
    pub(crate) fn idle(&self) -> &Notify {
        &self.idle
    }

    /// Records a Ping round trip.
    pub fn set_rtt(&self, rtt: Duration) {
        self.rtt_us.store(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1), Ordering::Relaxed);
    }

    /// The last Ping round trip, else the transport's estimate.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            u64::MAX => self.conn.rtt(),
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Marks a call in flight until the guard drops.
    pub fn begin_call(self: &Arc<Self>) -> CallGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Calls in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// Keeps a channel counted as busy while a call runs on it.
#[derive(Debug)]
pub struct CallGuard(Arc<Live>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The last time the channel went down, and why.
#[derive(Clone, Debug)]
pub struct Down {
    /// When.
    pub at: SystemTime,
    /// Why, in words.
    pub reason: String,
}

/// The current channel and its history.
#[derive(Debug)]
pub struct Registry {
    current: watch::Sender<Option<Arc<Live>>>,
    accepted: AtomicU64,
    last_down: Mutex<Option<Down>>,
    /// Where the last channel came from (or the previous run's, from the
    /// state dir): the one address an early channel is taken from.
    last_peer: Mutex<Option<std::net::SocketAddr>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            current: watch::Sender::new(None),
            accepted: AtomicU64::new(0),
            last_down: Mutex::new(None),
            last_peer: Mutex::new(None),
        }
    }
}

impl Registry {
    /// Makes `live` the channel; returns the one it replaces.
    pub fn install(&self, live: Arc<Live>) -> Option<Arc<Live>> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.seed_peer(live.info.peer_addr);
        self.current.send_replace(Some(live))
    }

    /// Makes `live` the channel only when none is up (a standby hello);
    /// `Err` when another channel holds the slot.
    pub fn install_if_free(&self, live: Arc<Live>) -> Result<Option<Arc<Live>>, ()> {
        let peer = live.info.peer_addr;
        if !self.put_if_free(live) {
            return Err(());
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.seed_peer(peer);
        Ok(None)
    }

    /// Makes `early`, a channel offered before its hello, the channel when
    /// none is up; false otherwise. Not counted as a reconnect: its hello's
    /// channel takes its place ([`Registry::replace_early`]).
    pub fn install_early(&self, early: Arc<Live>) -> bool {
        self.put_if_free(early)
    }

    /// Puts `live` in the place of the early channel of the same id, if
    /// that is still the current one.
    pub fn replace_early(&self, live: Arc<Live>) -> bool {
        let id = live.info.channel_id;
        let peer = live.info.peer_addr;
        let replaced = self.swap_if(|l| l.info.channel_id == id, Some(live));
        if replaced {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            self.seed_peer(peer);
        }
        replaced
    }

    /// Notes `peer` as where the app was last seen (at start: where the
    /// previous run last saw it).
    pub fn seed_peer(&self, peer: std::net::SocketAddr) {
        if let Ok(mut p) = self.last_peer.lock() {
            *p = Some(peer);
        }
    }

    /// Where the app was last seen.
    pub fn last_peer(&self) -> Option<std::net::SocketAddr> {
        self.last_peer.lock().ok().and_then(|p| *p)
    }

    fn put_if_free(&self, live: Arc<Live>) -> bool {
        self.current.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|l| !l.conn.is_closed()) {
                return false;
            }
            *cur = Some(live.clone());
            true
        })
    }

    /// Whether a channel is up.
    pub fn is_taken(&self) -> bool {
        self.current.borrow().as_ref().is_some_and(|l| !l.conn.is_closed())
    }

    /// Records why a new channel failed before it was installed, as the
    /// last outage's reason when no channel is up (it explains why the app
    /// is still unreachable); a live channel's metadata stays as it is.
    pub fn note_failed(&self, reason: &str) {
        if !self.is_taken()
            && let Ok(mut d) = self.last_down.lock()
        {
            *d = Some(Down { at: SystemTime::now(), reason: reason.to_string() });
        }
    }

    /// Removes the channel `channel_id` if it is still the current one.
    pub fn remove_if(&self, channel_id: u64, reason: &str) -> bool {
        self.remove_where(|l| l.info.channel_id == channel_id, reason)
    }

    /// Removes `live` if it is still the current channel (this very one,
    /// not another under its id).
    pub fn remove_live(&self, live: &Arc<Live>, reason: &str) -> bool {
        self.remove_where(|l| std::ptr::eq(l, Arc::as_ptr(live)), reason)
    }

    /// Removes the current channel if it `matches`, noting `reason` as the
    /// outage's.
    fn remove_where(&self, matches: impl Fn(&Live) -> bool, reason: &str) -> bool {
        let removed = self.swap_if(matches, None);
        if removed && let Ok(mut d) = self.last_down.lock() {
            *d = Some(Down { at: SystemTime::now(), reason: reason.to_string() });
        }
        removed
    }

    /// Puts `new` in the current channel's place if that one `matches`.
    fn swap_if(&self, matches: impl Fn(&Live) -> bool, new: Option<Arc<Live>>) -> bool {
        self.current.send_if_modified(|cur| {
            if cur.as_deref().is_some_and(&matches) {
                *cur = new;
                true
            } else {
                false
            }
        })
    }

    /// Takes the current channel out (shutdown).
    pub fn take(&self) -> Option<Arc<Live>> {
        self.current.send_replace(None)
    }

    /// A receiver that sees every change of the current channel.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Live>>> {
        self.current.subscribe()
    }

    /// The current channel, if one is up.
    pub fn current(&self) -> Option<Arc<Live>> {
        self.current.borrow().clone()
    }

    /// The current channel, waiting up to `limit` for one to come up.
    pub async fn wait(&self, limit: Duration) -> Option<Arc<Live>> {
        let mut rx = self.current.subscribe();
        let got = tokio::time::timeout(limit, rx.wait_for(|c| c.as_ref().is_some_and(|l| !l.conn.is_closed()))).await;
        match got {
            Ok(Ok(live)) => live.clone(),
            _ => None,
        }
    }

    /// Channels accepted since start, minus the first: how often the app came back.
    pub fn reconnects(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The last outage, if any.
    pub fn last_down(&self) -> Option<Down> {
        self.last_down.lock().ok().and_then(|d| d.clone())
    }
}
