//! Attacks on the API ports.

use std::time::{Duration, Instant};

use dialback_e2e::{PATIENCE, SidecarBuilder, http_call, proc_status_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::{Live, assert_caller_undisturbed, closed_within, tcp_from_attacker};

const TOKEN: &str = "attacks-api-token-7d1e";

/// Finding 1: with an API token set, no path reaches the app without it —
/// not `POST /v1.0/healthzX` with `dapr-app-id`, not a dot-dot path behind
/// the health route, not a trailing slash; the exact health routes stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_cannot_be_bypassed() {
    let live = Live::start_with_token(SidecarBuilder::callback("echo"), "quic", &[], Some(TOKEN)).await;
    let calls = live.steady_caller();
    let base = live.sc.http_base();
    for (method, path) in [
        ("POST", "/v1.0/healthzX"),
        ("PUT", "/v1.0/healthz/../../admin"),
        ("GET", "/v1.0/healthz/"),
        ("POST", "/v1.0/healthz"),
        ("GET", "/v1.0/healthz/outbound/x"),
        ("POST", "/v1.0/%68ealthz"),
        ("POST", "/anything"),
        ("POST", "/v1.0/invoke/echo/method/m"),
    ] {
        let r = http_call(method, &format!("{base}{path}"), &[("dapr-app-id", "echo")], "x").await.unwrap();
        assert_eq!(r.status, 401, "{method} {path} without the token answered {}: {}", r.text(), r.status);
        assert_eq!(r.json()["errorCode"], "ERR_UNAUTHORIZED", "{method} {path}: {}", r.text());
    }
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let r = http_call("GET", &format!("{base}{path}"), &[], "").await.unwrap();
        assert_eq!(r.status, 204, "GET {path} without the token: {}", r.text());
    }
    // The header form works with the token, and carries the method as daprd does.
    let r =
        http_call("POST", &format!("{base}/orders/42"), &[("dapr-app-id", "echo"), ("dapr-api-token", TOKEN)], "hi")
            .await
            .unwrap();
    assert_eq!((r.status, r.text()), (200, "hi".to_string()));
    live.assert_untouched("the bypass attempts").await;
    assert_caller_undisturbed(calls, "the bypass attempts").await;
}

