//! Recovery across network changes, with calls flowing throughout: NAT
//! rebinding and a dead path through the fault relay, the app's address
//! changing (127.0.0.2 to 127.0.0.3), UDP blocked and unblocked, and calls
//! made during an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dialback_e2e::{AppBuilder, CallLoop, PATIENCE, Sidecar, SidecarBuilder, Summary, eventually, http_call, metadata};
use dialback_netsim::Relay;

async fn channel(sc: &Sidecar) -> serde_json::Value {
    metadata(sc.http).await.unwrap()["appChannel"].clone()
}

/// Every failed call failed with a clear error, and none was lost.
fn assert_failures_are_clear(s: &Summary, what: &str) {
    for o in s.failures() {
        let e = o.result.as_ref().unwrap_err();
        assert!(e.starts_with("503") && e.contains("app channel"), "{what}: unclear failure {e}");
    }
    assert_eq!(s.lost(), 0, "{what}: calls neither answered nor failed");
}

/// A relay in front of a sidecar: apps are told to dial the relay.
async fn behind_relay(extra: &[&str]) -> (Relay, Sidecar) {
    SidecarBuilder::callback("echo").args(extra.iter().map(|s| s.to_string())).spawn_behind_relay().await
}

/// A relay, a sidecar behind it and an echo app, all with timeouts short
/// enough (200 ms keepalive and Ping, 1 s idle) to see a dead path quickly.
async fn quick_to_detect(transport: &str) -> (Relay, Sidecar, dialback_e2e::App) {
    let fast = [
        "--callback-keepalive-interval",
        "200ms",
        "--callback-idle-timeout",
        "1s",
        "--callback-ping-interval",
        "200ms",
    ];
    let (relay, sc) = behind_relay(&fast).await;
    let app = AppBuilder::echo(sc.grpc)
        .transport(transport)
        .args(["--keepalive-ms", "200", "--idle-timeout-ms", "1000"])
        .spawn();
    (relay, sc, app)
}

/// Waits until the sidecar serves a channel other than the one in `before`.
async fn new_channel(sc: &Sidecar, before: &serde_json::Value) {
    eventually("a new channel at the sidecar", PATIENCE, || async {
        let now = channel(sc).await;
        (now["state"] == "connected" && now["channelId"] != before["channelId"]).then_some(())
    })
    .await;
}

/// Waits until the sidecar sees the app's traffic from another address than in `before`.
async fn peer_moved(sc: &Sidecar, before: &serde_json::Value) {
    eventually("the sidecar to see the app from a new address", PATIENCE, || async {
        (channel(sc).await["peerAddress"] != before["peerAddress"]).then_some(())
    })
    .await;
}

/// An app that connected, then exited: the channel is down.
async fn app_that_went_away(sc: &Sidecar) -> dialback_e2e::App {
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    app.terminate().await;
    eventually("the channel down", PATIENCE, || async { (channel(sc).await["state"] == "disconnected").then_some(()) })
        .await;
    app
}

async fn address_change(transport: &str) {
    address_change_with(transport, &[]).await;
}

