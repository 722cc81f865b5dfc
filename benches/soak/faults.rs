//! The fault injector: owns the sidecar, the app and the relay, and, on a
//! seeded schedule, injects one fault at a time, heals it, waits for a call
//! sent after the heal to be answered (bounded), then stays calm a few
//! seconds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialback_e2e::{App, Sidecar};
use dialback_netsim::Relay;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::sync::watch;

use crate::attackers::ATTACKER_IP;
use crate::callers::Progress;
use crate::procfs::{APP, SIDECAR, SharedLives};

/// How long the injector waits for a call sent after a heal to be answered.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// SIGKILL the sidecar and start it again (same ports and state dir).
    SidecarKill,
    /// SIGKILL the app and start it again.
    AppKill,
    /// The relay's NAT gives the app's flows new upstream ports.
    NatRebind,
    /// The app moves its socket to another local IP (SIGUSR1).
    AddressChange,
    /// Nothing gets through, both ways, for a while.
    Blackhole(Duration),
    /// 1 % of UDP datagrams dropped, for a while.
    Loss(Duration),
    /// UDP dropped (TCP still works), for a while.
    UdpBlocked(Duration),
}

impl Fault {
    /// Draws one fault; every kind equally likely.
    pub fn pick(rng: &mut StdRng) -> Fault {
        let secs = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_secs(rng.random_range(lo..=hi));
        match rng.random_range(0..7) {
            0 => Fault::SidecarKill,
            1 => Fault::AppKill,
            2 => Fault::NatRebind,
            3 => Fault::AddressChange,
            4 => Fault::Blackhole(secs(rng, 1, 5)),
            5 => Fault::Loss(secs(rng, 3, 8)),
            _ => Fault::UdpBlocked(secs(rng, 3, 8)),
        }
    }

    /// Short name for tables.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::SidecarKill => "sidecar-kill",
            Fault::AppKill => "app-kill",
            Fault::NatRebind => "nat-rebind",
            Fault::AddressChange => "addr-change",
            Fault::Blackhole(_) => "blackhole",
            Fault::Loss(_) => "udp-loss-1%",
            Fault::UdpBlocked(_) => "udp-blocked",
        }
    }

    fn name(self) -> String {
        match self {
            Fault::Blackhole(d) | Fault::Loss(d) | Fault::UdpBlocked(d) => format!("{} {}s", self.kind(), d.as_secs()),
            _ => self.kind().to_string(),
        }
    }
}

/// What one fault did.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// The fault.
    pub fault: Fault,
    /// When it started, since the start of the run.
    pub at: Duration,
    /// When it was healed (the restarted process printed its ready line, the relay was switched back).
    pub healed: Duration,
    /// From the heal to the answer of the first call sent after it; `None`: none within [`RECOVERY_BOUND`].
    pub recovered: Option<Duration>,
}

impl FaultRecord {
    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "fault": self.fault.name(),
            "kind": self.fault.kind(),
            "at_s": self.at.as_secs_f64(),
            "healed_s": self.healed.as_secs_f64(),
            "recovered_ms": self.recovered.map(|d| d.as_secs_f64() * 1e3),
        })
    }
}

/// The injector and everything it owns.
pub struct Injector {
    /// The live sidecar.
    pub sidecar: Sidecar,
    /// The live app.
    pub app: App,
    /// The relay between them.
    pub relay: Relay,
    /// Pids and logs, for the sampler.
    pub lives: SharedLives,
    /// Sidecar down windows: from just before its SIGKILL to its new ready line.
    pub down: Arc<Mutex<Vec<(Duration, Duration)>>>,
    /// Calls' progress, for recovery.
    pub progress: Progress,
    /// Bumped before each sidecar SIGKILL (see [`crate::attackers::Targets`]).
    pub generation: Arc<AtomicU64>,
    /// Where each process's log is copied when it dies (and at the end): `target/soak-logs`.
    pub logs: PathBuf,
    /// Logs copied so far (numbers the copies in order).
    pub kept: AtomicU64,
}

impl Injector {
    /// Copies a process's log into [`Injector::logs`] before its handle (and temp dir) goes.
    pub fn keep_log(&self, name: &str, from: &Path) {
        let n = self.kept.fetch_add(1, Relaxed);
        if let Err(e) = std::fs::copy(from, self.logs.join(format!("{n:02}-{name}.log"))) {
            eprintln!("could not keep the {name} log {}: {e}", from.display());
        }
    }

    /// Injects faults drawn from `seed` until `stop` turns true (finishing the fault under way and
    /// its recovery wait), then hands back the processes and what it did. With `enabled` false it only waits.
    pub async fn run(
        mut self,
        seed: u64,
        enabled: bool,
        mut stop: watch::Receiver<bool>,
    ) -> (Injector, Vec<FaultRecord>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut records = Vec::new();
        loop {
            let calm = Duration::from_millis(rng.random_range(3000..=6000));
            tokio::select! {
                _ = tokio::time::sleep(calm) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if !enabled {
                continue;
            }
            let fault = Fault::pick(&mut rng);
            let at = self.progress.now();
            self.inject(fault).await;
            let healed = self.progress.now();
            // Not cut short by `stop`: the callers run until the injector is done.
            let recovered = self.recovery(healed).await;
            let how = recovered.map_or("NOT within 30 s".to_string(), |d| format!("in {:.2} s", d.as_secs_f64()));
            println!("  [{:>7.1}s] {:<18} healed, recovered {how}", at.as_secs_f64(), fault.name());
            records.push(FaultRecord { fault, at, healed, recovered });
        }
        (self, records)
    }

    /// Injects `fault` and heals it.
    async fn inject(&mut self, fault: Fault) {
        let ip = ATTACKER_IP.to_string();
        match fault {
            Fault::SidecarKill => {
                let from = self.progress.now();
                self.generation.fetch_add(1, Relaxed);
                self.sidecar.kill().await;
                self.lives.lock().expect("lock")[SIDECAR].died(&ip);
                let next = self.sidecar.restart().await;
                self.lives.lock().expect("lock")[SIDECAR].born(next.pid(), next.log_path());
                // The old handle's temp dir (its log) goes now; the state dir is the bench's own.
                self.keep_log("sidecar", self.sidecar.log_path());
                self.sidecar = next;
                self.down.lock().expect("lock").push((from, self.progress.now()));
            }
            Fault::AppKill => {
                self.app.kill().await;
                self.lives.lock().expect("lock")[APP].died(&ip);
                self.keep_log("app", self.app.log_path());
                self.app = self.app.respawn();
                self.lives.lock().expect("lock")[APP].born(self.app.pid(), self.app.log_path());
            }
            Fault::NatRebind => self.relay.rebind(),
            Fault::AddressChange => self.app.signal("USR1"),
            Fault::Blackhole(d) => {
                self.relay.set_blackhole(true);
                tokio::time::sleep(d).await;
                self.relay.set_blackhole(false);
            }
            Fault::Loss(d) => {
                self.relay.set_loss(0.01);
                tokio::time::sleep(d).await;
                self.relay.set_loss(0.0);
            }
            Fault::UdpBlocked(d) => {
                self.relay.set_block_udp(true);
                tokio::time::sleep(d).await;
                self.relay.set_block_udp(false);
            }
        }
    }

    /// How long after `healed` the first call sent after it was answered; `None` after [`RECOVERY_BOUND`].
    async fn recovery(&self, healed: Duration) -> Option<Duration> {
        let deadline = tokio::time::Instant::now() + RECOVERY_BOUND;
        while tokio::time::Instant::now() < deadline {
            if self.progress.last_ok_sent() >= healed {
                return Some(self.progress.now() - healed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
