//! QUIC's congestion control on the channel: quinn's three controllers,
//! and CUBIC that tells random loss from congestion ([`Congestion::Tolerant`]).
//! Each sits behind [`Outage`], which tells a dead path from congestion.
//!
//! Each end governs what it sends: the sidecar's choice shapes the calls to
//! the app, the app's its answers. `benches/loss.rs` compares them on a
//! lossy path; docs/benchmarks.md has the figures.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, CubicConfig};

/// A QUIC congestion controller for the channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: backs off on every loss.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's): backs off on every loss, grows linearly.
    NewReno,
    /// BBR: paces at the measured bottleneck rate, ignoring loss (quinn's
    /// implementation, marked experimental; it drains to 4 packets for
    /// 200 ms every 10 s to measure the round trip).
    Bbr,
    /// CUBIC that backs off only on loss that looks like congestion: the
    /// round trip shows a queue (above the path's minimum by a quarter,
    /// at least 5 ms), the loss is persistent, or more than 5 % of the
    /// bytes of the last few round trips were lost. Random loss on a
    /// Wi-Fi or cellular hop, with no queue behind it, does not cut the
    /// rate (BBRv2 tolerates 2 % in the same spirit).
    Tolerant,
}

impl Congestion {
    /// Every controller, in the order tables show them.
    pub const ALL: [Congestion; 4] = [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr, Congestion::Tolerant];

    /// `cubic`, `newreno`, `bbr` or `tolerant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
            Congestion::Tolerant => "tolerant",
        }
    }

    pub(crate) fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        Arc::new(OutageConfig(self.bare_factory()))
    }

    /// The controller itself, without [`Outage`].
    fn bare_factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Congestion::Cubic => Arc::new(CubicConfig::default()),
            Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Congestion::Tolerant => Arc::new(TolerantConfig(Arc::new(CubicConfig::default()))),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Congestion::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?} is not a congestion controller (cubic, newreno, bbr or tolerant)"))
    }
}

/// A queue: the smoothed round trip this far above the path's minimum
/// (a quarter of it, at least [`QUEUE_FLOOR`]).
const QUEUE_SHARE: u32 = 4;
/// The smallest round-trip rise taken for a queue (timer and ACK jitter stay below it).
const QUEUE_FLOOR: Duration = Duration::from_millis(5);
/// Loss above this share of the bytes of an epoch is congestion, queue or not.
const LOSS_SHARE: f64 = 0.05;
/// An epoch of the loss count: this many smoothed round trips (at least [`MIN_EPOCH`]).
const EPOCH_RTTS: u32 = 8;
/// The shortest epoch.
const MIN_EPOCH: Duration = Duration::from_millis(100);

/// The [`Controller`] methods a wrapper passes to its `inner` unchanged.
macro_rules! passed_on {
    () => {
        fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
            self.inner.on_sent(now, bytes, last_packet_number);
        }

        fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
            self.inner.on_end_acks(now, in_flight, app_limited, largest_acked);
        }

        fn window(&self) -> u64 {
            self.inner.window()
        }

        fn metrics(&self) -> quinn::congestion::ControllerMetrics {
            self.inner.metrics()
        }

        fn initial_window(&self) -> u64 {
            self.inner.initial_window()
        }

        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    };
}

struct TolerantConfig(Arc<CubicConfig>);

impl ControllerFactory for TolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Tolerant {
            inner: self.0.clone().build(now, current_mtu),
            rtt: None,
            min_rtt: None,
            epoch: Epoch { start: now, acked: 0, lost: 0 },
            last_share: 0.0,
        })
    }
}

/// Bytes acknowledged and lost since `start`.
#[derive(Clone, Copy)]
struct Epoch {
    start: Instant,
    acked: u64,
    lost: u64,
}

impl Epoch {
    fn loss_share(&self) -> f64 {
        let total = self.acked + self.lost;
        if total == 0 { 0.0 } else { self.lost as f64 / total as f64 }
    }
}

/// CUBIC behind a filter on loss events (see [`Congestion::Tolerant`]).
struct Tolerant {
    inner: Box<dyn Controller>,
    rtt: Option<Duration>,
    min_rtt: Option<Duration>,
    epoch: Epoch,
    /// The loss share of the last whole epoch.
    last_share: f64,
}

