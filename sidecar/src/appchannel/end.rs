//! Why a channel ended: one answer for every path that ends one, and the
//! rule for which of two explanations wins.

use dialback_channel::CloseCode;

/// Why a channel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEnd {
    /// It failed before it was installed (HTTP/2 handshake or probe): it
    /// never displaced anything.
    Unproven(String),
    /// A standby hello found another instance live at install time.
    SlotTaken,
    /// A newer channel of the app took its place.
    Replaced,
    /// The sidecar shut down.
    ShuttingDown,
    /// The liveness Ping failed; says how.
    PingFailed(String),
    /// The app broke HTTP/2 (garbage, a header block over the limits).
    ProtocolError(String),
    /// The app closed it, with this code and reason (QUIC only).
    ClosedByApp(CloseCode, String),
    /// HTTP/2 ended without an error.
    ConnectionClosed,
    /// The transport lost the connection.
    ConnectionLost,
}

impl ChannelEnd {
    /// The reason in words: what `lastDownReason` and the logs say.
    pub fn reason(&self) -> String {
        match self {
            ChannelEnd::Unproven(why) | ChannelEnd::PingFailed(why) => why.clone(),
            ChannelEnd::SlotTaken => "another instance of this app holds the channel".to_string(),
            ChannelEnd::Replaced => "replaced by a newer channel".to_string(),
            ChannelEnd::ShuttingDown => "sidecar shutting down".to_string(),
            ChannelEnd::ProtocolError(why) => format!("HTTP/2 protocol error on the channel: {why}"),
            ChannelEnd::ClosedByApp(code, why) => format!("closed by the app ({code:?}): {why}"),
            ChannelEnd::ConnectionClosed => "connection closed".to_string(),
            ChannelEnd::ConnectionLost => "connection lost".to_string(),
        }
    }

    /// The metric label: one snake_case word per kind of end.
    pub fn label(&self) -> &'static str {
        match self {
            ChannelEnd::Unproven(_) => "unproven",
            ChannelEnd::SlotTaken => "slot_taken",
            ChannelEnd::Replaced => "replaced",
            ChannelEnd::ShuttingDown => "shutting_down",
            ChannelEnd::PingFailed(_) => "ping_failed",
            ChannelEnd::ProtocolError(_) => "protocol_error",
            ChannelEnd::ClosedByApp(..) => "closed_by_app",
            ChannelEnd::ConnectionClosed => "connection_closed",
            ChannelEnd::ConnectionLost => "connection_lost",
        }
    }

    /// The code the sidecar closes the connection with for this end.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ChannelEnd::Unproven(_) | ChannelEnd::PingFailed(_) => CloseCode::PingTimeout,
            ChannelEnd::SlotTaken => CloseCode::Refused,
            ChannelEnd::Replaced => CloseCode::Replaced,
            ChannelEnd::ShuttingDown => CloseCode::ShuttingDown,
            ChannelEnd::ProtocolError(_)
            | ChannelEnd::ClosedByApp(..)
            | ChannelEnd::ConnectionClosed
            | ChannelEnd::ConnectionLost => CloseCode::Done,
        }
    }

    /// Whether this end explains itself better than a closed connection
    /// or a failed probe does: a failure the sidecar saw (a broken
    /// protocol, a missed Ping) is the cause of what follows it.
    pub fn is_cause(&self) -> bool {
        matches!(self, ChannelEnd::ProtocolError(_) | ChannelEnd::PingFailed(_))
    }

    /// Whether the sidecar ended the channel on purpose.
    pub fn is_decision(&self) -> bool {
        matches!(self, ChannelEnd::Replaced | ChannelEnd::ShuttingDown | ChannelEnd::SlotTaken)
    }

    /// Of what ended the channel (`seen`) and a failure recorded a moment
    /// before or after (`cause`), the better explanation: the sidecar's own
    /// decision stands, then the first cause, then what was seen.
    pub fn explain(seen: ChannelEnd, cause: Option<ChannelEnd>) -> ChannelEnd {
        match cause {
            Some(c) if c.is_cause() && !seen.is_cause() && !seen.is_decision() => c,
            _ => seen,
        }
    }
}

impl std::fmt::Display for ChannelEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before() {
        // These words are what users see in lastDownReason and the logs.
        assert_eq!(ChannelEnd::ConnectionLost.reason(), "connection lost");
        assert_eq!(ChannelEnd::ConnectionClosed.reason(), "connection closed");
        assert_eq!(
            ChannelEnd::ClosedByApp(CloseCode::ShuttingDown, "bye".into()).reason(),
            "closed by the app (ShuttingDown): bye"
        );
        assert_eq!(
            ChannelEnd::ProtocolError("frame too big".into()).reason(),
            "HTTP/2 protocol error on the channel: frame too big"
        );
        assert_eq!(ChannelEnd::PingFailed("no Ping answer within 5s".into()).reason(), "no Ping answer within 5s");
    }

    #[test]
    fn each_end_closes_with_its_code() {
        assert_eq!(ChannelEnd::Replaced.close_code(), CloseCode::Replaced);
        assert_eq!(ChannelEnd::ShuttingDown.close_code(), CloseCode::ShuttingDown);
        assert_eq!(ChannelEnd::PingFailed(String::new()).close_code(), CloseCode::PingTimeout);
        assert_eq!(ChannelEnd::Unproven(String::new()).close_code(), CloseCode::PingTimeout);
        assert_eq!(ChannelEnd::SlotTaken.close_code(), CloseCode::Refused);
        assert_eq!(ChannelEnd::ConnectionLost.close_code(), CloseCode::Done);
    }

    #[test]
    fn a_recorded_failure_explains_the_close_it_caused() {
        let broken = ChannelEnd::ProtocolError("garbage".into());
        assert_eq!(ChannelEnd::explain(ChannelEnd::ConnectionLost, Some(broken.clone())), broken);
        let missed = ChannelEnd::PingFailed("no answer".into());
        assert_eq!(ChannelEnd::explain(ChannelEnd::ConnectionClosed, Some(missed.clone())), missed);
        assert_eq!(ChannelEnd::explain(ChannelEnd::ConnectionLost, None), ChannelEnd::ConnectionLost);
        // What the sidecar decided itself stands.
        assert_eq!(ChannelEnd::explain(ChannelEnd::Replaced, Some(broken.clone())), ChannelEnd::Replaced);
        // A probe that failed because the app broke HTTP/2 says so.
        let probe = ChannelEnd::Unproven("Ping refused by the app: h2 protocol error".into());
        assert_eq!(ChannelEnd::explain(probe, Some(broken.clone())), broken);
        // And the first cause seen stands against a later one.
        assert_eq!(ChannelEnd::explain(missed.clone(), Some(broken)), missed);
    }
}
