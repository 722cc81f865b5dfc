//! W3C Trace Context across the channel hop: a caller's `traceparent`
//! (`tracestate` passes as it is) gets a child span for the hop, the app
//! receives the hop's `traceparent` (so its spans hang under dialbackd's),
//! and the caller gets the hop's back in the response, as daprd returns its
//! own. The hop is a `tracing` span carrying the W3C ids, so logs of the
//! call can be joined with the caller's trace.

use rand::RngCore;
use tonic::metadata::{MetadataMap, MetadataValue};

/// The header (and gRPC metadata key) W3C Trace Context defines.
pub const TRACEPARENT: &str = "traceparent";

/// The channel hop of one traced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The caller's trace, 32 hex digits.
    pub trace_id: String,
    /// The caller's span: the hop's parent, 16 hex digits.
    pub parent_id: String,
    /// The hop's own span, 16 hex digits.
    pub span_id: String,
    /// The trace flags (sampled: `01`).
    pub flags: String,
}

impl Hop {
    /// The hop of a call whose metadata carries a valid `traceparent`, which
    /// is replaced by the hop's for the app. `None` (and the metadata left
    /// as it is) without one, or with one W3C says to ignore.
    pub fn begin(md: &mut MetadataMap) -> Option<Hop> {
        let parent = md.get(TRACEPARENT)?.to_str().ok()?;
        let mut hop = Hop::child_of(parent)?;
        hop.span_id = new_span_id();
        if let Ok(v) = MetadataValue::try_from(hop.traceparent()) {
            md.insert(TRACEPARENT, v);
        }
        Some(hop)
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

/// A random span id, never all zeros.
fn new_span_id() -> String {
    let mut b = [0u8; 8];
    while b == [0u8; 8] {
        rand::rng().fill_bytes(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
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
        let hop = Hop::begin(&mut md).unwrap();
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
            assert_eq!(Hop::begin(&mut md), None, "{bad}");
            assert_eq!(md.get(TRACEPARENT).unwrap(), bad, "left as it came");
        }
        assert_eq!(Hop::begin(&mut MetadataMap::new()), None);
    }
}
