//! Bridge mode against a stand-in for daprd: a gRPC client that calls the
//! bridge port as daprd calls its `--app-port`. (Tests with a real daprd
//! come with `scripts/daprd.sh`.) The echo app dials the sidecar as usual;
//! every call to the bridge reaches it as is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::{AppBuilder, PATIENCE, SidecarBuilder, eventually, metadata};
use dialback_proto::common::InvokeRequest;
use dialback_proto::runtime::app_callback_client::AppCallbackClient;
use tonic::Code;

async fn call(
    client: &mut AppCallbackClient<tonic::transport::Channel>,
    method: &str,
    data: &[u8],
    tell: bool,
) -> Result<(Vec<u8>, String), tonic::Status> {
    let mut req = tonic::Request::new(InvokeRequest {
        method: method.into(),
        data: Some(prost_types::Any { type_url: String::new(), value: data.to_vec() }),
        content_type: "application/x-bridge".into(),
        http_extension: None,
    });
    if tell {
        req.metadata_mut().insert("x-echo-method", "1".parse().unwrap());
    }
    let resp =
        tokio::time::timeout(PATIENCE, client.on_invoke(req)).await.expect("OnInvoke through the bridge timed out")?;
    let r = resp.into_inner();
    Ok((r.data.map(|a| a.value).unwrap_or_default(), r.content_type))
}

/// Before the app dials in, daprd's calls fail as for an unreachable app
/// (UNAVAILABLE, after the bounded wait); once it has, they reach it with
/// data, content type and metadata intact, over either transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprds_calls_reach_the_app_through_the_bridge() {
    let sc = SidecarBuilder::callback("echo")
        .args(["--bridge-app-port", "0", "--callback-wait-timeout", "300ms"])
        .spawn()
        .await;
    let bridge = sc.bridge.expect("the ready line names the bridge port");
    assert!(bridge.ip().is_loopback(), "the bridge binds loopback by default: {bridge}");
    let mut daprd = AppCallbackClient::connect(format!("http://{bridge}")).await.unwrap();
    let err = call(&mut daprd, "m", b"early", false).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not connected"), "{err:?}");

    for transport in ["quic", "tcp"] {
        let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
        app.wait_line("echo: connected").await;
        eventually("the sidecar to show the app connected", PATIENCE, || async {
            (metadata(sc.http).await.ok()?["appChannel"]["transport"] == transport).then_some(())
        })
        .await;
        let (data, ct) = call(&mut daprd, "orders/42", b"payload", false).await.unwrap();
        assert_eq!((data.as_slice(), ct.as_str()), (&b"payload"[..], "application/x-bridge"), "over {transport}");
        // Metadata crosses the bridge too: the echo app answers with the method name when told.
        let (data, _) = call(&mut daprd, "orders/42", b"x", true).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&data), "orders/42", "over {transport}");
        let (data, _) = call(&mut daprd, "whoami", b"", false).await.unwrap();
        assert!(
            String::from_utf8_lossy(&data).contains(transport),
            "whoami over {transport}: {:?}",
            String::from_utf8_lossy(&data)
        );
        app.kill().await;
    }
}

/// The bridge carries any method, not just the ones it knows: a service the
/// app does not serve comes back as the app's own UNIMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_method_crosses_the_bridge_and_the_apps_own_status_comes_back() {
    let sc = SidecarBuilder::callback("echo").args(["--bridge-app-port", "0"]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_line("echo: connected").await;
    let bridge = sc.bridge.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{bridge}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/dapr.proto.runtime.v1.AppCallbackAlpha/OnJobEventAlpha1");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let err = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "the app's own answer: {err:?}");
}

/// The bridge answers daprd's gRPC health probe itself: unhealthy while no
/// channel is up, healthy while one is (the echo app does not serve the
/// health service), unhealthy again when the app is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_healthy_to_daprd_exactly_while_its_channel_is_up() {
    use dialback_proto::runtime::app_callback_health_check_client::AppCallbackHealthCheckClient;
    let sc = SidecarBuilder::callback("echo").args(["--bridge-app-port", "0"]).spawn().await;
    let mut probe = AppCallbackHealthCheckClient::connect(format!("http://{}", sc.bridge.unwrap())).await.unwrap();
    let err = probe.health_check(()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "no app yet: {err:?}");
    let mut app = AppBuilder::echo(sc.grpc).transport("tcp").spawn();
    app.wait_line("echo: connected").await;
    eventually("the probe to find the app healthy", PATIENCE, || async { probe.clone().health_check(()).await.ok() })
        .await;
    app.kill().await;
    eventually("the probe to find the app gone", PATIENCE, || async {
        probe.clone().health_check(()).await.err().filter(|e| e.code() == Code::Unavailable)
    })
    .await;
}

