//! Channel health, a pure core with time passed in (quinn-proto's style):
//! the runner tells it when the sidecar's last Ping came
//! ([`Health::on_ping`]), asks [`Health::poll_timeout`] when to look next,
//! and [`Health::check`] says what to do: nothing, move the socket (the
//! path may be dead: a lost NAT mapping), or give the channel up.
//!
//! The app learns of a dead sidecar or path this way even when the
//! transport has not noticed yet.
//!
//! On QUIC, while the path is quiet, the socket moves again every
//! [`Health::nudge_every`]. Quiet means nothing at all arrives (the runner
//! passes the connection's packet counts) and either the Pings are overdue
//! or what the app sent (its answers, its probe timer's probes) has gone
//! unacknowledged for three round trips and the ACK delay, at least
//! 250 ms: the second finds a spell shorter than the Ping interval, which
//! the first would find only at the next Ping's due time. The looks come
//! every nudge interval for that long after datagrams last came, so an
//! idle channel gets a few after each Ping. Each move is a packet from a
//! new address, so the first one after a dead spell reaches the sidecar as a migration,
//! which gives its path fresh bytes-in-flight accounting. A sidecar whose
//! congestion window is full of the spell's lost packets otherwise sends
//! nothing, not even an ACK, until its backed-off probe timer fires
//! (docs/architecture.md, "QUIC after a dead spell"). A look a nudge
//! interval before each Ping is due notes the count, so a path that went
//! silent before then is first nudged as soon as the Ping is overdue.

use std::time::{Duration, Instant};

use dialback_channel::{KeepAlive, PathCounts};

/// The Ping interval assumed until the sidecar announces its own.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(2);

/// The least lateness margin, however regular the Pings, and the margin
/// before two Pings have shown their jitter.
const MARGIN_MIN: Duration = Duration::from_millis(25);

/// The longest the sidecar waits before acknowledging (QUIC's default
/// `max_ack_delay`, which the sidecar keeps).
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// The shortest wait for an acknowledgement before the path counts as quiet.
const QUIET_MIN: Duration = Duration::from_millis(250);

/// What [`Health::check`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pings come as they should (or are not late enough to act on).
    Healthy,
    /// A Ping is overdue (past its interval and a little): ask the
    /// sidecar's API in parallel whether the sidecar behind it is still the
    /// one this channel reaches (a rescheduled sidecar sends no reset).
    /// Again every quarter interval (at least 250 ms) while the silence
    /// lasts: the new sidecar may not be up at the first ask.
    AskSidecar,
    /// Move to a new socket: Pings are late by more than a keepalive
    /// interval (the path may be dead: once per silence, unless it moved
    /// already), or, on QUIC, the path is quiet (the Pings overdue, or
    /// what the app sent unanswered) and nothing has arrived for a nudge
    /// interval (again at each interval while that lasts). `nth` counts
    /// the moves of this silence, from 1.
    MoveSocket { nth: u32 },
    /// No Ping for longer than the idle timeout: the channel is gone. Says why.
    Redial(String),
}

/// The connection's datagram count as the looks saw it.
#[derive(Clone, Copy, Debug)]
struct Heard {
    /// Datagrams received, at the last look.
    received: u64,
    /// The look that first saw that count.
    since: Instant,
    /// Ack-eliciting frames sent, at that look.
    sent_then: u64,
    /// The first look that found more of those sent, nothing received:
    /// the app is waiting for an acknowledgement since then, at the latest.
    unanswered: Option<Instant>,
    /// The connection's smoothed round trip, at the last look.
    rtt: Duration,
}

/// One channel's view of the sidecar's Pings.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    keep_alive: KeepAlive,
    last: Instant,
    interval: Duration,
    /// How much the Pings' arrival strays (none known yet).
    jitter: Option<Duration>,
    /// The last [`Verdict::AskSidecar`]: for which silence (its last Ping's
    /// time), and how long that silence had lasted then.
    asked: Option<(Instant, Duration)>,
    /// What the connection had received at the last look, and since when
    /// (QUIC only).
    heard: Option<Heard>,
    /// When [`Health::check`] last looked.
    looked: Option<Instant>,
    /// The moves of the latest silence that had any: its last Ping's
    /// time, how many, and when the last one was.
    moves: Option<(Instant, u32, Instant)>,
}

