//! A development certificate authority and the dev certificate set.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::files::{self, FileMode, SERVER_CERT_FILE, SERVER_KEY_FILE};
use crate::params::{SERVER_CN, generate_key, key_der, server_params};
use crate::{DevSetError, Fingerprint, GenerateError, Identity, LoadError, SaveError, appid};

const CA_CN: &str = "dialback dev CA";
const ORGANIZATION: &str = "dialback";

/// A dev certificate authority minted with rcgen.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    roots: RootCertStore,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").field("fingerprint", &Fingerprint::of(&self.cert)).finish_non_exhaustive()
    }
}

impl DevCa {
    /// A fresh CA (ECDSA P-256, CN "dialback dev CA"); fails if key generation or signing fails.
    pub fn generate() -> Result<DevCa, GenerateError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_CN);
        params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = generate_key()?;
        let cert =
            params.self_signed(&key).map_err(|source| GenerateError::Sign { subject: CA_CN.to_owned(), source })?;
        let cert = cert.der().clone();
        let roots = roots_of(&cert).map_err(GenerateError::TrustAnchor)?;
        Ok(DevCa { issuer: Issuer::new(params, key), cert, roots })
    }

    /// Loads a CA certificate (first in the file) and its PKCS#8 key; fails if a file is
    /// unreadable or malformed, the certificate is not a CA, or the key does not fit it.
    pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<DevCa, LoadError> {
        let mut certs = files::read_certs(cert_path)?;
        let cert = certs.swap_remove(0);
        let key_der = files::read_key(key_path)?;
        crate::identity::key_fits(std::slice::from_ref(&cert), &key_der, cert_path, key_path)?;
        let ca_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Ca { path, source }
        };
        let key = KeyPair::try_from(&key_der).map_err(ca_err(key_path))?;
        if !is_ca(&cert) {
            return Err(LoadError::NotCa { path: cert_path.to_owned() });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(ca_err(cert_path))?;
        let roots = roots_of(&cert).map_err(|source| LoadError::TrustAnchor { path: cert_path.to_owned(), source })?;
        Ok(DevCa { issuer, cert, roots })
    }

    /// The CA certificate in DER; never fails.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The CA certificate in PEM; never fails.
    pub fn cert_pem(&self) -> String {
        files::certs_pem(std::slice::from_ref(&self.cert))
    }

    /// Writes the CA certificate and key (mode 0600 on unix) as PEM, creating parent
    /// directories; fails if a write fails.
    pub fn save_pem(&self, cert_path: &Path, key_path: &Path) -> Result<(), SaveError> {
        files::write_atomic(key_path, self.issuer.key().serialize_pem().as_bytes(), FileMode::Private)?;
        files::write_atomic(cert_path, self.cert_pem().as_bytes(), FileMode::Public)
    }

    /// A server certificate for `server_names` (DNS names or IP literals;
    /// [`DEFAULT_SERVER_NAME`] if empty) signed by this CA, chain = `[leaf, CA]`; fails on an
    /// invalid name or if key generation or signing fails.
    pub fn server_identity(&self, server_names: &[String]) -> Result<Identity, GenerateError> {
        let params = server_params(server_names)?;
        self.issue(params, SERVER_CN)
    }

    /// A client certificate naming `app_id`: URI SAN `spiffe://public/ns/default/<app_id>`
    /// (Dapr's SPIFFE id shape) and CN = app_id, chain = `[leaf]`; fails if `app_id` is not a
    /// valid SPIFFE path segment (ASCII letters, digits, `.`, `-`, `_`) or signing fails.
    pub fn client_identity(&self, app_id: &str) -> Result<Identity, GenerateError> {
        let params = client_params(app_id, CertificateParams::default())?;
        let mut id = self.issue(params, app_id)?;
        id.cert_chain.truncate(1);
        Ok(id)
    }

    /// A certificate naming `app_id` as [`DevCa::client_identity`]'s do, for the key whose
    /// public half is `spki_der` (a DER SubjectPublicKeyInfo), valid from `not_before` to
    /// `not_after` (seconds since the Unix epoch): the short-lived certificate a sidecar issues
    /// its app for the app's own key. Fails on a bad app id, a public key rcgen cannot read, a
    /// time it cannot encode, or if signing fails.
    pub fn client_certificate_for(
        &self,
        app_id: &str,
        spki_der: &[u8],
        not_before: u64,
        not_after: u64,
    ) -> Result<CertificateDer<'static>, GenerateError> {
        let time = |secs: u64| {
            i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or(GenerateError::InvalidAppId { app_id: app_id.to_owned(), reason: "validity out of range" })
        };
        let mut params = CertificateParams::default();
        params.not_before = time(not_before)?;
        params.not_after = time(not_after)?;
        let mut params = client_params(app_id, params)?;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(GenerateError::PublicKey)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| GenerateError::Sign { subject: app_id.to_owned(), source })?;
        Ok(cert.der().clone())
    }

    /// A root store holding this CA; never fails.
    pub fn roots(&self) -> RootCertStore {
        self.roots.clone()
    }

    /// Signs `params` (a leaf) with a fresh key; chain = `[leaf, CA]`.
    fn issue(&self, mut params: CertificateParams, subject: &str) -> Result<Identity, GenerateError> {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = generate_key()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| GenerateError::Sign { subject: subject.to_owned(), source })?;
        Ok(Identity { cert_chain: vec![cert.der().clone(), self.cert.clone()], key: key_der(&key) })
    }
}

