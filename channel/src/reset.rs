//! Telling a restarted sidecar's apps at once that their QUIC connection is
//! gone.
//!
//! A stateless reset normally goes out only in answer to a packet, so an
//! idle app would learn of a sidecar restart at its next keepalive. The
//! listener therefore records the connection IDs it hands out
//! ([`CidLog`]); the sidecar persists them with its apps' addresses, and a
//! restarted listener sends each of those addresses a stateless reset for
//! each recorded ID (RFC 9000 §10.3) before it starts. The reset token is
//! HMAC-SHA256(reset key, connection ID), truncated to 16 bytes, exactly
//! as quinn computes it, so the persisted reset key makes them valid.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use rand::RngCore;

/// How many recently issued connection IDs are remembered.
pub const CID_LOG_LEN: usize = 256;

/// How many previous app addresses a restarted listener resets at most.
pub const MAX_RESET_PEERS: usize = 8;

/// The connection IDs the listener issued, newest last.
#[derive(Debug, Default)]
pub struct CidLog {
    ring: Mutex<VecDeque<Vec<u8>>>,
}

impl CidLog {
    fn push(&self, cid: &[u8]) {
        if let Ok(mut r) = self.ring.lock() {
            if r.len() == CID_LOG_LEN {
                r.pop_front();
            }
            r.push_back(cid.to_vec());
        }
    }

    /// A copy of the recorded IDs, oldest first.
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.ring.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
}

/// quinn's hashed CID generator, keyed from the persisted reset key, that
/// also records what it issues.
pub(crate) struct RecordingCids {
    inner: quinn_proto::HashedConnectionIdGenerator,
    log: Arc<CidLog>,
}

impl RecordingCids {
    pub(crate) fn new(key: u64, log: Arc<CidLog>) -> RecordingCids {
        RecordingCids { inner: quinn_proto::HashedConnectionIdGenerator::from_key(key), log }
    }
}

impl quinn_proto::ConnectionIdGenerator for RecordingCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        let cid = self.inner.generate_cid();
        self.log.push(&cid);
        cid
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        self.inner.validate(cid)
    }

    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        self.inner.cid_lifetime()
    }
}

/// A stateless reset for `cid` under `reset_key`: a short-header-looking
/// packet of random bytes ending in the 16-byte token.
pub fn stateless_reset(reset_key: &[u8; 32], cid: &[u8]) -> Vec<u8> {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key), cid);
    let mut packet = vec![0u8; 25];
    rand::rng().fill_bytes(&mut packet);
    // Short header: fixed bit set, long-header bit clear.
    packet[0] = 0x40 | (packet[0] & 0x3f);
    packet.extend_from_slice(&tag.as_ref()[..16]);
    packet
}

/// Sends a stateless reset for every ID in `cids` to every address in
/// `peers`, from the listener's own socket (so it comes from the address
/// the apps talk to). Best effort: send errors are ignored.
pub(crate) fn reset_previous(
    socket: &UdpSocket,
    reset_key: &[u8; 32],
    peers: &[SocketAddr],
    cids: &[Vec<u8>],
) -> usize {
    let mut sent = 0;
    for peer in peers.iter().take(MAX_RESET_PEERS) {
        for cid in cids.iter().rev().take(CID_LOG_LEN) {
            if socket.send_to(&stateless_reset(reset_key, cid), peer).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_ends_in_the_token_quinn_expects() {
        let key = [7u8; 32];
        let cid = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let p = stateless_reset(&key, &cid);
        assert!(p.len() >= 21, "RFC 9000 wants at least 21 bytes");
        assert_eq!(p[0] & 0xc0, 0x40, "looks like a short header");
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), &cid);
        assert_eq!(&p[p.len() - 16..], &tag.as_ref()[..16]);
    }

    #[test]
    fn the_log_is_bounded_and_keeps_the_newest() {
        let log = CidLog::default();
        for i in 0..(CID_LOG_LEN + 10) {
            log.push(&(i as u32).to_be_bytes());
        }
        let s = log.snapshot();
        assert_eq!(s.len(), CID_LOG_LEN);
        assert_eq!(s.last().unwrap(), &((CID_LOG_LEN + 9) as u32).to_be_bytes().to_vec());
    }
}
