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

/// `config` presenting `client` as its certificate: the same trust, ALPN and
/// kept sessions (a clone shares its session store); fails if the key is
/// unusable.
pub fn with_client_identity(config: &ClientConfig, client: &Identity) -> Result<ClientConfig, ConfigError> {
    let key = config
        .crypto_provider()
        .key_provider
        .load_private_key(client.key.clone_key())
        .map_err(ConfigError::ClientIdentity)?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(client.cert_chain.clone(), key));
    let mut config = config.clone();
    config.client_auth_cert_resolver = Arc::new(OneClientCert(certified));
    Ok(config)
}

/// Presents one certificate to any server that asks.
#[derive(Debug)]
struct OneClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OneClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // Only when the server can check the key's signature.
        self.0.key.choose_scheme(sigschemes).is_some().then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
