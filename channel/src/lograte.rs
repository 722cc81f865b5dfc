//! Rate-limited logging: a flood of the same event (a refused connection,
//! a failed accept) logs one line per interval with a count of the lines it
//! held back, instead of one line per event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of event's log budget: at most one line per interval.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> RateLimited {
        RateLimited { interval, state: Mutex::new((None, 0)) }
    }

    /// Records an event at `now`: `Some(n)` when it may be logged, `n` being
    /// how many events were held back since the last logged one.
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                s.1 = s.1.saturating_add(1);
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }

    /// [`RateLimited::hit_at`] now.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let r = RateLimited::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(r.hit_at(t), Some(0));
        for i in 1..=99 {
            assert_eq!(r.hit_at(t + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(r.hit_at(t + Duration::from_secs(1)), Some(99));
        assert_eq!(r.hit_at(t + Duration::from_millis(1500)), None);
        assert_eq!(r.hit_at(t + Duration::from_secs(3)), Some(1));
    }
}
