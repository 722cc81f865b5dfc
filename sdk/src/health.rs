//! Channel health, a pure core with time passed in (quinn-proto's style):
//! the runner tells it when the sidecar's last Ping came
//! ([`Health::on_ping`]), asks [`Health::poll_timeout`] when to look next,
//! and [`Health::check`] says what to do: nothing, move the socket (the
//! path may be dead: a lost NAT mapping), or give the channel up.
//!
//! The app learns of a dead sidecar or path this way even when the
//! transport has not noticed yet.
//!
//! On QUIC, while the Pings are overdue and nothing at all arrives (the
//! runner passes the connection's datagram count), the socket moves again
//! every [`Health::nudge_every`]: each move is a packet from a new address,
//! so the first one after a dead spell reaches the sidecar as a migration,
//! which gives its path fresh bytes-in-flight accounting. A sidecar whose
//! congestion window is full of the spell's lost packets otherwise sends
//! nothing, not even an ACK, until its backed-off probe timer fires
//! (docs/architecture.md, "QUIC after a dead spell"). A look a nudge
//! interval before each Ping is due notes the count, so a path that went
//! silent before then is first nudged as soon as the Ping is overdue.

use std::time::{Duration, Instant};

use dialback_channel::KeepAlive;

/// The Ping interval assumed until the sidecar announces its own.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(2);