/// A client certificate's parameters naming `app_id`: CN and a SPIFFE URI SAN, client auth.
fn client_params(app_id: &str, mut params: CertificateParams) -> Result<CertificateParams, GenerateError> {
    appid::validate(app_id)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, app_id);
    let uri = appid::spiffe_id(app_id);
    let uri = uri.as_str().try_into().map_err(|_| GenerateError::InvalidAppId {
        app_id: app_id.to_owned(),
        reason: "not representable as an IA5 URI",
    })?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Writes a dev set into `out`: ca.pem, ca-key.pem, server.pem, server-key.pem (names
/// localhost, 127.0.0.1, ::1 plus `extra_server_names`), and `client-<app_id>.pem` /
/// `client-<app_id>-key.pem` for each app id, returning the paths written; fails before writing
/// anything if a file exists and `overwrite` is false or generation fails, else if a write fails.
pub fn write_dev_set(
    out: &Path,
    extra_server_names: &[String],
    app_ids: &[String],
    overwrite: bool,
) -> Result<Vec<PathBuf>, DevSetError> {
    let mut names = crate::default_server_names();
    for name in extra_server_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let ca = DevCa::generate()?;
    let server = ca.server_identity(&names)?;
    let mut pairs = vec![(server, out.join(SERVER_CERT_FILE), out.join(SERVER_KEY_FILE))];
    for app_id in app_ids {
        pairs.push((
            ca.client_identity(app_id)?,
            out.join(format!("client-{app_id}.pem")),
            out.join(format!("client-{app_id}-key.pem")),
        ));
    }
    let (ca_cert, ca_key) = (out.join("ca.pem"), out.join("ca-key.pem"));
    let mut paths = vec![ca_cert.clone(), ca_key.clone()];
    for (_, cert, key) in &pairs {
        paths.push(cert.clone());
        paths.push(key.clone());
    }
    if !overwrite && let Some(path) = paths.iter().find(|p| p.exists()) {
        return Err(DevSetError::Exists { path: path.clone() });
    }
    ca.save_pem(&ca_cert, &ca_key)?;
    for (identity, cert, key) in &pairs {
        identity.save_pem(cert, key)?;
    }
    Ok(paths)
}

fn roots_of(cert: &CertificateDer<'static>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone())?;
    Ok(roots)
}

fn is_ca(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref()).map(|(_, c)| c.is_ca()).unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::app_id_of;

    #[test]
    fn ca_pem_round_trip_keeps_issuing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
        ca.save_pem(&cert, &key).unwrap();
        let back = DevCa::load_pem(&cert, &key).unwrap();
        assert_eq!(back.cert_der(), ca.cert_der());
        assert_eq!(back.cert_pem(), ca.cert_pem());
        // A leaf issued by the reloaded CA chains to the original.
        let client = back.client_identity("app-1").unwrap();
        assert_eq!(client.cert_chain.len(), 1);
        assert_eq!(app_id_of(&client.cert_chain[0]).as_deref(), Some("app-1"));
        let server = back.server_identity(&[]).unwrap();
        assert_eq!(server.cert_chain[1], ca.cert_der());
        assert_eq!(crate::load_roots(&cert).unwrap().len(), 1);
    }

    #[test]
    fn load_rejects_leaf_as_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        Identity::self_signed(&[]).unwrap().save_pem(&cert, &key).unwrap();
        assert!(matches!(DevCa::load_pem(&cert, &key), Err(LoadError::NotCa { .. })));
    }

    #[test]
    fn rejects_bad_app_ids() {
        let ca = DevCa::generate().unwrap();
        for bad in ["", "a/b", "..", "app id", "caf\u{e9}"] {
            assert!(matches!(ca.client_identity(bad), Err(GenerateError::InvalidAppId { .. })), "{bad:?}");
        }
    }

    #[test]
    fn dev_set_writes_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dev");
        let apps = vec!["orders".to_owned(), "billing".to_owned()];
        let extra = vec!["sidecar.internal".to_owned(), "10.0.0.1".to_owned()];
        let paths = write_dev_set(&out, &extra, &apps, false).unwrap();
        let names: Vec<String> = paths.iter().map(|p| p.strip_prefix(&out).unwrap().display().to_string()).collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "server.pem",
                "server-key.pem",
                "client-orders.pem",
                "client-orders-key.pem",
                "client-billing.pem",
                "client-billing-key.pem",
            ]
        );
        assert!(paths.iter().all(|p| p.is_file()));
        let server = Identity::load_pem(&out.join("server.pem"), &out.join("server-key.pem")).unwrap();
        let client = Identity::load_pem(&out.join("client-orders.pem"), &out.join("client-orders-key.pem")).unwrap();
        assert_eq!(app_id_of(&client.cert_chain[0]).as_deref(), Some("orders"));
        let before = std::fs::read(out.join("ca.pem")).unwrap();

        assert!(matches!(
            write_dev_set(&out, &extra, &apps, false),
            Err(DevSetError::Exists { path }) if path == out.join("ca.pem")
        ));
        assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), before);

        write_dev_set(&out, &extra, &apps, true).unwrap();
        assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), before);
        let again = Identity::load_pem(&out.join("server.pem"), &out.join("server-key.pem")).unwrap();
        assert_ne!(again.fingerprint(), server.fingerprint());
    }
}
