//! What a [`crate::Listener`] tells its owner about the connections it
//! sees, for metrics: refusals by reason, accepted handshakes and how long
//! they took, stateless resets sent. The channel layer stays free of any
//! metrics library; the sidecar implements [`ListenerEvents`].

use std::time::Duration;

use crate::error::AcceptError;
use crate::notice::CredentialKind;
use crate::{RefusalReason, Transport};

/// Hooks a listener calls as connections come and go. Each has a no-op
/// default; they run on the accept path, so they must be quick.
pub trait ListenerEvents: Send + Sync {
    /// A connection was turned away or refused before it became a channel;
    /// `reason` is one of [`Refused`]'s labels.
    fn refused(&self, _transport: Transport, _reason: Refused) {}

    /// A channel was accepted: its hello proved `credential`, `took` after
    /// the connection arrived (TLS or QUIC handshake, hello and verdict);
    /// `resumed`: its TLS session was a resumed one.
    fn accepted(&self, _transport: Transport, _credential: CredentialKind, _resumed: bool, _took: Duration) {}

    /// Stateless resets sent at bind time to the previous run's apps.
    fn resets_sent(&self, _count: usize) {}
}

/// No hooks.
#[derive(Debug, Default)]
pub struct NoEvents;

impl ListenerEvents for NoEvents {}

/// Why a connection did not become a channel, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The transport's handshake budget was full.
    Busy,
    /// Its source address had too many handshakes in flight.
    PerAddress,
    /// TLS failed (garbage, a wrong certificate, no common protocol).
    Tls,
    /// The QUIC connection failed before the hello.
    Quic,
    /// The handshake did not finish in time.
    Timeout,
    /// The hello was cut short or could not be read.
    BadFrame,
    /// The hello was read and refused for this reason.
    Hello(RefusalReason),
    /// The app closed the connection before its hello (a QUIC attempt that
    /// lost its own dial's race): not a refusal, counted apart.
    Abandoned,
}

impl Refused {
    /// Why `e` ended a connection.
    pub fn of(e: &AcceptError) -> Refused {
        match e {
            AcceptError::Tls(_) => Refused::Tls,
            AcceptError::Quic(_) => Refused::Quic,
            AcceptError::Frame(_) => Refused::BadFrame,
            AcceptError::Timeout(_) => Refused::Timeout,
            AcceptError::Refused { reason, .. } => Refused::Hello(*reason),
        }
    }

    /// The label: a short snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Busy => "too_many_handshakes",
            Refused::PerAddress => "too_many_from_address",
            Refused::Tls => "tls",
            Refused::Quic => "quic",
            Refused::Timeout => "handshake_timeout",
            Refused::BadFrame => "bad_frame",
            Refused::Abandoned => "abandoned",
            Refused::Hello(r) => match r {
                RefusalReason::Unspecified => "refused",
                RefusalReason::UnsupportedVersion => "unsupported_version",
                RefusalReason::Malformed => "malformed",
                RefusalReason::NoCredential => "no_credential",
                RefusalReason::BadCredential => "bad_credential",
                RefusalReason::TokenExpired => "token_expired",
                RefusalReason::TokenUsed => "token_used",
                RefusalReason::WrongAppId => "wrong_app_id",
                RefusalReason::ShuttingDown => "shutting_down",
                RefusalReason::HandshakeTimeout => "handshake_timeout",
                RefusalReason::WrongProtocol => "wrong_protocol",
                RefusalReason::SlotTaken => "slot_taken",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_snake_case_words() {
        let mut all = vec![Refused::Busy, Refused::PerAddress, Refused::Tls, Refused::Quic, Refused::Timeout];
        all.push(Refused::BadFrame);
        all.push(Refused::Abandoned);
        for v in 0..=11 {
            if let Ok(r) = RefusalReason::try_from(v) {
                all.push(Refused::Hello(r));
            }
        }
        assert_eq!(all.len(), 19);
        for r in all {
            let s = r.as_str();
            assert!(!s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{r:?}: {s}");
        }
    }
}