/// Whether a smoothed round trip `rtt` shows a queue on a path whose
/// minimum is `min` (unknown round trips count as one).
fn queued(rtt: Option<Duration>, min: Option<Duration>) -> bool {
    let (Some(rtt), Some(min)) = (rtt, min) else { return true };
    rtt > min + (min / QUEUE_SHARE).max(QUEUE_FLOOR)
}

impl Tolerant {
    /// Whether the loss reported now is congestion rather than random loss.
    fn congested(&self, persistent: bool) -> bool {
        persistent || queued(self.rtt, self.min_rtt) || self.epoch.loss_share().max(self.last_share) > LOSS_SHARE
    }
}

impl Controller for Tolerant {
    passed_on!();

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.rtt = Some(rtt.get());
        self.min_rtt = Some(rtt.min());
        let epoch = (rtt.get() * EPOCH_RTTS).max(MIN_EPOCH);
        if now.saturating_duration_since(self.epoch.start) >= epoch {
            self.last_share = self.epoch.loss_share();
            self.epoch = Epoch { start: now, acked: 0, lost: 0 };
        }
        self.epoch.acked += bytes;
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.epoch.lost += lost_bytes;
        if self.congested(is_persistent_congestion) {
            self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Tolerant {
            inner: self.inner.clone_box(),
            rtt: self.rtt,
            min_rtt: self.min_rtt,
            epoch: self.epoch,
            last_share: self.last_share,
        })
    }
}

/// Builds [`Outage`] around another controller.
struct OutageConfig(Arc<dyn ControllerFactory + Send + Sync>);

impl ControllerFactory for OutageConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Outage {
            inner: self.0.clone().build(now, current_mtu),
            factory: self.0.clone(),
            mtu: current_mtu,
            rtt: None,
            min_rtt: None,
            restarted: None,
        })
    }
}

/// A controller that tells a dead path from a congested one.
///
/// Persistent congestion (RFC 9002 7.6: every packet lost for longer than
/// three probe timeouts) drops the window to its minimum, two packets. On
/// a phone that is what a tunnel, a lift or a Wi-Fi hand-over looks like
/// too, and the calls that queued meanwhile then crawl out from two
/// packets a round trip, behind which every new call waits. Congestion
/// that loses everything builds a queue first: the round trip rises before
/// the losses. So when the last round trip before the losses showed no
/// queue (within a quarter of the path's minimum, at least 5 ms), the path
/// was cut, not congested, and the controller starts again as on a new
/// path: the initial window (10 packets) and slow start. That is no more
/// than a new connection would send, and a new connection is what the app
/// would open after a longer outage anyway. Persistent congestion after a
/// queue is passed on unchanged.
struct Outage {
    inner: Box<dyn Controller>,
    factory: Arc<dyn ControllerFactory + Send + Sync>,
    mtu: u16,
    /// The smoothed round trip at the last acknowledgement.
    rtt: Option<Duration>,
    /// The path's minimum round trip.
    min_rtt: Option<Duration>,
    /// When the controller last started again: losses of packets sent
    /// before then belong to the outage and are not held against it.
    restarted: Option<Instant>,
}

impl Outage {
    /// Whether persistent congestion reported now is a dead path.
    fn was_outage(&self) -> bool {
        !queued(self.rtt, self.min_rtt)
    }
}

