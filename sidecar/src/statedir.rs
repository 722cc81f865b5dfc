//! The state directory: what must survive a restart (the generated
//! identity, the QUIC stateless-reset key, the reconnect-token key, the
//! TLS ticket key, the CA of the app's client certificates, the QUIC apps
//! of the last run).
//!
//! The parsers here read files anyone with access to the directory may have
//! written: they never panic, bound what they read and keep, and treat
//! anything they do not understand as absent.

use std::path::{Path, PathBuf};

use dialback_certs::{FileMode, SaveError};

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
    secret(dir, "quic-reset-key")
}

/// The key that seals reconnect tokens, generated once and kept, so that a
/// restarted sidecar accepts the tokens of its previous life (see
/// `crate::reconnect`). Deleting the file revokes them all.
pub fn reconnect_key(dir: &Path) -> Result<[u8; 32], StartError> {
    secret(dir, "reconnect-key")
}

/// The secret that seals TLS session tickets, generated once and kept, so
/// that a restarted sidecar resumes the sessions of its previous life
/// (`dialback_certs::SealedTickets`). Deleting the file ends them all.
pub fn ticket_key(dir: &Path) -> Result<[u8; 32], StartError> {
    secret(dir, "tls-ticket-key")
}

/// The 32-byte secret in `dir/name`, made (private to the owner) when
/// missing or of the wrong size.
fn secret(dir: &Path, name: &str) -> Result<[u8; 32], StartError> {
    use std::io::Read;
    let path = dir.join(name);
    let err = |source| StartError::StateDir { path: path.clone(), source };
    // Read one byte more than a key, so that a longer file is seen as wrong.
    let read = std::fs::File::open(&path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(33).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    match read {
        Ok(bytes) => match parse_reset_key(&bytes) {
            Some(key) => return Ok(key),
            None => tracing::warn!(path = %path.display(), "key file has the wrong size; making a new one"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    dialback_certs::write_atomic(&path, &key, FileMode::Private).map_err(StartError::StateFile)?;
    Ok(key)
}

/// A reset key file's content: exactly 32 bytes, else `None`.
pub fn parse_reset_key(bytes: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).ok()
}

/// The file naming the QUIC apps of this run and the connection IDs issued.
const PEERS_FILE: &str = "quic-peers";

/// The most of the peers file that is read: what the sidecar writes is a
/// few kilobytes (8 peers, 256 connection IDs).
pub const MAX_PEERS_FILE: u64 = 64 * 1024;
/// Peers kept from the file at most.
pub const MAX_PEERS: usize = 8;
/// Connection IDs kept from the file at most.
pub const MAX_CIDS: usize = 256;

/// Reads what a previous run left: its QUIC apps' addresses and the
/// connection IDs it issued. Anything unreadable counts as nothing.
pub fn load_peers(dir: &Path) -> (Vec<std::net::SocketAddr>, Vec<Vec<u8>>) {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(f) = std::fs::File::open(dir.join(PEERS_FILE)) {
        let _ = f.take(MAX_PEERS_FILE).read_to_end(&mut bytes);
    }
    parse_peers(&String::from_utf8_lossy(&bytes))
}

/// Parses the peers file: `peer ADDR` and `cid HEX` lines (at most
/// [`MAX_PEERS`] and [`MAX_CIDS`] of them, connection IDs of 20 bytes at
/// most); any other line is skipped.
pub fn parse_peers(text: &str) -> (Vec<std::net::SocketAddr>, Vec<Vec<u8>>) {
    let (mut peers, mut cids) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if peers.len() >= MAX_PEERS && cids.len() >= MAX_CIDS {
            break;
        }
        match line.split_once(' ') {
            Some(("peer", _)) if peers.len() >= MAX_PEERS => {}
            Some(("cid", _)) if cids.len() >= MAX_CIDS => {}
            Some(("peer", a)) => peers.extend(a.parse::<std::net::SocketAddr>().ok()),
            Some(("cid", h)) if h.len() <= 40 => cids.extend(crate::hex::decode(h)),
            _ => {}
        }
    }
    (peers, cids)
}

/// The file content for `peers` and `cids`.
pub fn format_peers(peers: &[std::net::SocketAddr], cids: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for p in peers {
        out.push_str(&format!("peer {p}\n"));
    }
    for c in cids {
        out.push_str(&format!("cid {}\n", crate::hex::encode(c)));
    }
    out
}

/// Replaces the peers file with `content` (atomically); fails on I/O errors.
pub fn save_peers(dir: &Path, content: &str) -> Result<(), SaveError> {
    dialback_certs::write_atomic(&dir.join(PEERS_FILE), content.as_bytes(), FileMode::Public)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_and_garbage_is_ignored() {
        let peers = vec!["127.0.0.1:5000".parse().unwrap(), "[::1]:6000".parse().unwrap()];
        let cids = vec![vec![1, 2, 3, 255], vec![0; 8]];
        let text = format_peers(&peers, &cids);
        assert_eq!(parse_peers(&text), (peers, cids));
        assert_eq!(parse_peers("peer nonsense\ncid zz\ncid 123\nbogus\n"), (vec![], vec![]));
    }

    #[test]
    fn keys_persist_and_differ() {
        let d = tempfile::tempdir().unwrap();
        let a = reset_key(d.path()).unwrap();
        let b = reset_key(d.path()).unwrap();
        assert_eq!(a, b);
        let r = reconnect_key(d.path()).unwrap();
        assert_eq!(r, reconnect_key(d.path()).unwrap());
        assert_ne!(a, r, "one key per purpose");
        // A file of the wrong size is replaced, not trusted.
        std::fs::write(d.path().join("reconnect-key"), b"short").unwrap();
        assert_ne!(reconnect_key(d.path()).unwrap(), r);
    }
}
