//! Telling a restarted sidecar's apps at once that their QUIC connection is
//! gone.
//!
//! A stateless reset normally goes out only in answer to a packet, so an
//! idle app would learn of a sidecar restart at its next keepalive. The
//! listener therefore records the connection IDs it hands out
//! ([`CidLog`]); the sidecar persists them with its apps' addresses, and a
//! restarted listener sends each of those addresses a stateless reset for
//! each recorded ID (RFC 9000 §10.3) once its owner is ready for their
//! redials ([`PreviousRun`]). The reset token is
//! HMAC-SHA256(reset key, connection ID), truncated to 16 bytes, exactly
//! as quinn computes it, so the persisted reset key makes them valid.
//!
//! The log holds the newest IDs issued to anyone, and strangers can push
//! the app's out of it: every QUIC handshake started (refused, retried or
//! never completed) costs the listener an ID, as does each migration of the
//! app. In soak runs the app then learnt of a restart only from its own late
//! Pings. So the listener also keeps, apart from the log, the ID the live
//! app's packets are addressed to ([`WatchedSocket`]); it goes into every
//! snapshot.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use quinn_proto::ConnectionIdGenerator;

use rand::RngCore;

/// How many recently issued connection IDs are remembered.
pub const CID_LOG_LEN: usize = 256;

/// How many previous app addresses a restarted listener resets at most.
pub const MAX_RESET_PEERS: usize = 8;

/// The connection IDs the listener issued, newest last, and the one the
/// live app's packets are addressed to.
#[derive(Debug, Default)]
pub struct CidLog {
    ring: Mutex<VecDeque<Vec<u8>>>,
    live: Mutex<LivePeer>,
}

/// The live app's address, and the destination connection ID of the last
/// packet seen from it.
#[derive(Debug, Default)]
struct LivePeer {
    addr: Option<SocketAddr>,
    cid: Option<Vec<u8>>,
}

impl CidLog {
    /// Names the live app's address: from now on the connection ID its
    /// packets carry is kept apart from the log (see [`CidLog::snapshot`]).
    pub fn watch(&self, addr: SocketAddr) {
        if let Ok(mut live) = self.live.lock() {
            live.addr = Some(addr);
        }
    }

    /// The ID the live app's packets were last addressed to, if any was seen.
    fn live_cid(&self) -> Option<Vec<u8>> {
        self.live.lock().ok().and_then(|l| l.cid.clone())
    }

    fn push(&self, cid: &[u8]) {
        if let Ok(mut r) = self.ring.lock() {
            if r.len() == CID_LOG_LEN {
                r.pop_front();
            }
            r.push_back(cid.to_vec());
        }
    }

    /// A copy of the recorded IDs, oldest first, at most [`CID_LOG_LEN`]:
    /// the live app's ID last (it is reset first), whatever came since.
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        let live = self.live_cid();
        let mut out: Vec<Vec<u8>> = self
            .ring
            .lock()
            .map(|r| r.iter().filter(|c| Some(*c) != live.as_ref()).cloned().collect())
            .unwrap_or_default();
        if let Some(cid) = live {
            if out.len() >= CID_LOG_LEN {
                out.remove(0);
            }
            out.push(cid);
        }
        out
    }

    /// Notes the destination IDs of the short-header packets in a batch
    /// just received, when they come from the live app and are IDs this
    /// listener issued (`valid`): one lock a batch, a compare a packet.
    fn note_batch(&self, bufs: &[IoSliceMut<'_>], meta: &[RecvMeta], cid_len: usize, valid: impl Fn(&[u8]) -> bool) {
        let Ok(mut live) = self.live.lock() else { return };
        let Some(addr) = live.addr else { return };
        for (buf, m) in bufs.iter().zip(meta) {
            if m.addr != addr {
                continue;
            }
            // The first datagram of the batch entry is enough (GRO
            // segments of one entry come from one packet train).
            let Some(packet) = buf.get(..m.len.min(m.stride)) else { continue };
            // A short header: long-header bit clear, then the ID.
            let Some(cid) = packet.get(1..1 + cid_len) else { continue };
            if packet[0] & 0x80 != 0 || live.cid.as_deref() == Some(cid) || !valid(cid) {
                continue;
            }
            live.cid = Some(cid.to_vec());
        }
    }
}

/// The listener's UDP socket, as quinn's own, that also notes which of this
/// listener's connection IDs the live app sends to ([`CidLog::watch`]).
pub(crate) struct WatchedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    log: Arc<CidLog>,
    cids: quinn_proto::HashedConnectionIdGenerator,
}

impl WatchedSocket {
    /// Wraps `inner`, whose listener issues IDs from the generator keyed by `key`.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, key: u64, log: Arc<CidLog>) -> WatchedSocket {
        WatchedSocket { inner, log, cids: quinn_proto::HashedConnectionIdGenerator::from_key(key) }
    }
}

impl fmt::Debug for WatchedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for WatchedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let got = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = got {
            let n = n.min(bufs.len()).min(meta.len());
            let len = self.cids.cid_len();
            self.log.note_batch(&bufs[..n], &meta[..n], len, |cid| {
                self.cids.validate(&quinn_proto::ConnectionId::new(cid)).is_ok()
            });
        }
        got
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A CID-generator key derived from the reset key (never the key itself).
pub(crate) fn cid_key(reset_key: &[u8; 32]) -> u64 {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key), b"dialback cid key");
    let mut k = [0u8; 8];
    k.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(k)
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

