//! What generated certificates are made of: fresh keys, and the parameters
//! of a server leaf. Shared by [`crate::Identity::self_signed`] and the dev CA.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{DEFAULT_SERVER_NAME, GenerateError};

/// Common name of generated server certificates.
pub(crate) const SERVER_CN: &str = "dialback sidecar";

/// A fresh ECDSA P-256 key pair.
pub(crate) fn generate_key() -> Result<KeyPair, GenerateError> {
    KeyPair::generate().map_err(GenerateError::KeyPair)
}

/// The PKCS#8 DER of `key`.
pub(crate) fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// Leaf parameters for a server certificate naming `server_names`.
pub(crate) fn server_params(server_names: &[String]) -> Result<CertificateParams, GenerateError> {
    let default = [DEFAULT_SERVER_NAME.to_owned()];
    let names = if server_names.is_empty() { &default[..] } else { server_names };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, SERVER_CN);
    params.subject_alt_names = names.iter().map(|name| san_of(name)).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// An IP SAN for an IP literal (optionally bracketed), else a DNS SAN.
fn san_of(name: &str) -> Result<SanType, GenerateError> {
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    name.try_into().map(SanType::DnsName).map_err(|source| GenerateError::InvalidName { name: name.to_owned(), source })
}
