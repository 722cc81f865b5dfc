//! Real TLS 1.3 handshakes between the configs, driven in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![cfg(feature = "mint")]

use std::sync::Arc;

use dialback_certs::{
    ALPN, DEFAULT_SERVER_NAME, DevCa, Fingerprint, Identity, PinMismatchError, ServerTrust, app_id_of, client_config,
    server_config,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};

#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Moves every pending record from `from` to `to`, processing them at `to`.
fn pump(from: &mut Connection, to: &mut Connection) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(!buf.is_empty())
}

/// Runs a handshake to completion; returns both connections.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
    name: &str,
) -> Result<(Connection, Connection), Failed> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = Connection::from(ClientConnection::new(Arc::new(client), name).unwrap());
    let mut s = Connection::from(ServerConnection::new(Arc::new(server)).unwrap());
    for _ in 0..10 {
        let sent_c = pump(&mut c, &mut s).map_err(Failed::Server)?;
        let sent_s = pump(&mut s, &mut c).map_err(Failed::Client)?;
        if !sent_c && !sent_s && !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish");
}

fn local_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

#[test]
fn pinned_correct_fingerprint_succeeds() {
    let server = Identity::self_signed(&local_names()).unwrap();
    let trust = ServerTrust::Pinned(server.fingerprint());
    let (c, s) =
        handshake(client_config(&trust, None).unwrap(), server_config(&server, None).unwrap(), DEFAULT_SERVER_NAME)
            .unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn_protocol(), Some(ALPN));
    assert_eq!(s.alpn_protocol(), Some(ALPN));
    // The pin, not the name, is the identity: any name (even an IP) works.
    handshake(client_config(&trust, None).unwrap(), server_config(&server, None).unwrap(), "10.9.8.7").unwrap();
}

