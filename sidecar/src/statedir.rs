//! The state directory: what must survive a restart (the generated
//! identity, the QUIC stateless-reset key).

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::StartError;

/// Creates the state dir if needed; fails when it cannot be created.
pub fn ensure(dir: &Path) -> Result<PathBuf, StartError> {
    std::fs::create_dir_all(dir).map_err(|source| StartError::StateDir { path: dir.to_path_buf(), source })?;
    Ok(dir.to_path_buf())
}

/// The QUIC stateless-reset key, generated once and kept, so that a
/// restarted sidecar can reset connections of its previous life at once.
pub fn reset_key(dir: &Path) -> Result<[u8; 32], StartError> {
    let path = dir.join("quic-reset-key");
    let err = |source| StartError::StateDir { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        Ok(_) => tracing::warn!(path = %path.display(), "reset key has the wrong size; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let tmp = dir.join("quic-reset-key.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(&key).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reset_key_persists() {
        let d = tempfile::tempdir().unwrap();
        let a = reset_key(d.path()).unwrap();
        let b = reset_key(d.path()).unwrap();
        assert_eq!(a, b);
    }
}
