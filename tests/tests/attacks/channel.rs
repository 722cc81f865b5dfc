//! Attacks on the callback port and the channel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dialback_channel::{Credential, DialError, RefusalReason, Transport};
use dialback_e2e::{AppBuilder, PATIENCE, SidecarBuilder, eventually, metadata, proc_status_kib};
use tokio::io::AsyncWriteExt;

use crate::kit::{ATTACKER, Live, assert_caller_undisturbed, channel_id_of, dial, hello, one_time_token, pinned_tls};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BOTH: [Transport; 2] = [Transport::Quic, Transport::TcpTls];

/// Finding 2: a process that gets a one-time token, sends a valid hello and
/// then dies (or a replica that crashes right after connecting, or one that
/// never answers a Ping) never displaces the healthy app: a channel is
/// installed only once it has served HTTP/2 and answered a Ping.
async fn a_dial_that_dies_after_its_hello_never_displaces_the_app(transport: Transport) {
    let live = Live::start(SidecarBuilder::callback("echo"), transport.as_str(), &[]).await;
    let calls = live.steady_caller();
    for round in 0..3 {
        let token = one_time_token(&live.sc, None).await;
        let ch = dial(&live.sc, LOOPBACK, transport, &hello(Credential::OneTimeToken(token), false))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the hello itself should be accepted: {e}"));
        // The "replica" dies at once: nothing on the channel ever answers.
        drop(ch);
    }
    // And one that speaks HTTP/2 garbage instead.
    let token = one_time_token(&live.sc, None).await;
    let ch = dial(&live.sc, LOOPBACK, transport, &hello(Credential::OneTimeToken(token), false)).await.unwrap();
    let mut io = ch.io;
    let _ = io.write_all(b"this is not HTTP/2 at all, and it goes on for a while................").await;
    let _ = io.flush().await;
    // The dead channels are refused as unproven, and the sidecar says so.
    let log = eventually("the sidecar to give up on the unproven channels", PATIENCE, || async {
        let log = live.sc.log();
        (log.matches("new app channel not installed").count() >= 4).then_some(log)
    })
    .await;
    assert!(log.contains("HTTP/2"), "the garbage channel's reason names HTTP/2:\n{}", live.sc.log_tail());
    live.assert_untouched("dials that died after their hello").await;
    assert_caller_undisturbed(calls, "dials that died after their hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_dies_after_its_hello_never_displaces_the_app_quic() {
    a_dial_that_dies_after_its_hello_never_displaces_the_app(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_dies_after_its_hello_never_displaces_the_app_tcp() {
    a_dial_that_dies_after_its_hello_never_displaces_the_app(Transport::TcpTls).await;
}

/// While an app is live, the sidecar sends every QUIC connection that
/// speaks `dialback/2` a Ping probe in its first flight, before anyone is
/// known (a new app process answers it with its hello and displaces its
/// dead predecessor a round trip sooner). A stranger gets that probe and
/// nothing else: it reads it, says a hello with a made-up token, is
/// refused, and neither the app nor its callers notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_probed_before_its_hello_gains_nothing() {
    use tokio::io::AsyncReadExt;
    let live = Live::start(SidecarBuilder::callback("echo"), "quic", &[]).await;
    let calls = live.steady_caller();
    for round in 0..3 {
        let quic = dialback_channel::Transports { quic: true, tcp: false };
        let pending = dialback_channel::Dialer::new(Some(LOOPBACK))
            .connect_any(quic, Duration::ZERO, &crate::kit::dial_config(&live.sc))
            .await
            .unwrap();
        let early = pending.early_connection().expect("dialback/2 negotiated");
        let mut probe = tokio::time::timeout(PATIENCE, early.accept_stream())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no probe before the hello"))
            .expect("the connection is up");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, probe.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "round {round}: the probe stream carried nothing");
        let bogus = hello(Credential::OneTimeToken("made-up".into()), false);
        match pending.hello(&bogus).await {
            Err(DialError::Refused { .. }) => {}
            other => panic!("round {round}: a made-up token was not refused: {:?}", other.map(|_| ())),
        }
    }
    live.assert_untouched("strangers probed before their hello").await;
    assert_caller_undisturbed(calls, "strangers probed before their hello").await;
}

/// Finding 2, second half: a replaced app does not stop forever. While the
/// instance that replaced it lives, it stands by without taking the channel
/// back (two real replicas do not fight); when that one dies, it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_app_comes_back_when_its_replacement_dies() {
    let live = Live::start(SidecarBuilder::callback("echo"), "quic", &["--standby-probe-ms", "200"]).await;
    let mut a = live.app;
    let mut b = AppBuilder::echo(live.sc.grpc).transport("quic").args(["--standby-probe-ms", "200"]).spawn();
    let b_id = channel_id_of(&b.wait_line("echo: connected").await);
    a.wait_line("echo: replaced").await;
    let md = eventually("metadata showing B live", PATIENCE, || async {
        let md = metadata(live.sc.http).await.ok()?;
        (md["appChannel"]["channelId"] == b_id).then_some(md)
    })
    .await;
    assert_eq!(md["appChannel"]["instance"], format!("pid {}", b.pid()));
    // A stands by, probing every ~200 ms, and does not take the channel back
    // while B is alive: wait for a good number of A's probes to be refused.
    eventually("A's standby probes refused while B is live", PATIENCE, || async {
        (a.log().matches("standing by: the channel is not free").count() >= 5).then_some(())
    })
    .await;
    let md = metadata(live.sc.http).await.unwrap();
    assert_eq!(md["appChannel"]["channelId"], b_id, "A took the channel from a live B: {}", md["appChannel"]);
    assert_eq!(md["appChannel"]["reconnects"], 1, "{}", md["appChannel"]);
    // B dies: A comes back by itself.
    b.kill().await;
    let a_id = channel_id_of(&a.wait_line("echo: connected").await);
    let md = eventually("metadata showing A live again", PATIENCE, || async {
        let md = metadata(live.sc.http).await.ok()?;
        (md["appChannel"]["channelId"] == a_id && md["appChannel"]["state"] == "connected").then_some(md)
    })
    .await;
    assert_eq!(md["appChannel"]["instance"], format!("pid {}", a.pid()));
    let r = dialback_e2e::http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", live.sc.http_base()), &[], "back")
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "back".to_string()));
}

