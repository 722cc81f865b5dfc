//! The callback channel end to end, with the real `dialbackd` and echo app:
//! calls over QUIC and TCP through both APIs, both sides killed and
//! restarted, the Ping deadline, calls while the channel is down, and a
//! graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dialback::{SidecarClient, SidecarOptions};
use dialback_e2e::{
    AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call, metadata, tcp_listening_sockets,
};

fn sdk_client(sc: &Sidecar) -> SidecarClient {
    SidecarClient::new(SidecarOptions { grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc), ..Default::default() })
        .unwrap()
}

async fn whoami(sc: &Sidecar) -> (u16, String) {
    let r = http_call("GET", &format!("{}/v1.0/invoke/echo/method/whoami", sc.http_base()), &[], "").await.unwrap();
    (r.status, r.text())
}

/// Waits until a call through the sidecar reaches the app over `transport`.
async fn reachable_over(sc: &Sidecar, transport: &str) {
    eventually(&format!("the app answering over {transport}"), PATIENCE, || async {
        (whoami(sc).await == (200, transport.to_string())).then_some(())
    })
    .await;
}

async fn invokes_over(transport: &str) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    assert_eq!(app.wait_connected().await, transport);

    // HTTP: body, content type, a method path with slashes, a query string.
    let r = http_call(
        "POST",
        &format!("{}/v1.0/invoke/echo/method/orders/42?x=1", sc.http_base()),
        &[("content-type", "application/json")],
        r#"{"n":1}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"n":1}"#);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(whoami(&sc).await, (200, transport.to_string()));

    // The dapr-app-id header form.
    let r = http_call("PUT", &format!("{}/any/path", sc.http_base()), &[("dapr-app-id", "echo")], "hdr").await.unwrap();
    assert_eq!((r.status, r.text()), (200, "hdr".to_string()));

    // gRPC InvokeService.
    let resp = sdk_client(&sc).invoke("echo", "grpc-call", b"over grpc".to_vec(), "text/plain").await.unwrap();
    assert_eq!(resp.data.unwrap().value, b"over grpc");
    assert_eq!(resp.content_type, "text/plain");

    // The app has no listening socket.
    let listening = tcp_listening_sockets(app.pid());
    assert!(listening.is_empty(), "the app listens on {listening:?}");
    // ...and the check would see one: the sidecar has several.
    assert!(!tcp_listening_sockets(sc.pid()).is_empty());

    let md = metadata(sc.http).await.unwrap();
    assert_eq!(md["appChannel"]["state"], "connected");
    assert_eq!(md["appChannel"]["transport"], transport);
    assert_eq!(md["appChannel"]["instance"], format!("pid {}", app.pid()));
    assert_eq!(md["appChannel"]["credential"], "one-time-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_over_quic() {
    invokes_over("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_over_tcp() {
    invokes_over("tcp").await;
}

/// `--worker-threads 1`: the ready line says so, and calls go through over
/// both transports on the one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_both_transports() {
    let sc = SidecarBuilder::callback("echo").args(["--worker-threads", "1"]).spawn().await;
    let ready = sc.log().lines().find(|l| l.contains("dialbackd ready")).map(str::to_string).unwrap_or_default();
    assert!(ready.contains(" workers=1"), "the ready line: {ready}");
    for transport in ["quic", "tcp"] {
        let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
        assert_eq!(app.wait_connected().await, transport);
        reachable_over(&sc, transport).await;
        let resp = sdk_client(&sc).invoke("echo", "m", b"one thread".to_vec(), "text/plain").await.unwrap();
        assert_eq!(resp.data.unwrap().value, b"one thread");
        app.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_quic() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("auto").spawn();
    assert_eq!(app.wait_connected().await, "quic");
    reachable_over(&sc, "quic").await;
}

async fn app_restart(transport: &str) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;
    reachable_over(&sc, transport).await;
    app.kill().await;
    let mut app2 = app.respawn();
    app2.wait_connected().await;
    // The new instance serves, without a human.
    eventually("calls reaching the new app process", PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        (md["appChannel"]["instance"] == format!("pid {}", app2.pid())).then_some(())
    })
    .await;
    reachable_over(&sc, transport).await;
    let md = metadata(sc.http).await.unwrap();
    assert!(md["appChannel"]["reconnects"].as_u64().unwrap() >= 1, "{md}");
    // The killed app's QUIC connection still looked live, so the new one
    // proved itself first: over QUIC by a probe in the sidecar's first
    // flight, answered with the app's hello.
    let log = sc.log();
    let replaced: Vec<&str> = log.lines().filter(|l| l.contains("a new channel replaces the old one")).collect();
    if transport == "quic" {
        assert!(
            replaced.iter().any(|l| l.contains(r#"probed="before its hello""#)),
            "the new channel answered the probe sent before its hello: {replaced:?}\n{}",
            sc.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_killed_and_restarted_quic() {
    app_restart("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_killed_and_restarted_tcp() {
    app_restart("tcp").await;
}

async fn sidecar_restart(transport: &str) {
    // Through a relay with a 50 ms round trip, as over a real network: the
    // sidecar reads the ClientHello a whole round trip before the app's
    // Finished and hello (on bare loopback a busy sidecar may look after
    // both, and then cannot tell a resumed session from a full handshake).
    let (relay, mut sc) = SidecarBuilder::callback("echo").spawn_behind_relay().await;
    relay.set_delay(Duration::from_millis(25));
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;
    reachable_over(&sc, transport).await;
    sc.kill().await;
    let sc2 = sc.restart().await;
    // The same app process dials the new sidecar by itself.
    assert_eq!(app.wait_connected().await, transport);
    reachable_over(&sc2, transport).await;
    // Same state dir, same identity.
    assert_eq!(sc2.cert_sha256, sc.cert_sha256);
    // Reconnect tokens are sealed with a key in the state dir: the new
    // process took the app's direct redial, with no ConnectAppCallback.
    let md = metadata(sc2.http).await.unwrap();
    assert_eq!(md["appChannel"]["credential"], "reconnect-token", "{md}");
    // Tickets are sealed with a key in the state dir too: the redial resumed
    // the TLS session of the first run, with the certificate the sidecar
    // issued the app for its key, so the new process knew the app from its
    // ClientHello (over QUIC, where that is what the log says).
    let authenticated = |log: String| {
        log.lines().filter(|l| l.contains("callback channel authenticated")).map(str::to_string).collect::<Vec<_>>()
    };
    let first = authenticated(sc.log());
    assert!(first.iter().all(|l| l.contains("tls_resumed=false")), "the first dial is a full handshake: {first:?}");
    let second = authenticated(sc2.log());
    assert!(second.iter().any(|l| l.contains("tls_resumed=true")), "the redial resumed: {second:?}");
    // Over QUIC (a stream per call) the new process took the channel from
    // the ClientHello on, a flight before the hello: calls waiting for the
    // app would have gone out in its first flight.
    if transport == "quic" {
        assert!(sc2.log().contains("app channel up early"), "no early channel: {}", sc2.log_tail());
    }
    // Deleting the key revokes every token: the next restart refuses the
    // app's token, and the app falls back to ConnectAppCallback by itself.
    let mut sc2 = sc2;
    sc2.kill().await;
    std::fs::remove_file(sc2.state_dir.join("reconnect-key")).unwrap();
    let sc3 = sc2.restart().await;
    assert_eq!(app.wait_connected().await, transport);
    reachable_over(&sc3, transport).await;
    let md = metadata(sc3.http).await.unwrap();
    assert_eq!(md["appChannel"]["credential"], "one-time-token", "{md}");
    // Over QUIC the refused redial was offered early first (its session's
    // certificate still names the app): taken out again when its hello was
    // refused, it left the way free for the channel that followed.
    if transport == "quic" {
        let log = sc3.log();
        assert!(
            log.contains("app channel up early") && log.contains("early app channel removed"),
            "{log}\nAPP:\n{}",
            app.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_killed_and_restarted_quic() {
    sidecar_restart("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_killed_and_restarted_tcp() {
    sidecar_restart("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_while_no_app_is_connected_fails_clearly() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-wait-timeout", "200ms"]).spawn().await;
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/x", sc.http_base()), &[], "x").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(r.json()["message"].as_str().unwrap().contains("app channel is down"), "{}", r.text());
    let err = sdk_client(&sc).invoke("echo", "x", vec![], "").await.unwrap_err();
    match err {
        dialback::Error::Api(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    // Unknown app-ids get a clear error too.
    let r = http_call("POST", &format!("{}/v1.0/invoke/other/method/x", sc.http_base()), &[], "x").await.unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("other"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_the_app_to_connect() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-wait-timeout", "60s"]).spawn().await;
    let url = format!("{}/v1.0/invoke/echo/method/early", sc.http_base());
    let call = tokio::spawn(async move { http_call("POST", &url, &[], "early bird").await.unwrap() });
    // The call is parked before any app exists; then the app comes.
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    let r = tokio::time::timeout(PATIENCE, call).await.expect("the parked call never finished").unwrap();
    assert_eq!((r.status, r.text()), (200, "early bird".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_exits_zero() {
    for transport in ["quic", "tcp"] {
        let mut sc = SidecarBuilder::callback("echo").spawn().await;
        let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
        app.wait_connected().await;
        reachable_over(&sc, transport).await;
        let url = format!("{}/v1.0/invoke/echo/method/sleep/1500", sc.http_base());
        let call = tokio::spawn(async move { http_call("POST", &url, &[], "slow").await.unwrap() });
        eventually("the slow call to be in flight", PATIENCE, || async {
            let md = metadata(sc.http).await.ok()?;
            (md["appChannel"]["inflight"].as_u64()? >= 1).then_some(())
        })
        .await;
        let status = sc.terminate().await;
        assert!(status.success(), "dialbackd exited with {status:?}: {}", sc.log_tail());
        let r = call.await.unwrap();
        assert_eq!((r.status, r.text()), (200, "slow".to_string()), "over {transport}");
        // The app notices and goes back to dialing.
        app.wait_line("echo: disconnected").await;
    }
}

/// An app that completes the handshake and HTTP/2 but never answers a
/// Ping: the sidecar must close the channel on its side, and the app's
/// side sees it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_ping_deadline_closes_the_channel() {
    use dialback_certs::{Fingerprint, ServerTrust};
    use dialback_channel::{CloseCode, Credential, DialConfig, Dialer, Hello, KeepAlive, Timeouts, Transport};
    use dialback_proto::runtime::dapr_app_channel_callback_server::{
        DaprAppChannelCallback, DaprAppChannelCallbackServer,
    };

    type Never = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<(), tonic::Status>> + Send>>;
    #[derive(Clone)]
    struct Mute;
    #[tonic::async_trait]
    impl DaprAppChannelCallback for Mute {
        type PingStream = Never;
        async fn ping(&self, _: tonic::Request<tonic::Streaming<()>>) -> Result<tonic::Response<Never>, tonic::Status> {
            Ok(tonic::Response::new(Box::pin(futures_util::stream::pending())))
        }
    }

    let sc = SidecarBuilder::callback("echo")
        .args([
            "--callback-ping-interval",
            "200ms",
            "--callback-keepalive-interval",
            "200ms",
            "--callback-idle-timeout",
            "1s",
        ])
        .spawn()
        .await;
    let answer = sdk_client(&sc).connect_app_callback().await.unwrap();
    let pin = Fingerprint::from_slice(&answer.cert_sha256).unwrap();
    let tls = dialback_certs::client_config(&ServerTrust::Pinned(pin), None).unwrap();
    let config = DialConfig {
        addr: sc.callback.unwrap(),
        server_name: "localhost".into(),
        tls: Arc::new(tls),
        timeouts: Timeouts::default(),
        congestion: Default::default(),
    };
    let hello = Hello {
        version: dialback_channel::handshake::VERSION,
        app_id: "echo".into(),
        credential: Some(Credential::OneTimeToken(answer.token)),
        instance: "mute".into(),
        ..Default::default()
    };
    let (channel, _) = Dialer::new(None).dial(Transport::Quic, &config, &hello).await.unwrap();
    let conn = channel.conn.clone();
    let routes = tonic::service::Routes::new(DaprAppChannelCallbackServer::new(Mute));
    tokio::spawn(dialback_channel::h2::serve(channel.io, routes, Some(KeepAlive::default())));

    // The app's side learns it was closed for a missed ping.
    let closed =
        tokio::time::timeout(PATIENCE, conn.closed()).await.expect("the sidecar never closed the mute channel");
    assert_eq!(closed.map(|c| c.0), Some(CloseCode::PingTimeout));
    // The sidecar's side says so too.
    let md = eventually("metadata to show the channel down", PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        (md["appChannel"]["state"] == "disconnected" && md["appChannel"]["lastDownReason"].is_string()).then_some(md)
    })
    .await;
    let reason = md["appChannel"]["lastDownReason"].as_str().unwrap().to_string();
    assert!(reason.contains("Ping"), "{reason}");
    let _ = Duration::ZERO;
}

/// With keepalives far apart, only the restarted sidecar's own stateless
/// resets (for the connection IDs its previous run issued, sent to the
/// app's last address) can tell the app its channel is gone in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_resets_the_quic_app_without_waiting_for_it_to_speak() {
    let slow =
        ["--callback-keepalive-interval", "90s", "--callback-idle-timeout", "300s", "--callback-ping-interval", "90s"];
    let mut sc = SidecarBuilder::callback("echo").args(slow).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc)
        .transport("quic")
        .args(["--keepalive-ms", "90000", "--idle-timeout-ms", "300000"])
        .spawn();
    app.wait_connected().await;
    reachable_over(&sc, "quic").await;
    // The sidecar records its app and connection IDs in the state dir.
    eventually("the QUIC peers recorded", PATIENCE, || async {
        let text = std::fs::read_to_string(sc.state_dir.join("quic-peers")).ok()?;
        (text.contains("peer ") && text.contains("cid ")).then_some(())
    })
    .await;
    let downs = app.downs();
    sc.kill().await;
    let sc2 = sc.restart().await;
    app.wait_down(downs).await;
    assert_eq!(app.wait_connected().await, "quic");
    reachable_over(&sc2, "quic").await;
}

/// A restarted sidecar's stateless resets go out only once its APIs
/// answer: an app that hears of the restart asks ConnectAppCallback at
/// once, and a refusal there would make it drop the direct redial that
/// was already reaching the new process. The "app" here is a bare UDP
/// socket named in the state dir's peers file; the moment its reset
/// arrives, both API ports must accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_resets_its_apps_only_once_its_api_answers() {
    let mut sc = SidecarBuilder::callback("echo").args(["--callback-transport", "quic"]).spawn().await;
    sc.kill().await;
    let app = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peers = format!("peer {}\ncid 0102030405060708\n", app.local_addr().unwrap());
    std::fs::write(sc.state_dir.join("quic-peers"), peers).unwrap();
    let (http, grpc) = (sc.http, sc.grpc);
    let heard = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let n = tokio::time::timeout(PATIENCE, app.recv(&mut buf))
            .await
            .expect("no stateless reset from the restarted sidecar")
            .unwrap();
        let api = |port| tokio::net::TcpStream::connect(("127.0.0.1", port));
        (n, api(http).await.map(|_| ()), api(grpc).await.map(|_| ()))
    });
    let _sc2 = sc.restart().await;
    let (n, http, grpc) = heard.await.unwrap();
    assert!(n >= 21, "a stateless reset is at least 21 bytes, got {n}");
    assert!(http.is_ok() && grpc.is_ok(), "the APIs when the reset arrived: HTTP {http:?}, gRPC {grpc:?}");
}

/// W3C Trace Context: a caller's `traceparent` reaches the app's handler as
/// a child of the caller's span (the channel hop's), `tracestate` as it
/// was, and the caller gets the hop's `traceparent` back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_reaches_the_apps_handler() {
    let sc = SidecarBuilder::callback("subscriber").spawn().await;
    let mut app = AppBuilder::subscriber(sc.grpc).spawn();
    app.wait_connected().await;
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http_call(
        "POST",
        &format!("{}/v1.0/invoke/subscriber/method/inspect", sc.http_base()),
        &[("traceparent", sent), ("tracestate", "congo=t61rcWkgMzE")],
        "x",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"].clone();
    let at_app = seen["traceparent"].as_str().unwrap_or_default().to_string();
    let parts: Vec<&str> = at_app.split('-').collect();
    assert_eq!(parts.len(), 4, "the app's traceparent: {seen}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"),
        "same trace: {at_app}"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "the app's parent is the hop's span, not the caller's");
    assert_eq!(seen["tracestate"], "congo=t61rcWkgMzE");
    let back = r.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(back, at_app, "the caller gets the hop's traceparent back");
}

/// Each QUIC congestion controller, chosen on both ends (the sidecar's
/// `--callback-quic-congestion`, the app's), brings a channel up that
/// carries calls; an unknown one stops the sidecar at start, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_carries_calls() {
    for cc in dialback::Congestion::ALL {
        let sc = SidecarBuilder::callback("echo").args(["--callback-quic-congestion", cc.as_str()]).spawn().await;
        let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--quic-congestion", cc.as_str()]).spawn();
        app.wait_connected().await;
        let body = "x".repeat(64 * 1024);
        let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], body.clone())
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len()), (200, body.len()), "a 64 KiB call with {cc}");
    }
    let out = std::process::Command::new(&dialback_e2e::binaries().dialbackd)
        .args(["--app-id", "echo", "--enable-callback-channel", "--callback-quic-congestion", "reno"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("bbr or tolerant"), "{stderr}");
}
