//! The shared fault state: switches set by [`crate::Relay`] and read by every forwarding task, plus counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::Stats;

/// Fault switches and counters shared (in an `Arc`) by the relay handle and all its tasks.
///
/// Every change bumps `epoch`, so tasks parked on a fault (a paused TCP copy, a UDP session holding an old
/// upstream socket) wake up and re-read the switches.
pub(crate) struct Control {
    blackhole: AtomicBool,
    block_udp: AtomicBool,
    delay_nanos: AtomicU64,
    loss_bits: AtomicU64,
    /// NAT mapping generation: bumped by every rebind.
    generation: AtomicU64,
    epoch: watch::Sender<u64>,
    pub(crate) udp_forwarded: AtomicU64,
    pub(crate) udp_up: AtomicU64,
    pub(crate) udp_dropped: AtomicU64,
    pub(crate) tcp_bytes_forwarded: AtomicU64,
    pub(crate) tcp_connections: AtomicU64,
    pub(crate) udp_sessions: AtomicU64,
    rebinds: AtomicU64,
    /// Bumped by every "the client's own NAT forgot its mappings".
    forgets: AtomicU64,
    /// Where traffic goes; settable after start (a relay started before its target).
    target: std::sync::Mutex<std::net::SocketAddr>,
}

impl Control {
    pub(crate) fn new(target: std::net::SocketAddr) -> Self {
        Self {
            target: std::sync::Mutex::new(target),
            forgets: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            block_udp: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            loss_bits: AtomicU64::new(0f64.to_bits()),
            generation: AtomicU64::new(0),
            epoch: watch::Sender::new(0),
            udp_forwarded: AtomicU64::new(0),
            udp_up: AtomicU64::new(0),
            udp_dropped: AtomicU64::new(0),
            tcp_bytes_forwarded: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            udp_sessions: AtomicU64::new(0),
            rebinds: AtomicU64::new(0),
        }
    }

    /// Kills every existing UDP client session (see `Relay::forget_clients`).
    pub(crate) fn forget_clients(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    /// How many times client sessions were forgotten.
    pub(crate) fn forgets(&self) -> u64 {
        self.forgets.load(Ordering::SeqCst)
    }

    /// The current target.
    pub(crate) fn target(&self) -> std::net::SocketAddr {
        match self.target.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Points new sessions and connections at `target`.
    pub(crate) fn set_target(&self, target: std::net::SocketAddr) {
        match self.target.lock() {
            Ok(mut t) => *t = target,
            Err(poisoned) => *poisoned.into_inner() = target,
        }
    }

    /// A receiver that sees a change after every switch flip or rebind.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn changed(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    pub(crate) fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
        self.changed();
    }

    pub(crate) fn set_block_udp(&self, on: bool) {
        self.block_udp.store(on, Ordering::SeqCst);
        self.changed();
    }

    pub(crate) fn set_delay(&self, one_way: Duration) {
        let nanos = u64::try_from(one_way.as_nanos()).unwrap_or(u64::MAX);
        self.delay_nanos.store(nanos, Ordering::SeqCst);
        self.changed();
    }

    /// Stores `p` clamped to `0..=1` (NaN counts as 0).
    pub(crate) fn set_loss(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.loss_bits.store(p.to_bits(), Ordering::SeqCst);
        self.changed();
    }

    pub(crate) fn rebind(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.rebinds.fetch_add(1, Ordering::Relaxed);
        self.changed();
    }

    pub(crate) fn blackhole(&self) -> bool {
        self.blackhole.load(Ordering::SeqCst)
    }

    /// True while UDP must be dropped (blackhole or blocked UDP).
    pub(crate) fn udp_blocked(&self) -> bool {
        self.blackhole() || self.block_udp.load(Ordering::SeqCst)
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    /// Rolls the loss dice for one datagram: true means drop it.
    pub(crate) fn lose_packet(&self) -> bool {
        let p = f64::from_bits(self.loss_bits.load(Ordering::SeqCst));
        p > 0.0 && (p >= 1.0 || rand::random_bool(p))
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// True once a rebind happened after `generation` was taken: that NAT mapping is gone.
    pub(crate) fn is_dead(&self, generation: u64) -> bool {
        self.generation() != generation
    }

    pub(crate) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn uncount(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            udp_forwarded: self.udp_forwarded.load(Ordering::Relaxed),
            udp_up: self.udp_up.load(Ordering::Relaxed),
            udp_dropped: self.udp_dropped.load(Ordering::Relaxed),
            tcp_bytes_forwarded: self.tcp_bytes_forwarded.load(Ordering::Relaxed),
            tcp_connections: self.tcp_connections.load(Ordering::Relaxed),
            udp_sessions: self.udp_sessions.load(Ordering::Relaxed),
            rebinds: self.rebinds.load(Ordering::Relaxed),
        }
    }
}