/// daprd's `--app-protocol http`: an HTTP app (an axum Router) behind the
/// channel gets daprd's HTTP/1.1 calls through the bridge with method,
/// path, query, headers and body intact, and its answer comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_app_behind_the_channel_gets_daprds_http_calls() {
    use axum::routing::any;
    let sc = SidecarBuilder::callback("echo")
        .args(["--bridge-app-port", "0", "--bridge-app-protocol", "http"])
        .spawn()
        .await;
    let app = axum::Router::new().route(
        "/orders/{id}",
        any(|method: http::Method, uri: http::Uri, headers: http::HeaderMap, body: axum::body::Bytes| async move {
            let trace = headers.get("x-trace").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let answer = serde_json::json!({
                "method": method.as_str(),
                "path": uri.path(),
                "query": uri.query(),
                "trace": trace,
                "body": String::from_utf8_lossy(&body),
            });
            ([("x-app", "axum")], axum::Json(answer))
        }),
    );
    let handle = dialback::CallbackServer::builder()
        .sidecar(dialback::SidecarOptions {
            grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
            ..Default::default()
        })
        .http_service(app)
        .start()
        .unwrap();
    handle.wait_connected(PATIENCE).await.unwrap();
    let bridge = sc.bridge.unwrap();
    let r = dialback_e2e::http_call(
        "PUT",
        &format!("http://{bridge}/orders/42?x=1&y=2"),
        &[("x-trace", "t-1")],
        "the body",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["method"], "PUT", "{got}");
    assert_eq!(got["path"], "/orders/42", "{got}");
    assert_eq!(got["query"], "x=1&y=2", "{got}");
    assert_eq!(got["trace"], "t-1", "{got}");
    assert_eq!(got["body"], "the body", "{got}");
    let missing = dialback_e2e::http_call("GET", &format!("http://{bridge}/nowhere"), &[], "").await.unwrap();
    assert_eq!(missing.status, 404, "the app's own 404");
    // gRPC on a bridge set for HTTP: a clear refusal naming the flags.
    let mut daprd = AppCallbackClient::connect(format!("http://{bridge}")).await.unwrap();
    let err = call(&mut daprd, "m", b"", false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--bridge-app-protocol"), "{err:?}");
    handle.shutdown().await;
}

/// daprd and dialbackd disagreeing on the app protocol get a clear error,
/// not a silent 200; and an app with no HTTP routes answers HTTP with 404,
/// not with tonic's UNIMPLEMENTED (which HTTP reads as 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_mismatch_is_named_not_swallowed() {
    let sc = SidecarBuilder::callback("echo").args(["--bridge-app-port", "0"]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    let bridge = sc.bridge.unwrap();
    let r = dialback_e2e::http_call("POST", &format!("http://{bridge}/orders"), &[], "x").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("--app-protocol grpc"), "{}", r.text());
    // The health path too: daprd with --app-protocol http sees an unhealthy app.
    let r = dialback_e2e::http_call("GET", &format!("http://{bridge}/healthz"), &[], "").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());

    let sc = SidecarBuilder::callback("echo")
        .args(["--bridge-app-port", "0", "--bridge-app-protocol", "http"])
        .spawn()
        .await;
    let mut app = AppBuilder::echo(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    let bridge = sc.bridge.unwrap();
    let r = dialback_e2e::http_call("POST", &format!("http://{bridge}/orders"), &[], "x").await.unwrap();
    assert_eq!(r.status, 404, "a gRPC-only app has no HTTP routes: {}", r.text());
    assert!(r.text().contains("serves no HTTP routes"), "{}", r.text());
    // daprd's HTTP health probe is the bridge's to answer: healthy while the channel is up.
    let health = format!("http://{bridge}/healthz");
    let r = dialback_e2e::http_call("GET", &health, &[], "").await.unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    app.kill().await;
    eventually("the HTTP health path to say unhealthy", PATIENCE, || async {
        let r = dialback_e2e::http_call("GET", &health, &[], "").await.ok()?;
        (r.status == 503).then_some(())
    })
    .await;
}