/// The least lateness margin, however regular the Pings, and the margin
/// before two Pings have shown their jitter.
const MARGIN_MIN: Duration = Duration::from_millis(25);

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
    /// already), or, on QUIC,
    /// they are overdue and the path has been silent for a nudge interval
    /// (again at each interval while that lasts). `nth` counts the moves
    /// of this silence, from 1.
    MoveSocket { nth: u32 },
    /// No Ping for longer than the idle timeout: the channel is gone. Says why.
    Redial(String),
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
    /// The connection's datagram count at the last look, and when it was
    /// first seen at that value (QUIC only).
    heard: Option<(u64, Instant)>,
    /// When [`Health::check`] last looked.
    looked: Option<Instant>,
    /// The moves of the latest silence that had any: its last Ping's
    /// time, how many, and when the last one was.
    moves: Option<(Instant, u32, Instant)>,
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

    /// This channel's transport counts datagrams (QUIC), `datagrams` so
    /// far: noted as a look at its start, so the look before the first
    /// Ping is due is made too.
    pub(crate) fn counting(mut self, datagrams: Option<u64>) -> Health {
        self.heard = datagrams.map(|n| (n, self.last));
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

    /// How often to ask the sidecar again while the silence lasts.
    fn ask_every(&self) -> Duration {
        (self.interval / 4).max(Duration::from_millis(250))
    }

    /// How often to move the socket while the Pings are overdue and the
    /// path is silent: a twentieth of the Ping interval, at least 100 ms
    /// (10 small packets a second into a dead path, for at most the idle
    /// timeout; 1.25 s under the mobile profile's 25 s beat).
    pub(crate) fn nudge_every(&self) -> Duration {
        (self.interval / 20).max(Duration::from_millis(100))
    }

    /// When the next nudge is due, if the transport counts datagrams.
    fn next_nudge(&self) -> Option<Instant> {
        let (_, since) = self.heard?;
        let mut at = (self.last + self.late_after()).max(since + self.nudge_every());
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

    /// What to do at `now`, the connection having received `datagrams` so
    /// far where its transport counts them. When more than one thing is
    /// due, the first in this order comes now and the next at the next
    /// look: redial, ask the sidecar, move the socket.
    pub(crate) fn check(&mut self, now: Instant, datagrams: Option<u64>) -> Verdict {
        self.looked = Some(now);
        self.heard = match (datagrams, self.heard) {
            (None, _) => None,
            (Some(n), Some((seen, since))) if n == seen => Some((seen, since)),
            (Some(n), _) => Some((n, now)),
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
        next
    }

    /// A look a nudge interval before the Ping is overdue, where the
    /// transport counts datagrams, unless one came since then: it notes the
    /// count, so that a path that went silent before then is nudged as soon
    /// as the Ping is overdue rather than a nudge interval later. (One wake
    /// more per Ping interval; the first look, a Ping interval in, tells
    /// whether the transport counts.)
    fn baseline_look(&self) -> Option<Instant> {
        self.heard?;
        let at = (self.last + self.late_after()).checked_sub(self.nudge_every())?;
        (at > self.last && self.looked.is_none_or(|l| l < at)).then_some(at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn keep_alive() -> KeepAlive {
        KeepAlive { interval: Duration::from_secs(5), idle_timeout: Duration::from_secs(15) }
    }

    #[test]
    fn an_overdue_ping_asks_the_sidecar_before_anything_else_and_again_while_silent() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // Default interval 2 s, jitter unknown: late after 2.025 s, then every 500 ms.
        assert_eq!(h.check(t0 + 2024 * MS, None), Verdict::Healthy);
        assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 2400 * MS, None), Verdict::Healthy, "not again at once");
        assert_eq!(h.poll_timeout(), t0 + 2525 * MS, "next: ask again");
        assert_eq!(h.check(t0 + 2525 * MS, None), Verdict::AskSidecar);
        assert_eq!(h.poll_timeout(), t0 + 3025 * MS);
        // Both lines passed at once: ask first, then move.
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + 8 * S, None), Verdict::AskSidecar);
        assert_eq!(h.poll_timeout(), t0 + 7 * S);
        assert_eq!(h.check(t0 + 8 * S, None), Verdict::MoveSocket { nth: 1 });
    }

    #[test]
    fn quiet_within_the_interval_is_healthy() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
        assert_eq!(h.check(t0, None), Verdict::Healthy);
        assert_eq!(h.check(t0 + 2 * S, None), Verdict::Healthy);
    }

    #[test]
    fn a_late_ping_moves_the_socket_once_then_the_channel_dies() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // Suspect after 2 + 5 = 7 s, dead after 2 + 15 = 17 s.
        assert_eq!(h.check(t0 + 7 * S, None), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 7 * S, None), Verdict::MoveSocket { nth: 1 });
        // Once per silence: the same silence does not move it again (the
        // sidecar is asked again, though).
        assert_eq!(h.check(t0 + 7200 * MS, None), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 7500 * MS, "next: ask again");
        let mut t = 7500;
        while t < 17000 {
            assert_eq!(h.check(t0 + t * MS, None), Verdict::AskSidecar, "at {t} ms");
            t += 500;
        }
        assert_eq!(h.check(t0 + 16900 * MS, None), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 17 * S, "next: the dead line");
        match h.check(t0 + 17 * S, None) {
            Verdict::Redial(why) => assert!(why.contains("no Ping"), "{why}"),
            v => panic!("17 s of silence: {v:?}"),
        }
    }

    #[test]
    fn a_ping_ends_the_silence_and_a_new_one_is_suspected_again() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + 7 * S, None), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 7 * S, None), Verdict::MoveSocket { nth: 1 });
        h.on_ping(t0 + 8 * S, None, None);
        assert_eq!(h.poll_timeout(), t0 + 10025 * MS);
        assert_eq!(h.check(t0 + 10 * S, None), Verdict::Healthy);
        assert_eq!(h.check(t0 + 10025 * MS, None), Verdict::AskSidecar, "a new silence is suspected anew");
        assert_eq!(h.check(t0 + 15 * S, None), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 15 * S, None), Verdict::MoveSocket { nth: 1 });
    }

    #[test]
    fn the_sidecars_interval_sets_the_lines() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        h.on_ping(t0, Some(Duration::from_secs(20)), None);
        // Late after 20.025 s (asked every 5 s), suspect after 25 s, dead after 35 s.
        assert_eq!(h.poll_timeout(), t0 + 20025 * MS);
        assert_eq!(h.check(t0 + 20 * S, None), Verdict::Healthy);
        assert_eq!(h.check(t0 + 20025 * MS, None), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 25 * S, None), Verdict::MoveSocket { nth: 1 });
        assert!(matches!(h.check(t0 + 35 * S, None), Verdict::Redial(_)));
        // No interval said: back to the default.
        h.on_ping(t0 + 40 * S, None, None);
        assert_eq!(h.poll_timeout(), t0 + 42025 * MS);
    }

    #[test]
    fn an_older_ping_never_moves_the_clock_back() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0 + 10 * S);
        h.on_ping(t0, None, None);
        assert_eq!(h.poll_timeout(), t0 + 12025 * MS);
    }

    #[test]
    fn the_margin_follows_the_pings_jitter_within_bounds() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // Regular Pings (2 ms of jitter): the floor, 25 ms.
        h.on_ping(t0, None, Some(2 * MS));
        assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
        // A wobbly path (30 ms): four deviations, 120 ms.
        h.on_ping(t0, None, Some(30 * MS));
        assert_eq!(h.poll_timeout(), t0 + 2120 * MS);
        assert_eq!(h.check(t0 + 2119 * MS, None), Verdict::Healthy);
        assert_eq!(h.check(t0 + 2120 * MS, None), Verdict::AskSidecar);
        // A wild one (1 s): at most a quarter interval.
        let mut h = Health::new(keep_alive(), t0);
        h.on_ping(t0, None, Some(S));
        assert_eq!(h.poll_timeout(), t0 + 2500 * MS);
    }

    #[test]
    fn on_quic_a_silent_path_is_nudged_until_anything_arrives() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + S, Some(10)), Verdict::Healthy);
        // A look a nudge interval before the Ping is due notes the count.
        assert_eq!(h.poll_timeout(), t0 + 1925 * MS);
        assert_eq!(h.check(t0 + 1925 * MS, Some(10)), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
        // Overdue: ask first, then move at once (nothing came for 1 s).
        assert_eq!(h.check(t0 + 2025 * MS, Some(10)), Verdict::AskSidecar);
        assert_eq!(h.poll_timeout(), t0 + 2025 * MS);
        assert_eq!(h.check(t0 + 2025 * MS, Some(10)), Verdict::MoveSocket { nth: 1 });
        // Again every 100 ms (a twentieth of the 2 s interval) while silent.
        assert_eq!(h.poll_timeout(), t0 + 2125 * MS);
        assert_eq!(h.check(t0 + 2124 * MS, Some(10)), Verdict::Healthy);
        assert_eq!(h.check(t0 + 2125 * MS, Some(10)), Verdict::MoveSocket { nth: 2 });
        // A datagram came: the path is not silent; wait a whole interval again.
        assert_eq!(h.check(t0 + 2225 * MS, Some(11)), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 2325 * MS);
        assert_eq!(h.check(t0 + 2325 * MS, Some(11)), Verdict::MoveSocket { nth: 3 });
        // A Ping ends the silence, and the moves.
        h.on_ping(t0 + 2400 * MS, None, None);
        assert_eq!(h.check(t0 + 2400 * MS, Some(12)), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 4325 * MS, "the look before the next Ping is due");
        assert_eq!(h.check(t0 + 4325 * MS, Some(12)), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 4425 * MS);
        assert_eq!(h.check(t0 + 4425 * MS, Some(12)), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 4425 * MS, Some(12)), Verdict::MoveSocket { nth: 1 }, "a new silence counts anew");
    }

    #[test]
    fn a_path_silent_before_the_ping_is_due_is_nudged_when_it_is_overdue() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // A Ping interval in: the first look learns that QUIC counts datagrams.
        h.on_ping(t0 + 2 * S, None, None);
        assert_eq!(h.check(t0 + 2025 * MS, Some(100)), Verdict::Healthy);
        // The next Ping is due at 4 s; a look at 3.925 s notes the count.
        assert_eq!(h.poll_timeout(), t0 + 3925 * MS);
        assert_eq!(h.check(t0 + 3925 * MS, Some(140)), Verdict::Healthy);
        // Nothing arrived since (the path died before then): ask, and move at once.
        assert_eq!(h.check(t0 + 4025 * MS, Some(140)), Verdict::AskSidecar);
        assert_eq!(h.poll_timeout(), t0 + 4025 * MS);
        assert_eq!(h.check(t0 + 4025 * MS, Some(140)), Verdict::MoveSocket { nth: 1 });
        // Had datagrams still come in that last interval, it would wait one.
        let mut h = Health::new(keep_alive(), t0);
        h.on_ping(t0 + 2 * S, None, None);
        assert_eq!(h.check(t0 + 2025 * MS, Some(100)), Verdict::Healthy);
        assert_eq!(h.check(t0 + 3925 * MS, Some(140)), Verdict::Healthy);
        assert_eq!(h.check(t0 + 4025 * MS, Some(150)), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 4025 * MS, Some(150)), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 4125 * MS);
        // A channel whose transport counts makes that look in its first interval too.
        let mut h = Health::new(keep_alive(), t0).counting(Some(7));
        assert_eq!(h.poll_timeout(), t0 + 1925 * MS);
        assert_eq!(h.check(t0 + 1925 * MS, Some(9)), Verdict::Healthy);
        assert_eq!(h.check(t0 + 2025 * MS, Some(9)), Verdict::AskSidecar);
        assert_eq!(h.check(t0 + 2025 * MS, Some(9)), Verdict::MoveSocket { nth: 1 });
        assert_eq!(Health::new(keep_alive(), t0).counting(None).poll_timeout(), t0 + 2025 * MS);
        // Without a datagram count (TCP) there is no such look.
        let mut h = Health::new(keep_alive(), t0);
        h.on_ping(t0 + 2 * S, None, None);
        assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 4025 * MS);
    }

    #[test]
    fn a_path_that_still_carries_traffic_is_not_nudged() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // Pings stop, but datagrams keep coming: only the sidecar is asked,
        // and the socket moves once, when the Pings are a keepalive late.
        let mut moves: Vec<(u32, u32)> = vec![];
        let mut t = 2025;
        while t < 7000 {
            if let Verdict::MoveSocket { nth } = h.check(t0 + t * MS, Some(t.into())) {
                moves.push((t, nth));
            }
            t += 50;
        }
        assert_eq!(moves, vec![]);
        assert_eq!(h.check(t0 + 7 * S, Some(7000)), Verdict::MoveSocket { nth: 1 });
        for t in [7050u32, 7100, 7150] {
            assert!(!matches!(h.check(t0 + t * MS, Some(t.into())), Verdict::MoveSocket { .. }), "once, at {t} ms");
        }
        // Without a datagram count (TCP) there are no nudges either.
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + 2025 * MS, None), Verdict::AskSidecar);
        assert_eq!(h.poll_timeout(), t0 + 2525 * MS, "next: ask again, no nudge");
    }

    #[test]
    fn the_nudges_follow_the_ping_interval() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.nudge_every(), 100 * MS);
        h.on_ping(t0, Some(Duration::from_secs(25)), None);
        assert_eq!(h.nudge_every(), 1250 * MS, "the mobile profile's beat");
        h.on_ping(t0, Some(Duration::from_millis(500)), None);
        assert_eq!(h.nudge_every(), 100 * MS, "at least 100 ms");
    }

    #[test]
    fn silence_past_the_dead_line_at_once_is_a_redial_not_a_move() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert!(matches!(h.check(t0 + 60 * S, None), Verdict::Redial(_)));
    }
}