async fn address_change_with(transport: &str, app_args: &[&str]) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc)
        .transport(transport)
        .args(["--local-ip", "127.0.0.2", "--rebind-ip", "127.0.0.3"])
        .args(app_args.iter().copied())
        .spawn();
    app.wait_connected().await;
    let before = channel(&sc).await;
    assert!(before["peerAddress"].as_str().unwrap().starts_with("127.0.0.2:"), "{before}");
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10));
    calls.answered(5).await;
    app.signal("USR1");
    app.wait_line("echo: rebound").await;
    eventually("the sidecar to see the app at 127.0.0.3", PATIENCE, || async {
        channel(&sc).await["peerAddress"].as_str().unwrap_or_default().starts_with("127.0.0.3:").then_some(())
    })
    .await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure(&format!("address change over {transport}"));
    let after = channel(&sc).await;
    assert_eq!(after["transport"], transport);
    if transport == "quic" {
        // Migration: the same connection, no new channel.
        assert_eq!(after["channelId"], before["channelId"], "{after}");
    } else {
        // TCP cannot move: a new channel from the new address, made before the old one broke.
        assert_ne!(after["channelId"], before["channelId"], "{after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_address_change_quic_migrates_without_a_failed_call() {
    address_change("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_address_change_tcp_moves_make_before_break() {
    address_change("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_quic_loses_no_call() {
    let (relay, sc) = behind_relay(&[]).await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    let before = channel(&sc).await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10));
    calls.answered(5).await;
    relay.rebind();
    peer_moved(&sc, &before).await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure("NAT rebinding over QUIC");
    assert_eq!(channel(&sc).await["channelId"], before["channelId"], "the QUIC connection migrated, not redialed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_tcp_is_detected_and_redialed() {
    let (relay, sc, mut app) = quick_to_detect("tcp").await;
    app.wait_connected().await;
    let before = channel(&sc).await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(20));
    calls.answered(5).await;
    relay.rebind();
    // The old path is dead; both sides notice and the app dials again.
    assert_eq!(app.wait_connected().await, "tcp");
    new_channel(&sc, &before).await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    assert_failures_are_clear(&summary, "NAT rebinding over TCP");
}

async fn blackhole(transport: &str) {
    let (relay, sc, mut app) = quick_to_detect(transport).await;
    app.wait_connected().await;
    let before = channel(&sc).await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(20));
    calls.answered(5).await;
    let downs = app.downs();
    relay.set_blackhole(true);
    // Both sides detect the dead path within their bounds.
    eventually("the sidecar to see the channel down", PATIENCE, || async {
        (channel(&sc).await["state"] == "disconnected").then_some(())
    })
    .await;
    app.wait_down(downs).await;
    relay.set_blackhole(false);
    assert_eq!(app.wait_connected().await, transport);
    new_channel(&sc, &before).await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    assert_failures_are_clear(&summary, &format!("blackhole over {transport}"));
    // The same sidecar process: the app redialed with its cached reconnect
    // token, without a ConnectAppCallback round trip.
    assert_eq!(channel(&sc).await["credential"], "reconnect-token");
    // QUIC redials race fresh attempts while the path is dead; those that
    // lose are given up quietly, never logged as refused.
    let log = sc.log();
    assert!(!log.contains("callback channel refused"), "a lost attempt was refused: {}", sc.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_longer_than_the_idle_timeout_quic() {
    blackhole("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_longer_than_the_idle_timeout_tcp() {
    blackhole("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_auto_lands_on_tcp_and_moves_back_to_quic() {
    let (relay, sc) = behind_relay(&[]).await;
    relay.set_block_udp(true);
    let mut app = AppBuilder::echo(sc.grpc).transport("auto").args(["--quic-probe-ms", "200"]).spawn();
    assert_eq!(app.wait_connected().await, "tcp");
    assert_eq!(channel(&sc).await["transport"], "tcp");
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10));
    calls.answered(5).await;
    relay.set_block_udp(false);
    assert_eq!(app.wait_connected().await, "quic");
    eventually("the sidecar to serve over QUIC", PATIENCE, || async {
        (channel(&sc).await["transport"] == "quic").then_some(())
    })
    .await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure("moving from TCP to QUIC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_during_an_outage_waits_and_succeeds() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-wait-timeout", "60s"]).spawn().await;
    let app = app_that_went_away(&sc).await;
    let url = format!("{}/v1.0/invoke/echo/method/during-outage", sc.http_base());
    let call = tokio::spawn(async move { http_call("POST", &url, &[], "patient").await.unwrap() });
    let mut app2 = app.respawn();
    drop(app);
    app2.wait_connected().await;
    let r = tokio::time::timeout(PATIENCE, call).await.expect("the waiting call never finished").unwrap();
    assert_eq!((r.status, r.text()), (200, "patient".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_during_an_outage_times_out_with_a_clear_error() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-wait-timeout", "300ms"]).spawn().await;
    let _app = app_that_went_away(&sc).await;
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/x", sc.http_base()), &[], "x").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(r.text().contains("app channel is down"), "{}", r.text());
}

/// A relay, a sidecar behind it (`sidecar` flags) and a QUIC echo app
/// (`app` flags), calls flowing through the sidecar every 20 ms: the
/// relay, sidecar, app, the channel as first seen, and the calls.
async fn quic_calls_behind_relay(
    sidecar: &[&str],
    app: &[&str],
) -> (Relay, Sidecar, dialback_e2e::App, serde_json::Value, CallLoop) {
    let (relay, sc) = behind_relay(sidecar).await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(app.iter().copied()).spawn();
    app.wait_connected().await;
    let before = channel(&sc).await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(20));
    calls.answered(5).await;
    (relay, sc, app, before, calls)
}

/// Pings and keepalives every 300 ms and idle timeouts far too long to
/// redial in a test: only moving the socket brings a dead path back.
async fn quick_pings_no_redial() -> (Relay, Sidecar, dialback_e2e::App, serde_json::Value, CallLoop) {
    let quick_pings = [
        "--callback-keepalive-interval",
        "300ms",
        "--callback-idle-timeout",
        "120s",
        "--callback-ping-interval",
        "300ms",
    ];
    quic_calls_behind_relay(&quick_pings, &["--keepalive-ms", "300", "--idle-timeout-ms", "120000"]).await
}

/// The relay lets packets through again: the sidecar sees the app from a
/// new address, calls are answered with none failed (`what` names the
/// case), and the same QUIC connection as in `before` is up.
async fn path_back_on_the_same_connection(
    relay: &Relay,
    sc: &Sidecar,
    before: &serde_json::Value,
    calls: CallLoop,
    what: &str,
) {
    relay.set_blackhole(false);
    peer_moved(sc, before).await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure(what);
    same_connection(sc, before).await;
}

/// The same QUIC connection as in `before` is up at the sidecar.
async fn same_connection(sc: &Sidecar, before: &serde_json::Value) {
    let after = channel(sc).await;
    assert_eq!(after["channelId"], before["channelId"], "the same QUIC connection carried on: {after}");
    assert_eq!(after["state"], "connected");
}

/// The app's own NAT forgets its mapping: nothing from its current port
/// gets through, while a new port would. Only the SDK moving its QUIC
/// socket by itself, on late pings, brings the same connection back (the
/// idle timeouts here are far too long to redial in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_side_mapping_makes_the_sdk_move_its_socket_by_itself() {
    let (relay, sc, _app, before, calls) = quick_pings_no_redial().await;
    relay.forget_clients();
    peer_moved(&sc, &before).await;
    calls.answered(5).await;
    let summary = calls.stop(PATIENCE).await;
    assert_eq!(summary.lost(), 0);
    same_connection(&sc, &before).await;
}

/// A dead spell on QUIC: while the sidecar's Pings are overdue and nothing
/// arrives, the SDK moves its socket again and again, so that the first
/// move after the path is back reaches the sidecar as a migration, which
/// frees it to send at once (docs/architecture.md, "QUIC after a dead
/// spell"). The same connection carries on; no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_spell_on_quic_is_nudged_until_the_path_is_back() {
    let (relay, sc, app, before, calls) = quick_pings_no_redial().await;
    relay.set_blackhole(true);
    eventually("the app to move its socket again and again while the path is dead", PATIENCE, || async {
        (app.log().matches("moved the socket again").count() >= 2).then_some(())
    })
    .await;
    path_back_on_the_same_connection(&relay, &sc, &before, calls, "a dead spell on QUIC").await;
}