/// `--bridge-app-port` without the callback channel is refused at start, with a clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_without_a_callback_channel_is_refused() {
    let bin = &dialback_e2e::binaries().dialbackd;
    let out = std::process::Command::new(bin).args(["--app-id", "a", "--bridge-app-port", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bridge-app-port needs --enable-callback-channel"), "{err}");
}

/// What the stand-in daprd saw of one forwarded call.
#[derive(Clone, Debug, Default)]
struct Seen {
    path: String,
    token: Option<String>,
    body: Vec<u8>,
}

/// A stand-in for daprd's APIs: answers any HTTP path with what it saw as
/// JSON, and any gRPC method with one empty message and OK; records the
/// gRPC calls.
async fn fake_daprd() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use axum::body::Bytes;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: http::Method, uri: http::Uri, headers: http::HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let token = headers.get("dapr-api-token").and_then(|v| v.to_str().ok()).map(str::to_string);
                let grpc = headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                if grpc {
                    log.lock().unwrap().push(Seen { path: uri.path().to_string(), token, body: body.to_vec() });
                    let frames = [
                        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                        Ok(http_body::Frame::trailers(http::HeaderMap::from_iter([(
                            http::HeaderName::from_static("grpc-status"),
                            http::HeaderValue::from_static("0"),
                        )]))),
                    ];
                    let body =
                        axum::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
                    return http::Response::builder().header("content-type", "application/grpc").body(body).unwrap();
                }
                let answer = serde_json::json!({
                    "method": method.as_str(),
                    "path": uri.path(),
                    "query": uri.query(),
                    "token": token,
                    "body": String::from_utf8_lossy(&body),
                });
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap()
            }
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

