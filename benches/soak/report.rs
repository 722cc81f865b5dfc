//! The soak bench's verdicts, tables and JSON.
//!
//! Memory and fds across restarts: a SIGKILL resets the process's RSS and
//! fds, so per-minute medians are taken over whichever process was alive at
//! each 10 s sample, leaving out samples of a process younger than
//! [`WARM`] (still starting up) or down. The verdict compares the first
//! minute's median with the last minute's, across the run: a leak that
//! outlives restarts (or a long-lived process, e.g. with `--no-faults`)
//! shows there. Growth within one life is reported besides, for lives
//! longer than a minute (first vs last warm sample), as information.

use std::collections::BTreeMap;
use std::time::Duration;

use dialback_benches::median;
use serde_json::{Value, json};

use crate::callers::{CallReport, MinuteCalls};
use crate::faults::FaultRecord;
use crate::procfs::{APP, SIDECAR, Sample};

/// Samples of a process younger than this are left out of the medians.
const WARM: Duration = Duration::from_secs(10);
/// Samples per minute (one every 10 s).
pub const PER_MINUTE: u64 = 6;
/// "Flat": the last minute's median at most this much above the first's.
const FLAT: f64 = 0.10;
/// Slack for fd counts, which are small: a couple of fds more is not a leak.
const FD_SLACK: f64 = 2.0;
/// Sidecar log lines naming the attackers per attacker connection above which the log grows with attacks.
const ATTACK_LINES_PER_CONN: f64 = 0.01;

/// Everything the run produced.
pub struct Inputs<'a> {
    /// Samples, one per tick, tick 0 at the start.
    pub samples: &'a [Sample],
    /// Attacker connections opened so far, at each tick.
    pub attacks_opened: &'a [u64],
    /// The calls.
    pub calls: &'a CallReport,
    /// The faults.
    pub faults: &'a [FaultRecord],
    /// Sidecar log lines (and bytes) naming the attackers' address.
    pub attacker_lines: (u64, u64),
    /// Bypass attempts not answered 401 (`None`: no attackers ran).
    pub security_failures: Option<u64>,
    /// Minutes in the run.
    pub minutes: u64,
}

/// The verdicts; only LOST calls and security failures fail the run.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Lines to print, `(target, PASS/MISS/FAIL, detail)`.
    pub lines: Vec<(String, &'static str, String)>,
    /// The run failed (LOST calls or a security failure).
    pub failed: bool,
}

fn med<F: Fn(&Sample) -> f64>(samples: &[Sample], minute: u64, proc: usize, f: F) -> Option<f64> {
    let xs: Vec<f64> = samples
        .iter()
        .filter(|s| s.tick >= 1 && (s.tick - 1) / PER_MINUTE == minute)
        .filter(|s| s.procs[proc].pid != 0 && s.procs[proc].age >= WARM)
        .map(f)
        .collect();
    median(&xs)
}

/// Bytes a process kind logged in `minute` (between ticks 6m and 6m+6).
fn log_in_minute(samples: &[Sample], minute: u64, proc: usize) -> u64 {
    let at = |tick: u64| samples.iter().filter(|s| s.tick <= tick).map(|s| s.procs[proc].log_total).max();
    at((minute + 1) * PER_MINUTE).unwrap_or(0).saturating_sub(at(minute * PER_MINUTE).unwrap_or(0))
}

