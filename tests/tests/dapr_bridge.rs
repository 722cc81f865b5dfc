//! Real Dapr behind dialbackd: an unmodified daprd (built from Dapr's Go
//! module by `scripts/daprd.sh`, cached) whose `--app-port` is dialbackd's
//! bridge port, and the echo app with no listening socket, dialing
//! dialbackd over QUIC or TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::dapr::Daprd;
use dialback_e2e::dapr::components::{CRON, PUBSUB, RESILIENCY, STATE_STORE};
use dialback_e2e::{AppBuilder, PATIENCE, SidecarBuilder, eventually, http_call};

/// Invocation through daprd's API reaches the firewalled app (through the
/// bridge and the channel), and the app's state calls to dialbackd reach
/// daprd's state store (through the upstream).
async fn daprd_reaches_the_app_and_the_app_reaches_daprd(transport: &str) {
    let ports = Daprd::ports();
    let sc = SidecarBuilder::bridged("echo", ports, 0).spawn().await;
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

    // Metadata is daprd's (its components), with the app channel's state added.
    let md = dialback_e2e::metadata(sc.http).await.unwrap();
    let components = md["components"].as_array().cloned().unwrap_or_default();
    assert!(components.iter().any(|c| c["name"] == "statestore"), "daprd's components: {md}");
    assert_eq!(md["appChannel"]["state"], "connected", "{md}");
    assert_eq!(md["extended"]["appChannel.transport"], transport, "{md}");
    use dapr::dapr::proto::runtime::v1::{GetMetadataRequest, dapr_client::DaprClient};
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)).await.unwrap();
    let md = client.get_metadata(GetMetadataRequest::default()).await.expect("GetMetadata").into_inner();
    assert!(md.registered_components.iter().any(|c| c.name == "statestore"), "daprd's components: {md:?}");
    assert_eq!(md.extended_metadata.get("appChannel.state").map(String::as_str), Some("connected"), "{md:?}");
    assert_eq!(md.extended_metadata.get("appChannel.transport").map(String::as_str), Some(transport), "{md:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprd_reaches_the_app_and_the_app_reaches_daprd_quic() {
    daprd_reaches_the_app_and_the_app_reaches_daprd("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprd_reaches_the_app_and_the_app_reaches_daprd_tcp() {
    daprd_reaches_the_app_and_the_app_reaches_daprd("tcp").await;
}

const SUB_APP: &str = "subscriber";

/// dialbackd in bridge mode in front of daprd's `ports`, with more flags.
async fn bridged(ports: (u16, u16), extra: &[&str]) -> dialback_e2e::Sidecar {
    SidecarBuilder::bridged(SUB_APP, ports, 0).args(extra.iter().copied()).spawn().await
}

/// Invokes `inspect` through daprd's HTTP API (retried until daprd's health
/// probe has seen the app) and returns what the app saw.
async fn inspect_through_daprd_http(daprd: &Daprd, headers: &[(&str, &str)]) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}/v1.0/invoke/{SUB_APP}/method/inspect?a=1&b=two", daprd.http);
    let r = eventually("an invocation through daprd's HTTP API to reach the app", PATIENCE, || async {
        http_call("PUT", &url, headers, "the body").await.ok().filter(|r| r.status == 200)
    })
    .await;
    r.json()
}

/// What the app's `inspect` saw is what was sent.
fn assert_intact(seen: &serde_json::Value, verb: &str, query: &str, content_type: &str, data: &str, custom: &str) {
    assert_eq!(seen["verb"], verb, "{seen}");
    assert_eq!(seen["query"], query, "{seen}");
    assert_eq!(seen["contentType"], content_type, "{seen}");
    assert_eq!(seen["data"], data, "{seen}");
    assert_eq!(seen["headers"]["x-custom"], custom, "{seen}");
}

/// The app's recorded events, through dialbackd (for an HTTP app, dialbackd
/// passes its own invocations to daprd, which speaks HTTP to the app).
async fn app_events(sc: &dialback_e2e::Sidecar) -> Vec<serde_json::Value> {
    let url = format!("{}/v1.0/invoke/{SUB_APP}/method/events", sc.http_base());
    let r = http_call("POST", &url, &[], "").await.unwrap();
    r.json().as_array().cloned().unwrap_or_default()
}

