//! The reconnect policy, pure: first retry at once, then jittered
//! exponential backoff with a low cap, reset once a channel has been stable.
//! A channel that ends younger than that also gets its first redial at
//! once, but only one such between stable channels: an app whose sidecar
//! restarts soon after the app connected is not held back by the backoff
//! of its first dial, and a sidecar that drops every channel young still
//! sees the delays grow.

use std::time::Duration;

/// Reconnect pacing.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The first non-zero delay.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
    /// A channel that lived this long resets the sequence.
    pub stable: Duration,
    attempt: u32,
    /// The one reset a short-lived channel may still get (see the module docs).
    young_reset: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(25), Duration::from_secs(1), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A policy from `base` doubling up to `cap`, reset after `stable`.
    pub fn new(base: Duration, cap: Duration, stable: Duration) -> Backoff {
        Backoff { base, cap, stable, attempt: 0, young_reset: true }
    }

    /// The delay before the next attempt. `jitter` in `[0, 1)` picks a point
    /// in the upper half of the window ("equal jitter"), so retries of many
    /// apps spread out but never collapse to zero.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        self.next_delay_up_to(jitter, self.cap)
    }

    /// [`Backoff::next_delay`] with another cap (the mobile profile's beat,
    /// once an outage has lasted one).
    pub fn next_delay_up_to(&mut self, jitter: f64, cap: Duration) -> Duration {
        let n = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        let window = self.base.saturating_mul(1u32 << (n - 1).min(20)).min(cap);
        window.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// A channel was up for `lived`; a stable one resets the sequence, and
    /// so does the first short-lived one since.
    pub fn on_channel_end(&mut self, lived: Duration) {
        if lived >= self.stable {
            self.attempt = 0;
            self.young_reset = true;
        } else if self.young_reset {
            self.attempt = 0;
            self.young_reset = false;
        }
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_retry_is_immediate_then_grows_to_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.5), Duration::ZERO);
        let d1 = b.next_delay(1.0);
        let d2 = b.next_delay(1.0);
        assert_eq!(d1, Duration::from_millis(25));
        assert_eq!(d2, Duration::from_millis(50));
        for _ in 0..40 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(1));
        }
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut b = Backoff::default();
        b.next_delay(0.0);
        assert_eq!(b.next_delay(0.0), Duration::from_micros(12_500));
    }

    #[test]
    fn a_stable_channel_resets() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.3);
        }
        b.on_channel_end(Duration::from_secs(30));
        assert_eq!(b.next_delay(0.3), Duration::ZERO);
    }

    #[test]
    fn one_short_lived_channel_resets_between_stable_ones() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay(0.3);
        }
        b.on_channel_end(Duration::from_secs(1));
        assert_eq!(b.next_delay(0.3), Duration::ZERO, "the first short-lived channel redials at once");
        b.next_delay(0.3);
        b.on_channel_end(Duration::from_secs(1));
        assert!(b.next_delay(0.3) > Duration::ZERO, "a second short-lived one does not reset");
        for _ in 0..5 {
            b.next_delay(0.3);
        }
        b.on_channel_end(Duration::from_secs(1));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1), "nor does a third: the delay has grown to its cap");
        b.on_channel_end(Duration::from_secs(30));
        assert_eq!(b.next_delay(0.3), Duration::ZERO);
        b.on_channel_end(Duration::from_secs(1));
        assert_eq!(b.next_delay(0.3), Duration::ZERO, "a stable channel gives the short-lived reset back");
    }
}
