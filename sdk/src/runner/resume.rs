//! The app's TLS client key, the certificate its sidecar issues for it,
//! and the TLS sessions kept to resume (docs/architecture.md, "The
//! credential in TLS"): a redial to the same sidecar, restarted or not,
//! resumes a session that names the app from its ClientHello.
//!
//! rustls resumes a session only with the very config objects that made it
//! (its certificate verifier and client certificate resolver, compared by
//! pointer), so one TLS config is kept per sidecar and a renewed
//! certificate goes into its [`ClientCertSlot`], never into a new config.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dialback_certs::{ClientCertSlot, ClientKey};
use dialback_channel::ClientCredential;
use rustls::ClientConfig;
use rustls::client::{ClientSessionMemoryCache, Resumption};

use crate::error::Error;

/// Sidecars whose sessions one store keeps (rustls keeps tickets per server name).
const SESSIONS: usize = 8;

/// Not presented within this long of its expiry: a full handshake with an
/// expired certificate would be refused.
const MARGIN_MS: u64 = 60 * 60 * 1000;

/// The key, its certificate and the TLS config, for one sidecar at a time.
pub(super) struct Resume {
    /// None when the app presents a certificate of its own.
    key: Option<ClientKey>,
    cert: Option<ClientCredential>,
    slot: Arc<ClientCertSlot>,
    /// The sidecar (its certificate's SHA-256, empty when not pinned, and
    /// the TLS server name) and the config kept for it.
    config: Option<(Vec<u8>, String, Arc<ClientConfig>)>,
}

impl Resume {
    /// A fresh key, unless the app has a certificate of its own (`own_cert`).
    pub(super) fn new(own_cert: bool) -> Resume {
        let key = if own_cert { None } else { ClientKey::generate() };
        Resume { key, cert: None, slot: Arc::default(), config: None }
    }

    /// The public key to have certified (empty: none).
    pub(super) fn public_key(&self) -> Vec<u8> {
        self.key.as_ref().map(|k| k.public_key_der().to_vec()).unwrap_or_default()
    }

    /// The TLS config for the sidecar `fingerprint` at `server_name`: the
    /// one kept for it, else `make`'s, presenting the slot's certificate,
    /// with a session store of its own (another sidecar than before also
    /// forgets the certificate the last one issued).
    pub(super) fn config(
        &mut self,
        fingerprint: &[u8],
        server_name: &str,
        make: impl FnOnce() -> Result<ClientConfig, Error>,
    ) -> Result<Arc<ClientConfig>, Error> {
        if let Some((f, n, c)) = &self.config
            && f == fingerprint
            && n == server_name
        {
            return Ok(c.clone());
        }
        let mut tls = make()?;
        if self.key.is_some() {
            self.slot.install(&mut tls);
        }
        tls.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        if self.config.is_some() {
            self.cert = None;
            self.slot.clear();
        }
        let tls = Arc::new(tls);
        self.config = Some((fingerprint.to_vec(), server_name.to_string(), tls.clone()));
        Ok(tls)
    }

    /// Takes a certificate from an answer or a verdict, to present from the next dial.
    pub(super) fn learn(&mut self, cert: Option<ClientCredential>) {
        let (Some(key), Some(cert)) = (&self.key, cert) else { return };
        if self.cert.as_ref() == Some(&cert) {
            return;
        }
        match self.slot.set(&key.identity(cert.cert.clone())) {
            Ok(()) => self.cert = Some(cert),
            Err(e) => tracing::debug!(error = %e, "cannot present the certificate the sidecar issued"),
        }
    }

    /// Stops presenting a certificate about to expire (before a dial).
    pub(super) fn refresh(&mut self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let now = u64::try_from(now).unwrap_or(u64::MAX);
        if self.cert.as_ref().is_some_and(|c| !c.usable_at(now, MARGIN_MS)) {
            self.cert = None;
            self.slot.clear();
        }
    }
}
