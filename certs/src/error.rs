//! Error types, one per kind of operation.

use std::io;
use std::path::PathBuf;

use crate::Fingerprint;

/// Failure to parse a [`Fingerprint`](crate::Fingerprint).
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    /// The text holds a character that is neither a hex digit nor a `:` separator.
    #[error("invalid character {ch:?} at offset {offset} in fingerprint")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        offset: usize,
    },
    /// The text holds an odd number of hex digits.
    #[error("fingerprint has an odd number of hex digits ({digits})")]
    OddDigits {
        /// How many hex digits the input had.
        digits: usize,
    },
    /// The decoded value is not 32 bytes long (a SHA-256 digest).
    #[error("fingerprint must be 32 bytes (SHA-256), got {len}")]
    WrongLength {
        /// How many bytes were given.
        len: usize,
    },
}

/// Failure to load certificates or keys from PEM files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("parsing PEM in {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("no private key in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is unsupported or does not belong to the certificate.
    #[error("key {} does not fit certificate {}: {source}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// A certificate or key cannot be used as a certificate authority by rcgen.
    #[cfg(feature = "mint")]
    #[error("using {} as a CA: {source}", path.display())]
    Ca {
        /// The certificate or key file.
        path: PathBuf,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// A CA certificate file holds a certificate without the CA basic constraint.
    #[error("{} is not a CA certificate", path.display())]
    NotCa {
        /// The file.
        path: PathBuf,
    },
    /// A certificate cannot be used as a trust anchor.
    #[error("using a certificate in {} as a trust anchor: {source}", path.display())]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The state directory has a certificate but its key is missing; refusing to replace it.
    #[error("{} exists but its key {} is missing", cert_path.display(), key_path.display())]
    MissingKey {
        /// The certificate file.
        cert_path: PathBuf,
        /// The missing key file.
        key_path: PathBuf,
    },
    /// Generating a replacement identity failed.
    #[cfg(feature = "mint")]
    #[error("generating identity: {0}")]
    Generate(#[from] GenerateError),
    /// Saving a generated identity failed.
    #[error("saving generated identity: {0}")]
    Save(#[from] SaveError),
}

/// Failure to write certificates or keys to PEM files.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A parent directory could not be created.
    #[error("creating directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate chain is empty, so there is nothing to save.
    #[error("refusing to write {}: the certificate chain is empty", path.display())]
    EmptyChain {
        /// The certificate file that would have been written.
        path: PathBuf,
    },
    /// The private key is in a format this crate cannot write as PEM.
    #[error("the private key for {} is in an unsupported format", path.display())]
    UnsupportedKey {
        /// The key file that would have been written.
        path: PathBuf,
    },
}

/// Failure to generate keys or certificates.
#[cfg(feature = "mint")]
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Generating a key pair failed.
    #[error("generating key pair: {0}")]
    KeyPair(#[source] rcgen::Error),
    /// A server name is neither an IP literal nor a valid DNS name.
    #[error("invalid server name {name:?}: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// An app id cannot be used as the last segment of a SPIFFE id.
    #[error("invalid app id {app_id:?}: {reason}")]
    InvalidAppId {
        /// The app id.
        app_id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Signing a certificate failed.
    #[error("signing certificate for {subject}: {source}")]
    Sign {
        /// Who the certificate was for.
        subject: String,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// A public key to certify is not a SubjectPublicKeyInfo rcgen can use.
    #[error("the public key to certify: {0}")]
    PublicKey(#[source] rcgen::Error),
    /// The generated CA certificate cannot be used as a trust anchor.
    #[error("using the generated CA as a trust anchor: {0}")]
    TrustAnchor(#[source] rustls::Error),
}

/// Failure of [`write_dev_set`](crate::write_dev_set).
#[cfg(feature = "mint")]
#[derive(Debug, thiserror::Error)]
pub enum DevSetError {
    /// A file already exists and overwriting was not requested; nothing was written.
    #[error("{} already exists (pass overwrite to replace it)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Generating the CA or a certificate failed; nothing was written.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Writing a file failed.
    #[error(transparent)]
    Save(#[from] SaveError),
}

/// Failure to build a rustls configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The crypto provider does not support TLS 1.3.
    #[error("selecting TLS 1.3: {0}")]
    Protocol(#[source] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. empty root store).
    #[error("building client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The server identity is unusable (empty chain, unsupported or mismatched key).
    #[error("server identity: {0}")]
    ServerIdentity(#[source] rustls::Error),
    /// The client identity is unusable (empty chain, unsupported or mismatched key).
    #[error("client identity: {0}")]
    ClientIdentity(#[source] rustls::Error),
}

/// The server presented a certificate other than the pinned one; carried inside
/// `rustls::CertificateError::Other` by [`PinnedServerVerifier`](crate::PinnedServerVerifier).
#[derive(Debug, Clone, thiserror::Error)]
#[error("server certificate fingerprint {actual} does not match pin {expected}")]
pub struct PinMismatchError {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// The fingerprint of the certificate the server presented.
    pub actual: Fingerprint,
}
