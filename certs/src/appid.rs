//! App ids carried in client certificates.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::GenerateError;

const SPIFFE_SCHEME: &str = "spiffe://";

/// The SPIFFE id a [`DevCa`](crate::DevCa) client certificate carries for `app_id`:
/// `spiffe://public/ns/default/<app_id>` (Dapr's shape); never fails.
pub fn spiffe_id(app_id: &str) -> String {
    format!("{SPIFFE_SCHEME}public/ns/default/{app_id}")
}

/// The app-id a client certificate names: last path segment of a spiffe:// URI SAN of shape
/// `spiffe://<td>/ns/<ns>/<app_id>`, else the subject CN; None if neither or if the
/// certificate does not parse.
pub fn app_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let from_uri = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => app_id_of_spiffe(uri),
            _ => None,
        });
        if from_uri.is_some() {
            return from_uri;
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned)
}

/// `<app_id>` from `spiffe://<td>/ns/<ns>/<app_id>`.
fn app_id_of_spiffe(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(SPIFFE_SCHEME)?;
    let mut segments = rest.split('/');
    match (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()) {
        (Some(td), Some("ns"), Some(ns), Some(app_id), None)
            if !td.is_empty() && !ns.is_empty() && !app_id.is_empty() =>
        {
            Some(app_id.to_owned())
        }
        _ => None,
    }
}

/// Checks that `app_id` is a valid SPIFFE path segment.
pub(crate) fn validate(app_id: &str) -> Result<(), GenerateError> {
    let reason = if app_id.is_empty() {
        Some("empty")
    } else if app_id == "." || app_id == ".." {
        Some("a relative path segment")
    } else if !app_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        Some("only ASCII letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(GenerateError::InvalidAppId { app_id: app_id.to_owned(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{DevCa, Identity};

    #[test]
    fn spiffe_shapes() {
        assert_eq!(app_id_of_spiffe("spiffe://public/ns/default/orders").as_deref(), Some("orders"));
        assert_eq!(app_id_of_spiffe("spiffe://cluster.local/ns/prod/billing").as_deref(), Some("billing"));
        for bad in [
            "spiffe://public/ns/default/",
            "spiffe://public/ns/default/a/b",
            "spiffe://public/xx/default/a",
            "spiffe:///ns/default/a",
            "https://public/ns/default/a",
        ] {
            assert_eq!(app_id_of_spiffe(bad), None, "{bad}");
        }
    }

    #[test]
    fn app_id_of_client_and_server_certs() {
        let ca = DevCa::generate().unwrap();
        let client = ca.client_identity("orders").unwrap();
        assert_eq!(app_id_of(&client.cert_chain[0]).as_deref(), Some("orders"));

        // Server certificates carry no SPIFFE id; their CN is what remains.
        let server = ca.server_identity(&["localhost".into()]).unwrap();
        assert_eq!(app_id_of(&server.cert_chain[0]).as_deref(), Some(crate::params::SERVER_CN));
        let self_signed = Identity::self_signed(&[]).unwrap();
        assert_eq!(app_id_of(&self_signed.cert_chain[0]).as_deref(), Some(crate::params::SERVER_CN));
        assert_eq!(app_id_of(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