impl Heard {
    fn new(c: PathCounts, now: Instant) -> Heard {
        Heard { received: c.received, since: now, sent_then: c.eliciting_sent, unanswered: None, rtt: c.rtt }
    }
}

impl Health {
    /// A channel that came up at `now` counts as pinged then.
    pub(crate) fn new(keep_alive: KeepAlive, now: Instant) -> Health {
        Health {
            keep_alive,
            last: now,
            interval: DEFAULT_PING_INTERVAL,
            jitter: None,
            asked: None,
            heard: None,
            looked: None,
            moves: None,
        }
    }

    /// This channel's transport counts packets (QUIC), `counts` so far:
    /// noted as a look at its start, so the looks after it and the one
    /// before the first Ping is due are made too.
    pub(crate) fn counting(mut self, counts: Option<PathCounts>) -> Health {
        self.heard = counts.map(|c| Heard::new(c, self.last));
        self
    }

    /// The last Ping came at `at`; the sidecar announced `interval`, if it
    /// did; Pings have strayed by `jitter` around it, once that is known.
    pub(crate) fn on_ping(&mut self, at: Instant, interval: Option<Duration>, jitter: Option<Duration>) {
        self.last = self.last.max(at);
        self.interval = interval.unwrap_or(DEFAULT_PING_INTERVAL);
        self.jitter = jitter;
    }

    /// A Ping is overdue once it is later than its beat's jitter explains:
    /// four mean deviations (RFC 6298's RTO rule), at least 25 ms and at
    /// most a quarter interval; 25 ms until two Pings have shown the
    /// jitter. Overdue only means "ask the sidecar's API", one request, so
    /// the margin can be tight: the sooner the ask, the sooner a sidecar
    /// that came back elsewhere is found.
    fn late_after(&self) -> Duration {
        let margin = match self.jitter {
            None => MARGIN_MIN,
            Some(j) => (j * 4).min(self.interval / 4).max(MARGIN_MIN),
        };
        self.interval + margin
    }

    /// When the next Ping is overdue.
    fn overdue_at(&self) -> Instant {
        self.last + self.late_after()
    }

    /// How often to ask the sidecar again while the silence lasts.
    fn ask_every(&self) -> Duration {
        (self.interval / 4).max(Duration::from_millis(250))
    }

    /// How often to move the socket while the path is quiet and silent
    /// (and how often to look while it may turn so): a twentieth of the Ping interval, at least 100 ms
    /// (10 small packets a second into a dead path, for at most the idle
    /// timeout; 1.25 s under the mobile profile's 25 s beat).
    pub(crate) fn nudge_every(&self) -> Duration {
        (self.interval / 20).max(Duration::from_millis(100))
    }

    /// How long sent frames may go without anything received before the
    /// path counts as quiet: three round trips and the peer's ACK delay,
    /// at least 250 ms.
    fn quiet_after(rtt: Duration) -> Duration {
        (rtt * 3 + MAX_ACK_DELAY).max(QUIET_MIN)
    }

    /// When the path started to look quiet, if it has: the Ping overdue,
    /// or what the app sent unanswered for [`Health::quiet_after`].
    fn quiet_from(&self, heard: &Heard) -> Instant {
        let late = self.overdue_at();
        heard.unanswered.map_or(late, |at| late.min(at + Self::quiet_after(heard.rtt)))
    }

    /// When the next nudge is due, if the transport counts datagrams.
    fn next_nudge(&self) -> Option<Instant> {
        let heard = self.heard?;
        let mut at = self.quiet_from(&heard).max(heard.since + self.nudge_every());
        if let Some((last, _, when)) = self.moves
            && last == self.last
        {
            at = at.max(when + self.nudge_every());
        }
        Some(at)
    }

