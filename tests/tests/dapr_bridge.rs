//! Real Dapr behind dialbackd: an unmodified daprd (built from Dapr's Go
//! module by `scripts/daprd.sh`, cached) whose `--app-port` is dialbackd's
//! bridge port, and the echo app with no listening socket, dialing
//! dialbackd over QUIC or TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::dapr::Daprd;
use dialback_e2e::{AppBuilder, PATIENCE, SidecarBuilder, eventually, http_call};

const STATE_STORE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
";

/// Invocation through daprd's API reaches the firewalled app (through the
/// bridge and the channel), and the app's state calls to dialbackd reach
/// daprd's state store (through the upstream).
async fn daprd_reaches_the_app_and_the_app_reaches_daprd(transport: &str) {
    let ports = Daprd::ports();
    let up = |p: u16| format!("127.0.0.1:{p}");
    let sc = SidecarBuilder::callback("echo")
        .args(["--bridge-app-port", "0", "--dapr-upstream-http", &up(ports.0), "--dapr-upstream-grpc", &up(ports.1)])
        .spawn()
        .await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd = Daprd::spawn("echo", ports, bridge, "grpc", &[("state.yaml", STATE_STORE)], &[]).await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    app.wait_line("echo: connected").await;

    // daprd -> bridge -> channel -> app; once daprd's health probe has seen
    // the app, the call goes through.
    let url = format!("http://127.0.0.1:{}/v1.0/invoke/echo/method/orders", daprd.http);
    let r = eventually("an invocation through daprd to reach the app", PATIENCE, || async {
        http_call("POST", &url, &[("content-type", "text/plain")], "through daprd")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.text(), "through daprd", "daprd log:\n{}", daprd.log_tail());

    // app -> dialbackd -> daprd's state store, and back.
    let base = sc.http_base();
    let r = http_call(
        "POST",
        &format!("{base}/v1.0/state/statestore"),
        &[("content-type", "application/json")],
        r#"[{"key":"k1","value":"v1"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "save: {} / daprd log:\n{}", r.text(), daprd.log_tail());
    let r = http_call("GET", &format!("{base}/v1.0/state/statestore/k1"), &[], "").await.unwrap();
    assert_eq!((r.status, r.text()), (200, r#""v1""#.to_string()), "get");
    let r = http_call("DELETE", &format!("{base}/v1.0/state/statestore/k1"), &[], "").await.unwrap();
    assert_eq!(r.status, 204, "delete: {}", r.text());
    let r = http_call("GET", &format!("{base}/v1.0/state/statestore/k1"), &[], "").await.unwrap();
    assert_eq!(r.status, 204, "gone after delete: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprd_reaches_the_app_and_the_app_reaches_daprd_quic() {
    daprd_reaches_the_app_and_the_app_reaches_daprd("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprd_reaches_the_app_and_the_app_reaches_daprd_tcp() {
    daprd_reaches_the_app_and_the_app_reaches_daprd("tcp").await;
}