impl Controller for Outage {
    passed_on!();

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.rtt = Some(rtt.get());
        self.min_rtt = Some(rtt.min());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        if self.restarted.is_some_and(|at| sent <= at) {
            return;
        }
        if is_persistent_congestion && self.was_outage() {
            self.inner = self.factory.clone().build(now, self.mtu);
            self.restarted = Some(now);
            return;
        }
        self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.inner.on_mtu_update(new_mtu);
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Outage {
            inner: self.inner.clone_box(),
            factory: self.factory.clone(),
            mtu: self.mtu,
            rtt: self.rtt,
            min_rtt: self.min_rtt,
            restarted: self.restarted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tolerant(rtt: Option<(u64, u64)>, acked: u64, lost: u64, last_share: f64) -> Tolerant {
        let now = Instant::now();
        let inner = Arc::new(CubicConfig::default()).build(now, 1200);
        Tolerant {
            inner,
            rtt: rtt.map(|(r, _)| Duration::from_millis(r)),
            min_rtt: rtt.map(|(_, m)| Duration::from_millis(m)),
            epoch: Epoch { start: now, acked, lost },
            last_share,
        }
    }

    #[test]
    fn random_loss_without_a_queue_is_not_congestion() {
        // 50 ms path, 54 ms smoothed (ACK delay), 1 % loss: ignored.
        assert!(!tolerant(Some((54, 50)), 99_000, 1_000, 0.01).congested(false));
        // A queue of a quarter of the path's round trip or more: congestion.
        assert!(tolerant(Some((70, 50)), 99_000, 1_000, 0.01).congested(false));
        // On loopback the floor (5 ms) keeps jitter from looking like a queue.
        assert!(!tolerant(Some((3, 1)), 99_000, 1_000, 0.0).congested(false));
        // Heavy loss is congestion, queue or not: this epoch's or the last one's.
        assert!(tolerant(Some((50, 50)), 90_000, 10_000, 0.0).congested(false));
        assert!(tolerant(Some((50, 50)), 100_000, 0, 0.08).congested(false));
        // Persistent congestion, or no round trip measured yet: always.
        assert!(tolerant(Some((50, 50)), 100_000, 0, 0.0).congested(true));
        assert!(tolerant(None, 0, 0, 0.0).congested(false));
    }

    #[test]
    fn names_round_trip() {
        for c in Congestion::ALL {
            assert_eq!(c.as_str().parse::<Congestion>(), Ok(c));
        }
        assert!("reno".parse::<Congestion>().is_err());
    }

    #[test]
    fn ignoring_random_loss_keeps_the_window() {
        let now = Instant::now();
        let mut t = tolerant(Some((54, 50)), 1_000_000, 0, 0.0);
        let before = t.window();
        t.on_congestion_event(now, now, false, 1200);
        assert_eq!(t.window(), before, "random loss leaves the window alone");
        let mut queued = tolerant(Some((80, 50)), 1_000_000, 0, 0.0);
        let before = queued.window();
        queued.on_congestion_event(now, now, false, 1200);
        assert!(queued.window() < before, "congestion backs off as CUBIC does");
    }

    /// An [`Outage`] around CUBIC whose last round trip was `rtt` ms on a
    /// path of `min` ms (`None`: none measured).
    fn outage(rtt: Option<(u64, u64)>) -> Outage {
        let mut o = match Arc::new(OutageConfig(Congestion::Cubic.bare_factory()))
            .build(Instant::now(), 1200)
            .into_any()
            .downcast::<Outage>()
        {
            Ok(o) => *o,
            Err(_) => unreachable!("OutageConfig builds an Outage"),
        };
        o.rtt = rtt.map(|(r, _)| Duration::from_millis(r));
        o.min_rtt = rtt.map(|(_, m)| Duration::from_millis(m));
        o
    }

    #[test]
    fn a_dead_path_starts_again_from_the_initial_window() {
        let now = Instant::now();
        // Persistent congestion after a round trip with no queue: an outage.
        let mut cut = outage(Some((52, 50)));
        let initial = cut.initial_window();
        cut.on_congestion_event(now, now, false, 1200);
        assert!(cut.window() < initial, "an ordinary loss still backs off");
        let later = now + Duration::from_secs(2);
        cut.on_congestion_event(later, now, true, 30_000);
        assert_eq!(cut.window(), initial, "after an outage the window is a new path's");
        // More packets of the outage found lost later do not count against it.
        cut.on_congestion_event(later + Duration::from_millis(60), later - Duration::from_millis(1), false, 1200);
        assert_eq!(cut.window(), initial, "losses from before the restart are the outage's");
        // A loss of a packet sent after it does.
        cut.on_congestion_event(later + Duration::from_millis(120), later + Duration::from_millis(60), false, 1200);
        assert!(cut.window() < initial, "a loss after the restart backs off");

        // The same after a queue had built up: congestion, down to the minimum.
        let mut congested = outage(Some((90, 50)));
        congested.on_congestion_event(now, now, true, 30_000);
        assert!(congested.window() < initial / 2, "persistent congestion after a queue keeps RFC 9002's minimum");

        // No round trip measured yet: no evidence either way, so RFC 9002's rule.
        let mut unknown = outage(None);
        unknown.on_congestion_event(now, now, true, 30_000);
        assert!(unknown.window() < initial / 2);
    }
}
