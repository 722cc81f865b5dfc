//! The app's own calls to its sidecar's API as HTTP/3 on the channel's QUIC
//! connection (the echo app's `--call-app`: `Dapr/InvokeService` on itself,
//! through the sidecar and back over the channel): they survive NAT
//! rebinding and an address change with no failure while the API port is
//! unreachable from the app's network, and they go to the API port when
//! the channel is TCP. The same for the HTTP API (`--call-api http`), whose
//! calls fall back to the HTTP port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::{App, AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, metadata};
use dialback_netsim::{Relay, RelayConfig};

async fn channel(sc: &Sidecar) -> serde_json::Value {
    metadata(sc.http).await.unwrap()["appChannel"].clone()
}

/// The app's outbound counts, from its next `echo: outbound` line.
#[derive(Clone, Copy, Debug)]
struct Outbound {
    calls: u64,
    failed: u64,
    over_channel: u64,
}

async fn outbound(app: &mut App) -> Outbound {
    let line = app.wait_line("echo: outbound calls=").await;
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    Outbound { calls: field("calls="), failed: field("failed="), over_channel: field("over_channel=") }
}

/// Reads the app's lines until it has made `more` calls past `from`.
async fn calls_past(app: &mut App, from: Outbound, more: u64) -> Outbound {
    loop {
        let now = outbound(app).await;
        if now.calls >= from.calls + more {
            return now;
        }
    }
}

/// Waits until the sidecar sees the app's traffic from another address than in `before`.
async fn moved(sc: &Sidecar, before: &serde_json::Value, what: &str) {
    eventually(&format!("the sidecar to see the app from a new address after {what}"), PATIENCE, || async {
        (channel(sc).await["peerAddress"] != before["peerAddress"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_calls_ride_the_quic_channel_through_rebinding_and_an_address_change() {
    // The channel's path goes through a relay that can rebind (NAT), and the
    // app's API endpoint through another that can cut it off.
    let (relay, sc) = SidecarBuilder::callback("echo").spawn_behind_relay().await;
    let api_path = RelayConfig {
        udp: false,
        ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{}", sc.grpc).parse().unwrap())
    };
    let api = Relay::start(api_path).await.unwrap();
    let mut app = AppBuilder::echo(api.addr().port())
        .transport("quic")
        .args(["--local-ip", "127.0.0.2", "--rebind-ip", "127.0.0.3", "--no-watch-network"])
        .args(["--call-app", "echo", "--call-every-ms", "10"])
        .spawn();
    assert_eq!(app.wait_connected().await, "quic");
    let before = channel(&sc).await;
    let start = outbound(&mut app).await;
    assert!(start.over_channel > 0, "no call went over the channel: {start:?}");

    // From here on the API port is out of the app's reach.
    api.set_blackhole(true);
    let cut = calls_past(&mut app, start, 50).await;

    relay.rebind();
    moved(&sc, &before, "NAT rebinding").await;
    let rebound = calls_past(&mut app, cut, 50).await;

    // The app moves to 127.0.0.3 (the relay, a NAT, gives it a new port).
    let before_move = channel(&sc).await;
    app.signal("USR1");
    app.wait_line("echo: rebound").await;
    moved(&sc, &before_move, "the address change").await;
    let end = calls_past(&mut app, rebound, 50).await;

    assert_eq!(end.failed, 0, "the app's own calls failed: {end:?}; app log:\n{}", app.log_tail());
    // Every call since the cut went over the channel (one over TCP would
    // have hung on the cut API path and failed).
    assert_eq!(end.calls - end.over_channel, cut.calls - cut.over_channel, "{cut:?} then {end:?}");
    assert_eq!(channel(&sc).await["channelId"], before["channelId"], "the QUIC connection migrated, not redialed");
    assert_eq!(before["apiOverHttp3"], true, "{before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_app_calls_go_to_the_api_port() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app =
        AppBuilder::echo(sc.grpc).transport("tcp").args(["--call-app", "echo", "--call-every-ms", "10"]).spawn();
    assert_eq!(app.wait_connected().await, "tcp");
    let first = outbound(&mut app).await;
    let later = calls_past(&mut app, first, 50).await;
    assert_eq!(later.failed, 0, "{later:?}");
    assert_eq!(later.over_channel, 0, "a TCP channel carries no API calls: {later:?}");
    assert_eq!(channel(&sc).await["apiOverHttp3"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_turns_it_off_gets_the_calls_on_its_api_port() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-api-over-http3=false"]).spawn().await;
    let mut app =
        AppBuilder::echo(sc.grpc).transport("quic").args(["--call-app", "echo", "--call-every-ms", "10"]).spawn();
    assert_eq!(app.wait_connected().await, "quic");
    let first = outbound(&mut app).await;
    let later = calls_past(&mut app, first, 50).await;
    assert_eq!((later.failed, later.over_channel), (0, 0), "{later:?}");
    assert_eq!(channel(&sc).await["apiOverHttp3"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_turns_it_off_calls_the_api_port_over_quic_too() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc)
        .transport("quic")
        .args(["--call-app", "echo", "--call-every-ms", "10", "--no-api-over-http3"])
        .spawn();
    assert_eq!(app.wait_connected().await, "quic");
    let first = outbound(&mut app).await;
    let later = calls_past(&mut app, first, 50).await;
    assert_eq!((later.failed, later.over_channel), (0, 0), "{later:?}");
    assert_eq!(channel(&sc).await["apiOverHttp3"], false);
}

/// An echo app on `transport` calling itself through the sidecar's HTTP
/// API: the sidecar, the app, and its counts at its first report and
/// 50 calls later.
async fn http_api_calls(transport: &str) -> (Sidecar, App, Outbound, Outbound) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc)
        .env("DAPR_HTTP_PORT", &sc.http.to_string())
        .transport(transport)
        .args(["--call-app", "echo", "--call-api", "http", "--call-every-ms", "10"])
        .spawn();
    assert_eq!(app.wait_connected().await, transport);
    let first = outbound(&mut app).await;
    let later = calls_past(&mut app, first, 50).await;
    assert_eq!(later.failed, 0, "{later:?}; app log:\n{}", app.log_tail());
    (sc, app, first, later)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_calls_ride_the_quic_channel() {
    let (sc, _app, first, later) = http_api_calls("quic").await;
    assert!(later.over_channel > first.over_channel, "no HTTP API call went over the channel: {later:?}");
    // Once the channel carries them, every call goes over it.
    assert_eq!(later.calls - later.over_channel, first.calls - first.over_channel, "{first:?} then {later:?}");
    assert_eq!(channel(&sc).await["apiOverHttp3"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_app_http_api_calls_go_to_the_http_port() {
    let (sc, _app, _, later) = http_api_calls("tcp").await;
    assert_eq!(later.over_channel, 0, "{later:?}");
    assert_eq!(channel(&sc).await["apiOverHttp3"], false);
}