/// A dead spell far shorter than the Ping interval (60 s here): the SDK
/// does not wait for a Ping to be overdue. What it sent (answers to the
/// calls, its probe timer's probes) going unacknowledged while nothing
/// arrives is enough to start the moves, and the first after the path is
/// back brings the same connection back with no failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_dead_spell_is_nudged_without_waiting_for_a_late_ping() {
    let slow_pings = ["--callback-idle-timeout", "120s", "--callback-ping-interval", "60s"];
    let (relay, sc, app, before, calls) = quic_calls_behind_relay(&slow_pings, &["--idle-timeout-ms", "120000"]).await;
    relay.set_blackhole(true);
    eventually("the app to move its socket while what it sent goes unanswered", PATIENCE, || async {
        let log = app.log();
        (log.contains("nothing came back for what the app sent; moved the socket")
            && log.matches("moved the socket again").count() >= 2)
            .then_some(())
    })
    .await;
    assert!(!app.log().contains("pings are late"), "the Pings were not late yet: {}", app.log_tail());
    path_back_on_the_same_connection(&relay, &sc, &before, calls, "a short dead spell on QUIC").await;
}

/// A very slow path (a 1.2 s round trip, as on a congested cellular
/// link): the QUIC dial still completes. While its handshake is pending,
/// fresh attempts race it every 250 ms, but they never replace the oldest,
/// the one that can finish (each attempt used to live 1 s at most, so
/// none ever did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_dial_over_a_very_slow_path_completes() {
    let (relay, sc) = behind_relay(&["--callback-idle-timeout", "60s"]).await;
    relay.set_delay(Duration::from_millis(600));
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--idle-timeout-ms", "60000"]).spawn();
    assert_eq!(app.wait_connected().await, "quic", "app log:\n{}", app.log_tail());
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "slow").await.unwrap();
    assert_eq!((r.status, r.text()), (200, "slow".to_string()));
    assert!(app.log().contains("racing a fresh attempt"), "the dial raced no attempt: {}", app.log_tail());
}