/// The app's own Dapr API calls that dialbackd does not serve (state,
/// publish, ..., over HTTP and gRPC) go on to the daprd behind it with the
/// path and body intact; the caller's token is checked at dialbackd and
/// daprd gets the sidecar's own; a caller without it never reaches daprd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_api_calls_go_on_to_the_daprd_behind() {
    let (daprd, seen) = fake_daprd().await;
    let up = daprd.to_string();
    let sc = SidecarBuilder::callback("echo")
        .args([
            "--bridge-app-port",
            "0",
            "--dapr-api-token",
            "s3cret",
            "--dapr-upstream-grpc",
            &up,
            "--dapr-upstream-http",
            &up,
        ])
        .spawn()
        .await;
    let token = [("dapr-api-token", "s3cret")];
    let r = dialback_e2e::http_call(
        "POST",
        &format!("{}/v1.0/state/statestore?a=b", sc.http_base()),
        &token,
        r#"[{"key":"k","value":"v"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["path"], "/v1.0/state/statestore", "{got}");
    assert_eq!(got["query"], "a=b", "{got}");
    assert_eq!(got["token"], "s3cret", "daprd gets the sidecar's token: {got}");
    assert_eq!(got["body"], r#"[{"key":"k","value":"v"}]"#, "{got}");
    // Invoking another app is daprd's job; this sidecar's own app stays here.
    let r = dialback_e2e::http_call("POST", &format!("{}/v1.0/invoke/other/method/m", sc.http_base()), &token, "x")
        .await
        .unwrap();
    assert_eq!(r.json()["path"], "/v1.0/invoke/other/method/m", "{}", r.text());
    // No token: refused here, never forwarded.
    let r =
        dialback_e2e::http_call("POST", &format!("{}/v1.0/state/statestore", sc.http_base()), &[], "x").await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());

    // gRPC: any method not served here, unary, with its body.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", sc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    req.metadata_mut().insert("dapr-api-token", "s3cret".parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/dapr.proto.runtime.v1.Dapr/SaveState");
    grpc.unary(req, path, tonic_prost::ProstCodec::<(), ()>::default()).await.expect("SaveState through dialbackd");
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/dapr.proto.runtime.v1.Dapr/SaveState");
    assert_eq!(calls[0].token.as_deref(), Some("s3cret"));
    assert_eq!(calls[0].body, vec![0, 0, 0, 0, 0], "one empty message, as sent");
    // Without the token: UNAUTHENTICATED here, nothing reaches daprd.
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/dapr.proto.runtime.v1.Dapr/SaveState");
    let err =
        grpc.unary(tonic::Request::new(()), path, tonic_prost::ProstCodec::<(), ()>::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A stand-in app serving a bidirectional stream of a service that is not
/// `AppCallback` (`Dapr/SubscribeTopicEventsAlpha1`): each request comes
/// back as an answer, the request's metadata comes back in the headers,
/// and the stream ends with the app's own status and trailer metadata.
#[derive(Clone)]
struct StreamEcho;

#[tonic::async_trait]
impl dialback_proto::runtime::dapr_server::Dapr for StreamEcho {
    async fn invoke_service(
        &self,
        _r: tonic::Request<dialback_proto::runtime::InvokeServiceRequest>,
    ) -> Result<tonic::Response<dialback_proto::common::InvokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
    async fn get_metadata(
        &self,
        _r: tonic::Request<dialback_proto::runtime::GetMetadataRequest>,
    ) -> Result<tonic::Response<dialback_proto::runtime::GetMetadataResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
    type SubscribeTopicEventsAlpha1Stream = futures_util::stream::BoxStream<
        'static,
        Result<dialback_proto::runtime::SubscribeTopicEventsResponseAlpha1, tonic::Status>,
    >;
    async fn subscribe_topic_events_alpha1(
        &self,
        r: tonic::Request<tonic::Streaming<dialback_proto::runtime::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<tonic::Response<Self::SubscribeTopicEventsAlpha1Stream>, tonic::Status> {
        use dialback_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Req;
        use dialback_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Resp;
        use futures_util::StreamExt;
        let seen = r.metadata().get("x-test").cloned();
        let answers = r
            .into_inner()
            .map(|m| {
                let m = m?;
                let id = match m.subscribe_topic_events_request_type {
                    Some(Req::EventProcessed(p)) => p.id,
                    _ => "initial".into(),
                };
                Ok(dialback_proto::runtime::SubscribeTopicEventsResponseAlpha1 {
                    subscribe_topic_events_response_type: Some(Resp::EventMessage(
                        dialback_proto::runtime::TopicEventRequest { id, ..Default::default() },
                    )),
                })
            })
            .chain(futures_util::stream::once(async {
                let mut md = tonic::metadata::MetadataMap::new();
                md.insert("x-trailer", "bye".parse().unwrap());
                Err(tonic::Status::with_metadata(tonic::Code::Aborted, "the app's own ending", md))
            }));
        let mut resp = tonic::Response::new(answers.boxed());
        if let Some(v) = seen {
            resp.metadata_mut().insert("x-seen", v);
        }
        Ok(resp)
    }
}

/// A bidirectional stream crosses the bridge both ways, message by
/// message, with headers, status and trailers intact; and the channel's
/// own control stream is not the bridge's to carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_stream_crosses_the_bridge_and_the_control_stream_does_not() {
    use dialback_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Req;
    use dialback_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Resp;
    use dialback_proto::runtime::{SubscribeTopicEventsRequestAlpha1, SubscribeTopicEventsRequestProcessedAlpha1};
    let sc = SidecarBuilder::callback("echo").args(["--bridge-app-port", "0"]).spawn().await;
    let handle = dialback::CallbackServer::builder()
        .sidecar(dialback::SidecarOptions {
            grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
            ..Default::default()
        })
        .add_service(dialback_proto::runtime::dapr_server::DaprServer::new(StreamEcho))
        .start()
        .unwrap();
    handle.wait_connected(PATIENCE).await.unwrap();
    let bridge = sc.bridge.unwrap();
    let mut client =
        dialback_proto::runtime::dapr_client::DaprClient::connect(format!("http://{bridge}")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut().insert("x-test", "hello".parse().unwrap());
    let resp = client.subscribe_topic_events_alpha1(req).await.expect("the stream opens through the bridge");
    assert_eq!(resp.metadata().get("x-seen").and_then(|v| v.to_str().ok()), Some("hello"));
    let mut inbound = resp.into_inner();
    // Message by message: each answer comes before the next request is sent.
    for i in 0..3 {
        let processed = SubscribeTopicEventsRequestProcessedAlpha1 { id: format!("m{i}"), status: None };
        tx.send(SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(Req::EventProcessed(processed)),
        })
        .await
        .unwrap();
        let got = tokio::time::timeout(PATIENCE, inbound.message()).await.expect("an answer").unwrap().unwrap();
        match got.subscribe_topic_events_response_type {
            Some(Resp::EventMessage(ev)) => assert_eq!(ev.id, format!("m{i}")),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    drop(tx);
    let end = tokio::time::timeout(PATIENCE, inbound.message()).await.expect("the end").unwrap_err();
    assert_eq!((end.code(), end.message()), (Code::Aborted, "the app's own ending"), "{end:?}");
    assert_eq!(end.metadata().get("x-trailer").and_then(|v| v.to_str().ok()), Some("bye"), "{end:?}");

    // A stranger on the bridge port cannot ping the app or send it a close notice.
    use dialback_proto::runtime::dapr_app_channel_callback_client::DaprAppChannelCallbackClient;
    let mut control = DaprAppChannelCallbackClient::connect(format!("http://{bridge}")).await.unwrap();
    let mut req = tonic::Request::new(futures_util::stream::iter(vec![()]));
    req.metadata_mut().insert(dialback_channel::notice::CLOSE_NOTICE_KEY, "shutting-down".parse().unwrap());
    let err = control.ping(req).await.expect_err("the control stream is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(matches!(handle.state(), dialback::ChannelState::Connected(_)), "the app's channel is untouched");
    handle.shutdown().await;
}
