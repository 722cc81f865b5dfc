//! Bad input on the callback port, end to end with the real `dialbackd` and
//! echo app: garbage bytes and datagrams, the wrong ALPN, an oversized hello,
//! a hello that never finishes, a future handshake version, and a flood of
//! idle connections each get a clear refusal or a clean close within the
//! handshake timeout, and the live channel is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use dialback_certs::{Fingerprint, ServerTrust};
use dialback_channel::{
    Credential, DialConfig, DialError, Dialer, Hello, RefusalReason, Timeouts, Transport, Verdict, handshake,
};
use dialback_e2e::{App, AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call, metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A sidecar that gives up on a handshake after 1 s, and an echo app
/// connected to it over `transport`; returns them and the live channel's id.
async fn live(transport: &str) -> (Sidecar, App, u64) {
    let sc = SidecarBuilder::callback("echo").args(["--callback-handshake-timeout", "1s"]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    let line = app.wait_line("echo: connected").await;
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("channel_id="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no channel_id in {line:?}"));
    eventually(&format!("metadata showing channel {id} connected"), PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        (md["appChannel"]["state"] == "connected" && md["appChannel"]["channelId"] == id).then_some(())
    })
    .await;
    (sc, app, id)
}

/// The live channel is still channel `id` of `app`, never replaced or
/// reconnected, and calls still reach the app over it.
async fn assert_untouched(sc: &Sidecar, app: &App, id: u64, transport: &str, after: &str) {
    let md = metadata(sc.http).await.unwrap();
    let ch = &md["appChannel"];
    assert_eq!(ch["state"], "connected", "after {after}: {ch}");
    assert_eq!(ch["channelId"], id, "after {after}, the live channel changed: {ch}");
    assert_eq!(ch["instance"], format!("pid {}", app.pid()), "after {after}: {ch}");
    assert_eq!(ch["reconnects"], 0, "after {after}, the app reconnected: {ch}");
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/whoami", sc.http_base()), &[], "").await.unwrap();
    assert_eq!((r.status, r.text()), (200, transport.to_string()), "whoami after {after}");
}

fn callback(sc: &Sidecar) -> SocketAddr {
    sc.callback.expect("the ready line names the callback address")
}

/// The TLS config an app would use: the sidecar's certificate pinned, ALPN `dialback/1`.
fn tls(sc: &Sidecar) -> rustls::ClientConfig {
    let pin = Fingerprint::from_hex(sc.cert_sha256.as_deref().expect("the ready line names cert_sha256")).unwrap();
    dialback_certs::client_config(&ServerTrust::Pinned(pin), None).unwrap()
}

/// `len` bytes from a fixed-seed xorshift: "random", yet the same every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// Connects over TCP, sends `bytes` (no TLS), and reads until the sidecar
/// closes the connection (EOF or reset); panics if it stays open for PATIENCE.
async fn tcp_garbage_is_closed(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The sidecar may close before taking it all; a failed write is fine too.
    let _ = s.write_all(bytes).await;
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a TLS alert
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: the sidecar kept the connection open for {PATIENCE:?}");
}

/// TLS over TCP by hand (blocking rustls: this crate has no async TLS
/// client), sending `bytes` after the TLS handshake and returning all the
/// sidecar sends back until it closes the connection.
async fn tcp_tls_exchange(addr: SocketAddr, tls: rustls::ClientConfig, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let sock = std::net::TcpStream::connect_timeout(&addr, PATIENCE)?;
        sock.set_read_timeout(Some(PATIENCE))?;
        sock.set_write_timeout(Some(PATIENCE))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(tls), name).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        s.write_all(&bytes)?;
        s.flush()?;
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => Ok(got),
            // A close without close_notify still ends the exchange.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(got),
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap()
}

/// A QUIC connection made by hand with `tls`, from its own loopback endpoint.
async fn quic_connect(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> (quinn::Endpoint, Result<quinn::Connection, quinn::ConnectionError>) {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(LOOPBACK, 0)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(addr, "localhost").unwrap();
    let r = tokio::time::timeout(PATIENCE, connecting).await.expect("the QUIC handshake neither finished nor failed");
    (endpoint, r)
}

/// Opens the first stream on a fresh QUIC connection, sends `bytes`, and
/// reads the sidecar's verdict.
async fn quic_exchange(sc: &Sidecar, bytes: &[u8]) -> Verdict {
    let (_endpoint, conn) = quic_connect(callback(sc), tls(sc)).await;
    let conn = conn.expect("QUIC handshake");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let verdict = tokio::time::timeout(PATIENCE, handshake::read::<Verdict, _>(&mut recv))
        .await
        .expect("no verdict within PATIENCE");
    verdict.unwrap_or_else(|e| panic!("reading the verdict failed: {e}; connection: {:?}", conn.close_reason()))
}

/// Sends `bytes` where the hello belongs, over `transport`, and reads the verdict.
async fn exchange(sc: &Sidecar, transport: Transport, bytes: &[u8]) -> Verdict {
    match transport {
        Transport::Quic => quic_exchange(sc, bytes).await,
        Transport::TcpTls => {
            let got = tcp_tls_exchange(callback(sc), tls(sc), bytes.to_vec()).await.expect("TLS over TCP");
            handshake::read::<Verdict, _>(&mut got.as_slice())
                .await
                .unwrap_or_else(|e| panic!("no verdict in the {} bytes the sidecar sent: {e}", got.len()))
        }
    }
}

fn assert_refused(v: &Verdict, want: RefusalReason, needles: &[&str], what: &str) {
    assert!(!v.accepted, "{what}: accepted as channel {}", v.channel_id);
    assert_eq!(v.reason(), want, "{what}: refused for the wrong reason; message: {:?}", v.message);
    for needle in needles {
        assert!(v.message.contains(needle), "{what}: the message {:?} does not mention {needle:?}", v.message);
    }
}

/// (a) Plain-text HTTP/1 and 4 KiB of noise on the TCP port: closed by the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tcp_port_is_closed() {
    let (sc, app, id) = live("tcp").await;
    let http1 = b"GET /v1.0/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tcp_garbage_is_closed(callback(&sc), http1, "an HTTP/1 request").await;
    assert_untouched(&sc, &app, id, "tcp", "an HTTP/1 request").await;
    tcp_garbage_is_closed(callback(&sc), &noise(4096), "4 KiB of noise").await;
    assert_untouched(&sc, &app, id, "tcp", "4 KiB of noise").await;
}

/// (a) Noise datagrams on the QUIC port are dropped; the QUIC channel lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_on_the_quic_port_are_ignored() {
    let (sc, app, id) = live("quic").await;
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).await.unwrap();
    let data = noise(4096);
    for chunk in data.chunks(1200) {
        sock.send_to(chunk, callback(&sc)).await.unwrap();
    }
    // A QUIC Initial-looking datagram of noise, padded to the minimum size.
    let mut initial = vec![0xc3, 0, 0, 0, 1];
    initial.extend_from_slice(&noise(1195));
    sock.send_to(&initial, callback(&sc)).await.unwrap();
    // A real handshake after the noise still works: the endpoint is fine.
    let (_e, conn) = quic_connect(callback(&sc), tls(&sc)).await;
    conn.expect("a QUIC handshake after the noise");
    assert_untouched(&sc, &app, id, "quic", "noise datagrams").await;
}

