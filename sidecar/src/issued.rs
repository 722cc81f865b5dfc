//! The client certificates the sidecar issues its app (in each verdict),
//! so that the app's later dials carry its identity in TLS.
//!
//! A certificate names the app-id the way Dapr's do (SPIFFE URI SAN),
//! is for the app's own key (the app sends the public half in its
//! ConnectAppCallback request and its hello; the private half never leaves
//! it), lives [`CREDENTIAL_TTL`] and is signed by the sidecar's own CA, which is
//! kept in the state dir (`app-ca.pem`, `app-ca-key.pem`) so that a
//! restarted sidecar still trusts what it issued before; deleting them
//! revokes every issued certificate. The last key's certificate is kept and
//! re-issued only when half its life is gone, so a redial of the same app
//! process costs no signature. What it is for: a TLS session resumed with
//! it names the app from the ClientHello (docs/architecture.md, "The
//! credential in TLS").

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dialback_certs::DevCa;
use dialback_channel::ClientCredential;

use crate::StartError;

/// How long an issued certificate is valid (as a reconnect token).
pub const CREDENTIAL_TTL: Duration = crate::reconnect::RECONNECT_TTL;

/// Clock skew allowed for: a certificate is valid from this long before its issue.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

const CA_CERT_FILE: &str = "app-ca.pem";
const CA_KEY_FILE: &str = "app-ca-key.pem";

/// Issues the app's client certificates.
pub struct Issuer {
    ca: DevCa,
    app_id: String,
    /// The last key certified and its certificate.
    current: Mutex<Option<(Vec<u8>, ClientCredential)>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

impl Issuer {
    /// The issuer for `app_id`, with the CA kept in `state_dir` (made
    /// there when missing); fails when the CA cannot be read or written.
    pub fn load_or_generate(state_dir: &Path, app_id: &str) -> Result<Issuer, StartError> {
        let cert = state_dir.join(CA_CERT_FILE);
        let key = state_dir.join(CA_KEY_FILE);
        let ca = if cert.exists() && key.exists() {
            DevCa::load_pem(&cert, &key).map_err(|e| StartError::AppCa(e.to_string()))?
        } else {
            let ca = DevCa::generate().map_err(|e| StartError::AppCa(e.to_string()))?;
            ca.save_pem(&cert, &key).map_err(StartError::StateFile)?;
            ca
        };
        Ok(Issuer { ca, app_id: app_id.to_string(), current: Mutex::new(None) })
    }

    /// The roots that verify what this issuer issues.
    pub fn roots(&self) -> dialback_certs::RootCertStore {
        self.ca.roots()
    }

    /// A certificate for the app's key `spki` (a DER SubjectPublicKeyInfo)
    /// with at least half its life ahead at `now`: the last one when it is
    /// for the same key and young enough, else a new one. `None` for an
    /// empty or unusable key (the app then dials without one, as before).
    pub fn credential(&self, spki: &[u8], now: SystemTime) -> Option<ClientCredential> {
        if spki.is_empty() || spki.len() > MAX_PUBLIC_KEY {
            return None;
        }
        let now_ms = unix_ms(now);
        let half = u64::try_from(CREDENTIAL_TTL.as_millis() / 2).unwrap_or(u64::MAX);
        let mut current = self.current.lock().ok()?;
        if let Some((_, c)) = current.as_ref().filter(|(k, c)| k == spki && c.usable_at(now_ms, half)) {
            return Some(c.clone());
        }
        let secs = now_ms / 1000;
        let not_after = secs + CREDENTIAL_TTL.as_secs();
        let not_before = secs.saturating_sub(BACKDATE.as_secs());
        let cert = match self.ca.client_certificate_for(&self.app_id, spki, not_before, not_after) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "not issuing a client certificate");
                return None;
            }
        };
        let credential = ClientCredential { cert: cert.to_vec(), expires_unix_ms: not_after * 1000 };
        *current = Some((spki.to_vec(), credential.clone()));
        Some(credential)
    }
}

/// The largest public key certified: a P-256 SubjectPublicKeyInfo is 91
/// bytes, an RSA-4096 one about 550.
const MAX_PUBLIC_KEY: usize = 1024;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn one_certificate_per_key_until_half_its_life_then_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::load_or_generate(dir.path(), "orders").unwrap();
        let key = dialback_certs::ClientKey::generate().unwrap();
        let spki = key.public_key_der();
        let t0 = SystemTime::now();
        let first = issuer.credential(spki, t0).unwrap();
        let cert = rustls::pki_types::CertificateDer::from(first.cert.clone());
        assert_eq!(dialback_certs::app_id_of(&cert).as_deref(), Some("orders"));
        assert_eq!(issuer.credential(spki, t0 + CREDENTIAL_TTL / 3).unwrap(), first, "reused while young");
        let second = issuer.credential(spki, t0 + CREDENTIAL_TTL * 2 / 3).unwrap();
        assert_ne!(second, first, "re-issued past half its life");
        assert!(second.expires_unix_ms > first.expires_unix_ms);
        let other = dialback_certs::ClientKey::generate().unwrap();
        assert_ne!(
            issuer.credential(other.public_key_der(), t0).unwrap().cert,
            second.cert,
            "another key, another one"
        );
    }

    #[test]
    fn garbage_for_a_key_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Issuer::load_or_generate(dir.path(), "orders").unwrap();
        let now = SystemTime::now();
        assert!(issuer.credential(b"", now).is_none());
        assert!(issuer.credential(b"not a key", now).is_none());
        assert!(issuer.credential(&[0x30; 4096], now).is_none());
    }

    #[test]
    fn a_restarted_sidecar_keeps_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = Issuer::load_or_generate(dir.path(), "orders").unwrap();
        let b = Issuer::load_or_generate(dir.path(), "orders").unwrap();
        assert_eq!(a.roots().roots, b.roots().roots);
        let other = Issuer::load_or_generate(tempfile::tempdir().unwrap().path(), "orders").unwrap();
        assert_ne!(a.roots().roots, other.roots().roots);
    }
}