/// Finding 10 (second half): a one-time token is spent by its first
/// presentation, whatever the outcome: after a hello for the wrong app-id
/// (or with the wrong version) the same token is refused as used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_spends_its_one_time_token() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    for transport in BOTH {
        for spoil in ["wrong app-id", "wrong version"] {
            let token = one_time_token(&sc, None).await;
            let mut bad = hello(Credential::OneTimeToken(token.clone()), false);
            match spoil {
                "wrong app-id" => bad.app_id = "intruder".into(),
                _ => bad.version = 99,
            }
            let r = dial(&sc, LOOPBACK, transport, &bad).await;
            assert!(matches!(r, Err(DialError::Refused { .. })), "{spoil} over {transport}: {:?}", r.err());
            match dial(&sc, LOOPBACK, transport, &hello(Credential::OneTimeToken(token), true)).await {
                Err(DialError::Refused { reason: RefusalReason::TokenUsed, .. }) => {}
                other => {
                    panic!("the token after a {spoil} hello over {transport}: {:?}", other.map(|c| c.info.channel_id))
                }
            }
        }
    }
}

/// Finding 5: strangers holding the callback port's handshake slots (TCP
/// connections that never send a ClientHello, QUIC Initials that never
/// complete) from one address cannot lock out a legitimate hello from
/// another, and the flood is logged in a few rate-limited lines, not one
/// line per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_does_not_lock_out_legitimate_hellos() {
    // Default bounds: 128 handshakes per transport, 16 per source address.
    let live = Live::start(SidecarBuilder::callback("echo"), "quic", &[]).await;
    let calls = live.steady_caller();
    let callback = live.sc.callback.unwrap();
    let warns_before = live.sc.log().matches(" WARN ").count();
    let stop = tokio_util_stop();
    let floods = vec![
        tokio::spawn(tcp_holders(callback, 300, stop.clone())),
        tokio::spawn(quic_initials(callback, 300, stop.clone())),
    ];
    // Let the flood build up: well over the slots of both transports.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for transport in BOTH {
        for round in 0..5 {
            let token = one_time_token(&live.sc, None).await;
            // A standby hello: proves the handshake got through (the verdict
            // is "slot taken") without displacing the live app.
            match dial(&live.sc, LOOPBACK, transport, &hello(Credential::OneTimeToken(token), true)).await {
                Err(DialError::Refused { reason: RefusalReason::SlotTaken, .. }) => {}
                other => panic!(
                    "a legitimate hello over {transport} during the flood (round {round}): {:?}\n{}",
                    other.map(|c| c.info.channel_id),
                    live.sc.log_tail()
                ),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened: usize = futures_util::future::join_all(floods).await.into_iter().map(|r| r.unwrap()).sum();
    assert!(opened > 600, "the flood opened only {opened} connections");
    let warns = live.sc.log().matches(" WARN ").count() - warns_before;
    assert!(warns < 100, "{warns} WARN lines for a flood of {opened} connections: logging is not rate-limited");
    live.assert_untouched("the handshake flood").await;
    assert_caller_undisturbed(calls, "the handshake flood").await;
}

/// The connection IDs in the sidecar's record of its QUIC app.
fn recorded_cids(path: &std::path::Path) -> Option<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().filter_map(|l| l.strip_prefix("cid ")).map(str::to_string).collect())
}