/// The mobile liveness profile: an address change still migrates with no
/// failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_change_quic_mobile_profile() {
    address_change_with("quic", &["--mobile-beat-ms", "25000"]).await;
}

/// The mobile liveness profile over QUIC, idle: the app's beat (one
/// keepalive per beat, which the sidecar acknowledges) is all that crosses
/// the path. No HTTP/2 PING, no Ping stream, no keepalive from the sidecar:
/// the sidecar never sends more packets than the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mobile_profile_is_one_keepalive_per_beat_while_idle() {
    // The sidecar would ping and send HTTP/2 PINGs every beat if it did
    // either: the profile must silence both.
    let every_beat = ["--callback-ping-interval", "200ms", "--callback-keepalive-interval", "200ms"];
    let (relay, sc) = behind_relay(&every_beat).await;
    let beat = Duration::from_millis(200);
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--mobile-beat-ms", "200"]).spawn();
    app.wait_connected().await;
    let ch = channel(&sc).await;
    assert_eq!((ch["liveness"].as_str(), ch["beatMs"].as_u64()), (Some("mobile"), Some(200)), "{ch}");
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "hi").await.unwrap();
    assert_eq!(r.status, 200, "a call over a mobile channel");
    let (start, t0) = (relay.stats(), std::time::Instant::now());
    // Readiness: twenty beats' worth of the app's keepalives.
    let want = 20;
    eventually("twenty keepalives from the app", PATIENCE, || async {
        (relay.stats().udp_up - start.udp_up >= want).then_some(())
    })
    .await;
    let (end, beats) = (relay.stats(), t0.elapsed().as_secs_f64() / beat.as_secs_f64());
    let up = end.udp_up - start.udp_up;
    let down = (end.udp_forwarded - end.udp_up) - (start.udp_forwarded - start.udp_up);
    eprintln!("mobile profile, idle: {up} packets from the app, {down} to it, in {beats:.1} beats");
    assert!(up as f64 <= beats + 3.0, "the app sends one packet per beat: {up} in {beats:.1} beats");
    // One acknowledgement per keepalive; the window's edges may cut one pair.
    assert!(down <= up + 1, "the sidecar only acknowledges: {down} packets to the app for {up} from it");
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "hi").await.unwrap();
    assert_eq!(r.status, 200, "the idle mobile channel still carries calls");
}

