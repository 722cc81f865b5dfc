//! Reading and writing PEM files.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{LoadError, SaveError};

/// File name of the server certificate chain in a state directory.
#[cfg(feature = "mint")]
pub(crate) const SERVER_CERT_FILE: &str = "server.pem";
/// File name of the server private key in a state directory.
#[cfg(feature = "mint")]
pub(crate) const SERVER_KEY_FILE: &str = "server-key.pem";

/// Loads every certificate in the PEM file at `ca_path` as a trust anchor; fails if the file
/// cannot be read or parsed, holds no certificate, or holds one unusable as an anchor.
pub fn load_roots(ca_path: &Path) -> Result<RootCertStore, LoadError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_path)? {
        roots.add(cert).map_err(|source| LoadError::TrustAnchor { path: ca_path.to_owned(), source })?;
    }
    Ok(roots)
}

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    fs::read(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })
}

/// Reads every certificate in a PEM file, in order; fails if there is none.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LoadError::Pem { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(LoadError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        PemError::NoItemsFound => LoadError::NoPrivateKey { path: path.to_owned() },
        source => LoadError::Pem { path: path.to_owned(), source },
    })
}

/// PEM text for a certificate chain, leaf first.
pub(crate) fn certs_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| encode("CERTIFICATE", c.as_ref())).collect()
}

/// PEM text for a private key; `None` for a key format this crate does not know.
pub(crate) fn key_pem(key: &PrivateKeyDer<'_>) -> Option<String> {
    let tag = match key {
        PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => return None,
    };
    Some(encode(tag, key.secret_der()))
}

fn encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// Whether a file should be readable by its owner only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// Default permissions (certificates).
    Public,
    /// Mode 0600 on unix (private keys).
    Private,
}

/// Writes `contents` to `path`, creating parent directories; the file is written next to
/// its destination (with `mode` from the start), synced and renamed into place, so readers
/// never see half a file. Fails when a directory or the file cannot be written.
pub fn write_atomic(path: &Path, contents: &[u8], mode: FileMode) -> Result<(), SaveError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| SaveError::CreateDir { path: dir.to_owned(), source })?;
    }
    let tmp = temp_path(path);
    let result = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| SaveError::Write { path: path.to_owned(), source })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_new(path: &Path, bytes: &[u8], mode: FileMode) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if mode == FileMode::Private {
            opts.mode(0o600);
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn load_roots_rejects_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(load_roots(&missing), Err(LoadError::Read { path, .. }) if path == missing));
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        assert!(matches!(load_roots(&empty), Err(LoadError::NoCertificate { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomic(&path, b"secret", FileMode::Private).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        write_atomic(&path, b"secret2", FileMode::Private).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "secret2");
    }
}