fn opened_in_minute(opened: &[u64], minute: u64) -> u64 {
    let at = |tick: u64| opened.get(tick as usize).or(opened.last()).copied().unwrap_or(0);
    at((minute + 1) * PER_MINUTE).saturating_sub(at(minute * PER_MINUTE))
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The per-minute table, as printed lines and as JSON rows.
pub fn minute_table(inp: &Inputs<'_>) -> (Vec<String>, Vec<Value>) {
    let mut lines = vec![format!(
        "{:>3} {:>7} {:>6} {:>5} {:>5} {:>6} | {:>7} {:>6} {:>9} | {:>7} {:>6} {:>9} | {:>8}",
        "min",
        "ok",
        "clear",
        "down",
        "LOST",
        "faults",
        "sc MiB",
        "sc fd",
        "sc log/m",
        "app MiB",
        "app fd",
        "app log/m",
        "atk conn"
    )];
    let mut rows = Vec::new();
    for m in 0..inp.minutes {
        let c = inp.calls.minutes.get(m as usize).cloned().unwrap_or_default();
        let clear: u64 = c.clear.values().sum();
        let faults = inp.faults.iter().filter(|f| f.at.as_secs() / 60 == m).count();
        let rss = |p| med(inp.samples, m, p, |s| mib(s.procs[p].rss_kib as f64));
        let fds = |p| med(inp.samples, m, p, |s| s.procs[p].fds as f64);
        let (sc_log, app_log) = (log_in_minute(inp.samples, m, SIDECAR), log_in_minute(inp.samples, m, APP));
        let atk = opened_in_minute(inp.attacks_opened, m);
        lines.push(format!(
            "{m:>3} {:>7} {clear:>6} {:>5} {:>5} {faults:>6} | {:>7} {:>6} {:>9} | {:>7} {:>6} {:>9} | {atk:>8}",
            c.ok,
            c.down,
            c.lost,
            fmt(rss(SIDECAR), 1),
            fmt(fds(SIDECAR), 0),
            sc_log,
            fmt(rss(APP), 1),
            fmt(fds(APP), 0),
            app_log,
        ));
        rows.push(json!({
            "minute": m, "ok": c.ok, "clear_errors": c.clear, "sidecar_down": c.down, "lost": c.lost, "faults": faults,
            "sidecar": { "rss_mib_median": rss(SIDECAR), "fds_median": fds(SIDECAR), "log_bytes": sc_log },
            "app": { "rss_mib_median": rss(APP), "fds_median": fds(APP), "log_bytes": app_log },
            "attacker_connections_opened": atk,
        }));
    }
    (lines, rows)
}

/// Growth within each life longer than a minute: `(kind, pid, lived s, rss first->last MiB, fds first->last)`.
pub fn lives(samples: &[Sample]) -> Vec<Value> {
    let mut by_pid: BTreeMap<(usize, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        for p in [SIDECAR, APP] {
            if s.procs[p].pid != 0 && s.procs[p].age >= WARM {
                by_pid.entry((p, s.procs[p].pid)).or_default().push(s);
            }
        }
    }
    by_pid
        .into_iter()
        .filter_map(|((p, pid), ss)| {
            let (first, last) = (ss.first()?.procs[p], ss.last()?.procs[p]);
            (last.age >= Duration::from_secs(60)).then(|| {
                json!({
                    "process": if p == SIDECAR { "sidecar" } else { "app" }, "pid": pid,
                    "lived_s": last.age.as_secs(),
                    "rss_mib": [mib(first.rss_kib as f64), mib(last.rss_kib as f64)],
                    "fds": [first.fds, last.fds],
                })
            })
        })
        .collect()
}

/// Judges the run against the targets.
pub fn verdicts(inp: &Inputs<'_>) -> Verdicts {
    let mut v = Verdicts::default();
    let total = |f: fn(&MinuteCalls) -> u64| inp.calls.minutes.iter().map(f).sum::<u64>();
    let (ok, down, lost) = (total(|m| m.ok), total(|m| m.down), total(|m| m.lost));
    let clear: u64 = inp.calls.minutes.iter().flat_map(|m| m.clear.values()).sum();
    let lost_detail = if lost == 0 {
        format!("{ok} answered, {clear} clear errors, {down} while the sidecar was down")
    } else {
        let why: Vec<String> = inp.calls.lost_reasons.iter().map(|(k, n)| format!("{n} x {k}")).collect();
        format!("{lost} LOST: {}", why.join("; "))
    };
    v.failed |= lost > 0;
    v.lines.push(("0 lost calls".into(), if lost == 0 { "PASS" } else { "FAIL" }, lost_detail));
    let unclear: u64 = inp
        .calls
        .lost_reasons
        .iter()
        .filter(|(k, _)| k.starts_with("status") || k.starts_with("200"))
        .map(|(_, n)| n)
        .sum();
    let by_status: BTreeMap<u16, u64> =
        inp.calls.minutes.iter().flat_map(|m| m.clear.clone()).fold(BTreeMap::new(), |mut acc, (s, n)| {
            *acc.entry(s).or_default() += n;
            acc
        });
    v.lines.push((
        "every failure a clear error".into(),
        if unclear == 0 { "PASS" } else { "FAIL" },
        format!("clear by status {by_status:?}; {unclear} answers without a clear error (counted LOST)"),
    ));
    match inp.security_failures {
        Some(n) => {
            v.failed |= n > 0;
            v.lines.push((
                "API token bypass refused (401)".into(),
                if n == 0 { "PASS" } else { "FAIL" },
                format!("{n} bypass attempts answered with something else"),
            ));
        }
        None => v.lines.push(("API token bypass refused (401)".into(), "-", "no attackers".into())),
    }
    let last = inp.minutes - 1;
    for (p, name) in [(SIDECAR, "sidecar"), (APP, "app")] {
        let rss = |m| med(inp.samples, m, p, |s| mib(s.procs[p].rss_kib as f64));
        let fds = |m| med(inp.samples, m, p, |s| s.procs[p].fds as f64);
        for (what, first, end, slack, unit) in
            [("RSS", rss(0), rss(last), 0.0, "MiB"), ("fds", fds(0), fds(last), FD_SLACK, "")]
        {
            let (verdict, detail) = match (first, end) {
                (Some(a), Some(b)) => (
                    if b <= a * (1.0 + FLAT) + slack { "PASS" } else { "MISS" },
                    format!(
                        "minute 0 median {a:.1}{unit}, minute {last} median {b:.1}{unit} ({:+.0} %)",
                        (b / a - 1.0) * 100.0
                    ),
                ),
                _ => ("-", "no warm samples in the first or last minute".into()),
            };
            v.lines.push((format!("{name} {what} flat (within 10 %)"), verdict, detail));
        }
        let per_min: Vec<f64> = (0..inp.minutes).map(|m| log_in_minute(inp.samples, m, p) as f64).collect();
        let typical = median(&per_min).unwrap_or(0.0);
        let end = per_min.last().copied().unwrap_or(0.0);
        v.lines.push((
            format!("{name} log volume bounded"),
            if end <= 2.0 * typical + 4096.0 { "PASS" } else { "MISS" },
            format!("median {typical:.0} B/min, last minute {end:.0} B/min"),
        ));
    }
    if inp.security_failures.is_some() {
        let conns = inp.attacks_opened.last().copied().unwrap_or(0).max(1);
        let per = inp.attacker_lines.0 as f64 / conns as f64;
        v.lines.push((
            "sidecar log does not grow with attacks".into(),
            if per <= ATTACK_LINES_PER_CONN { "PASS" } else { "MISS" },
            format!(
                "{} lines ({} B, {:.0} B/min) name the attackers' address: {per:.2} per attacker connection ({conns})",
                inp.attacker_lines.0,
                inp.attacker_lines.1,
                inp.attacker_lines.1 as f64 / inp.minutes as f64,
            ),
        ));
    }
    v
}

/// Per fault kind: count, median and worst recovery, and how many did not recover in time.
pub fn fault_lines(faults: &[FaultRecord]) -> Vec<String> {
    let mut kinds: BTreeMap<&str, Vec<&FaultRecord>> = BTreeMap::new();
    for f in faults {
        kinds.entry(f.fault.kind()).or_default().push(f);
    }
    kinds
        .into_iter()
        .map(|(kind, fs)| {
            let rec: Vec<f64> = fs.iter().filter_map(|f| f.recovered).map(|d| d.as_secs_f64()).collect();
            let worst = rec.iter().copied().fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
            format!(
                "  {kind:<14} x{:<4} recovery median {} s, worst {} s, not recovered within 30 s: {}",
                fs.len(),
                fmt(median(&rec), 2),
                fmt(worst, 2),
                fs.len() - rec.len()
            )
        })
        .collect()
}
