//! The units flags are written in: durations (`5s`, `250ms`) and sizes
//! (`4Mi`, Kubernetes-style, as daprd's `--max-body-size`).

use std::time::Duration;

/// Parses a size as daprd's `--max-body-size` does (a Kubernetes-style
/// quantity): a bare number of bytes, or one with a suffix `Ki`, `Mi`, `Gi`
/// (powers of 1024) or `k`, `M`, `G` (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 4Mi, 512Ki or 1048576"))?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use Ki, Mi, Gi, k, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest duration a flag takes: far beyond any sensible timeout, and
/// far below where adding it to a clock would overflow (and panic).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds; fails on
/// anything else or on more than [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the limit of {}s (100 years)", MAX_DURATION.as_secs()));
    }
    Ok(d)
}