/// Extras: CONNECT is no invocation verb (it answered 200, i.e. "tunnel
/// open"), and method names reach the app as daprd passes them: decoded,
/// then cleaned like a path (Go's `path.Clean`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_method_names_match_daprd() {
    let live = Live::start(SidecarBuilder::callback("echo"), "tcp", &[]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", live.sc.http)).await.unwrap();
    s.write_all(b"CONNECT /v1.0/invoke/echo/method/m HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut head)).await.unwrap().unwrap();
    let line = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(line.starts_with("HTTP/1.1 405"), "CONNECT answered {line:?}");

    let base = live.sc.http_base();
    for (path, want) in [
        ("/v1.0/invoke/echo/method/a%2Fb", "a/b"),
        ("/v1.0/invoke/echo/method/a//b/./c", "a/b/c"),
        ("/v1.0/invoke/echo/method/%2E%2E/admin", "../admin"),
        ("/v1.0/invoke/echo/method/a/b/..", "a"),
        ("/v1.0/invoke/echo/method/a%00b", "a\0b"),
    ] {
        let r = http_call("POST", &format!("{base}{path}"), &[("x-echo-method", "1")], "").await.unwrap();
        assert_eq!((r.status, r.text()), (200, want.to_string()), "{path}");
    }
    let r =
        http_call("POST", &format!("{base}/x/../../admin%2Fy"), &[("dapr-app-id", "echo"), ("x-echo-method", "1")], "")
            .await
            .unwrap();
    assert_eq!((r.status, r.text()), (200, "admin/y".to_string()), "the dapr-app-id form");
}

/// Findings 3 and 4: idle connections held open on both API ports, from a
/// process whose soft fd limit is low, and slowloris clients dripping a
/// header byte at a time, cannot lock the app out: a restarted app gets
/// back in through the flooded gRPC port, callers keep working, and the
/// slow and silent connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_api_connections_cannot_lock_the_app_out() {
    // Default bounds (10 s header timeout, 1000 connections a port); the
    // process starts with a soft limit of 256 open files, as a daemon
    // started from a shell with a low default would.
    let sidecar = SidecarBuilder::callback("echo").soft_fd_limit(256);
    let mut live = Live::start(sidecar, "quic", &[]).await;
    let calls = live.steady_caller();
    // 300 idle connections to each API port: more than the soft fd limit
    // the process was started with, far more than the connection cap.
    let mut held = Vec::new();
    for port in [live.sc.http, live.sc.grpc] {
        for _ in 0..300 {
            // A sidecar that stopped accepting leaves connects hanging in
            // the backlog: stop opening more on this port then.
            match tokio::time::timeout(Duration::from_secs(2), tcp_from_attacker(([127, 0, 0, 1], port).into())).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(_)) => {}
                Err(_) => break,
            }
        }
    }
    // 100 slowloris connections: a request line, then a header byte every 200 ms.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let addr = ([127, 0, 0, 1], live.sc.http).into();
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), tcp_from_attacker(addr)).await else { break };
        if s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nx-slow: ").await.is_ok() {
            slow.push(s);
        }
    }
    let drip = tokio::spawn(async move {
        let mut closed = 0;
        for _ in 0..(PATIENCE.as_millis() / 200) {
            closed = 0;
            for s in slow.iter_mut() {
                if s.write_all(b"a").await.is_err() {
                    closed += 1;
                }
            }
            if closed == slow.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (closed, slow.len())
    });
    // The app restarts in the middle of it and must get back in.
    live.app.kill().await;
    live.app = live.app.respawn();
    let id = crate::kit::channel_id_of(&live.app.wait_line("echo: connected").await);
    live.wait_installed(id).await;
    let (status, _) = live.call("whoami", "").await;
    assert_eq!(status, 200, "a call after the app came back");
    let (closed, total) = drip.await.unwrap();
    assert_eq!(closed, total, "slowloris connections still open after {PATIENCE:?}");
    // The silent connections are closed too (no request within the header timeout).
    let closed = futures_util::future::join_all(held.iter_mut().map(|s| closed_within(s, PATIENCE))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "silent API connections still open after {PATIENCE:?}");
    assert_caller_undisturbed_but_for_the_restart(calls).await;
}

/// The steady caller sees the app's restart (calls in flight on the killed
/// app's channel fail with a clear 503, as designed; calls sent meanwhile
/// wait for the new channel), but the flood costs it nothing: no call is
/// lost, no other error, and calls are answered.
async fn assert_caller_undisturbed_but_for_the_restart(calls: dialback_e2e::CallLoop) {
    let summary = calls.stop(PATIENCE).await;
    assert!(summary.ok() > 0, "the steady caller got no answer at all");
    assert_eq!(summary.lost(), 0, "calls never finished");
    for f in summary.failures() {
        let e = f.result.as_ref().unwrap_err();
        assert!(
            e.starts_with("503 ") && e.contains("ERR_DIRECT_INVOKE"),
            "a call failed other than by the restart: {f:?}"
        );
    }
}

