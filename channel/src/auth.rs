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
}

/// Decides whether a hello's credential proves its app-id.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok` accepts the channel; `Err` refuses it with the given reason.
    fn authenticate(&self, ctx: &HelloContext<'_>) -> Result<Grant, Refusal>;

    /// Called instead of [`Authenticator::authenticate`] for a hello refused
    /// before its credential was looked at (wrong ALPN, version or app-id
    /// shape): spend whatever single-use credential it carries.
    fn discard(&self, _hello: &Hello) {}
}
