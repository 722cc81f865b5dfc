//! A QUIC stream per call (`--callback-quic-streams per-call`, ALPN
//! `dialback/2`), end to end with the real `dialbackd` and echo app: the
//! sidecar says which it uses, calls of every size come back whole, many
//! at once and through 3 % loss, streams are reused, and TCP keeps one
//! stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::{AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call, metadata};

async fn echo(sc: &Sidecar, body: String) -> (u16, String) {
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], body).await.unwrap();
    (r.status, r.text())
}

/// The channel's `appChannel` fields once an app is connected over `transport`.
async fn connected(sc: &Sidecar, transport: &str) -> serde_json::Value {
    eventually(&format!("the app connected over {transport}"), PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        let ch = md["appChannel"].clone();
        (ch["state"] == "connected" && ch["transport"] == transport).then_some(ch)
    })
    .await
}

#[tokio::test]
async fn calls_go_on_a_stream_each_and_come_back_whole() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-quic-streams", "per-call"]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    let ch = connected(&sc, "quic").await;
    assert_eq!(ch["streams"], "per-call", "{ch}");

    // 64 at once, each body its own, from a byte to a megabyte.
    let sizes = [1usize, 100, 16 * 1024, 64 * 1024, 1024 * 1024];
    let calls = (0..64).map(|i| {
        let sc = &sc;
        let body: String = format!("{i:03}").repeat(sizes[i % sizes.len()] / 3 + 1);
        async move { (echo(sc, body.clone()).await, body) }
    });
    for ((status, got), sent) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{}", app.log_tail());
        assert!(got == sent, "a body of {} bytes came back as {} bytes", sent.len(), got.len());
    }

    // The Ping stream stayed on the first stream: still the same channel.
    let after = connected(&sc, "quic").await;
    assert_eq!(after["channelId"], ch["channelId"], "the channel lived through the calls");
}

#[tokio::test]
async fn tcp_and_the_default_keep_one_stream() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-quic-streams", "per-call"]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    assert_eq!(connected(&sc, "tcp").await["streams"], "single");
    assert_eq!(echo(&sc, "over tcp".into()).await, (200, "over tcp".into()));
    drop(app);

    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    assert_eq!(connected(&sc, "quic").await["streams"], "single", "one stream unless asked");
    assert_eq!(echo(&sc, "one stream".into()).await, (200, "one stream".into()));
}

#[tokio::test]
async fn a_wrong_value_is_refused_at_start() {
    let out = std::process::Command::new(&dialback_e2e::binaries().dialbackd)
        .args(["--app-id", "echo", "--enable-callback-channel", "--callback-quic-streams", "many"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("per-call"), "{stderr}");
}

#[tokio::test]
async fn calls_on_their_own_streams_come_back_whole_through_loss() {
    let (relay, sc) =
        SidecarBuilder::callback("echo").args(["--callback-quic-streams", "per-call"]).spawn_behind_relay().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    assert_eq!(connected(&sc, "quic").await["streams"], "per-call");
    relay.set_loss(0.03);
    // Three waves, so later calls reuse the streams of earlier ones.
    for wave in 0..3 {
        let calls = (0..32).map(|i| {
            let sc = &sc;
            let body = format!("{wave}-{i:02}:").repeat(3000);
            async move { (echo(sc, body.clone()).await, body) }
        });
        for ((status, got), sent) in futures_util::future::join_all(calls).await {
            assert_eq!(status, 200, "wave {wave}: {}", app.log_tail());
            assert!(got == sent, "wave {wave}: {} bytes sent, {} came back", sent.len(), got.len());
        }
    }
    relay.set_loss(0.0);
}
