//! What the soak bench reads about the two processes: RSS and open file
//! descriptors from /proc, and how much they have logged, across restarts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// Resident set size of `pid` in KiB (`VmRSS`), 0 when unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    dialback_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Open file descriptors of `pid`, 0 when unreadable.
pub fn fd_count(pid: u32) -> u64 {
    dialback_e2e::open_fds(pid) as u64
}

/// Size of a file in bytes, 0 when missing.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Lines and bytes of the log at `path` that name `needle` (e.g. an attacker's address).
pub fn lines_naming(path: &Path, needle: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).fold((0, 0), |(n, b), l| (n + 1, b + l.len() as u64 + 1))
}

/// The current process of one kind (sidecar or app) and what its dead predecessors logged.
#[derive(Debug, Default)]
pub struct Lives {
    /// Pid of the live process; 0 while it is down.
    pub pid: u32,
    /// When the live process was started.
    pub started: Option<Instant>,
    /// Its log file.
    pub log: PathBuf,
    /// Bytes logged by the processes killed so far.
    pub dead_log_bytes: u64,
    /// Log lines (and their bytes) naming the attackers' address, from the processes killed so far.
    pub dead_attacker_lines: (u64, u64),
}

impl Lives {
    /// A new process took over.
    pub fn born(&mut self, pid: u32, log: &Path) {
        self.pid = pid;
        self.started = Some(Instant::now());
        self.log = log.to_path_buf();
    }

    /// The live process was killed: keep what its log held before the file goes away.
    pub fn died(&mut self, attacker_ip: &str) {
        self.dead_log_bytes += file_len(&self.log);
        let (n, b) = lines_naming(&self.log, attacker_ip);
        self.dead_attacker_lines.0 += n;
        self.dead_attacker_lines.1 += b;
        self.pid = 0;
        self.started = None;
    }

    /// Bytes logged by every process of this kind so far.
    pub fn log_total(&self) -> u64 {
        self.dead_log_bytes + if self.pid != 0 { file_len(&self.log) } else { 0 }
    }

    /// Attacker-naming log lines and bytes of every process of this kind so far.
    pub fn attacker_lines(&self, attacker_ip: &str) -> (u64, u64) {
        let (n, b) = if self.pid != 0 { lines_naming(&self.log, attacker_ip) } else { (0, 0) };
        (self.dead_attacker_lines.0 + n, self.dead_attacker_lines.1 + b)
    }
}

/// The sidecar's and the app's lives, shared by the fault injector (which restarts them) and the sampler.
pub type SharedLives = Arc<Mutex<[Lives; 2]>>;

/// Index of the sidecar in [`SharedLives`].
pub const SIDECAR: usize = 0;
/// Index of the app in [`SharedLives`].
pub const APP: usize = 1;

/// One reading of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// Pid (0: the process was down).
    pub pid: u32,
    /// How long it had been running.
    pub age: Duration,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Bytes logged by every process of this kind so far.
    pub log_total: u64,
}

/// One sampling tick: both processes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Tick number: the sample of tick `k` is taken `k` sampling intervals after the start.
    pub tick: u64,
    /// Real time since the start.
    pub at: Duration,
    /// Sidecar, app.
    pub procs: [Reading; 2],
}

/// Reads both processes now.
pub fn sample(lives: &SharedLives, tick: u64, at: Duration) -> Sample {
    let l = lives.lock().expect("lock");
    let read = |x: &Lives| Reading {
        pid: x.pid,
        age: x.started.map(|s| s.elapsed()).unwrap_or_default(),
        rss_kib: if x.pid != 0 { rss_kib(x.pid) } else { 0 },
        fds: if x.pid != 0 { fd_count(x.pid) } else { 0 },
        log_total: x.log_total(),
    };
    Sample { tick, at, procs: [read(&l[SIDECAR]), read(&l[APP])] }
}

impl Sample {
    /// As JSON.
    pub fn to_json(self) -> serde_json::Value {
        let p = |r: &Reading| {
            json!({
                "pid": r.pid,
                "age_s": r.age.as_secs_f64(),
                "rss_kib": r.rss_kib,
                "fds": r.fds,
                "log_bytes": r.log_total,
            })
        };
        json!({
            "tick": self.tick,
            "t_s": self.at.as_secs_f64(),
            "sidecar": p(&self.procs[SIDECAR]),
            "app": p(&self.procs[APP]),
        })
    }
}
