//! What the sidecar's authenticator sees of a hello and answers: the
//! [`Authenticator`] trait the listener calls, and its [`Grant`] or
//! [`Refusal`].

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;

use crate::{Hello, RefusalReason, Transport};

/// What the authenticator sees of a hello.
#[derive(Debug)]
pub struct HelloContext<'a> {
    /// The hello, already checked for version, app-id and a credential.
    pub hello: &'a Hello,
    /// The hello's credential, for the authenticator to check.
    pub credential: &'a crate::Credential,
    /// The transport it came over.
    pub transport: Transport,
    /// Where it came from.
    pub peer_addr: SocketAddr,
    /// The TLS client certificate, verified against the configured client
    /// CA, when one was presented.
    pub client_cert: Option<&'a CertificateDer<'static>>,
}

/// A refused hello: the reason code and text the app is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The machine-readable reason.
    pub reason: RefusalReason,
    /// The explanation for the app's logs.
    pub message: String,
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Refusal {
        Refusal { reason, message: message.into() }
    }
}

/// What an accepted hello is given back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// A credential for redialing without ConnectAppCallback (empty: none).
    pub reconnect_token: String,
    /// A client certificate for the app's later dials (none: not issued).
    pub client_credential: Option<ClientCredential>,
}

/// A client certificate the sidecar issues its app for the app's own key:
/// presented in later dials, it rides in the TLS sessions they resume, so
/// that the sidecar knows the app from its first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCredential {
    /// The certificate, DER.
    pub cert: Vec<u8>,
    /// When the certificate expires, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

impl ClientCredential {
    /// The certificate a verdict carries, if any.
    pub fn from_verdict(v: &crate::Verdict) -> Option<ClientCredential> {
        Self::carried(&v.client_certificate, v.client_certificate_expires_unix_ms)
    }

    /// The certificate a ConnectAppCallback answer carries, if any.
    pub fn from_answer(a: &dialback_proto::runtime::ConnectAppCallbackResponse) -> Option<ClientCredential> {
        Self::carried(&a.client_certificate, a.client_certificate_expires_unix_ms)
    }

    /// A message's certificate field and its expiry; none when the field is empty.
    fn carried(cert: &[u8], expires_unix_ms: u64) -> Option<ClientCredential> {
        (!cert.is_empty()).then(|| ClientCredential { cert: cert.to_vec(), expires_unix_ms })
    }

    /// Whether it is still good `margin` from `now` (milliseconds since the Unix epoch).
    pub fn usable_at(&self, now_unix_ms: u64, margin_ms: u64) -> bool {
        now_unix_ms.saturating_add(margin_ms) < self.expires_unix_ms
    }
}

/// Decides whether a hello's credential proves its app-id.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok` accepts the channel; `Err` refuses it with the given reason.
    fn authenticate(&self, ctx: &HelloContext<'_>) -> Result<Grant, Refusal>;

    /// Whether a client certificate that a resumed TLS session names (a
    /// certificate this sidecar verified in an earlier full handshake)
    /// proves the app, so that calls may be sent before its hello (see
    /// [`crate::EarlyChannel`]). None does by default.
    fn names_app(&self, _cert: &CertificateDer<'static>) -> bool {
        false
    }

    /// Called instead of [`Authenticator::authenticate`] for a hello refused
    /// before its credential was looked at (wrong ALPN, version or app-id
    /// shape): spend whatever single-use credential it carries.
    fn discard(&self, _hello: &Hello) {}
}
