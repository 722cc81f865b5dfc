//! Shared pieces of dialback's benchmarks: percentiles, table output,
//! reading the sidecar's errors, and driving a Dapr API with invocations
//! ([`drive`], for `cost.rs` and `bridge.rs`). The benchmarks themselves are
//! the `[[bench]]` targets (`recovery.rs`, `cost.rs`, `soak.rs`, `bridge.rs`,
//! `loss.rs`, `liveness.rs`, `outbound.rs`, `footprint.rs`).

pub mod drive;

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

/// Dapr's JSON error body `{"errorCode": ..., "message": ...}`: the code and
/// the message, or `None` when `body` is anything else.
pub fn dapr_error(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("errorCode")?.as_str()?;
    let message = v.get("message")?.as_str()?;
    Some((code.to_string(), message.to_string()))
}

/// The median of `xs`, or `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
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

    #[test]
    fn dapr_errors() {
        let body = br#"{"errorCode":"ERR_DIRECT_INVOKE","message":"the app channel is down"}"#;
        assert_eq!(dapr_error(body), Some(("ERR_DIRECT_INVOKE".into(), "the app channel is down".into())));
        assert_eq!(dapr_error(br#"{"errorCode":"X"}"#), None);
        assert_eq!(dapr_error(b"Service Unavailable"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
