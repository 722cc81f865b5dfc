//! Who may open a callback channel: one-time tokens from
//! ConnectAppCallback, the API token, or an mTLS client certificate.
//!
//! [`TokenStore`] is pure bookkeeping over `now`, unit-tested without
//! sockets; [`ChannelAuth`] is the channel listener's [`Authenticator`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dialback_channel::{Authenticator, Credential, Grant, Hello, HelloContext, Refusal, RefusalReason};
use rand::RngCore;

/// At most this many live tokens; ConnectAppCallback may be unauthenticated,
/// so the store must not grow without bound.
const MAX_TOKENS: usize = 1024;

/// Outstanding one-time tokens (reconnect tokens are sealed, not stored:
/// see [`crate::reconnect`]).
#[derive(Debug, Default)]
pub struct TokenStore {
    /// Token -> (expiry, issue order).
    live: HashMap<String, (Instant, u64)>,
    issued: u64,
    /// Tokens already presented, kept until they would have expired, so a
    /// replay is told "used" rather than "unknown".
    used: HashMap<String, Instant>,
}

impl TokenStore {
    /// Mints a token valid until `now + ttl`.
    pub fn issue(&mut self, now: Instant, ttl: Duration) -> String {
        self.prune(now);
        if self.live.len() >= MAX_TOKENS {
            // Drop the oldest: a flood of ConnectAppCallback calls cannot eat memory.
            if let Some(oldest) = self.live.iter().min_by_key(|(_, (_, n))| *n).map(|(t, _)| t.clone()) {
                self.live.remove(&oldest);
            }
        }
        let token = random_token();
        self.issued += 1;
        self.live.insert(token.clone(), (now + ttl, self.issued));
        token
    }

    /// Spends `token`; fails when it is unknown, used or expired. A token
    /// is spent by its first presentation, whatever the outcome.
    pub fn redeem(&mut self, token: &str, now: Instant) -> Result<(), Refusal> {
        if let Some((expires, _)) = self.live.remove(token) {
            self.used.insert(token.to_string(), expires);
            if now > expires {
                return Err(Refusal::new(
                    RefusalReason::TokenExpired,
                    "the one-time token has expired; call ConnectAppCallback again",
                ));
            }
            return Ok(());
        }
        if self.used.contains_key(token) {
            return Err(Refusal::new(
                RefusalReason::TokenUsed,
                "the one-time token was already used; call ConnectAppCallback again",
            ));
        }
        Err(Refusal::new(RefusalReason::BadCredential, "unknown one-time token"))
    }

    fn prune(&mut self, now: Instant) {
        self.live.retain(|_, (e, _)| *e + Duration::from_secs(60) > now);
        self.used.retain(|_, e| *e + Duration::from_secs(60) > now);
    }
}

/// The callback listener's authenticator.
pub struct ChannelAuth {
    /// The only app-id this sidecar serves.
    pub app_id: String,
    /// SHA-256 of the API token, when one is configured.
    pub api_token_sha: Option<[u8; 32]>,
    /// Outstanding one-time tokens.
    pub tokens: Arc<Mutex<TokenStore>>,
    /// Whether a client CA is configured (`--callback-client-ca-file`), so
    /// that a hello may name a client certificate as its credential.
    pub mtls: bool,
    /// Issues the app the client certificate it presents in later dials.
    pub issuer: Arc<crate::issued::Issuer>,
    /// The live channel, for standby hellos.
    pub registry: Arc<crate::appchannel::Registry>,
    /// Seals the reconnect tokens handed out and opens those presented.
    pub reconnect: crate::reconnect::ReconnectKey,
}

fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    crate::hex::encode(&raw)
}

/// SHA-256, so that comparing tokens takes time independent of where they differ.
pub fn sha256(s: &str) -> [u8; 32] {
    sha256_bytes(s.as_bytes())
}

