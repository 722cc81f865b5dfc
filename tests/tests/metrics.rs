//! Prometheus metrics as an operator scrapes them from the real dialbackd:
//! the counters move as a recovery scenario plays out (calls on both APIs,
//! a stranger's garbage, NAT rebinding, the app back over TCP, the app
//! gone), the exposition passes Prometheus' own `promtool check metrics`,
//! and a hostile neighbour cannot grow it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dialback::{ChannelState, SidecarClient, SidecarOptions};
use dialback_e2e::{AppBuilder, PATIENCE, Sidecar, SidecarBuilder, http_call, metadata};
use tokio::io::AsyncWriteExt;

/// One sample of the exposition: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text exposition (label values here hold no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            Some(Sample { name: name.to_string(), labels, value: value.parse().ok()? })
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

async fn scrape(sc: &Sidecar) -> String {
    let addr = sc.metrics.expect("the ready line names the metrics server (metrics=)");
    let r = http_call("GET", &format!("http://{addr}/metrics"), &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.content_type.clone().unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "Prometheus' text format, got {ct}");
    r.text()
}

/// Scrapes until `ok` holds for the exposition, failing with `what` and the last one.
async fn scrape_until(sc: &Sidecar, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            last = scrape(sc).await;
            if ok(&last) {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for the metrics to show {what}; last scrape:\n{last}"))
}

fn promtool() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/promtool.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/promtool.sh");
    assert!(out.status.success(), "scripts/promtool.sh could not provide promtool (it says why above)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `promtool check metrics` on `text`: it must parse (exit 0, or 3 for
/// lint findings), and every finding must be about one of daprd's own
/// names, kept as daprd has them (counters without `_total`, `_ms`).
fn check_with_promtool(text: &str) {
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(matches!(out.status.code(), Some(0 | 3)), "promtool refused the exposition ({:?}):\n{said}", out.status);
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        assert!(line.starts_with("dapr_"), "a lint finding on one of dialback's own names: {line}\nall:\n{said}");
    }
}

async fn grpc_invoke(sc: &Sidecar) {
    let client = SidecarClient::new(SidecarOptions {
        grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
        ..Default::default()
    })
    .unwrap();
    let got = tokio::time::timeout(PATIENCE, client.invoke("echo", "ping", b"hi".to_vec(), "text/plain")).await;
    assert!(matches!(got, Ok(Ok(_))), "gRPC invocation: {got:?}");
}

async fn http_invoke(sc: &Sidecar) -> u16 {
    http_call("POST", &format!("{}/v1.0/invoke/echo/method/echo", sc.http_base()), &[], "hello").await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_follow_a_recovery_scenario_and_promtool_accepts_them() {
    let (relay, sc) = SidecarBuilder::callback("echo")
        .args(["--callback-ping-interval", "200ms", "--callback-wait-timeout", "500ms"])
        .spawn_behind_relay()
        .await;

    // Before any app: nothing up, and the exposition is valid already.
    let first = scrape(&sc).await;
    assert_eq!(sum(&first, "dialback_channels_up", &[]), 0.0, "{first}");
    check_with_promtool(&first);

    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    for _ in 0..5 {
        assert_eq!(http_invoke(&sc).await, 200);
    }
    grpc_invoke(&sc).await;

    // A stranger's garbage on the channel port's TCP side.
    let mut s = tokio::net::TcpStream::connect(sc.callback.unwrap()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n not TLS at all").await.unwrap();
    drop(s);

    // NAT rebinding: the app's address changes under the live QUIC channel.
    let before = metadata(sc.http).await.unwrap()["appChannel"]["peerAddress"].clone();
    relay.rebind();
    let t = scrape_until(&sc, "a migration, a refusal and pings", |t| {
        sum(t, "dialback_channel_migrations_total", &[("transport", "quic")]) >= 1.0
            && sum(t, "dialback_channel_refusals_total", &[("transport", "tcp"), ("reason", "tls")]) >= 1.0
            && sum(t, "dialback_ping_rtt_seconds_count", &[("transport", "quic")]) >= 1.0
    })
    .await;
    assert_ne!(metadata(sc.http).await.unwrap()["appChannel"]["peerAddress"], before);
    assert_eq!(sum(&t, "dialback_channels_up", &[("transport", "quic")]), 1.0, "{t}");
    assert_eq!(sum(&t, "dialback_channels_up", &[("transport", "tcp")]), 0.0, "{t}");
    assert_eq!(
        sum(&t, "dialback_channel_opens_total", &[("transport", "quic"), ("credential", "one-time-token")]),
        1.0
    );
    assert_eq!(sum(&t, "dialback_channel_handshake_duration_seconds_count", &[("transport", "quic")]), 1.0, "{t}");
    let invoke = [("app_id", "echo"), ("method", "POST"), ("path", "/v1.0/invoke/echo/method/echo"), ("status", "200")];
    assert_eq!(sum(&t, "dapr_http_server_request_count", &invoke), 5.0, "{t}");
    assert_eq!(sum(&t, "dapr_http_server_latency_count", &invoke), 5.0, "{t}");
    let grpc = [
        ("app_id", "echo"),
        ("grpc_server_method", "/dapr.proto.runtime.v1.Dapr/InvokeService"),
        ("grpc_server_status", "OK"),
    ];
    assert_eq!(sum(&t, "dapr_grpc_io_server_completed_rpcs", &grpc), 1.0, "{t}");
    let received = [("app_id", "echo"), ("grpc_server_method", "/dapr.proto.runtime.v1.Dapr/InvokeService")];
    assert!(sum(&t, "dapr_grpc_io_server_received_bytes_per_rpc_sum", &received) > 0.0, "{t}");
    let sent = [("app_id", "echo"), ("dst_app_id", "echo"), ("type", "unary")];
    assert_eq!(sum(&t, "dapr_runtime_service_invocation_req_sent_total", &sent), 6.0, "{t}");
    let ok = [("app_id", "echo"), ("src_app_id", "echo"), ("status", "0")];
    assert_eq!(sum(&t, "dapr_runtime_service_invocation_res_recv_latency_ms_count", &ok), 6.0, "{t}");

    // The app comes back over TCP: the QUIC channel is replaced, and the
    // fall back to TCP is counted.
    app.terminate().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    // The QUIC channel's end is counted once its driver has settled (up to
    // 500 ms after the close); the TCP one may be up before that.
    let t = scrape_until(&sc, "the channel on TCP, the QUIC one's end counted", |t| {
        sum(t, "dialback_channels_up", &[("transport", "tcp")]) == 1.0
            && sum(t, "dialback_channel_ends_total", &[("transport", "quic")]) >= 1.0
    })
    .await;
    assert_eq!(sum(&t, "dialback_transport_changes_total", &[("from", "quic"), ("to", "tcp")]), 1.0, "{t}");
    assert_eq!(sum(&t, "dialback_channel_ends_total", &[("transport", "quic")]), 1.0, "{t}");
    assert_eq!(sum(&t, "dialback_channel_opens_total", &[("transport", "tcp")]), 1.0, "{t}");

    // The app goes away: a call waits for a channel, gives up, and says so.
    app.terminate().await;
    scrape_until(&sc, "no channel up", |t| sum(t, "dialback_channels_up", &[]) == 0.0).await;
    assert_eq!(http_invoke(&sc).await, 503);
    let t = scrape(&sc).await;
    assert_eq!(sum(&t, "dialback_channel_wait_timeouts_total", &[]), 1.0, "{t}");
    assert_eq!(sum(&t, "dialback_calls_waiting_for_channel", &[]), 0.0, "{t}");
    assert_eq!(sum(&t, "dialback_channel_ends_total", &[("transport", "tcp")]), 1.0, "{t}");
    let unavailable = [("app_id", "echo"), ("path", "/v1.0/invoke/echo/method/echo"), ("status", "503")];
    assert_eq!(sum(&t, "dapr_http_server_request_count", &unavailable), 1.0, "{t}");
    check_with_promtool(&t);
}

/// A hostile neighbour calling random paths and methods, without the token
/// and then with it, cannot grow the exposition without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_paths_cannot_grow_the_exposition() {
    let sc = SidecarBuilder::callback("echo").args(["--dapr-api-token", "s3cret"]).spawn().await;
    for i in 0..300 {
        let r = http_call("GET", &format!("{}/v1.0/nope/{i}", sc.http_base()), &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 401);
    }
    let t = scrape(&sc).await;
    assert!(!t.contains("/v1.0/nope/"), "a caller without the token added label values:\n{t}");
    assert_eq!(sum(&t, "dapr_http_server_request_count", &[("path", ""), ("status", "401")]), 300.0, "{t}");

    let token = [("dapr-api-token", "s3cret")];
    for i in 0..600 {
        http_call("GET", &format!("{}/v1.0/nope/{i}", sc.http_base()), &token, Bytes::new()).await.unwrap();
    }
    let t = scrape(&sc).await;
    let paths: std::collections::HashSet<String> = samples(&t)
        .into_iter()
        .filter(|s| s.name == "dapr_http_server_request_count")
        .filter_map(|s| s.labels.get("path").cloned())
        .collect();
    assert!(paths.len() <= 256 + 2, "{} path values", paths.len());
    assert!(paths.contains("_other"), "the values past the budget are counted as _other");
    assert_eq!(sum(&t, "dapr_http_server_request_count", &[("status", "404")]), 600.0, "every call still counted");
}

/// `--enable-metrics=false` binds no metrics port; a taken port is a clear start error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off_and_a_taken_port_is_named() {
    let off = SidecarBuilder::callback("echo").args(["--enable-metrics=false"]).spawn().await;
    assert_eq!(off.metrics, None, "no metrics= in the ready line");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = tokio::process::Command::new(&dialback_e2e::binaries().dialbackd)
        .args(["--app-id", "a", "--dapr-http-port", "0", "--dapr-grpc-port", "0"])
        .args(["--metrics-listen-address", "127.0.0.1", "--metrics-port", &port])
        .arg("--state-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out).await.expect("dialbackd must exit, not run").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a taken metrics port: {stderr}");
    assert!(stderr.contains("--metrics-port") && stderr.contains("metrics server"), "{stderr}");
}

/// What the SDK reports through the `metrics` facade, read by a recorder
/// installed in the app's process: the app (here this test process) dials
/// a real dialbackd, the sidecar is killed and restarted, then the app says
/// its network changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reports_dials_reconnects_migrations_and_time_disconnected() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");
    dialback::metrics::describe();

    let mut sc = SidecarBuilder::callback("echo").spawn().await;
    let handle = dialback_e2e::echo_in_process(format!("http://127.0.0.1:{}", sc.grpc), None).await;
    let channels = |n: u64| {
        let mut rx = handle.watch();
        async move {
            let got = tokio::time::timeout(
                PATIENCE,
                rx.wait_for(|s| matches!(s, ChannelState::Connected(c) if c.channels >= n)),
            )
            .await;
            assert!(matches!(got, Ok(Ok(_))), "the app's channel number {n} never came up");
        }
    };
    sc.kill().await;
    let sc = sc.restart().await;
    channels(2).await;
    handle.rebind(None).await.expect("QUIC moves to a new socket");
    assert_eq!(http_invoke(&sc).await, 200, "the channel serves after the move");

    let snap = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        snap.iter()
            .filter(|(k, ..)| k.key().name() == name)
            .filter(|(k, ..)| label.is_none_or(|(lk, lv)| k.key().labels().any(|l| l.key() == lk && l.value() == lv)))
            .map(|(_, unit, _, v)| (*unit, v))
            .collect::<Vec<_>>()
    };
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        find(name, label).iter().map(|(_, v)| if let DebugValue::Counter(n) = v { *n } else { 0 }).sum()
    };
    assert_eq!(counter(dialback::metrics::CHANNELS_OPENED, Some(("transport", "quic"))), 2, "{snap:?}");
    assert!(counter(dialback::metrics::DIAL_ATTEMPTS, Some(("transport", "quic"))) >= 2, "{snap:?}");
    assert_eq!(counter(dialback::metrics::DIAL_ATTEMPTS, Some(("transport", "tcp"))), 0, "QUIC only: {snap:?}");
    assert_eq!(counter(dialback::metrics::RECONNECTS, None), 1, "{snap:?}");
    assert_eq!(counter(dialback::metrics::MIGRATIONS, Some(("cause", "rebind"))), 1, "{snap:?}");
    let outages = find(dialback::metrics::DISCONNECTED_SECONDS, None);
    let [(unit, DebugValue::Histogram(samples))] = outages.as_slice() else { panic!("one outage histogram: {snap:?}") };
    assert_eq!(unit.as_ref().map(|u| u.as_str()), Some("seconds"), "described in seconds");
    assert_eq!(samples.len(), 1, "one outage: {samples:?}");
    assert!(samples[0].into_inner() > 0.0, "{samples:?}");
    let connected = find(dialback::metrics::CONNECTED, None);
    assert!(matches!(connected.as_slice(), [(_, DebugValue::Gauge(v))] if v.into_inner() == 1.0), "{connected:?}");
    handle.shutdown().await;
}