/// Found by the soak run: every QUIC handshake a stranger starts (refused,
/// retried or never completed) costs the sidecar a connection ID, and a
/// flood of them pushed the live app's ID out of those a restarted sidecar
/// resets, so a quiet app learnt of the restart only at its next keepalive.
/// With keepalives 90 s apart, only the restarted sidecar's resets can tell
/// the app in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_does_not_keep_a_restarted_sidecar_from_resetting_its_app() {
    let slow =
        ["--callback-keepalive-interval", "90s", "--callback-idle-timeout", "300s", "--callback-ping-interval", "90s"];
    let app_slow = ["--keepalive-ms", "90000", "--idle-timeout-ms", "300000"];
    let mut live = Live::start(SidecarBuilder::callback("echo").args(slow), "quic", &app_slow).await;
    let peers = live.sc.state_dir.join("quic-peers");
    // Once the app is on record, the sidecar watches its address; a call
    // then shows which connection ID the app's packets carry.
    eventually("the QUIC app on record", PATIENCE, || async {
        std::fs::read_to_string(&peers).ok()?.contains("peer ").then_some(())
    })
    .await;
    assert_eq!(live.call("m", "before the flood").await.0, 200);
    let before = recorded_cids(&peers).unwrap_or_default();
    // Handshakes that never complete (the stranger rejects the sidecar's
    // certificate), in rounds until every ID on record before the flood has
    // been pushed out of the log (the live app's excepted, which the sidecar
    // keeps apart).
    let callback = live.sc.callback.unwrap();
    eventually("the flood to push the earlier IDs off the record", PATIENCE, || async {
        failed_dials(callback, 100).await;
        let now = recorded_cids(&peers)?;
        (now.len() >= 200 && now.intersection(&before).count() <= 1).then_some(())
    })
    .await;
    let downs = live.app.downs();
    live.sc.kill().await;
    let sc2 = live.sc.restart().await;
    live.app.wait_down(downs).await;
    assert_eq!(live.app.wait_connected().await, "quic");
    let r = dialback_e2e::http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc2.http_base()), &[], "after")
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "after".to_string()));
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// Keeps `n` TCP connections from the attacker's address open to `addr`
/// (re-opening those the sidecar closes) without ever sending a byte, until
/// `stop`; returns how many it opened.
async fn tcp_holders(addr: SocketAddr, n: usize, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut opened = 0;
    let mut held: Vec<tokio::net::TcpStream> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Drop those the sidecar closed (EOF or error); keep the rest.
        held.retain(|s| {
            let mut b = [0u8; 1];
            match s.try_read(&mut b) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        while held.len() < n {
            match crate::kit::tcp_from_attacker(addr).await {
                Ok(s) => {
                    held.push(s);
                    opened += 1;
                }
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    opened
}

/// Sends QUIC Initials from `n` fresh attacker sockets (a real client's
/// first flight, captured by a tap that never answers what comes back), in
/// rounds until `stop`; returns how many it sent.
async fn quic_initials(addr: SocketAddr, n: usize, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let initial = capture_initial().await;
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut socks = Vec::new();
        for _ in 0..n {
            if let Ok(s) = tokio::net::UdpSocket::bind(SocketAddr::new(ATTACKER, 0)).await
                && s.send_to(&initial, addr).await.is_ok()
            {
                sent += 1;
                socks.push(s);
            }
        }
        // Hold the sockets (never answering) for a while, then a new round.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sent
}

/// A QUIC client on `bind` whose TLS trusts no certificate (pinned to an
/// all-zero fingerprint): its handshakes never complete.
fn rejecting_client(bind: SocketAddr) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(bind).unwrap();
    let trust = dialback_certs::ServerTrust::Pinned(dialback_certs::Fingerprint([0; 32]));
    let tls = dialback_certs::client_config(&trust, None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
}

/// `n` QUIC dials to `addr` from the attacker's address, at once, each by
/// a client that rejects the sidecar's certificate (each a handshake the
/// sidecar starts, refuses or retries, and never completes).
async fn failed_dials(addr: SocketAddr, n: usize) {
    let endpoint = rejecting_client(SocketAddr::new(ATTACKER, 0));
    let dials = (0..n).filter_map(|_| endpoint.connect(addr, "localhost").ok());
    for r in futures_util::future::join_all(dials).await {
        assert!(r.is_err(), "a dial that rejects the sidecar's certificate connected");
    }
}

/// The first datagram a real QUIC client sends to the sidecar: its Initial
/// with the TLS ClientHello (captured on a local socket, never answered).
async fn capture_initial() -> Vec<u8> {
    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tap_addr = tap.local_addr().unwrap();
    let endpoint = rejecting_client("127.0.0.1:0".parse().unwrap());
    let _connecting = endpoint.connect(tap_addr, "localhost").unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(PATIENCE, tap.recv_from(&mut buf)).await.unwrap().unwrap();
    buf.truncate(n);
    buf
}

/// Finding 6: before its hello is accepted, a QUIC peer can make the
/// sidecar hold little: one stream and a small connection window. Peers
/// that complete TLS and then push megabytes on extra streams (it was
/// 16 MiB per connection) barely move the sidecar's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_quic_peers_hold_little_memory() {
    let live =
        Live::start(SidecarBuilder::callback("echo").args(["--callback-handshake-timeout", "20s"]), "quic", &[]).await;
    let pid = live.sc.pid();
    let before = proc_status_kib(pid, "VmHWM").unwrap();
    let tls = (*pinned_tls(&live.sc)).clone();
    let crypto = std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let mut pushers = Vec::new();
    for _ in 0..8 {
        let crypto = crypto.clone();
        let addr = live.sc.callback.unwrap();
        pushers.push(tokio::spawn(async move {
            let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ATTACKER, 0)).unwrap();
            endpoint.set_default_client_config(quinn::ClientConfig::new(crypto));
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            let chunk = vec![7u8; 1 << 20];
            let mut pushed = 0usize;
            // The first stream (where the hello belongs) stays silent, so the
            // sidecar waits for a hello; then up to 4 more streams of 4 MiB each.
            let first = conn.open_bi().await.unwrap();
            for _ in 0..4 {
                let Ok(Ok((mut send, _recv))) = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await
                else {
                    break;
                };
                for _ in 0..4 {
                    match tokio::time::timeout(Duration::from_secs(2), send.write_all(&chunk)).await {
                        Ok(Ok(())) => pushed += chunk.len(),
                        _ => break,
                    }
                }
            }
            (pushed, (conn, first), endpoint)
        }));
    }
    let mut pushed_total = 0;
    let mut keep = Vec::new();
    for p in pushers {
        let (pushed, conn, endpoint) = p.await.unwrap();
        pushed_total += pushed;
        keep.push((conn, endpoint));
    }
    let grew_mib = proc_status_kib(pid, "VmHWM").unwrap().saturating_sub(before) / 1024;
    assert!(pushed_total <= 8 << 20, "the sidecar took {pushed_total} bytes from 8 unproven peers");
    assert!(grew_mib < 32, "8 unproven QUIC peers grew the sidecar's peak RSS by {grew_mib} MiB");
    live.assert_untouched("unproven QUIC peers pushing data").await;
}

/// QUIC datagrams: quinn's default transport config takes them and keeps
/// up to 1.25 MB unread per connection, and a peer that has only finished
/// TLS may send them. The sidecar uses none, so it offers none: a peer sees
/// no datagram support, and a DATAGRAM frame would close its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_quic_peers_cannot_park_datagrams() {
    let live = Live::start(SidecarBuilder::callback("echo"), "quic", &[]).await;
    let tls = (*pinned_tls(&live.sc)).clone();
    let crypto = std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ATTACKER, 0)).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto));
    let conn = endpoint.connect(live.sc.callback.unwrap(), "localhost").unwrap().await.unwrap();
    assert_eq!(conn.max_datagram_size(), None, "the sidecar offers QUIC datagrams");
    assert!(
        matches!(conn.send_datagram(bytes::Bytes::from_static(b"x")), Err(quinn::SendDatagramError::UnsupportedByPeer)),
        "a datagram could be sent to the sidecar"
    );
    live.assert_untouched("a peer looking for QUIC datagrams").await;
}

