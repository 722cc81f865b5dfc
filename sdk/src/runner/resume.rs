//! The app's TLS client key, the certificate its sidecar issues for it,
//! and the TLS sessions kept to resume (docs/architecture.md, "The
//! credential in TLS"): a redial to the same sidecar, restarted or not,
//! resumes a session that names the app from its ClientHello.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dialback_certs::ClientKey;
use dialback_channel::ClientCredential;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};

use crate::error::Error;

/// Sessions kept per sidecar: a few suffice (rustls keeps tickets per server name).
const SESSIONS: usize = 8;

/// Not presented within this long of its expiry: a full handshake with an
/// expired certificate would be refused.
const MARGIN_MS: u64 = 60 * 60 * 1000;

/// The key, its certificate and the sessions, for one sidecar at a time.
pub(super) struct Resume {
    /// None when the app presents a certificate of its own.
    key: Option<ClientKey>,
    /// The sidecar (its certificate's SHA-256; empty: not pinned) the rest is for.
    sidecar: Vec<u8>,
    cert: Option<ClientCredential>,
    sessions: Arc<dyn ClientSessionStore>,
}

impl Resume {
    /// A fresh key, unless the app has a certificate of its own (`own_cert`).
    pub(super) fn new(own_cert: bool) -> Resume {
        let key = if own_cert { None } else { ClientKey::generate() };
        Resume { key, sidecar: Vec::new(), cert: None, sessions: Arc::new(ClientSessionMemoryCache::new(SESSIONS)) }
    }

    /// The public key to have certified (empty: none).
    pub(super) fn public_key(&self) -> Vec<u8> {
        self.key.as_ref().map(|k| k.public_key_der().to_vec()).unwrap_or_default()
    }

    /// The sidecar the next dial goes to: another one than before forgets
    /// the certificate and sessions of the last.
    pub(super) fn for_sidecar(&mut self, fingerprint: &[u8]) {
        if self.sidecar != fingerprint {
            self.sidecar = fingerprint.to_vec();
            self.cert = None;
            self.sessions = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
        }
    }

    /// Takes a certificate from an answer or a verdict; true when it is new.
    pub(super) fn learn(&mut self, cert: Option<ClientCredential>) -> bool {
        match cert {
            Some(c) if self.key.is_some() && self.cert.as_ref() != Some(&c) => {
                self.cert = Some(c);
                true
            }
            _ => false,
        }
    }

    /// `tls` with the certificate (while it is good) and the kept sessions.
    pub(super) fn apply(&self, tls: &rustls::ClientConfig) -> Result<rustls::ClientConfig, Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let now = u64::try_from(now).unwrap_or(u64::MAX);
        let mut tls = match (&self.key, self.cert.as_ref().filter(|c| c.usable_at(now, MARGIN_MS))) {
            (Some(key), Some(cert)) => dialback_certs::with_client_identity(tls, &key.identity(cert.cert.clone()))
                .map_err(|e| Error::Tls(e.to_string()))?,
            _ => tls.clone(),
        };
        tls.resumption = Resumption::store(self.sessions.clone());
        Ok(tls)
    }
}