/// (b) The wrong ALPN fails the TLS handshake, over QUIC and TCP; no ALPN
/// at all never makes a channel either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_alpn_fails_the_handshake() {
    let (sc, app, id) = live("quic").await;
    let mut h3 = tls(&sc);
    h3.alpn_protocols = vec![b"h3".to_vec()];

    let (_e, r) = quic_connect(callback(&sc), h3.clone()).await;
    match r {
        Ok(_) => panic!("a QUIC handshake with ALPN h3 succeeded"),
        Err(e) => {
            let text = e.to_string().to_lowercase();
            assert!(
                text.contains("protocol") || text.contains("alpn") || text.contains("crypto"),
                "QUIC with ALPN h3 failed unclearly: {e}"
            );
        }
    }
    assert_untouched(&sc, &app, id, "quic", "QUIC with ALPN h3").await;

    let r = tcp_tls_exchange(callback(&sc), h3, Vec::new()).await;
    let e = r.expect_err("a TLS handshake over TCP with ALPN h3 succeeded");
    assert!(e.to_string().to_lowercase().contains("protocol"), "TCP with ALPN h3 failed unclearly: {e}");
    assert_untouched(&sc, &app, id, "quic", "TCP with ALPN h3").await;

    // No ALPN: TLS may allow it, the hello may not.
    let mut none = tls(&sc);
    none.alpn_protocols.clear();
    let good_hello = Hello {
        version: handshake::VERSION,
        app_id: "echo".into(),
        credential: Some(Credential::OneTimeToken("00".repeat(32))),
        instance: "e2e no ALPN".into(),
        ..Default::default()
    };
    let bytes = handshake::encode(&good_hello).to_vec();
    match tcp_tls_exchange(callback(&sc), none.clone(), bytes).await {
        Ok(got) => {
            let v = handshake::read::<Verdict, _>(&mut got.as_slice()).await.expect("a verdict");
            assert_refused(&v, RefusalReason::WrongProtocol, &["dialback/1"], "TCP without ALPN");
        }
        Err(e) => assert!(e.to_string().to_lowercase().contains("protocol"), "TCP without ALPN failed unclearly: {e}"),
    }
    assert_untouched(&sc, &app, id, "quic", "TCP without ALPN").await;
    let config = DialConfig {
        addr: callback(&sc),
        server_name: "localhost".into(),
        tls: Arc::new(none),
        timeouts: Timeouts { handshake: PATIENCE, ..Timeouts::default() },
        congestion: Default::default(),
    };
    match Dialer::new(Some(LOOPBACK)).dial(Transport::Quic, &config, &good_hello).await {
        Ok((ch, _)) => panic!("QUIC without ALPN: accepted as channel {}", ch.info.channel_id),
        Err(DialError::Refused { reason, message }) => {
            assert_eq!(reason, RefusalReason::WrongProtocol, "QUIC without ALPN: {message}")
        }
        Err(_) => {} // the TLS handshake itself failed: also clean
    }
    assert_untouched(&sc, &app, id, "quic", "QUIC without ALPN").await;
}

