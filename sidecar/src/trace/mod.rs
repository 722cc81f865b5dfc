//! W3C Trace Context across the channel hop: a caller's `traceparent`
//! (`tracestate` passes as it is) gets a child span for the hop, the app
//! receives the hop's `traceparent` (so its spans hang under dialbackd's),
//! and the caller gets the hop's back in the response, as daprd returns its
//! own. The hop is a `tracing` span carrying the W3C ids, so logs of the
//! call can be joined with the caller's trace; with `--otlp-endpoint` it is
//! also exported as an OpenTelemetry span ([`otlp`]), and a call that comes
//! without a trace starts one (sampled at `--trace-sampling-rate`), as
//! daprd does when tracing is on.

use std::time::SystemTime;

use rand::{Rng, RngCore};
use tonic::metadata::{MetadataMap, MetadataValue};

pub mod otlp;

/// The header (and gRPC metadata key) W3C Trace Context defines.
pub const TRACEPARENT: &str = "traceparent";

/// Vendors' state of the trace in `traceparent`, passed on as it is.
const TRACESTATE: &str = "tracestate";

/// The channel hop of one traced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The caller's trace, 32 hex digits.
    pub trace_id: String,
    /// The caller's span: the hop's parent, 16 hex digits (empty when the
    /// hop started the trace).
    pub parent_id: String,
    /// The hop's own span, 16 hex digits.
    pub span_id: String,
    /// The trace flags (sampled: `01`).
    pub flags: String,
    /// When the hop began.
    pub started: SystemTime,
}

impl Hop {
    /// The hop of a call whose metadata carries a valid `traceparent`, which
    /// is replaced by the hop's for the app. Without one (or with one W3C
    /// says to ignore), a new trace when `roots` gives a sampling rate (the
    /// exporter is on), sampled at that rate; else `None`, and the metadata
    /// left as it is.
    pub fn begin(md: &mut MetadataMap, roots: Option<f64>) -> Option<Hop> {
        let parent = md.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(Hop::child_of);
        let mut hop = match (parent, roots) {
            (Some(hop), _) => hop,
            (None, Some(rate)) => {
                // A new trace: a `tracestate` of another (or no) trace is void (W3C 3.3).
                md.remove(TRACESTATE);
                Hop::root(rate)
            }
            (None, None) => return None,
        };
        hop.span_id = crate::hex::encode(&random_id::<8>());
        if let Ok(v) = MetadataValue::try_from(hop.traceparent()) {
            md.insert(TRACEPARENT, v);
        }
        Some(hop)
    }

    /// A new trace (its span id still empty), sampled with probability `rate`.
    fn root(rate: f64) -> Hop {
        let sampled = rate >= 1.0 || rand::rng().random::<f64>() < rate;
        Hop {
            trace_id: crate::hex::encode(&random_id::<16>()),
            parent_id: String::new(),
            span_id: String::new(),
            flags: if sampled { "01" } else { "00" }.to_string(),
            started: SystemTime::now(),
        }
    }

    /// Whether the trace is sampled (recorded and exported): flag bit 0.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.flags, 16).is_ok_and(|f| f & 1 == 1)
    }

    /// The hop under `traceparent` (its span id still empty), if valid:
    /// version `00`, a trace id and a parent id that are hex and not all
    /// zeros, two hex digits of flags.
    fn child_of(traceparent: &str) -> Option<Hop> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let ok = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && !zero(trace_id)
            && hex(parent_id, 16)
            && !zero(parent_id)
            && hex(flags, 2);
        ok.then(|| Hop {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            span_id: String::new(),
            flags: flags.to_string(),
            started: SystemTime::now(),
        })
    }

    /// The hop's `traceparent`.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// The `tracing` span of the hop for `app_id`'s `method`.
    pub fn span(hop: Option<&Hop>, app_id: &str, method: &str) -> tracing::Span {
        match hop {
            Some(h) => tracing::info_span!(
                "channel_hop", app_id, method,
                trace_id = %h.trace_id, span_id = %h.span_id, parent_span_id = %h.parent_id
            ),
            None => tracing::info_span!("channel_hop", app_id, method),
        }
    }
}

/// A random id of `N` bytes, never all zeros.
fn random_id<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    while b == [0u8; N] {
        rand::rng().fill_bytes(&mut b);
    }
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_app_gets_a_child_of_the_callers_span() {
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, PARENT.parse().unwrap());
        md.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let hop = Hop::begin(&mut md, None).unwrap();
        assert_eq!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hop.parent_id, "00f067aa0ba902b7");
        assert_eq!(hop.span_id.len(), 16);
        assert_ne!(hop.span_id, hop.parent_id);
        let sent = md.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(sent, hop.traceparent());
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"), "{sent}");
        assert_eq!(md.get("tracestate").unwrap(), "congo=t61rcWkgMzE", "tracestate passes as it is");
    }

    #[test]
    fn what_w3c_says_to_ignore_is_left_alone() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
            "",
        ] {
            let mut md = MetadataMap::new();
            md.insert(TRACEPARENT, bad.parse().unwrap());
            assert_eq!(Hop::begin(&mut md, None), None, "{bad}");
            assert_eq!(md.get(TRACEPARENT).unwrap(), bad, "left as it came");
        }
        assert_eq!(Hop::begin(&mut MetadataMap::new(), None), None);
    }

    #[test]
    fn with_the_exporter_on_a_call_without_a_trace_starts_one() {
        let mut md = MetadataMap::new();
        let hop = Hop::begin(&mut md, Some(1.0)).unwrap();
        assert!(hop.parent_id.is_empty() && hop.sampled(), "{hop:?}");
        assert_eq!((hop.trace_id.len(), hop.span_id.len()), (32, 16));
        assert_eq!(md.get(TRACEPARENT).unwrap().to_str().unwrap(), hop.traceparent());
        // Sampled at the rate: none at 0.
        let unsampled = Hop::begin(&mut MetadataMap::new(), Some(0.0)).unwrap();
        assert!(!unsampled.sampled() && unsampled.traceparent().ends_with("-00"));
        // An invalid one is replaced by a new trace.
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, "garbage".parse().unwrap());
        md.insert(TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let hop = Hop::begin(&mut md, Some(1.0)).unwrap();
        assert_eq!(md.get(TRACEPARENT).unwrap().to_str().unwrap(), hop.traceparent());
        assert!(md.get(TRACESTATE).is_none(), "the old trace's state does not follow a new trace");
        // A caller's trace keeps its sampling decision.
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        assert!(!Hop::begin(&mut md, Some(1.0)).unwrap().sampled());
    }
}
