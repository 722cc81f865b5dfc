//! rustls configurations for both ends of a dialback connection.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{ALPN, ConfigError, Fingerprint, Identity, PinnedServerVerifier};

/// How the app trusts the sidecar.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Verify the server's chain and name against these roots (e.g. a [`DevCa`](crate::DevCa)).
    Roots(Arc<RootCertStore>),
    /// Accept exactly the end-entity certificate with this fingerprint.
    Pinned(Fingerprint),
}

/// The ring crypto provider every config in this crate uses (never a process default);
/// never fails.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server config: TLS 1.3 only, ring provider, ALPN [`ALPN`]. With `client_roots` =
/// Some, client certificates are verified against them but optional (so token-only apps still
/// connect); with None, no client auth. Fails if the roots are empty or the identity unusable.
pub fn server_config(
    identity: &Identity,
    client_roots: Option<Arc<RootCertStore>>,
) -> Result<ServerConfig, ConfigError> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Protocol)?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots, provider).allow_unauthenticated().build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(ConfigError::ServerIdentity)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// rustls client config: TLS 1.3 only, ring provider, ALPN [`ALPN`]; trust per `trust`;
/// optional client identity for mTLS. Fails if the client identity is unusable.
pub fn client_config(trust: &ServerTrust, client: Option<&Identity>) -> Result<ClientConfig, ConfigError> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Protocol)?;
    let builder = match trust {
        ServerTrust::Roots(roots) => builder.with_root_certificates(roots.clone()),
        ServerTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::with_provider(*pin, &provider))),
    };
    let mut config = match client {
        Some(id) => builder
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .map_err(ConfigError::ClientIdentity)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A client certificate that can be replaced while the config that
/// presents it stays the same: rustls resumes a session only with the
/// config objects (verifier, certificate resolver) it was made with, so a
/// renewed certificate must not mean a new resolver.
#[derive(Debug, Default)]
pub struct ClientCertSlot(std::sync::RwLock<Option<Arc<rustls::sign::CertifiedKey>>>);

impl ClientCertSlot {
    /// `config` presenting what this slot holds (nothing until [`ClientCertSlot::set`]).
    pub fn install(self: &Arc<Self>, config: &mut ClientConfig) {
        config.client_auth_cert_resolver = self.clone();
    }

    /// Presents `client` from now on; fails (keeping what was there) if its key is unusable.
    pub fn set(&self, client: &Identity) -> Result<(), ConfigError> {
        let key = crypto_provider()
            .key_provider
            .load_private_key(client.key.clone_key())
            .map_err(ConfigError::ClientIdentity)?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(client.cert_chain.clone(), key));
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(certified);
        }
        Ok(())
    }

    /// Presents nothing from now on.
    pub fn clear(&self) {
        if let Ok(mut slot) = self.0.write() {
            *slot = None;
        }
    }
}

impl rustls::client::ResolvesClientCert for ClientCertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let held = self.0.read().ok()?.clone()?;
        // Only when the server can check the key's signature.
        held.key.choose_scheme(sigschemes).is_some().then_some(held)
    }

    fn has_certs(&self) -> bool {
        self.0.read().is_ok_and(|s| s.is_some())
    }
}
