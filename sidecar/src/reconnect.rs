//! Reconnect tokens: what an accepted channel is given so that the app can
//! redial this sidecar without asking ConnectAppCallback first.
//!
//! A token is sealed, not stored: the expiry and a nonce, with an
//! HMAC-SHA256 tag over them and the app-id, under a key kept in the state
//! dir (`reconnect-key`). So a restarted sidecar accepts the tokens its
//! previous run handed out, and the app's direct redial after a restart
//! goes through at once instead of being refused and dialed again from the
//! API's answer (a TLS handshake and a hello more). Nothing is held per
//! token, so no bound on a store is needed. Deleting the key file and
//! restarting revokes every token at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dialback_channel::{Refusal, RefusalReason};
use rand::RngCore;
use ring::hmac;

/// How long a reconnect token stays good, across restarts too.
pub const RECONNECT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What every token starts with: the format's version.
const PREFIX: &str = "r1.";
/// Expiry (seconds since the Unix epoch, big-endian) and nonce, then the tag.
const EXPIRY: usize = 8;
const NONCE: usize = 16;
const TAG: usize = 32;
const BODY: usize = EXPIRY + NONCE + TAG;
/// A token's length in characters: the prefix and the body in hex.
const TOKEN_LEN: usize = PREFIX.len() + 2 * BODY;
/// What the tag covers first, so that it means nothing anywhere else.
const CONTEXT: &[u8] = b"dialback reconnect token v1\0";

/// The key that seals and opens reconnect tokens.
pub struct ReconnectKey(hmac::Key);

impl std::fmt::Debug for ReconnectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReconnectKey(..)")
    }
}

impl ReconnectKey {
    /// The key from its 32 secret bytes (see `statedir::reconnect_key`).
    pub fn new(secret: &[u8; 32]) -> ReconnectKey {
        ReconnectKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A token for `app_id`, good until `expires` (to the second).
    pub fn issue(&self, app_id: &str, expires: SystemTime) -> String {
        let secs = expires.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut body = [0u8; BODY];
        body[..EXPIRY].copy_from_slice(&secs.to_be_bytes());
        rand::rng().fill_bytes(&mut body[EXPIRY..EXPIRY + NONCE]);
        let tag = hmac::sign(&self.0, &signed(app_id, &body[..EXPIRY + NONCE]));
        body[EXPIRY + NONCE..].copy_from_slice(tag.as_ref());
        format!("{PREFIX}{}", crate::hex::encode(&body))
    }

    /// Checks `token` for `app_id` at `now`: sealed with this key for this
    /// app-id, and not expired. Fails with the reason the app is told.
    pub fn check(&self, token: &str, app_id: &str, now: SystemTime) -> Result<(), Refusal> {
        let unknown = || {
            Refusal::new(
                RefusalReason::BadCredential,
                "unknown reconnect token (another sidecar's, or its key was replaced); call ConnectAppCallback",
            )
        };
        let body = token
            .strip_prefix(PREFIX)
            .filter(|_| token.len() == TOKEN_LEN)
            .and_then(crate::hex::decode)
            .ok_or_else(unknown)?;
        let (sealed, tag) = body.split_at(EXPIRY + NONCE);
        hmac::verify(&self.0, &signed(app_id, sealed), tag).map_err(|_| unknown())?;
        let mut secs = [0u8; EXPIRY];
        secs.copy_from_slice(&sealed[..EXPIRY]);
        let expires = UNIX_EPOCH.checked_add(Duration::from_secs(u64::from_be_bytes(secs)));
        if expires.is_none_or(|e| now > e) {
            return Err(Refusal::new(
                RefusalReason::TokenExpired,
                "the reconnect token has expired; call ConnectAppCallback",
            ));
        }
        Ok(())
    }
}

/// What the tag covers: the context, the app-id and the sealed fields.
fn signed(app_id: &str, sealed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + app_id.len() + 1 + sealed.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(app_id.as_bytes());
    m.push(0);
    m.extend_from_slice(sealed);
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(b: u8) -> ReconnectKey {
        ReconnectKey::new(&[b; 32])
    }

    #[test]
    fn a_token_is_good_for_its_app_until_it_expires_and_survives_a_new_key_object() {
        let now = SystemTime::now();
        let t = key(1).issue("app", now + Duration::from_secs(60));
        assert_eq!(t.len(), TOKEN_LEN);
        // A restarted sidecar builds the key again from the same bytes.
        assert!(key(1).check(&t, "app", now).is_ok());
        assert!(key(1).check(&t, "app", now).is_ok(), "reusable");
        let late = key(1).check(&t, "app", now + Duration::from_secs(61)).unwrap_err();
        assert_eq!(late.reason, RefusalReason::TokenExpired);
    }

    #[test]
    fn another_key_another_app_or_a_changed_byte_is_refused() {
        let now = SystemTime::now();
        let t = key(1).issue("app", now + Duration::from_secs(60));
        assert_eq!(key(2).check(&t, "app", now).unwrap_err().reason, RefusalReason::BadCredential);
        assert_eq!(key(1).check(&t, "other", now).unwrap_err().reason, RefusalReason::BadCredential);
        // A later expiry written over the sealed one breaks the tag.
        let mut forged = t.clone().into_bytes();
        forged[PREFIX.len() + 2] = if forged[PREFIX.len() + 2] == b'f' { b'e' } else { b'f' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(key(1).check(&forged, "app", now).unwrap_err().reason, RefusalReason::BadCredential);
    }

    #[test]
    fn garbage_never_panics_and_is_refused() {
        let k = key(1);
        let now = SystemTime::now();
        let long = "r1.".to_string() + &"zz".repeat(BODY);
        let multibyte = "r1.".to_string() + &"é".repeat(BODY);
        for t in ["", "r1.", "r1.00", "00".repeat(BODY + 2).as_str(), long.as_str(), multibyte.as_str()] {
            assert_eq!(k.check(t, "app", now).unwrap_err().reason, RefusalReason::BadCredential, "{t:?}");
        }
    }

    #[test]
    fn tokens_are_distinct() {
        let exp = SystemTime::now() + Duration::from_secs(60);
        assert_ne!(key(1).issue("app", exp), key(1).issue("app", exp));
    }
}