/// (c) A hello whose length prefix announces 1 MiB is refused as Malformed, naming the limit.
async fn an_oversized_hello_is_malformed(transport: Transport) {
    let (sc, app, id) = live(transport.as_str()).await;
    let prefix = (1u32 << 20).to_be_bytes();
    let v = exchange(&sc, transport, &prefix).await;
    let max = handshake::MAX_FRAME.to_string();
    assert_refused(&v, RefusalReason::Malformed, &["limit", &max], &format!("a 1 MiB hello over {transport}"));
    assert_untouched(&sc, &app, id, transport.as_str(), "an oversized hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_malformed_quic() {
    an_oversized_hello_is_malformed(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_malformed_tcp() {
    an_oversized_hello_is_malformed(Transport::TcpTls).await;
}

/// (d) Two bytes of a length prefix and then silence: a HandshakeTimeout verdict, then a close.
async fn an_unfinished_hello_times_out(transport: Transport) {
    let (sc, app, id) = live(transport.as_str()).await;
    let v = exchange(&sc, transport, &[0, 0]).await;
    assert_refused(&v, RefusalReason::HandshakeTimeout, &["hello"], &format!("an unfinished hello over {transport}"));
    assert_untouched(&sc, &app, id, transport.as_str(), "an unfinished hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_hello_times_out_quic() {
    an_unfinished_hello_times_out(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_hello_times_out_tcp() {
    an_unfinished_hello_times_out(Transport::TcpTls).await;
}

/// (e) A hello of handshake version 2 is refused as UnsupportedVersion.
async fn a_future_version_is_unsupported(transport: Transport) {
    let (sc, app, id) = live(transport.as_str()).await;
    let config = DialConfig {
        addr: callback(&sc),
        server_name: "localhost".into(),
        tls: Arc::new(tls(&sc)),
        timeouts: Timeouts { handshake: PATIENCE, ..Timeouts::default() },
        congestion: Default::default(),
    };
    let v2 = Hello {
        version: 2,
        app_id: "echo".into(),
        credential: Some(Credential::OneTimeToken("00".repeat(32))),
        instance: "e2e version 2".into(),
        ..Default::default()
    };
    match Dialer::new(Some(LOOPBACK)).dial(transport, &config, &v2).await {
        Err(DialError::Refused { reason, message }) => {
            assert_eq!(reason, RefusalReason::UnsupportedVersion, "version 2 over {transport}: {message}");
            assert!(message.contains("version"), "version 2 over {transport}: unclear message {message:?}");
        }
        Ok((ch, _)) => panic!("version 2 over {transport}: accepted as channel {}", ch.info.channel_id),
        Err(e) => panic!("version 2 over {transport}: expected an UnsupportedVersion refusal, got: {e}"),
    }
    assert_untouched(&sc, &app, id, transport.as_str(), "a version 2 hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_version_is_unsupported_quic() {
    a_future_version_is_unsupported(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_version_is_unsupported_tcp() {
    a_future_version_is_unsupported(Transport::TcpTls).await;
}

/// (f) 50 idle TCP connections holding handshake slots do not keep a real app out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_keep_a_real_app_out() {
    // A long handshake timeout keeps the idle connections pending while the app dials.
    let sc = SidecarBuilder::callback("echo").args(["--callback-handshake-timeout", "30s"]).spawn().await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(callback(&sc)).await.unwrap());
    }
    let mut app = AppBuilder::echo(sc.grpc).transport("tcp").spawn();
    let line = app.wait_line("echo: connected").await;
    assert!(line.contains("transport=tcp"), "{line}");
    eventually("metadata showing the app connected", PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        (md["appChannel"]["state"] == "connected" && md["appChannel"]["instance"] == format!("pid {}", app.pid()))
            .then_some(())
    })
    .await;
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/whoami", sc.http_base()), &[], "").await.unwrap();
    assert_eq!((r.status, r.text()), (200, "tcp".to_string()));
    drop(idle);
}