/// Finding 7: an app handler that never answers is bounded by the call
/// timeout (504 / DEADLINE_EXCEEDED), and calls beyond the concurrency
/// limit and the waiting line are refused at once (429), not queued without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_are_bounded_and_excess_calls_refused() {
    let sidecar = SidecarBuilder::callback("echo").args([
        "--app-call-timeout",
        "3s",
        "--app-max-concurrency",
        "4",
        "--app-max-pending",
        "4",
    ]);
    let live = Live::start(sidecar, "quic", &[]).await;
    let (status, body) = live.call("sleep/30000", "x").await;
    assert_eq!(status, 504, "a call the app never answers: {body}");
    assert!(body.contains("ERR_DIRECT_INVOKE"), "{body}");

    let mut grpc =
        dialback_proto::runtime::dapr_client::DaprClient::connect(format!("http://127.0.0.1:{}", live.sc.grpc))
            .await
            .unwrap();
    let req = dialback_proto::runtime::InvokeServiceRequest {
        id: "echo".into(),
        message: Some(dialback_proto::common::InvokeRequest { method: "sleep/30000".into(), ..Default::default() }),
    };
    let err = grpc.invoke_service(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");

    // 20 slow calls at once: 4 in flight, 4 waiting, the rest refused at once.
    let url = format!("{}/v1.0/invoke/echo/method/sleep/30000", live.sc.http_base());
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http_call("POST", &url, &[], "x").await })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for h in slow {
        let r = h.await.unwrap().unwrap();
        assert!(matches!(r.status, 429 | 504), "a slow call answered {}: {}", r.status, r.text());
        *by_status.entry(r.status).or_insert(0) += 1;
    }
    assert!(by_status.get(&429).copied().unwrap_or(0) >= 1, "no call was refused at the limit: {by_status:?}");
    assert!(by_status.get(&504).copied().unwrap_or(0) >= 4, "the admitted calls did not time out: {by_status:?}");
    // Once they are gone, calls go through again.
    assert_eq!(live.call("m", "after").await, (200, "after".to_string()));
    live.assert_untouched("slow and excess calls").await;
}

/// Finding 8: the HTTP API holds a bounded number of body bytes at once;
/// 16 concurrent 8 MiB calls all succeed, and the sidecar's peak memory
/// stays far below what 16 bodies at once would take (it was ~1.2 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_bodies_take_bounded_memory() {
    let sidecar =
        SidecarBuilder::callback("echo").args(["--max-body-size", "8Mi", "--max-body-bytes-in-flight", "16Mi"]);
    let live = Live::start(sidecar, "tcp", &["--max-message-bytes", "16777216"]).await;
    let pid = live.sc.pid();
    let before = proc_status_kib(pid, "VmHWM").unwrap();
    let body = "x".repeat(8 * 1024 * 1024 - 64 * 1024);
    let url = format!("{}/v1.0/invoke/echo/method/big", live.sc.http_base());
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { http_call("POST", &url, &[], body).await })
        })
        .collect();
    for h in calls {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "a large call: {}", String::from_utf8_lossy(&r.body[..r.body.len().min(200)]));
        assert_eq!(r.body.len(), body.len());
    }
    let grew_mib = proc_status_kib(pid, "VmHWM").unwrap().saturating_sub(before) / 1024;
    assert!(grew_mib < 400, "the sidecar's peak RSS grew by {grew_mib} MiB for 16 x 8 MiB bodies");
    live.assert_untouched("large bodies").await;
}

