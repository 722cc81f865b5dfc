//! Certificate chains with their private keys.

use std::fmt;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[cfg(feature = "mint")]
use crate::GenerateError;
use crate::files::{self, FileMode};
#[cfg(feature = "mint")]
use crate::files::{SERVER_CERT_FILE, SERVER_KEY_FILE};
#[cfg(feature = "mint")]
use crate::params::{SERVER_CN, generate_key, key_der, server_params};
use crate::{Fingerprint, LoadError, SaveError};

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    /// The certificates, end-entity first, then any intermediates or the issuing CA.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert_chain: self.cert_chain.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads a PEM chain and key; fails if either file is unreadable, malformed or empty, or
    /// the key is unsupported or does not belong to the leaf certificate.
    pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<Identity, LoadError> {
        let cert_chain = files::read_certs(cert_path)?;
        let key = files::read_key(key_path)?;
        key_fits(&cert_chain, &key, cert_path, key_path)?;
        Ok(Identity { cert_chain, key })
    }

    /// Writes the chain and key as PEM (key with mode 0600 on unix), creating parent
    /// directories; fails if the chain is empty, the key format is unknown, or a write fails.
    pub fn save_pem(&self, cert_path: &Path, key_path: &Path) -> Result<(), SaveError> {
        if self.cert_chain.is_empty() {
            return Err(SaveError::EmptyChain { path: cert_path.to_owned() });
        }
        let key_pem =
            files::key_pem(&self.key).ok_or_else(|| SaveError::UnsupportedKey { path: key_path.to_owned() })?;
        // Key first: a certificate on disk always has its key next to it.
        files::write_atomic(key_path, key_pem.as_bytes(), FileMode::Private)?;
        files::write_atomic(cert_path, files::certs_pem(&self.cert_chain).as_bytes(), FileMode::Public)
    }

    /// The fingerprint of the leaf certificate (of empty input if the chain is empty); never fails.
    pub fn fingerprint(&self) -> Fingerprint {
        match self.cert_chain.first() {
            Some(leaf) => Fingerprint::of(leaf),
            None => Fingerprint::of(&CertificateDer::from(&[][..])),
        }
    }

    /// A fresh self-signed server certificate (ECDSA P-256) for `server_names` (DNS names or
    /// IP literals; [`DEFAULT_SERVER_NAME`](crate::DEFAULT_SERVER_NAME) if empty); fails on
    /// an invalid name or if key generation or signing fails.
    #[cfg(feature = "mint")]
    pub fn self_signed(server_names: &[String]) -> Result<Identity, GenerateError> {
        let params = server_params(server_names)?;
        let key = generate_key()?;
        let cert =
            params.self_signed(&key).map_err(|source| GenerateError::Sign { subject: SERVER_CN.to_owned(), source })?;
        Ok(Identity { cert_chain: vec![cert.der().clone()], key: key_der(&key) })
    }

    /// Loads `state_dir/server.pem` and `server-key.pem`, or, when the certificate is absent,
    /// generates a self-signed identity for `server_names` and saves it there so restarts keep
    /// the same fingerprint; fails if loading, generating or saving fails, or if the
    /// certificate exists without its key.
    #[cfg(feature = "mint")]
    pub fn load_or_generate(state_dir: &Path, server_names: &[String]) -> Result<Identity, LoadError> {
        let cert_path = state_dir.join(SERVER_CERT_FILE);
        let key_path = state_dir.join(SERVER_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Identity::load_pem(&cert_path, &key_path),
            (true, false) => Err(LoadError::MissingKey { cert_path, key_path }),
            // A key without a certificate is left over from an interrupted save (the key is
            // written first) and was never served, so it is safe to replace.
            (false, _) => {
                let identity = Identity::self_signed(server_names)?;
                identity.save_pem(&cert_path, &key_path)?;
                Ok(identity)
            }
        }
    }
}

/// Checks that `key` belongs to the leaf of `chain` (read from the two
/// paths, named in the error).
pub(crate) fn key_fits(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), LoadError> {
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &rustls::crypto::ring::default_provider())
        .map(|_| ())
        .map_err(|source| LoadError::KeyMismatch {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            source,
        })
}

#[cfg(all(test, feature = "mint"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }

    #[test]
    fn pem_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::self_signed(&names()).unwrap();
        let (cert, key) = (dir.path().join("x/c.pem"), dir.path().join("x/k.pem"));
        id.save_pem(&cert, &key).unwrap();
        let back = Identity::load_pem(&cert, &key).unwrap();
        assert_eq!(back.cert_chain, id.cert_chain);
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        assert_eq!(back.fingerprint(), id.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn load_rejects_mismatched_key_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("c1.pem"), dir.path().join("k1.pem"));
        let (c2, k2) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
        Identity::self_signed(&names()).unwrap().save_pem(&c1, &k1).unwrap();
        Identity::self_signed(&names()).unwrap().save_pem(&c2, &k2).unwrap();
        assert!(matches!(Identity::load_pem(&c1, &k2), Err(LoadError::KeyMismatch { .. })));
        assert!(matches!(Identity::load_pem(&c1, &c2), Err(LoadError::NoPrivateKey { .. })));
        assert!(matches!(Identity::load_pem(&k1, &k1), Err(LoadError::NoCertificate { .. })));
        let missing = dir.path().join("nope.pem");
        assert!(matches!(
            Identity::load_pem(&missing, &k1),
            Err(LoadError::Read { path, .. }) if path == missing
        ));
    }

    #[test]
    fn load_or_generate_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = Identity::load_or_generate(&state, &names()).unwrap();
        assert!(state.join(SERVER_CERT_FILE).exists());
        let second = Identity::load_or_generate(&state, &names()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());

        std::fs::remove_file(state.join(SERVER_KEY_FILE)).unwrap();
        assert!(matches!(Identity::load_or_generate(&state, &names()), Err(LoadError::MissingKey { .. })));
    }

    #[test]
    fn rejects_invalid_server_name() {
        assert!(matches!(Identity::self_signed(&["bad name\u{e9}".into()]), Err(GenerateError::InvalidName { .. })));
    }
}