/// The stateless resets for the apps of a previous run, held back until
/// the caller is ready for their redials (see [`crate::Listener::previous_run`]).
///
/// An app that gets its reset before the sidecar's API is bound finds
/// ConnectAppCallback refused, takes the sidecar for down and drops the
/// direct redial that was already talking to the new process.
pub struct PreviousRun {
    socket: UdpSocket,
    reset_key: [u8; 32],
    peers: Vec<SocketAddr>,
    cids: Vec<Vec<u8>>,
    events: Arc<dyn crate::ListenerEvents>,
}

impl fmt::Debug for PreviousRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviousRun").field("peers", &self.peers).field("cids", &self.cids.len()).finish()
    }
}

impl PreviousRun {
    /// Holds the resets for `peers` and `cids`, to send later from a clone
    /// of the listener's `socket` (so they come from the address the apps
    /// talk to). `None` when there is nobody to reset.
    pub(crate) fn new(
        socket: &UdpSocket,
        reset_key: [u8; 32],
        (peers, cids): &(Vec<SocketAddr>, Vec<Vec<u8>>),
        events: Arc<dyn crate::ListenerEvents>,
    ) -> io::Result<Option<PreviousRun>> {
        if peers.is_empty() || cids.is_empty() {
            return Ok(None);
        }
        Ok(Some(PreviousRun {
            socket: socket.try_clone()?,
            reset_key,
            peers: peers.clone(),
            cids: cids.clone(),
            events,
        }))
    }

    /// Sends a stateless reset for every recorded ID to every recorded
    /// address (at most [`MAX_RESET_PEERS`] of them). Best effort: send
    /// errors are ignored. Returns how many went out.
    pub fn reset(self) -> usize {
        let mut sent = 0;
        for peer in self.peers.iter().take(MAX_RESET_PEERS) {
            for cid in self.cids.iter().rev().take(CID_LOG_LEN) {
                if self.socket.send_to(&stateless_reset(&self.reset_key, cid), peer).is_ok() {
                    sent += 1;
                }
            }
        }
        self.events.resets_sent(sent);
        if sent > 0 {
            tracing::info!(sent, peers = self.peers.len(), "sent stateless resets to the apps of the previous run");
        }
        sent
    }
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

    /// A received batch as `note_batch` sees it.
    fn note(log: &CidLog, packets: &[(SocketAddr, Vec<u8>)]) {
        let mut bufs: Vec<Vec<u8>> = packets.iter().map(|(_, p)| p.clone()).collect();
        let meta: Vec<RecvMeta> = packets
            .iter()
            .map(|(a, p)| RecvMeta { addr: *a, len: p.len(), stride: p.len(), ..RecvMeta::default() })
            .collect();
        let slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        log.note_batch(&slices, &meta, 8, |cid| cid[0] == 0xaa);
    }

    fn short(cid: [u8; 8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(&cid);
        p.extend_from_slice(&[0; 30]);
        p
    }

    #[test]
    fn the_live_apps_id_outlasts_a_flood_of_handshakes() {
        let app: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "127.0.0.9:6000".parse().unwrap();
        let log = CidLog::default();
        let live = [0xaa, 1, 2, 3, 4, 5, 6, 7];
        log.push(&live);
        // Nothing is watched yet: nothing is noted.
        note(&log, &[(app, short(live))]);
        assert_eq!(log.live_cid(), None);
        log.watch(app);
        note(&log, &[(stranger, short([0xaa, 9, 9, 9, 9, 9, 9, 9])), (app, short(live))]);
        assert_eq!(log.live_cid(), Some(live.to_vec()));
        // Strangers' handshakes push it out of the ring, not out of the snapshot.
        for i in 0..(2 * CID_LOG_LEN) {
            log.push(&(i as u64).to_be_bytes());
        }
        let s = log.snapshot();
        assert_eq!(s.len(), CID_LOG_LEN);
        assert_eq!(s.last(), Some(&live.to_vec()), "the live app's ID is reset first");
        assert_eq!(s.iter().filter(|c| **c == live).count(), 1);
    }

    #[test]
    fn only_the_live_apps_short_headers_with_issued_ids_count() {
        let app: SocketAddr = "[::1]:5000".parse().unwrap();
        let log = CidLog::default();
        log.watch(app);
        let first = [0xaa, 1, 1, 1, 1, 1, 1, 1];
        note(&log, &[(app, short(first))]);
        // A long header (an Initial), an ID this listener never issued, a
        // packet too short to hold an ID, and a stranger's: none moves it.
        let mut long = short([0xaa, 2, 2, 2, 2, 2, 2, 2]);
        long[0] = 0xc0;
        let forged = short([0x00, 3, 3, 3, 3, 3, 3, 3]);
        let stranger: SocketAddr = "[::1]:6000".parse().unwrap();
        note(&log, &[(app, long), (app, forged), (app, vec![0x40, 0xaa]), (stranger, short([0xaa; 8]))]);
        assert_eq!(log.live_cid(), Some(first.to_vec()));
        // The app moves to another of its IDs: that one counts now.
        let second = [0xaa, 4, 4, 4, 4, 4, 4, 4];
        note(&log, &[(app, short(second))]);
        assert_eq!(log.live_cid(), Some(second.to_vec()));
    }
}
