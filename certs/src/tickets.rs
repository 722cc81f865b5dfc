//! TLS 1.3 session tickets sealed under a key the sidecar keeps, so that a
//! restarted sidecar resumes the sessions of its previous life.
//!
//! rustls's own ticketers make their keys at random in memory, so every
//! restart would turn an app's redial into a full handshake. [`SealedTickets`]
//! derives its keys from a 32-byte secret instead (the sidecar keeps it in
//! its state dir): one key per 12-hour epoch, `HMAC-SHA256(secret, epoch)`,
//! tickets sealed with ChaCha20-Poly1305 under the current epoch's key and
//! opened under the current or the previous one, so a ticket lives 12 to 24
//! hours. A ticket is `epoch (8 bytes) || nonce (12) || ciphertext || tag`.
//! Resumption is PSK with (EC)DHE (rustls offers no PSK-only mode), so
//! learning the secret would not decrypt recorded traffic.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long one key seals new tickets; a ticket opens for up to two epochs.
pub const TICKET_EPOCH_SECS: u64 = 12 * 60 * 60;

/// Bytes before the ciphertext: the epoch and the nonce.
const HEADER: usize = 8 + NONCE_LEN;

/// Session tickets sealed under keys derived from a kept secret.
pub struct SealedTickets {
    secret: hmac::Key,
    rng: SystemRandom,
    clock: fn() -> u64,
}

impl fmt::Debug for SealedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedTickets").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SealedTickets {
    /// Tickets sealed under keys derived from `secret`.
    pub fn new(secret: &[u8; 32]) -> SealedTickets {
        SealedTickets { secret: hmac::Key::new(hmac::HMAC_SHA256, secret), rng: SystemRandom::new(), clock: unix_now }
    }

    /// The same, with a clock (seconds since the Unix epoch) for tests.
    #[cfg(test)]
    fn with_clock(secret: &[u8; 32], clock: fn() -> u64) -> SealedTickets {
        SealedTickets { clock, ..SealedTickets::new(secret) }
    }

    fn epoch(&self) -> u64 {
        (self.clock)() / TICKET_EPOCH_SECS
    }

    fn key(&self, epoch: u64) -> Option<LessSafeKey> {
        let tag = hmac::sign(&self.secret, &[b"dialback ticket key ".as_slice(), &epoch.to_be_bytes()].concat());
        let bytes = tag.as_ref().get(..32)?;
        UnboundKey::new(&CHACHA20_POLY1305, bytes).ok().map(LessSafeKey::new)
    }
}

impl ProducesTickets for SealedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(TICKET_EPOCH_SECS).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch();
        let key = self.key(epoch)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + CHACHA20_POLY1305.tag_len());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&epoch.to_be_bytes()), &mut sealed)
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let epoch_bytes: [u8; 8] = cipher.get(..8)?.try_into().ok()?;
        let nonce: [u8; NONCE_LEN] = cipher.get(8..HEADER)?.try_into().ok()?;
        let epoch = u64::from_be_bytes(epoch_bytes);
        let now = self.epoch();
        // The current epoch or the one before; nothing from the future.
        if epoch > now || now - epoch > 1 {
            return None;
        }
        let key = self.key(epoch)?;
        let mut sealed = cipher.get(HEADER..)?.to_vec();
        let plain =
            key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&epoch_bytes), &mut sealed).ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn at(epoch: u64) -> fn() -> u64 {
        // fn pointers cannot capture: a few fixed clocks.
        match epoch {
            0 => || 5,
            1 => || TICKET_EPOCH_SECS + 5,
            _ => || 2 * TICKET_EPOCH_SECS + 5,
        }
    }

    #[test]
    fn a_ticket_opens_under_the_same_secret_across_instances() {
        let sealed = SealedTickets::new(&SECRET).encrypt(b"session").unwrap();
        // A restarted sidecar builds a new ticketer from the kept secret.
        assert_eq!(SealedTickets::new(&SECRET).decrypt(&sealed).unwrap(), b"session");
        assert!(SealedTickets::new(&[8; 32]).decrypt(&sealed).is_none(), "another secret must not open it");
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        let t = SealedTickets::new(&SECRET);
        let sealed = t.encrypt(b"session").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(t.decrypt(&bad).is_none(), "a flipped bit at {i} must be refused");
        }
        for n in 0..sealed.len() {
            assert!(t.decrypt(&sealed[..n]).is_none(), "a ticket cut to {n} bytes must be refused");
        }
        assert!(t.decrypt(&[]).is_none());
    }

    #[test]
    fn a_ticket_lives_two_epochs_at_most() {
        let sealed = SealedTickets::with_clock(&SECRET, at(0)).encrypt(b"s").unwrap();
        assert!(SealedTickets::with_clock(&SECRET, at(0)).decrypt(&sealed).is_some());
        assert!(SealedTickets::with_clock(&SECRET, at(1)).decrypt(&sealed).is_some());
        assert!(SealedTickets::with_clock(&SECRET, at(2)).decrypt(&sealed).is_none());
        // Nor is a ticket from a later epoch taken (a clock set back).
        let later = SealedTickets::with_clock(&SECRET, at(1)).encrypt(b"s").unwrap();
        assert!(SealedTickets::with_clock(&SECRET, at(0)).decrypt(&later).is_none());
    }

    #[test]
    fn nonces_differ() {
        let t = SealedTickets::new(&SECRET);
        assert_ne!(t.encrypt(b"s").unwrap(), t.encrypt(b"s").unwrap());
    }
}
