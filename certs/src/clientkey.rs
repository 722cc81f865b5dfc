//! The key an app generates for the client certificate its sidecar issues
//! (docs/architecture.md, "The credential in TLS"): the private half never
//! leaves the app; the public half goes to the sidecar, which certifies it.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Identity;

/// The DER of a SubjectPublicKeyInfo for an ECDSA P-256 key, up to the key's
/// 65-byte uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// An ECDSA P-256 key pair for a client certificate.
pub struct ClientKey {
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey").finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A fresh key; `None` only if the system's random source fails.
    pub fn generate() -> Option<ClientKey> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).ok()?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).ok()?;
        let spki = [P256_SPKI_PREFIX.as_slice(), pair.public_key().as_ref()].concat();
        Some(ClientKey { pkcs8: pkcs8.as_ref().to_vec(), spki })
    }

    /// The public key, a DER SubjectPublicKeyInfo: what the sidecar certifies.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// The identity of `cert` (issued for this key) with this key.
    pub fn identity(&self, cert: Vec<u8>) -> Identity {
        Identity {
            cert_chain: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone())),
        }
    }
}