#[test]
fn pinned_wrong_fingerprint_fails() {
    let server = Identity::self_signed(&local_names()).unwrap();
    let wrong = Fingerprint([0x42; 32]);
    let err = handshake(
        client_config(&ServerTrust::Pinned(wrong), None).unwrap(),
        server_config(&server, None).unwrap(),
        DEFAULT_SERVER_NAME,
    )
    .unwrap_err();
    let Failed::Client(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = err else {
        panic!("unexpected error {err:?}");
    };
    let mismatch = other.0.downcast_ref::<PinMismatchError>().unwrap();
    assert_eq!(mismatch.expected, wrong);
    assert_eq!(mismatch.actual, server.fingerprint());
}

#[test]
fn roots_with_dev_ca_succeeds_and_checks_name() {
    let ca = DevCa::generate().unwrap();
    let server = ca.server_identity(&local_names()).unwrap();
    let trust = ServerTrust::Roots(Arc::new(ca.roots()));
    let (c, _) =
        handshake(client_config(&trust, None).unwrap(), server_config(&server, None).unwrap(), "localhost").unwrap();
    assert_eq!(c.alpn_protocol(), Some(ALPN));
    handshake(client_config(&trust, None).unwrap(), server_config(&server, None).unwrap(), "127.0.0.1").unwrap();
    let err = handshake(client_config(&trust, None).unwrap(), server_config(&server, None).unwrap(), "example.com")
        .unwrap_err();
    assert!(matches!(err, Failed::Client(rustls::Error::InvalidCertificate(_))), "{err:?}");

    // Another CA's roots do not trust this server.
    let other = ServerTrust::Roots(Arc::new(DevCa::generate().unwrap().roots()));
    assert!(
        handshake(client_config(&other, None).unwrap(), server_config(&server, None).unwrap(), "localhost",).is_err()
    );
}

#[test]
fn mtls_names_the_app() {
    let ca = DevCa::generate().unwrap();
    let server = ca.server_identity(&local_names()).unwrap();
    let client = ca.client_identity("orders").unwrap();
    let roots = Arc::new(ca.roots());
    let (c, s) = handshake(
        client_config(&ServerTrust::Roots(roots.clone()), Some(&client)).unwrap(),
        server_config(&server, Some(roots.clone())).unwrap(),
        "localhost",
    )
    .unwrap();
    let peer = s.peer_certificates().unwrap();
    assert_eq!(app_id_of(&peer[0]).as_deref(), Some("orders"));
    assert_eq!(s.alpn_protocol(), Some(ALPN));
    assert_eq!(c.alpn_protocol(), Some(ALPN));

    // Client certificates are optional: a token-only app still connects.
    let (_, s) = handshake(
        client_config(&ServerTrust::Pinned(server.fingerprint()), None).unwrap(),
        server_config(&server, Some(roots.clone())).unwrap(),
        "localhost",
    )
    .unwrap();
    assert!(s.peer_certificates().is_none());

    // A client certificate from another CA is rejected.
    let stranger = DevCa::generate().unwrap().client_identity("orders").unwrap();
    let err = handshake(
        client_config(&ServerTrust::Roots(roots.clone()), Some(&stranger)).unwrap(),
        server_config(&server, Some(roots)).unwrap(),
        "localhost",
    )
    .unwrap_err();
    assert!(matches!(err, Failed::Server(rustls::Error::InvalidCertificate(_))), "{err:?}");
}

#[test]
fn server_config_rejects_empty_roots() {
    let server = Identity::self_signed(&[]).unwrap();
    assert!(server_config(&server, Some(Arc::new(rustls::RootCertStore::empty()))).is_err());
}

/// A session resumes across a restarted server that keeps its ticket
/// secret, and the resumed server knows the client's certificate as soon as
/// it has read the ClientHello, a flight before the client's Finished: what
/// lets a sidecar send calls in its first flight (docs/architecture.md).
#[test]
fn a_restarted_server_resumes_and_knows_the_client_from_the_client_hello() {
    let ca = DevCa::generate().unwrap();
    let server = Identity::self_signed(&local_names()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // As an app does: its own key, certified by the sidecar's CA.
    let key = dialback_certs::ClientKey::generate().unwrap();
    let cert = ca.client_certificate_for("orders", key.public_key_der(), now - 3600, now + 86_400).unwrap();
    let client = key.identity(cert.to_vec());
    let slot = Arc::new(dialback_certs::ClientCertSlot::default());
    slot.set(&client).unwrap();
    let roots = Arc::new(ca.roots());
    let secret = [9u8; 32];
    let server_config = |secret: &[u8; 32]| {
        let mut config = server_config(&server, Some(roots.clone())).unwrap();
        config.ticketer = Arc::new(dialback_certs::SealedTickets::new(secret));
        Arc::new(config)
    };
    let mut client = client_config(&ServerTrust::Pinned(server.fingerprint()), None).unwrap();
    slot.install(&mut client);
    let client = Arc::new(client);
    let name = ServerName::try_from("localhost").unwrap();
    let run = |server: Arc<rustls::ServerConfig>| {
        let mut c = Connection::from(ClientConnection::new(client.clone(), name.clone()).unwrap());
        let mut s = Connection::from(ServerConnection::new(server).unwrap());
        // The ClientHello only.
        assert!(pump(&mut c, &mut s).unwrap());
        let early = s.peer_certificates().map(|p| app_id_of(&p[0]));
        for _ in 0..10 {
            let sent_s = pump(&mut s, &mut c).unwrap();
            let sent_c = pump(&mut c, &mut s).unwrap();
            if !sent_c && !sent_s && !c.is_handshaking() && !s.is_handshaking() {
                return (early, s.handshake_kind(), s.peer_certificates().map(|p| app_id_of(&p[0])));
            }
        }
        panic!("handshake did not finish");
    };
    let (early, kind, after) = run(server_config(&secret));
    assert_eq!((early, kind), (None, Some(rustls::HandshakeKind::Full)), "the first handshake is a full one");
    assert_eq!(after, Some(Some("orders".into())));
    // A new server (a restart) with the same secret resumes the session,
    // and again and again: a resumed session's tickets name the app too.
    for restart in 0..5 {
        let (early, kind, _) = run(server_config(&secret));
        assert_eq!(kind, Some(rustls::HandshakeKind::Resumed), "restart {restart}");
        assert_eq!(early, Some(Some("orders".into())), "the resumed session names the app at the ClientHello");
    }
    // A renewed certificate (as a verdict gives) in the same slot keeps
    // the sessions: rustls resumes only with the config objects it made
    // them with.
    let renewed = ca.client_certificate_for("orders", key.public_key_der(), now - 3600, now + 86_400).unwrap();
    slot.set(&key.identity(renewed.to_vec())).unwrap();
    let (early, kind, _) = run(server_config(&secret));
    assert_eq!((early, kind), (Some(Some("orders".into())), Some(rustls::HandshakeKind::Resumed)), "renewed");
    // With another secret (the state dir lost) the ticket is not taken.
    let (early, kind, _) = run(server_config(&[10u8; 32]));
    assert_eq!((early, kind), (None, Some(rustls::HandshakeKind::Full)));
}
