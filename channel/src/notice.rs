//! The contract between the sidecar and the SDK above HTTP/2, in one place
//! so that the two ends cannot drift apart: the metadata keys on the
//! `DaprAppChannelCallback/Ping` call, the words of the in-band close
//! notice, and the names of credential kinds shown in `/v1.0/metadata`.

use std::fmt;

use crate::Credential;

/// Metadata key on the regular Ping call: the sidecar's ping interval in milliseconds.
pub const PING_INTERVAL_KEY: &str = "dialback-ping-interval-ms";
/// Metadata key on a Ping call that tells the app its channel is closing, and why.
pub const CLOSE_NOTICE_KEY: &str = "dialback-close";
/// Metadata key on the Ping call that proves a new channel before the
/// sidecar installs it; the regular Ping stream follows once it is.
pub const PROBE_KEY: &str = "dialback-probe";

/// Why the sidecar is closing a channel, told to the app in-band (TCP has
/// no close codes) as the value of [`CLOSE_NOTICE_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseNotice {
    /// Another instance of the app took the channel: stand by, do not redial at once.
    Replaced,
    /// The sidecar is shutting down: redial per the backoff.
    ShuttingDown,
}

impl CloseNotice {
    /// The words on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseNotice::Replaced => "replaced",
            CloseNotice::ShuttingDown => "shutting-down",
        }
    }

    /// The notice named by `s`; `None` for words this version does not know.
    pub fn parse(s: &str) -> Option<CloseNotice> {
        [CloseNotice::Replaced, CloseNotice::ShuttingDown].into_iter().find(|n| n.as_str() == s)
    }
}

impl fmt::Display for CloseNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an app proved itself in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A one-time token from ConnectAppCallback.
    OneTimeToken,
    /// The reconnect token from the previous channel's verdict.
    ReconnectToken,
    /// The sidecar's API token.
    ApiToken,
    /// An mTLS client certificate naming the app-id.
    ClientCertificate,
}

impl CredentialKind {
    /// Every kind, in the order the proto defines them.
    pub const ALL: [CredentialKind; 4] = [
        CredentialKind::OneTimeToken,
        CredentialKind::ReconnectToken,
        CredentialKind::ApiToken,
        CredentialKind::ClientCertificate,
    ];

    /// The kind of `credential`.
    pub fn of(credential: &Credential) -> CredentialKind {
        match credential {
            Credential::OneTimeToken(_) => CredentialKind::OneTimeToken,
            Credential::ReconnectToken(_) => CredentialKind::ReconnectToken,
            Credential::ApiToken(_) => CredentialKind::ApiToken,
            Credential::ClientCertificate(_) => CredentialKind::ClientCertificate,
        }
    }

    /// The name used in logs and metadata, e.g. `one-time-token`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OneTimeToken => "one-time-token",
            CredentialKind::ReconnectToken => "reconnect-token",
            CredentialKind::ApiToken => "api-token",
            CredentialKind::ClientCertificate => "client-certificate",
        }
    }

    /// The kind named by `s`.
    pub fn parse(s: &str) -> Option<CredentialKind> {
        CredentialKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_notices_round_trip_and_keep_their_words() {
        for n in [CloseNotice::Replaced, CloseNotice::ShuttingDown] {
            assert_eq!(CloseNotice::parse(n.as_str()), Some(n));
        }
        // The words are on the wire: older peers compare them.
        assert_eq!(CloseNotice::Replaced.as_str(), "replaced");
        assert_eq!(CloseNotice::ShuttingDown.as_str(), "shutting-down");
        assert_eq!(CloseNotice::parse("Replaced"), None);
        assert_eq!(CloseNotice::parse(""), None);
    }

    #[test]
    fn credential_kinds_round_trip_and_keep_their_names() {
        let names: Vec<_> = CredentialKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["one-time-token", "reconnect-token", "api-token", "client-certificate"]);
        for k in CredentialKind::ALL {
            assert_eq!(CredentialKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(CredentialKind::of(&Credential::ApiToken("t".into())), CredentialKind::ApiToken);
        assert_eq!(CredentialKind::of(&Credential::ClientCertificate(true)), CredentialKind::ClientCertificate);
    }

    #[test]
    fn keys_are_valid_lowercase_grpc_metadata_names() {
        for k in [PING_INTERVAL_KEY, CLOSE_NOTICE_KEY, PROBE_KEY] {
            assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{k}");
            assert!(!k.ends_with("-bin"), "{k} carries text, not binary");
        }
    }
}
