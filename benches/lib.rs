//! Shared pieces of dialback's benchmarks: percentiles and table output.
//! The benchmarks themselves are the `[[bench]]` targets (`recovery.rs`, `cost.rs`).

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `xs`, nearest-rank; `None` when empty.
pub fn percentile(xs: &[Duration], p: f64) -> Option<Duration> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len() - 1)).copied()
}

/// Milliseconds with one decimal, or `-`.
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let xs: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&xs, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&xs, 95.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&xs, 100.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(ms(Some(Duration::from_micros(1500))), "1.5");
    }
}
