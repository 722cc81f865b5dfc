//! Identities and TLS configuration for dialback.
//!
//! An app dials its sidecar over QUIC or TCP+TLS (TLS 1.3 only, ALPN [`ALPN`]) and the
//! sidecar then calls the app with gRPC in reverse. This crate provides what both ends need
//! for that connection:
//!
//! - [`Identity`]: a certificate chain and key, loaded from or saved to PEM files, or
//!   generated ([`Identity::self_signed`], [`Identity::load_or_generate`]);
//! - [`DevCa`] and [`write_dev_set`]: a development PKI minted with rcgen, with client
//!   certificates naming an app id the way Dapr does (SPIFFE URI SAN), read back with
//!   [`app_id_of`];
//! - [`Fingerprint`] and [`PinnedServerVerifier`]: SHA-256 certificate pinning;
//! - [`server_config`] and [`client_config`]: rustls configurations using the ring provider.
//!
//! Minting (self-signed identities, the dev PKI, [`app_id_of`]) is the `mint` feature, on by
//! default: it brings rcgen and x509-parser, which an app that only loads and pins does not need.

#[cfg(feature = "mint")]
mod appid;
mod clientkey;
mod error;
mod files;
mod fingerprint;
mod identity;
#[cfg(feature = "mint")]
mod params;
#[cfg(feature = "mint")]
mod pki;
mod tickets;
mod tls;
mod verify;

#[cfg(feature = "mint")]
pub use appid::{app_id_of, spiffe_id};
pub use clientkey::ClientKey;
pub use error::{ConfigError, FingerprintError, LoadError, PinMismatchError, SaveError};
#[cfg(feature = "mint")]
pub use error::{DevSetError, GenerateError};
pub use files::{FileMode, load_roots, write_atomic};
pub use fingerprint::Fingerprint;
pub use identity::Identity;
#[cfg(feature = "mint")]
pub use pki::{DevCa, write_dev_set};
pub use rustls::RootCertStore;
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tickets::{SealedTickets, TICKET_EPOCH_SECS};
pub use tls::{ClientCertSlot, ServerTrust, client_config, crypto_provider, server_config};
pub use verify::PinnedServerVerifier;

/// The ALPN protocol id both ends of a dialback connection negotiate.
pub const ALPN: &[u8] = b"dialback/1";

/// The ALPN protocol id of dialback over QUIC with a stream per call:
/// [`ALPN`], plus the sidecar may open further bidirectional streams, each
/// an HTTP/2 connection of its own (see docs/architecture.md). Offered
/// before [`ALPN`] on QUIC; TCP+TLS keeps [`ALPN`].
pub const ALPN_STREAMS: &[u8] = b"dialback/2";

/// Server name used when the app dials by IP and pins by fingerprint.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// The names a generated server certificate carries at least: [`DEFAULT_SERVER_NAME`] and
/// both loopback addresses, so an app on the same host can dial by name or IP.
pub fn default_server_names() -> Vec<String> {
    vec![DEFAULT_SERVER_NAME.to_string(), "127.0.0.1".to_string(), "::1".to_string()]
}
