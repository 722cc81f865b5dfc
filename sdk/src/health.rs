//! Channel health, a pure core with time passed in (quinn-proto's style):
//! the runner tells it when the sidecar's last Ping came
//! ([`Health::on_ping`]), asks [`Health::poll_timeout`] when to look next,
//! and [`Health::check`] says what to do: nothing, move the socket (the
//! path may be dead: a lost NAT mapping), or give the channel up.
//!
//! The app learns of a dead sidecar or path this way even when the
//! transport has not noticed yet.

use std::time::{Duration, Instant};

use dialback_channel::KeepAlive;

/// The Ping interval assumed until the sidecar announces its own.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(2);

/// What [`Health::check`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pings come as they should (or are not late enough to act on).
    Healthy,
    /// Pings are late by more than a keepalive interval: the path may be
    /// dead. Move to a new socket (once per silence).
    MoveSocket,
    /// No Ping for longer than the idle timeout: the channel is gone. Says why.
    Redial(String),
}

/// One channel's view of the sidecar's Pings.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    keep_alive: KeepAlive,
    last: Instant,
    interval: Duration,
    /// The silence already answered with a [`Verdict::MoveSocket`] (its last Ping's time).
    suspected: Option<Instant>,
}

impl Health {
    /// A channel that came up at `now` counts as pinged then.
    pub(crate) fn new(keep_alive: KeepAlive, now: Instant) -> Health {
        Health { keep_alive, last: now, interval: DEFAULT_PING_INTERVAL, suspected: None }
    }

    /// The last Ping came at `at`; the sidecar announced `interval`, if it did.
    pub(crate) fn on_ping(&mut self, at: Instant, interval: Option<Duration>) {
        self.last = self.last.max(at);
        self.interval = interval.unwrap_or(DEFAULT_PING_INTERVAL);
    }

    fn suspect_after(&self) -> Duration {
        self.interval + self.keep_alive.interval
    }

    fn dead_after(&self) -> Duration {
        self.interval + self.keep_alive.idle_timeout
    }

    /// What to do at `now`. [`Verdict::MoveSocket`] comes once per silence.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let silence = now.saturating_duration_since(self.last);
        if silence >= self.dead_after() {
            return Verdict::Redial(format!("no Ping from the sidecar for {silence:?}"));
        }
        if silence >= self.suspect_after() && self.suspected != Some(self.last) {
            self.suspected = Some(self.last);
            return Verdict::MoveSocket;
        }
        Verdict::Healthy
    }

    /// When [`Health::check`] next has something to decide, unless a Ping comes first.
    pub(crate) fn poll_timeout(&self) -> Instant {
        if self.suspected == Some(self.last) { self.last + self.dead_after() } else { self.last + self.suspect_after() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn keep_alive() -> KeepAlive {
        KeepAlive { interval: Duration::from_secs(5), idle_timeout: Duration::from_secs(15) }
    }

    #[test]
    fn quiet_within_the_interval_and_a_keepalive_is_healthy() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        // Default interval 2 s: suspect after 7 s, dead after 17 s.
        assert_eq!(h.poll_timeout(), t0 + 7 * S);
        assert_eq!(h.check(t0), Verdict::Healthy);
        assert_eq!(h.check(t0 + 6 * S), Verdict::Healthy);
    }

    #[test]
    fn a_late_ping_moves_the_socket_once_then_the_channel_dies() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + 7 * S), Verdict::MoveSocket);
        // Once per silence: the same silence does not move it again.
        assert_eq!(h.check(t0 + 8 * S), Verdict::Healthy);
        assert_eq!(h.poll_timeout(), t0 + 17 * S, "next: the dead line");
        assert_eq!(h.check(t0 + 16 * S), Verdict::Healthy);
        match h.check(t0 + 17 * S) {
            Verdict::Redial(why) => assert!(why.contains("no Ping"), "{why}"),
            v => panic!("17 s of silence: {v:?}"),
        }
    }

    #[test]
    fn a_ping_ends_the_silence_and_a_new_one_is_suspected_again() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert_eq!(h.check(t0 + 7 * S), Verdict::MoveSocket);
        h.on_ping(t0 + 8 * S, None);
        assert_eq!(h.poll_timeout(), t0 + 15 * S);
        assert_eq!(h.check(t0 + 14 * S), Verdict::Healthy);
        assert_eq!(h.check(t0 + 15 * S), Verdict::MoveSocket, "a new silence is suspected anew");
    }

    #[test]
    fn the_sidecars_interval_sets_the_lines() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        h.on_ping(t0, Some(Duration::from_secs(20)));
        assert_eq!(h.poll_timeout(), t0 + 25 * S);
        assert_eq!(h.check(t0 + 24 * S), Verdict::Healthy);
        assert_eq!(h.check(t0 + 25 * S), Verdict::MoveSocket);
        assert!(matches!(h.check(t0 + 35 * S), Verdict::Redial(_)));
        // No interval said: back to the default.
        h.on_ping(t0 + 40 * S, None);
        assert_eq!(h.poll_timeout(), t0 + 47 * S);
    }

    #[test]
    fn an_older_ping_never_moves_the_clock_back() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0 + 10 * S);
        h.on_ping(t0, None);
        assert_eq!(h.poll_timeout(), t0 + 17 * S);
    }

    #[test]
    fn silence_past_the_dead_line_at_once_is_a_redial_not_a_move() {
        let t0 = Instant::now();
        let mut h = Health::new(keep_alive(), t0);
        assert!(matches!(h.check(t0 + 60 * S), Verdict::Redial(_)));
    }
}
