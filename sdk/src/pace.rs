//! How hard the app tries while it has no channel, pure. The default
//! profile always tries hard: a redial at once, then delays growing to the
//! backoff's cap (1 s), and over QUIC a fresh attempt every 250 ms while a
//! handshake is pending, so that the channel is back within a round trip
//! or two of the path's return. That is about eight datagrams a second,
//! most of them 1,200-byte Initials, for as long as the path stays dead
//! (472 a minute in `--bench liveness`).
//!
//! The mobile profile tries as hard for one beat, which covers a tunnel,
//! a lift or a restarting sidecar. After that, until a channel is up or the
//! network changes (which starts the beat again), it eases off: each dial
//! is one QUIC attempt whose Initial QUIC itself resends (at 1 s and 3 s
//! within the handshake timeout), and the delays between dials grow to the
//! beat. A phone out of coverage for an hour then sends a few packets a
//! beat instead of tens of thousands, and its radio can sleep between them.

use std::time::{Duration, Instant};

use dialback_channel::Liveness;

use crate::backoff::Backoff;

/// The redial pace of one app.
#[derive(Debug)]
pub(crate) struct Pace {
    /// The mobile profile's beat; `None` in the default profile, which never eases off.
    beat: Option<Duration>,
    /// Since when the app has been dialing with no channel in service.
    since: Option<Instant>,
    /// This outage's easing off has been logged.
    told: bool,
}

impl Pace {
    /// The pace for an app in the `liveness` profile.
    pub(crate) fn new(liveness: Liveness) -> Pace {
        let beat = match liveness {
            Liveness::Mobile { beat } => Some(beat),
            Liveness::Default => None,
        };
        Pace { beat, since: None, told: false }
    }

    /// A dial is about to start at `now`: the outage began with the first.
    pub(crate) fn dialing(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// A channel is in service, or the network changed (a new way out may
    /// be open): try hard again.
    pub(crate) fn reset(&mut self) {
        self.since = None;
        self.told = false;
    }

    /// Whether the app has been dialing for a beat with no channel: the
    /// mobile profile then eases off.
    pub(crate) fn eased(&self, now: Instant) -> bool {
        match (self.beat, self.since) {
            (Some(beat), Some(since)) => now.saturating_duration_since(since) >= beat,
            _ => false,
        }
    }

    /// The delay before the next dial: `backoff`'s, whose cap grows to the
    /// beat once eased. `jitter` in `[0, 1)` as for [`Backoff::next_delay`].
    pub(crate) fn next_delay(&mut self, backoff: &mut Backoff, jitter: f64, now: Instant) -> Duration {
        match self.beat {
            Some(beat) if self.eased(now) => {
                if !self.told {
                    self.told = true;
                    tracing::info!(
                        beat_ms = beat.as_millis() as u64,
                        "no channel for a beat: easing off (one QUIC attempt a dial, dials up to a beat apart) until the network changes"
                    );
                }
                backoff.next_delay_up_to(jitter, beat.max(backoff.cap))
            }
            _ => backoff.next_delay(jitter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(25);

    #[test]
    fn the_default_profile_never_eases_off() {
        let mut p = Pace::new(Liveness::Default);
        let t0 = Instant::now();
        p.dialing(t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(!p.eased(later));
        let mut b = Backoff::default();
        for _ in 0..40 {
            assert!(p.next_delay(&mut b, 1.0, later) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn the_mobile_profile_eases_off_after_a_beat_of_dialing() {
        let mut p = Pace::new(Liveness::Mobile { beat: BEAT });
        let t0 = Instant::now();
        assert!(!p.eased(t0 + BEAT * 2), "not before it dials");
        p.dialing(t0);
        p.dialing(t0 + Duration::from_secs(10));
        assert!(!p.eased(t0 + BEAT - Duration::from_millis(1)), "the first beat tries hard");
        let mut b = Backoff::default();
        for _ in 0..40 {
            assert!(p.next_delay(&mut b, 1.0, t0 + Duration::from_secs(1)) <= Duration::from_secs(1));
        }
        let eased = t0 + BEAT;
        assert!(p.eased(eased), "the outage began with the first dial");
        let delays: Vec<Duration> = (0..40).map(|_| p.next_delay(&mut b, 1.0, eased)).collect();
        assert!(delays.iter().all(|d| *d <= BEAT));
        assert_eq!(delays.last(), Some(&BEAT), "the delays grow to the beat");
    }

    #[test]
    fn a_channel_or_a_network_change_starts_the_beat_again() {
        let mut p = Pace::new(Liveness::Mobile { beat: BEAT });
        let t0 = Instant::now();
        p.dialing(t0);
        assert!(p.eased(t0 + BEAT));
        p.reset();
        assert!(!p.eased(t0 + BEAT));
        p.dialing(t0 + BEAT);
        assert!(!p.eased(t0 + BEAT * 2 - Duration::from_millis(1)));
        assert!(p.eased(t0 + BEAT * 2));
    }
}
