//! Retiring a channel, a pure state machine with time passed in
//! (quinn-proto's style): tell the app why with the in-band close notice,
//! let the calls in flight finish, then close. The driver feeds it what
//! happened ([`Retirement::on_notice`], [`Retirement::on_inflight`],
//! [`Retirement::handle_timeout`]) and sleeps until [`Retirement::poll_timeout`].

use std::time::{Duration, Instant};

use dialback_channel::{CloseCode, CloseNotice};

/// The least time an app gets to answer the close notice; with a known
/// round trip it gets four of them if that is longer.
pub(crate) const NOTICE_WAIT: Duration = Duration::from_millis(250);

/// How a retirement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The app did not answer the notice: it is gone (killed, or its path
    /// is dead), and calls in flight would only hang. Closed at once.
    Unanswered,
    /// Every call in flight finished.
    Drained,
    /// The drain time ran out with this many calls still in flight.
    CutShort(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the app to answer the notice, until `deadline`.
    Noticing { deadline: Instant },
    /// Calls in flight may finish until `deadline`.
    Draining { deadline: Instant },
    /// Close now.
    Done(Outcome),
}

/// One channel's retirement.
#[derive(Clone, Debug)]
pub(crate) struct Retirement {
    code: CloseCode,
    drain: Duration,
    phase: Phase,
}

impl Retirement {
    /// Starts retiring at `now` with `code`; the app's last known round
    /// trip `rtt` bounds the wait for its answer; `drain` bounds the calls in flight.
    pub(crate) fn new(code: CloseCode, rtt: Option<Duration>, drain: Duration, now: Instant) -> Retirement {
        let wait = rtt.map_or(NOTICE_WAIT, |rtt| rtt.saturating_mul(4).max(NOTICE_WAIT));
        Retirement { code, drain, phase: Phase::Noticing { deadline: now + wait } }
    }

    /// The notice to send: why the channel closes.
    pub(crate) fn notice(&self) -> CloseNotice {
        if self.code == CloseCode::Replaced { CloseNotice::Replaced } else { CloseNotice::ShuttingDown }
    }

    /// The close code, and the reason for the peer's logs.
    pub(crate) fn close(&self) -> (CloseCode, &'static str) {
        let why = match self.code {
            CloseCode::Replaced => "replaced by a newer channel",
            CloseCode::ShuttingDown => "sidecar shutting down",
            _ => "closed",
        };
        (self.code, why)
    }

    /// The app answered the notice (`answered`) or the call failed, at
    /// `now`, with `inflight` calls in flight.
    pub(crate) fn on_notice(&mut self, answered: bool, now: Instant, inflight: usize) {
        if let Phase::Noticing { .. } = self.phase {
            self.phase = if !answered {
                Phase::Done(Outcome::Unanswered)
            } else if inflight == 0 {
                Phase::Done(Outcome::Drained)
            } else {
                Phase::Draining { deadline: now + self.drain }
            };
        }
    }

    /// The calls in flight changed to `inflight`.
    pub(crate) fn on_inflight(&mut self, inflight: usize) {
        if let Phase::Draining { .. } = self.phase
            && inflight == 0
        {
            self.phase = Phase::Done(Outcome::Drained);
        }
    }

    /// Time passed: at `now`, with `inflight` calls in flight.
    pub(crate) fn handle_timeout(&mut self, now: Instant, inflight: usize) {
        match self.phase {
            Phase::Noticing { deadline } if now >= deadline => self.phase = Phase::Done(Outcome::Unanswered),
            Phase::Draining { deadline } if now >= deadline => {
                self.phase = Phase::Done(if inflight == 0 { Outcome::Drained } else { Outcome::CutShort(inflight) })
            }
            _ => {}
        }
    }

    /// When [`Retirement::handle_timeout`] next has something to decide.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Noticing { deadline } | Phase::Draining { deadline } => Some(deadline),
            Phase::Done(_) => None,
        }
    }

    /// Whether the notice is still awaited.
    pub(crate) fn noticing(&self) -> bool {
        matches!(self.phase, Phase::Noticing { .. })
    }

    /// How it ended, once it has: then close.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Done(o) => Some(o),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const DRAIN: Duration = Duration::from_secs(5);

    #[test]
    fn a_replaced_channel_is_told_so_and_a_shutdown_too() {
        let now = Instant::now();
        let r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        assert_eq!((r.notice(), r.close().0), (CloseNotice::Replaced, CloseCode::Replaced));
        let s = Retirement::new(CloseCode::ShuttingDown, None, DRAIN, now);
        assert_eq!((s.notice(), s.close().0), (CloseNotice::ShuttingDown, CloseCode::ShuttingDown));
    }

    #[test]
    fn the_notice_wait_is_four_round_trips_but_never_under_250_ms() {
        let now = Instant::now();
        assert_eq!(Retirement::new(CloseCode::Replaced, None, DRAIN, now).poll_timeout(), Some(now + 250 * MS));
        let fast = Retirement::new(CloseCode::Replaced, Some(10 * MS), DRAIN, now);
        assert_eq!(fast.poll_timeout(), Some(now + 250 * MS));
        let slow = Retirement::new(CloseCode::Replaced, Some(200 * MS), DRAIN, now);
        assert_eq!(slow.poll_timeout(), Some(now + 800 * MS));
    }

    #[test]
    fn an_unanswered_notice_closes_at_once_with_calls_in_flight() {
        let now = Instant::now();
        let mut r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        r.handle_timeout(now + 249 * MS, 3);
        assert!(r.noticing() && r.outcome().is_none());
        r.handle_timeout(now + 250 * MS, 3);
        assert_eq!(r.outcome(), Some(Outcome::Unanswered));
        // A failed notice call is the same as no answer.
        let mut r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        r.on_notice(false, now + MS, 3);
        assert_eq!(r.outcome(), Some(Outcome::Unanswered));
    }

    #[test]
    fn an_answered_notice_drains_the_calls_in_flight() {
        let now = Instant::now();
        let mut r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        r.on_notice(true, now + 10 * MS, 2);
        assert!(!r.noticing());
        assert_eq!(r.poll_timeout(), Some(now + 10 * MS + DRAIN), "the drain runs from the answer");
        r.on_inflight(1);
        assert_eq!(r.outcome(), None);
        r.on_inflight(0);
        assert_eq!(r.outcome(), Some(Outcome::Drained));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn nothing_in_flight_closes_as_soon_as_the_app_answers() {
        let now = Instant::now();
        let mut r = Retirement::new(CloseCode::ShuttingDown, None, DRAIN, now);
        r.on_notice(true, now, 0);
        assert_eq!(r.outcome(), Some(Outcome::Drained));
    }

    #[test]
    fn the_drain_is_cut_short_at_its_deadline() {
        let now = Instant::now();
        let mut r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        r.on_notice(true, now, 4);
        r.handle_timeout(now + DRAIN - MS, 4);
        assert_eq!(r.outcome(), None);
        r.handle_timeout(now + DRAIN, 2);
        assert_eq!(r.outcome(), Some(Outcome::CutShort(2)));
    }

    #[test]
    fn late_events_do_not_change_an_ended_retirement() {
        let now = Instant::now();
        let mut r = Retirement::new(CloseCode::Replaced, None, DRAIN, now);
        r.handle_timeout(now + DRAIN, 1);
        assert_eq!(r.outcome(), Some(Outcome::Unanswered));
        r.on_notice(true, now + DRAIN, 0);
        r.on_inflight(0);
        assert_eq!(r.outcome(), Some(Outcome::Unanswered));
    }
}
