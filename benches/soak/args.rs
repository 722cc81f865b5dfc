//! The soak bench's flags.

use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct Args {
    /// Length of the measured run, in whole minutes.
    pub minutes: u64,
    /// Seed of the fault schedule (printed, so a run can be replayed).
    pub seed: u64,
    /// Concurrent callers through the HTTP API.
    pub callers: usize,
    /// Each caller's pause between two calls.
    pub pause: Duration,
    /// Run the background attackers.
    pub attackers: bool,
    /// Inject faults.
    pub faults: bool,
    /// `--quick` was given.
    pub quick: bool,
}

const USAGE: &str = "flags: --minutes N (default 30) | --quick (2 minutes) | --seed N | --callers N (64) \
| --pause-ms N (250) | --no-attackers | --no-faults";

/// Parses `std::env::args`; panics with the usage line on a bad flag.
pub fn parse() -> Args {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let mut a = Args {
        minutes: 30,
        seed: seed.unwrap_or(1) % 1_000_000_007,
        callers: 64,
        pause: Duration::from_millis(250),
        attackers: true,
        faults: true,
        quick: false,
    };
    let mut minutes = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |what: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{arg} wants {what}; {USAGE}"))
        };
        match arg.as_str() {
            "--minutes" => minutes = Some(num("a number of minutes").max(1)),
            "--quick" => a.quick = true,
            "--seed" => a.seed = num("a number"),
            "--callers" => a.callers = num("a number").max(1) as usize,
            "--pause-ms" => a.pause = Duration::from_millis(num("milliseconds")),
            "--no-attackers" => a.attackers = false,
            "--no-faults" => a.faults = false,
            // cargo bench passes --bench to every harness = false target.
            "--bench" => {}
            other => panic!("unknown flag {other}; {USAGE}"),
        }
    }
    a.minutes = minutes.unwrap_or(if a.quick { 2 } else { 30 });
    a
}