    /// Whether the socket moved in the current silence.
    fn moved_already(&self) -> bool {
        self.moves.is_some_and(|(last, _, _)| last == self.last)
    }

    fn moved(&mut self, now: Instant) -> Verdict {
        let nth = match self.moves {
            Some((last, n, _)) if last == self.last => n + 1,
            _ => 1,
        };
        self.moves = Some((self.last, nth, now));
        Verdict::MoveSocket { nth }
    }

    fn suspect_after(&self) -> Duration {
        (self.interval + self.keep_alive.interval).max(self.late_after())
    }

    fn dead_after(&self) -> Duration {
        self.interval + self.keep_alive.idle_timeout
    }

    /// What to do at `now`, the connection's counts being `counts` where
    /// its transport keeps them. When more than one thing is
    /// due, the first in this order comes now and the next at the next
    /// look: redial, ask the sidecar, move the socket.
    pub(crate) fn check(&mut self, now: Instant, counts: Option<PathCounts>) -> Verdict {
        self.looked = Some(now);
        self.heard = match (counts, self.heard) {
            (None, _) => None,
            (Some(c), Some(mut h)) if c.received == h.received => {
                if c.eliciting_sent > h.sent_then && h.unanswered.is_none() {
                    h.unanswered = Some(now);
                }
                h.rtt = c.rtt;
                Some(h)
            }
            (Some(c), _) => Some(Heard::new(c, now)),
        };
        let silence = now.saturating_duration_since(self.last);
        if silence >= self.dead_after() {
            return Verdict::Redial(format!("no Ping from the sidecar for {silence:?}"));
        }
        if silence >= self.next_ask() {
            self.asked = Some((self.last, silence));
            return Verdict::AskSidecar;
        }
        if silence >= self.suspect_after() && !self.moved_already() {
            return self.moved(now);
        }
        if self.next_nudge().is_some_and(|at| now >= at) {
            return self.moved(now);
        }
        Verdict::Healthy
    }

    /// The silence after which to ask the sidecar (next).
    fn next_ask(&self) -> Duration {
        match self.asked {
            Some((last, at)) if last == self.last => at + self.ask_every(),
            _ => self.late_after(),
        }
    }

    /// When [`Health::check`] next has something to decide, unless a Ping comes first.
    pub(crate) fn poll_timeout(&self) -> Instant {
        let mut next = self.last + self.dead_after().min(self.next_ask());
        if !self.moved_already() {
            next = next.min(self.last + self.suspect_after());
        }
        if let Some(at) = self.next_nudge() {
            next = next.min(at);
        }
        if let Some(at) = self.baseline_look() {
            next = next.min(at);
        }
        // For a quiet interval after datagrams last came, look every nudge
        // interval, so that frames the app sends then and that go
        // unanswered (its answers, its probe timer's) are seen soon. An idle
        // channel gets a few looks after each Ping; a busy one, ten a second.
        if let Some(h) = self.heard {
            let looked = self.looked.unwrap_or(h.since);
            if looked < h.since + Self::quiet_after(h.rtt) {
                next = next.min(looked + self.nudge_every());
            }
        }
        next
    }

    /// Whether the Pings are overdue at `now` (rather than the path found
    /// quiet by what the app sent): for the log.
    pub(crate) fn pings_overdue(&self, now: Instant) -> bool {
        now >= self.overdue_at()
    }

    /// A look a nudge interval before the Ping is overdue, where the
    /// transport counts datagrams, unless one came since then: it notes the
    /// count, so that a path that went silent before then is nudged as soon
    /// as the Ping is overdue rather than a nudge interval later. (One wake
    /// more per Ping interval; the first look, a Ping interval in, tells
    /// whether the transport counts.)
    fn baseline_look(&self) -> Option<Instant> {
        self.heard?;
        let at = self.overdue_at().checked_sub(self.nudge_every())?;
        (at > self.last && self.looked.is_none_or(|l| l < at)).then_some(at)
    }
}

#[cfg(test)]
mod tests;
