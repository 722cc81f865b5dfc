//! Server certificate pinning.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::{Fingerprint, PinMismatchError};

/// A ServerCertVerifier accepting exactly the end-entity whose SHA-256 is the pin (name and
/// expiry not checked: the pin is the identity), but still verifying the handshake signature
/// with the ring provider's algorithms.
///
/// A mismatch fails the handshake with `CertificateError::Other` wrapping a
/// [`PinMismatchError`].
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    /// A verifier for `pin` using the ring provider's signature algorithms; never fails.
    pub fn new(pin: Fingerprint) -> Self {
        Self::with_provider(pin, &rustls::crypto::ring::default_provider())
    }

    /// A verifier for `pin` using `provider`'s signature algorithms; never fails.
    pub fn with_provider(pin: Fingerprint, provider: &CryptoProvider) -> Self {
        PinnedServerVerifier { pin, algorithms: provider.signature_verification_algorithms }
    }

    /// The pinned fingerprint; never fails.
    pub fn pin(&self) -> Fingerprint {
        self.pin
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of(end_entity);
        if actual == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinMismatchError {
                expected: self.pin,
                actual,
            })))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