/// Waits until daprd holds the app's subscription to `orders`, then
/// publishes `{"order":9}` there through dialbackd's API.
async fn publish_order_9(daprd: &Daprd, sc: &dialback_e2e::Sidecar) {
    daprd.wait_relayed(sc, "orders", 0).await;
    let url = format!("{}/v1.0/publish/pubsub/orders", sc.http_base());
    let r = http_call("POST", &url, &[("content-type", "application/json")], r#"{"order":9}"#).await.unwrap();
    assert_eq!(r.status, 204, "publish: {}", r.text());
}

/// Test 1 (gRPC app): verb, query, content type, body and headers arrive
/// intact through daprd's HTTP API and its gRPC API.
async fn invocation_arrives_intact(transport: &str) {
    let ports = Daprd::ports();
    let sc = bridged(ports, &[]).await;
    let daprd = Daprd::builder(SUB_APP, ports, sc.bridge.unwrap().port()).spawn().await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;

    let seen = inspect_through_daprd_http(&daprd, &[("content-type", "text/plain"), ("x-custom", "yes")]).await;
    assert_intact(&seen, "PUT", "a=1&b=two", "text/plain", "the body", "yes");

    use dialback_proto::common::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dialback_proto::runtime::{InvokeServiceRequest, dapr_client::DaprClient};
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", daprd.grpc)).await.unwrap();
    let mut req = tonic::Request::new(InvokeServiceRequest {
        id: SUB_APP.into(),
        message: Some(InvokeRequest {
            method: "inspect".into(),
            data: Some(prost_types::Any { type_url: String::new(), value: b"grpc body".to_vec() }),
            content_type: "application/x-test".into(),
            http_extension: Some(HttpExtension { verb: Verb::Patch as i32, querystring: "q=3".into() }),
        }),
    });
    req.metadata_mut().insert("x-custom", "grpc".parse().unwrap());
    let resp = client.invoke_service(req).await.expect("invoke through daprd's gRPC API").into_inner();
    let seen: serde_json::Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_intact(&seen, "PATCH", "q=3", "application/x-test", "grpc body", "grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_through_daprd_arrives_intact_quic() {
    invocation_arrives_intact("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_through_daprd_arrives_intact_tcp() {
    invocation_arrives_intact("tcp").await;
}

/// Test 9: daprd's HTTP app protocol and an axum app behind the channel:
/// invocation, pub/sub (with RETRY) and the cron binding.
async fn http_app_protocol(transport: &str) {
    let ports = Daprd::ports();
    let sc = bridged(ports, &["--bridge-app-protocol", "http"]).await;
    let daprd = Daprd::builder(SUB_APP, ports, sc.bridge.unwrap().port())
        .protocol("http")
        .resource("pubsub.yaml", PUBSUB)
        .resource("cron.yaml", CRON)
        .resource("resiliency.yaml", RESILIENCY)
        .spawn()
        .await;
    let mut app =
        AppBuilder::subscriber(sc.grpc).transport(transport).args(["--protocol", "http", "--retry-first", "1"]).spawn();
    app.wait_connected().await;

    let seen = inspect_through_daprd_http(&daprd, &[("content-type", "text/plain"), ("x-custom", "yes")]).await;
    assert_intact(&seen, "PUT", "a=1&b=two", "text/plain", "the body", "yes");

    publish_order_9(&daprd, &sc).await;
    let ev = eventually("the order to reach the HTTP app", PATIENCE, || async {
        app_events(&sc).await.into_iter().find(|e| e["kind"] == "topic" && e["data"]["order"] == 9)
    })
    .await;
    assert_eq!((ev["topic"].as_str(), ev["pubsub"].as_str()), (Some("orders"), Some("pubsub")), "{ev}");
    assert_eq!(ev["type"], "com.dapr.event.sent", "{ev}");
    assert_eq!(ev["attempts"], 2, "answered RETRY once: {ev}");
    eventually("a cron event to reach the HTTP app", PATIENCE, || async {
        app_events(&sc).await.into_iter().find(|e| e["kind"] == "binding" && e["name"] == "cron")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_app_protocol_quic() {
    http_app_protocol("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_app_protocol_tcp() {
    http_app_protocol("tcp").await;
}

/// Test 10: with `APP_API_TOKEN`, only daprd's calls reach the app through
/// the bridge; a stranger without it (or with a wrong one) and garbage on
/// the port are refused, and the healthy channel carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_port_refuses_strangers_and_garbage() {
    const TOKEN: &str = "app-secret-7";
    let ports = Daprd::ports();
    let sc = SidecarBuilder::bridged(SUB_APP, ports, 0).env("APP_API_TOKEN", TOKEN).spawn().await;
    let bridge = sc.bridge.unwrap();
    let daprd = Daprd::builder(SUB_APP, ports, bridge.port())
        .resource("pubsub.yaml", PUBSUB)
        .resource("cron.yaml", CRON)
        .env("APP_API_TOKEN", TOKEN)
        .spawn()
        .await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;

    // daprd's calls carry the token, and it reaches the app as daprd sent it:
    // an invocation and a binding event across the bridge, and a topic
    // event, which dialbackd's relay delivers (its streaming subscription
    // gets no token from daprd, so the relay adds the one daprd would send).
    let seen = inspect_through_daprd_http(&daprd, &[("content-type", "text/plain")]).await;
    assert_eq!(seen["headers"]["dapr-api-token"], TOKEN, "{seen}");
    let find = |pred: fn(&serde_json::Value) -> bool| {
        let sc = &sc;
        move || async move { app_events(sc).await.into_iter().find(pred) }
    };
    let cron = eventually("a cron binding event", PATIENCE, find(|e| e["kind"] == "binding")).await;
    assert_eq!(cron["token"], TOKEN, "the binding event came with the token: {cron}");
    publish_order_9(&daprd, &sc).await;
    let ev = eventually("the order to reach the app", PATIENCE, find(|e| e["kind"] == "topic")).await;
    assert_eq!(ev["token"], TOKEN, "the topic event came with the token: {ev}");

    // A stranger on the bridge port: HTTP, and gRPC straight to OnTopicEvent.
    let base = format!("http://{bridge}");
    for token in [None, Some("wrong")] {
        let headers: Vec<(&str, &str)> = token.map(|t| ("dapr-api-token", t)).into_iter().collect();
        let r = http_call("POST", &format!("{base}/inspect"), &headers, "x").await.unwrap();
        assert_eq!(r.status, 401, "HTTP without the right token: {}", r.text());

        use dialback_proto::runtime::{TopicEventRequest, app_callback_client::AppCallbackClient};
        let mut client = AppCallbackClient::connect(base.clone()).await.unwrap();
        let mut req = tonic::Request::new(TopicEventRequest {
            id: "forged".into(),
            topic: "orders".into(),
            pubsub_name: "pubsub".into(),
            data: b"{}".to_vec(),
            ..TopicEventRequest::default()
        });
        if let Some(t) = token {
            req.metadata_mut().insert("dapr-api-token", t.parse().unwrap());
        }
        let err = client.on_topic_event(req).await.expect_err("a forged event is refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }

    // Garbage: refused at the HTTP layer (400 Bad Request), never an answer from the app.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(bridge).await.unwrap();
        s.write_all(b"\x16\x03\x01\x00\xffnot http at all\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the bridge closes a garbage connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400 "), "garbage gets a plain 400 and the connection closed: {text:?}");
    }

    // Nothing forged reached the app; the channel still works.
    let events = app_events(&sc).await;
    assert!(events.iter().all(|e| e["id"] != "forged"), "a forged event reached the app: {events:?}");
    let seen = inspect_through_daprd_http(&daprd, &[("content-type", "text/plain")]).await;
    assert_eq!(seen["data"], "the body", "the channel carries on: {seen}");
    assert!(sc.log().contains("app channel up"), "one channel, still up");
}

/// Test 5: a streaming subscription (`SubscribeTopicEventsAlpha1`) opened on
/// dialbackd's gRPC API goes on to daprd, with dialbackd's API token
/// checked there and daprd's own token sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_subscription_through_dialbackd() {
    use dialback_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Req;
    use dialback_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Resp;
    use dialback_proto::runtime::{
        SubscribeTopicEventsRequestAlpha1, SubscribeTopicEventsRequestInitialAlpha1,
        SubscribeTopicEventsRequestProcessedAlpha1, TopicEventResponse, dapr_client::DaprClient,
    };
    const TOKEN: &str = "api-secret-5";
    let ports = Daprd::ports();
    let sc = bridged(ports, &["--dapr-api-token", TOKEN]).await;
    let _daprd = Daprd::builder(SUB_APP, ports, sc.bridge.unwrap().port())
        .resource("pubsub.yaml", PUBSUB)
        .env("DAPR_API_TOKEN", TOKEN)
        .spawn()
        .await;

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(Req::InitialRequest(SubscribeTopicEventsRequestInitialAlpha1 {
            pubsub_name: "pubsub".into(),
            topic: "alerts".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)).await.unwrap();
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut().insert("dapr-api-token", TOKEN.parse().unwrap());
    let mut inbound =
        client.subscribe_topic_events_alpha1(req).await.expect("subscribe through dialbackd").into_inner();
    let first = tokio::time::timeout(PATIENCE, inbound.message()).await.expect("daprd's first answer").unwrap();
    assert!(matches!(first.and_then(|m| m.subscribe_topic_events_response_type), Some(Resp::InitialResponse(_))));

    let url = format!("{}/v1.0/publish/pubsub/alerts", sc.http_base());
    let r =
        http_call("POST", &url, &[("content-type", "application/json"), ("dapr-api-token", TOKEN)], r#"{"level":3}"#)
            .await
            .unwrap();
    assert_eq!(r.status, 204, "publish: {}", r.text());
    let msg = tokio::time::timeout(PATIENCE, inbound.message()).await.expect("the event").unwrap().unwrap();
    let Some(Resp::EventMessage(ev)) = msg.subscribe_topic_events_response_type else {
        panic!("an event message, got {msg:?}");
    };
    assert_eq!((ev.topic.as_str(), ev.pubsub_name.as_str()), ("alerts", "pubsub"));
    let data: serde_json::Value = serde_json::from_slice(&ev.data).unwrap();
    assert_eq!(data["level"], 3, "{data}");
    tx.send(SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(Req::EventProcessed(SubscribeTopicEventsRequestProcessedAlpha1 {
            id: ev.id,
            status: Some(TopicEventResponse { status: 0 }),
        })),
    })
    .await
    .unwrap();

    // Without dialbackd's token, the stream is refused at dialbackd.
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<SubscribeTopicEventsRequestAlpha1>(1);
    let outbound = futures_util::stream::unfold(rx2, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let err = client.subscribe_topic_events_alpha1(outbound).await.expect_err("no token, no stream");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}