/// A sidecar rescheduled elsewhere (new state dir, so a new certificate and
/// reset key, and a new channel port behind the same advertised address):
/// no reset reaches the app. Its late pings make it ask the sidecar's API,
/// which answers with another certificate, and it moves to the new sidecar
/// at once. The app's idle timeout is 100 s, beyond this test's patience:
/// only that mechanism can bring it back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_comes_back_elsewhere_is_found_by_its_api() {
    let (relay, mut sc) = behind_relay(&[]).await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--idle-timeout-ms", "100000"]).spawn();
    app.wait_connected().await;
    let before = channel(&sc).await;
    sc.kill().await;
    let moved = sc.relocate().await;
    assert_ne!(moved.cert_sha256, sc.cert_sha256, "a new identity");
    relay.set_target(moved.callback.unwrap());
    eventually("the app connected to the new sidecar", PATIENCE, || async {
        let ch = channel(&moved).await;
        (ch["state"] == "connected").then_some(())
    })
    .await;
    assert_eq!(channel(&moved).await["certSha256"].as_str(), moved.cert_sha256.as_deref());
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", moved.http_base()), &[], "hi").await.unwrap();
    assert_eq!(r.status, 200, "calls reach the app through the new sidecar");
    assert!(before["certSha256"] != channel(&moved).await["certSha256"]);
}

/// The mobile profile on a path that stays dead: after a beat of dialing
/// hard (over QUIC, a fresh attempt every 250 ms while a handshake is
/// pending), the app eases off: one attempt a dial, whose Initial QUIC
/// itself resends, and dials up to a beat apart. A few packets a dial where
/// racing sent dozens. A network change the app reports makes it try hard
/// again, and it comes back by itself when the path does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mobile_app_on_a_dead_path_eases_off_and_still_comes_back() {
    let (relay, sc) = behind_relay(&[]).await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--mobile-beat-ms", "500"]).spawn();
    app.wait_connected().await;
    relay.set_blackhole(true);
    eventually("the app to ease off", PATIENCE, || async { app.log().contains("easing off").then_some(()) }).await;
    // Whole dials from here on, each ended by the handshake timeout; the
    // relay drops all the app sends (the sidecar's side went quiet with
    // the old connection, several beats ago).
    let failed = || app.log().matches("callback channel not up").count();
    let raced = || app.log().matches("racing a fresh attempt").count();
    let (dials, dropped, races) = (failed(), relay.stats().udp_dropped, raced());
    eventually("two more dials to fail", PATIENCE, || async { (failed() >= dials + 2).then_some(()) }).await;
    let (dials, dropped) = (failed() - dials, relay.stats().udp_dropped - dropped);
    eprintln!("mobile profile, dead path, eased off: {dropped} datagrams in {dials} dials");
    assert_eq!(raced(), races, "no fresh attempt once eased off: {}", app.log_tail());
    // One Initial a dial, and QUIC's own resends of it (up to two at each
    // probe timeout, 1 s and 3 s into the 5 s handshake timeout), and what
    // the dials at either edge of the count sent; racing sent over 40 a dial.
    assert!(dropped <= 6 * dials as u64 + 4, "{dropped} datagrams in {dials} dials: {}", app.log_tail());
    // The app reports a network change (SIGUSR1: `Handle::rebind`), as a
    // phone's OS would: with no channel to move, it dials at once and
    // tries hard again.
    app.signal("USR1");
    eventually("fresh attempts again after the reported network change", PATIENCE, || async {
        (raced() > races).then_some(())
    })
    .await;
    relay.set_blackhole(false);
    assert_eq!(app.wait_connected().await, "quic", "back by itself: {}", app.log_tail());
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "back").await.unwrap();
    assert_eq!((r.status, r.text()), (200, "back".to_string()));
}