/// [`sha256`] of raw bytes (a header value need not be UTF-8).
pub fn sha256_bytes(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Authenticator for ChannelAuth {
    fn authenticate(&self, ctx: &HelloContext<'_>) -> Result<Grant, Refusal> {
        self.check(ctx)?;
        if ctx.hello.standby && self.registry.is_taken() {
            return Err(Refusal::new(
                RefusalReason::SlotTaken,
                "another instance of this app holds the channel; standing by",
            ));
        }
        let now = SystemTime::now();
        let expires = now + crate::reconnect::RECONNECT_TTL;
        // An app that proves itself with a certificate of its own keeps it.
        let own = matches!(ctx.credential, Credential::ClientCertificate(_));
        Ok(Grant {
            reconnect_token: self.reconnect.issue(&self.app_id, expires),
            client_credential: if own { None } else { self.issuer.credential(&ctx.hello.client_public_key, now) },
        })
    }

    fn discard(&self, hello: &Hello) {
        self.spend(hello);
    }

    fn names_app(&self, cert: &dialback_certs::CertificateDer<'static>) -> bool {
        dialback_certs::app_id_of(cert).is_some_and(|id| id == self.app_id)
    }
}

impl ChannelAuth {
    /// Spends the hello's one-time token, if it carries one: a token is
    /// good for one presentation, whatever else is wrong with the hello.
    fn spend(&self, hello: &Hello) -> Option<Result<(), Refusal>> {
        let Some(Credential::OneTimeToken(t)) = &hello.credential else { return None };
        let mut tokens = match self.tokens.lock() {
            Ok(t) => t,
            Err(_) => return Some(Err(Refusal::new(RefusalReason::Unspecified, "internal error"))),
        };
        Some(tokens.redeem(t, Instant::now()))
    }

    fn check(&self, ctx: &HelloContext<'_>) -> Result<(), Refusal> {
        let hello = ctx.hello;
        // First of all, so that no refusal below leaves the token usable.
        let spent = self.spend(hello);
        if hello.app_id != self.app_id {
            return Err(Refusal::new(
                RefusalReason::WrongAppId,
                format!("this sidecar serves app-id {:?}, not {:?}", self.app_id, hello.app_id),
            ));
        }
        match ctx.credential {
            Credential::OneTimeToken(_) => spent.unwrap_or(Ok(())),
            Credential::ReconnectToken(t) => self.reconnect.check(t, &hello.app_id, SystemTime::now()),
            Credential::ApiToken(t) => match self.api_token_sha {
                Some(want) if sha256(t) == want => Ok(()),
                Some(_) => Err(Refusal::new(RefusalReason::BadCredential, "wrong API token")),
                None => Err(Refusal::new(RefusalReason::BadCredential, "this sidecar has no API token configured")),
            },
            Credential::ClientCertificate(_) => {
                if !self.mtls {
                    return Err(Refusal::new(
                        RefusalReason::BadCredential,
                        "this sidecar does not accept client certificates (no client CA configured)",
                    ));
                }
                let Some(cert) = ctx.client_cert else {
                    return Err(Refusal::new(
                        RefusalReason::NoCredential,
                        "hello names a client certificate but none was presented",
                    ));
                };
                match dialback_certs::app_id_of(cert) {
                    Some(id) if id == self.app_id => Ok(()),
                    Some(id) => Err(Refusal::new(
                        RefusalReason::WrongAppId,
                        format!("the client certificate names app-id {id:?}"),
                    )),
                    None => Err(Refusal::new(RefusalReason::BadCredential, "the client certificate names no app-id")),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_single_use() {
        let mut s = TokenStore::default();
        let now = Instant::now();
        let t = s.issue(now, Duration::from_secs(10));
        assert!(s.redeem(&t, now).is_ok());
        assert_eq!(s.redeem(&t, now).unwrap_err().reason, RefusalReason::TokenUsed);
    }

    #[test]
    fn a_token_expires() {
        let mut s = TokenStore::default();
        let now = Instant::now();
        let t = s.issue(now, Duration::from_secs(10));
        assert_eq!(s.redeem(&t, now + Duration::from_secs(11)).unwrap_err().reason, RefusalReason::TokenExpired);
    }

    #[test]
    fn unknown_tokens_are_bad() {
        let mut s = TokenStore::default();
        assert_eq!(s.redeem("nope", Instant::now()).unwrap_err().reason, RefusalReason::BadCredential);
    }

    #[test]
    fn the_store_is_bounded() {
        let mut s = TokenStore::default();
        let now = Instant::now();
        let first = s.issue(now, Duration::from_secs(10));
        for _ in 0..MAX_TOKENS + 10 {
            s.issue(now, Duration::from_secs(10));
        }
        assert!(s.live.len() <= MAX_TOKENS);
        assert!(s.redeem(&first, now).is_err());
    }

    #[test]
    fn tokens_are_distinct() {
        let mut s = TokenStore::default();
        let now = Instant::now();
        assert_ne!(s.issue(now, Duration::from_secs(1)), s.issue(now, Duration::from_secs(1)));
    }
}