/// Also: an installed channel that the sidecar kills because the app broke
/// HTTP/2 (here 2 MB of response headers, far over the limit the sidecar
/// advertises) says why in `lastDownReason`, not "connection lost"; the
/// caller gets a clear error, and the sidecar serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_killed_for_a_protocol_error_says_why() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    for transport in BOTH {
        let token = one_time_token(&sc, None).await;
        let ch = dial(&sc, LOOPBACK, transport, &hello(Credential::OneTimeToken(token), false)).await.unwrap();
        let id = ch.info.channel_id;
        let app = tokio::spawn(malicious_app(ch.io));
        eventually(&format!("the malicious {transport} channel {id} installed"), PATIENCE, || async {
            let md = metadata(sc.http).await.ok()?;
            (md["appChannel"]["state"] == "connected" && md["appChannel"]["channelId"] == id).then_some(())
        })
        .await;
        let r = dialback_e2e::http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "x")
            .await
            .unwrap();
        assert!(r.status >= 500, "a call answered with 2 MB of headers over {transport}: {} {}", r.status, r.text());
        let md = eventually(&format!("the {transport} channel down with its reason"), PATIENCE, || async {
            let md = metadata(sc.http).await.ok()?;
            (md["appChannel"]["state"] == "disconnected" && md["appChannel"]["lastDownReason"].is_string())
                .then_some(md)
        })
        .await;
        let reason = md["appChannel"]["lastDownReason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("HTTP/2 protocol error"),
            "over {transport}, lastDownReason should name the protocol error: {reason:?}\n{}",
            sc.log_tail()
        );
        app.abort();
    }
    // The sidecar is unharmed: a real app connects and is called.
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_line("echo: connected").await;
    let r = dialback_e2e::http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "fine")
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "fine".to_string()), "{}", sc.log_tail());
}

/// An app that serves HTTP/2 well enough to be installed (it echoes the
/// sidecar's Pings) and answers every other call with 2 MB of headers.
async fn malicious_app(io: dialback_channel::Io) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let resp = if req.uri().path().ends_with("/Ping") {
            // Each Empty the sidecar sends comes straight back.
            http::Response::builder().header("content-type", "application/grpc").body(req.into_body().boxed())
        } else {
            let mut b = http::Response::builder().header("content-type", "application/grpc");
            let pad = "x".repeat(32 * 1024);
            for i in 0..64 {
                b = b.header(format!("x-pad-{i}"), pad.as_str());
            }
            b.body(http_body_util::Empty::new().map_err(|never| match never {}).boxed())
        };
        Ok::<_, std::convert::Infallible>(resp.unwrap_or_default())
    });
    let _ =
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc).await;
}
