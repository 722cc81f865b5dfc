//! The SDK notices network changes by itself (Linux netlink), with no
//! `Handle::rebind` from the app: a new route that reaches the sidecar from
//! another local address, and the channel's own address going away.
//!
//! Each test runs in a network namespace of its own: it runs this test
//! binary again, for that one test, under `unshare --net`, and the copy
//! inside changes loopback addresses, routes and rules there (nothing of
//! the host's network is touched, and tests do not see each other's
//! changes). In the namespace, loopback has only the /32 addresses the test
//! gives it, so an address that goes away is really unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use dialback_e2e::{AppBuilder, CallLoop, PATIENCE, Sidecar, SidecarBuilder, eventually, metadata};

/// Set in the copy of the test binary that runs inside the namespace.
const INSIDE: &str = "DIALBACK_E2E_IN_NETNS";

/// Runs `test` (this binary's test of that name) again in a new network
/// namespace and fails with its output if it fails there. Returns false
/// when already inside: the caller then does the test's work.
fn rerun_in_own_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    // Built here, outside, so the copy inside only finds them fresh.
    dialback_e2e::binaries();
    let exe = std::env::current_exe().expect("the test binary's path");
    let root = is_root();
    let mut cmd = Command::new("unshare");
    // Without root, a user namespace maps us to root in it (where allowed).
    cmd.args(if root { &["--net"][..] } else { &["--net", "--map-root-user"][..] });
    cmd.arg("--").arg(&exe).args([test, "--exact", "--nocapture", "--test-threads", "1"]).env(INSIDE, "1");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run unshare (util-linux) for a network namespace: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} in its own network namespace ({}): {}",
        out.status,
        text
    );
    true
}

/// Whether this process runs as root (then `unshare --net` needs no user namespace).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs `ip` with `args` in this namespace; fails the test with what `ip` said.
fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Loopback with 127.0.0.1/32 only, and the local table's rule moved from
/// priority 0 to 100 so that a test's own rule can come before it.
fn bare_loopback() {
    ip("link set lo up");
    ip("addr del 127.0.0.1/8 dev lo");
    ip("addr add 127.0.0.1/32 dev lo");
    ip("rule add pref 100 lookup local");
    ip("rule del pref 0");
}

/// A new route: the kernel now reaches 127.0.0.1 from 127.0.0.77.
fn route_via_77() {
    ip("route add local 127.0.0.1/32 dev lo src 127.0.0.77 table 100");
    ip("rule add to 127.0.0.1/32 lookup 100 pref 10");
}

/// Runs the async body of a test on a runtime like `#[tokio::test]`'s.
fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime").block_on(f)
}

async fn channel(sc: &Sidecar) -> serde_json::Value {
    metadata(sc.http).await.unwrap()["appChannel"].clone()
}

/// Waits until the sidecar sees the app's channel coming from `ip`.
async fn peer_is(sc: &Sidecar, ip: &str) -> serde_json::Value {
    let prefix = format!("{ip}:");
    eventually(&format!("the sidecar to see the app at {ip}"), PATIENCE, || async {
        let ch = channel(sc).await;
        ch["peerAddress"].as_str().unwrap_or_default().starts_with(&prefix).then_some(ch)
    })
    .await
}

/// An app that dials from any address: a new route makes the kernel reach
/// the sidecar from 127.0.0.77, and the channel follows; the route goes
/// and the address with it, and the channel comes back to 127.0.0.1. Calls
/// flow throughout and none fails: QUIC migrates, TCP moves
/// make-before-break (its old connection still works when the route changes).
async fn a_new_route_moves_the_channel(transport: &str) {
    bare_loopback();
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;
    let before = peer_is(&sc, "127.0.0.1").await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10));
    calls.answered(5).await;
    ip("addr add 127.0.0.77/32 dev lo");
    route_via_77();
    let moved = peer_is(&sc, "127.0.0.77").await;
    calls.answered(5).await;
    ip("rule del pref 10");
    peer_is(&sc, "127.0.0.1").await;
    ip("addr del 127.0.0.77/32 dev lo");
    calls.answered(5).await;
    let back = channel(&sc).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure(&format!("route changes over {transport}"));
    assert_eq!(back["transport"], transport, "{back}");
    if transport == "quic" {
        assert_eq!(moved["channelId"], before["channelId"], "the QUIC connection migrated: {moved}");
        assert_eq!(back["channelId"], before["channelId"], "the QUIC connection migrated back: {back}");
    } else {
        assert_ne!(moved["channelId"], before["channelId"], "a new TCP channel from 127.0.0.77: {moved}");
        assert_ne!(back["channelId"], moved["channelId"], "a new TCP channel from 127.0.0.1: {back}");
    }
    let log = app.log();
    assert!(log.contains("the network changed under the channel; moving it"), "the app says why it moved:\n{log}");
}

/// An app that dials from the address it chose, 127.0.0.77, which then
/// goes away: without watching, its channel (and every redial from that
/// address) would be dead for good. It moves to the kernel's choice,
/// 127.0.0.1. Over QUIC the connection migrates and calls flowing across
/// the change all succeed; a TCP connection dies with its address, so the
/// calls checked are those after the move.
async fn a_vanished_address_moves_the_channel(transport: &str) {
    bare_loopback();
    ip("addr add 127.0.0.77/32 dev lo");
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).args(["--local-ip", "127.0.0.77"]).spawn();
    app.wait_connected().await;
    let before = peer_is(&sc, "127.0.0.77").await;
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10));
    calls.answered(5).await;
    let during = if transport == "quic" {
        Some(calls)
    } else {
        calls.stop(PATIENCE).await.assert_no_failure("calls before the change");
        None
    };
    ip("addr del 127.0.0.77/32 dev lo");
    let after = peer_is(&sc, "127.0.0.1").await;
    let calls = during.unwrap_or_else(|| CallLoop::start(sc.http, "echo", "m", Duration::from_millis(10)));
    calls.answered(10).await;
    let summary = calls.stop(PATIENCE).await;
    summary.assert_no_failure(&format!("the chosen address going away over {transport}"));
    assert_eq!(after["transport"], transport, "{after}");
    if transport == "quic" {
        assert_eq!(after["channelId"], before["channelId"], "the QUIC connection migrated: {after}");
    }
    let log = app.log();
    assert!(log.contains("the local IP the app chose went away"), "the app says why it moved:\n{log}");
}

#[test]
fn a_new_route_moves_a_quic_channel_by_itself() {
    if !rerun_in_own_namespace("a_new_route_moves_a_quic_channel_by_itself") {
        block_on(a_new_route_moves_the_channel("quic"));
    }
}

#[test]
fn a_new_route_moves_a_tcp_channel_by_itself() {
    if !rerun_in_own_namespace("a_new_route_moves_a_tcp_channel_by_itself") {
        block_on(a_new_route_moves_the_channel("tcp"));
    }
}

#[test]
fn a_vanished_address_moves_a_quic_channel_by_itself() {
    if !rerun_in_own_namespace("a_vanished_address_moves_a_quic_channel_by_itself") {
        block_on(a_vanished_address_moves_the_channel("quic"));
    }
}

#[test]
fn a_vanished_address_moves_a_tcp_channel_by_itself() {
    if !rerun_in_own_namespace("a_vanished_address_moves_a_tcp_channel_by_itself") {
        block_on(a_vanished_address_moves_the_channel("tcp"));
    }
}