/// Finding 9: one message-size limit on both ends. A body over the
/// sidecar's --max-body-size, or over the app's own limit (from its hello),
/// gets 413 / RESOURCE_EXHAUSTED before anything crosses the channel; a
/// body within both goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limits_agree_on_both_ends() {
    // Default --max-body-size (4Mi, as daprd); the app says it takes 2 MiB.
    let live = Live::start(SidecarBuilder::callback("echo"), "quic", &["--max-message-bytes", "2097152"]).await;
    let (status, body) = live.call("m", &"y".repeat(3 * 1024 * 1024)).await;
    assert_eq!(status, 413, "3 MiB to an app that takes 2 MiB: {}", &body[..body.len().min(300)]);
    assert!(body.contains("the app's"), "{body}");
    let (status, _) = live.call("m", &"y".repeat(1024 * 1024)).await;
    assert_eq!(status, 200, "1 MiB is within both limits");
    // Over the sidecar's own limit: refused from the Content-Length alone,
    // before a byte of the body is read (none is sent here).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", live.sc.http)).await.unwrap();
    let head =
        format!("POST /v1.0/invoke/echo/method/m HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 5 * 1024 * 1024);
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 1024];
    let n =
        tokio::time::timeout(PATIENCE, s.read(&mut got)).await.expect("no answer to a 5 MiB Content-Length").unwrap();
    let got = String::from_utf8_lossy(&got[..n]).to_string();
    assert!(got.starts_with("HTTP/1.1 413"), "5 MiB over the default --max-body-size 4Mi: {got}");
    assert!(got.contains("ERR_BODY_TOO_LARGE"), "{got}");
    let mut grpc =
        dialback_proto::runtime::dapr_client::DaprClient::connect(format!("http://127.0.0.1:{}", live.sc.grpc))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
    for (size, what) in [(3 << 20, "over the app's limit"), (6 << 20, "over --max-body-size")] {
        let req = dialback_proto::runtime::InvokeServiceRequest {
            id: "echo".into(),
            message: Some(dialback_proto::common::InvokeRequest {
                method: "m".into(),
                data: Some(prost_types::Any { type_url: String::new(), value: vec![1; size] }),
                ..Default::default()
            }),
        };
        let err = grpc.invoke_service(req).await.unwrap_err();
        // RESOURCE_EXHAUSTED either way, as daprd (grpc-go) says it.
        assert!(
            err.code() == tonic::Code::ResourceExhausted && err.message().contains("limit"),
            "gRPC {what}: {err:?}"
        );
    }
    live.assert_untouched("oversized calls").await;

    // An app that says it takes more gets more, up to the sidecar's flag.
    let big = Live::start(
        SidecarBuilder::callback("echo").args(["--max-body-size", "16Mi"]),
        "quic",
        &["--max-message-bytes", "16777216"],
    )
    .await;
    let six = "z".repeat(6 * 1024 * 1024);
    let (status, echoed) = big.call("m", &six).await;
    assert_eq!((status, echoed.len()), (200, six.len()), "6 MiB to an app that takes 16 MiB");
}

/// Finding 10: shutdown drains the app channel and the APIs at once against
/// one deadline (it drained them one after the other, so a slow call in
/// flight and clients that never close, here connections that never send
/// a byte, made it take twice the grace). With a 10 s grace the sidecar is
/// gone well before 20 s. The bound is generous: the point is "not twice".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_takes_at_most_one_grace_period() {
    let mut live =
        Live::start(SidecarBuilder::callback("echo").args(["--dapr-graceful-shutdown-seconds", "10"]), "tcp", &[])
            .await;
    // Idle clients on both APIs: silent connections, an idle keep-alive
    // HTTP/1 connection (one request done) and an idle gRPC connection.
    let mut silent = Vec::new();
    for port in [live.sc.http, live.sc.grpc] {
        for _ in 0..4 {
            silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
    }
    let mut h1 = tokio::net::TcpStream::connect(("127.0.0.1", live.sc.http)).await.unwrap();
    h1.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(PATIENCE, h1.read(&mut buf)).await.unwrap().unwrap();
    let grpc_url = format!("http://127.0.0.1:{}", live.sc.grpc);
    let _grpc = dialback_proto::runtime::dapr_client::DaprClient::connect(grpc_url).await.unwrap();
    // And a call in flight that the app takes 30 s to answer.
    let url = format!("{}/v1.0/invoke/echo/method/sleep/30000", live.sc.http_base());
    let slow = tokio::spawn(async move { http_call("POST", &url, &[], "x").await });
    dialback_e2e::eventually("the slow call in flight", PATIENCE, || async {
        (live.metadata().await["appChannel"]["inflight"] == 1).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let status = live.sc.terminate().await;
    let took = t0.elapsed();
    assert!(status.success(), "dialbackd exited with {status}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?} with a 10 s grace (twice the grace is 20 s)");
    let _ = slow.await;
}
