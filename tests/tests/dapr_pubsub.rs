//! Real Dapr pub/sub and bindings for an app with no listening socket: an
//! unmodified daprd behind dialbackd's bridge, the subscriber example
//! dialing dialbackd (QUIC or TCP). The app's subscriptions are held by
//! dialbackd's relay as daprd streaming subscriptions that follow the
//! app's channel; bindings and invocations cross the bridge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::dapr::components::{CRON, PUBSUB, RESILIENCY};
use dialback_e2e::dapr::{Daprd, Redis, free_port, relayed};
use dialback_e2e::{AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, eventually_or, http_call, metadata};
use serde_json::Value;

const APP: &str = "subscriber";

/// dialbackd in bridge mode in front of daprd's `ports`, its bridge on `bridge` (0: any).
fn bridged(ports: (u16, u16), bridge: u16) -> SidecarBuilder {
    SidecarBuilder::bridged(APP, ports, bridge)
}

/// The events the app recorded (its method `events`, invoked through dialbackd).
async fn events(sc: &Sidecar) -> Vec<Value> {
    let url = format!("{}/v1.0/invoke/{APP}/method/events", sc.http_base());
    let r = http_call("POST", &url, &[], "").await.expect("invoke events");
    assert_eq!(r.status, 200, "events: {}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// Waits until the app has recorded an event that `pred` accepts.
async fn wait_event(sc: &Sidecar, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let check = || {
        let pred = &pred;
        async move { events(sc).await.into_iter().find(pred) }
    };
    eventually_or(what, PATIENCE, check, || format!("dialbackd log:\n{}", sc.log_tail())).await
}

/// Publishes JSON `body` to `topic` through dialbackd's forwarded API.
async fn publish(sc: &Sidecar, topic: &str, body: &str) {
    let url = format!("{}/v1.0/publish/pubsub/{topic}", sc.http_base());
    let r = http_call("POST", &url, &[("content-type", "application/json")], body.to_string()).await.unwrap();
    assert_eq!(r.status, 204, "publish to {topic}: {}", r.text());
}

fn is_topic(ev: &Value, topic: &str, field: &str, value: i64) -> bool {
    ev["kind"] == "topic" && ev["topic"] == topic && ev["data"][field].as_i64() == Some(value)
}

/// Publish -> daprd -> relay -> channel -> OnTopicEvent, with the
/// CloudEvent intact; RETRY brings the message again; the cron binding's
/// events cross the bridge to OnBindingEvent.
async fn pubsub_retry_and_bindings(transport: &str) {
    let ports = Daprd::ports();
    let sc = bridged(ports, 0).spawn().await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd = Daprd::builder(APP, ports, bridge)
        .resource("pubsub.yaml", PUBSUB)
        .resource("cron.yaml", CRON)
        .resource("resiliency.yaml", RESILIENCY)
        .spawn()
        .await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport(transport).args(["--retry-first", "1"]).spawn();
    assert_eq!(app.wait_connected().await, transport);
    daprd.wait_relayed(&sc, "orders", 0).await;

    publish(&sc, "orders", r#"{"order":7}"#).await;
    let ev = wait_event(&sc, "the order to reach the app", |e| is_topic(e, "orders", "order", 7)).await;
    assert_eq!(ev["pubsub"], "pubsub", "{ev}");
    assert_eq!(ev["source"], APP, "{ev}");
    assert_eq!(ev["type"], "com.dapr.event.sent", "{ev}");
    assert_eq!(ev["specversion"], "1.0", "{ev}");
    assert_eq!(ev["datacontenttype"], "application/json", "{ev}");
    assert_eq!(ev["path"], "/topic/orders", "the subscription's route: {ev}");
    assert!(!ev["id"].as_str().unwrap_or("").is_empty(), "an event id: {ev}");
    assert_eq!(ev["attempts"], 2, "answered RETRY once, so delivered twice: {ev}\ndaprd log:\n{}", daprd.log_tail());

    wait_cron(&sc, "a cron binding event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_retry_and_bindings_quic() {
    pubsub_retry_and_bindings("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_retry_and_bindings_tcp() {
    pubsub_retry_and_bindings("tcp").await;
}

/// Waits until the app has recorded an event of the `cron` binding.
async fn wait_cron(sc: &Sidecar, what: &str) {
    wait_event(sc, what, |e| e["kind"] == "binding" && e["name"] == "cron").await;
}

/// daprd first, then the app, dialbackd last; then the app comes back with
/// another topic: daprd delivers what the app declares now. The cron
/// binding reaches the app in that start order, and again once it is back.
/// daprd keeps a gRPC app's first `ListInputBindings` answer (docs/dapr.md):
/// the restarted app, which declares `queue` instead, still gets `cron`'s
/// events and would get none of `queue`'s, and dialbackd says so, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_the_app_whatever_the_start_order() {
    let ports = Daprd::ports();
    let (bridge, sc_http, sc_grpc) = (free_port(), free_port(), free_port());
    let mut daprd =
        Daprd::builder(APP, ports, bridge).resource("pubsub.yaml", PUBSUB).resource("cron.yaml", CRON).start();
    let mut app = AppBuilder::subscriber(sc_grpc).transport("quic").spawn();
    let sc = bridged(ports, bridge).ports(sc_http, sc_grpc).spawn().await;
    daprd.wait_ready().await;
    app.wait_connected().await;
    daprd.wait_relayed(&sc, "orders", 0).await;
    publish(&sc, "orders", r#"{"order":1}"#).await;
    wait_event(&sc, "order 1 to reach the app", |e| is_topic(e, "orders", "order", 1)).await;
    wait_cron(&sc, "a cron binding event, daprd first and dialbackd last").await;

    // The app restarts subscribed to another topic.
    app.kill().await;
    let mut app =
        AppBuilder::subscriber(sc_grpc).transport("quic").args(["--topic", "invoices", "--binding", "queue"]).spawn();
    app.wait_connected().await;
    daprd.wait_relayed(&sc, "invoices", 0).await;
    eventually("dialbackd to name the binding daprd was not told of", PATIENCE, || async {
        let log = sc.log();
        log.lines().any(|l| l.contains("daprd was not told of") && l.contains(r#"["queue"]"#)).then_some(())
    })
    .await;
    let topics = daprd.subscribed_topics().await;
    assert!(!topics.contains(&"pubsub/orders".to_string()), "the old topic is gone: {topics:?}");
    publish(&sc, "invoices", r#"{"invoice":2}"#).await;
    wait_event(&sc, "invoice 2 to reach the restarted app", |e| is_topic(e, "invoices", "invoice", 2)).await;
    wait_cron(&sc, "a cron binding event for the restarted app").await;
}

/// An app that comes back declaring an input binding daprd was not told
/// of (daprd asks a gRPC app once per run) gets its events once daprd's
/// runtime restarts in place on SIGHUP, daprd's process and ports staying
/// as they were: sent by hand after dialbackd's warning names the binding
/// (`by_dialbackd` false), or by dialbackd itself, given daprd's pid file.
async fn a_new_binding_reaches_the_app_once_daprd_reloads(by_dialbackd: bool) {
    let ports = Daprd::ports();
    let pid_dir = tempfile::tempdir().expect("temp dir");
    let pid_file = pid_dir.path().join("daprd.pid");
    let sc = match by_dialbackd {
        true => bridged(ports, 0).args(["--bridge-reload-daprd-pid-file".to_string(), pid_file.display().to_string()]),
        false => bridged(ports, 0),
    }
    .spawn()
    .await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    let queue = CRON.replace("name: cron", "name: queue");
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd =
        Daprd::builder(APP, ports, bridge).resource("cron.yaml", CRON).resource("queue.yaml", &queue).spawn().await;
    std::fs::write(&pid_file, format!("{}\n", daprd.pid())).expect("write daprd's pid file");
    wait_cron(&sc, "cron's events, the binding the first app declares").await;

    app.kill().await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport("tcp").args(["--binding", "queue"]).spawn();
    app.wait_connected().await;
    let said = if by_dialbackd { "sent daprd SIGHUP" } else { "daprd was not told of" };
    eventually(&format!("dialbackd to log {said:?}, naming the binding"), PATIENCE, || async {
        sc.log().lines().any(|l| l.contains(said) && l.contains(r#"["queue"]"#)).then_some(())
    })
    .await;
    if !by_dialbackd {
        daprd.reload();
    }
    let is_queue = |e: &Value| e["kind"] == "binding" && e["name"] == "queue";
    let explain = || format!("dialbackd log:\n{}\ndaprd log:\n{}", sc.log_tail(), daprd.log_tail());
    eventually_or(
        "queue's events once daprd reloaded",
        PATIENCE,
        || async { events(&sc).await.into_iter().find(is_queue) },
        explain,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binding_reaches_the_app_once_daprd_is_sent_sighup() {
    a_new_binding_reaches_the_app_once_daprd_reloads(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binding_reaches_the_app_when_dialbackd_reloads_daprd() {
    a_new_binding_reaches_the_app_once_daprd_reloads(true).await;
}

/// dialbackd and the app first, daprd last: the relay waits for daprd and
/// subscribes as soon as it is there, and the cron binding reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_wait_for_a_daprd_that_starts_last() {
    let ports = Daprd::ports();
    let sc = bridged(ports, 0).spawn().await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd =
        Daprd::builder(APP, ports, bridge).resource("pubsub.yaml", PUBSUB).resource("cron.yaml", CRON).spawn().await;
    daprd.wait_relayed(&sc, "orders", 0).await;
    publish(&sc, "orders", r#"{"order":5}"#).await;
    wait_event(&sc, "order 5 to reach the app", |e| is_topic(e, "orders", "order", 5)).await;
    wait_cron(&sc, "a cron binding event, daprd last").await;
}

/// dialbackd killed and restarted, then daprd killed and restarted: each
/// time, the system comes back by itself.
async fn the_system_comes_back(transport: &str) {
    let ports = Daprd::ports();
    let bridge = free_port();
    let mut sc = bridged(ports, bridge).spawn().await;
    let mut daprd = Daprd::builder(APP, ports, bridge).resource("pubsub.yaml", PUBSUB).spawn().await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;
    daprd.wait_relayed(&sc, "orders", 0).await;
    publish(&sc, "orders", r#"{"order":1}"#).await;
    wait_event(&sc, "order 1", |e| is_topic(e, "orders", "order", 1)).await;

    sc.kill().await;
    let sc = sc.restart().await;
    app.wait_connected().await;
    daprd.wait_relayed(&sc, "orders", 0).await;
    publish(&sc, "orders", r#"{"order":2}"#).await;
    wait_event(&sc, "order 2 after dialbackd restarted", |e| is_topic(e, "orders", "order", 2)).await;

    let before = relayed(&sc, "orders");
    daprd.restart().await;
    daprd.wait_relayed(&sc, "orders", before).await;
    publish(&sc, "orders", r#"{"order":3}"#).await;
    wait_event(&sc, "order 3 after daprd restarted", |e| is_topic(e, "orders", "order", 3)).await;
    let url = format!("http://127.0.0.1:{}/v1.0/invoke/{APP}/method/ping", daprd.http);
    let r = eventually("an invocation through the restarted daprd", PATIENCE, || async {
        http_call("POST", &url, &[("content-type", "text/plain")], "pong").await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.text(), "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_comes_back_after_dialbackd_and_daprd_restart_quic() {
    the_system_comes_back("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_comes_back_after_dialbackd_and_daprd_restart_tcp() {
    the_system_comes_back("tcp").await;
}

/// `pubsub` on Redis Streams at `port`, redelivering what was not acked
/// after 2 s.
fn redis_pubsub(port: u16) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: 127.0.0.1:{port}
  - name: processingTimeout
    value: 2s
  - name: redeliverInterval
    value: 1s
"
    )
}

/// The distinct `n >= 0` of the app's events on `topic`, sorted.
async fn numbers(sc: &Sidecar, topic: &str) -> Vec<i64> {
    let evs = events(sc).await;
    let mut ns: Vec<i64> = evs
        .iter()
        .filter(|e| e["kind"] == "topic" && e["topic"] == topic)
        .filter_map(|e| e["data"]["n"].as_i64())
        .filter(|n| *n >= 0)
        .collect();
    ns.sort_unstable();
    ns.dedup();
    ns
}

/// With Redis Streams: while the app is away, 100 messages wait in the
/// broker; when it is back, all 100 arrive, none lost.
async fn durable_messages(transport: &str) {
    let redis = Redis::start().await;
    let component = redis_pubsub(redis.port);
    let ports = Daprd::ports();
    let sc = bridged(ports, 0).spawn().await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd = Daprd::builder(APP, ports, bridge).resource("pubsub.yaml", &component).spawn().await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport(transport).spawn();
    app.wait_connected().await;
    daprd.wait_relayed(&sc, "orders", 0).await;
    publish(&sc, "orders", r#"{"n":-1}"#).await;
    wait_event(&sc, "a first message", |e| is_topic(e, "orders", "n", -1)).await;

    app.kill().await;
    eventually("dialbackd to see the app gone", PATIENCE, || async {
        let md = metadata(sc.http).await.ok()?;
        (md["appChannel"]["state"] == "disconnected").then_some(())
    })
    .await;
    for n in 0..100 {
        publish(&sc, "orders", &format!(r#"{{"n":{n}}}"#)).await;
    }

    let mut app = app.respawn();
    app.wait_connected().await;
    // Counted from 0: the first message (-1) may come again, if the app
    // recorded it and was killed before its answer reached daprd.
    let explain = || format!("dialbackd log:\n{}\ndaprd log:\n{}", sc.log_tail(), daprd.log_tail());
    let got = eventually_or(
        "all 100 messages to reach the restarted app",
        PATIENCE,
        || async { Some(numbers(&sc, "orders").await).filter(|ns| ns.len() == 100) },
        explain,
    )
    .await;
    assert_eq!(got, (0..100).collect::<Vec<i64>>(), "daprd log:\n{}", daprd.log_tail());
}

/// A declarative subscription (a Subscription resource daprd reads
/// itself, not the app's) takes the other road: daprd delivers it to the
/// bridge, not to the relay. With Redis Streams, while the app is away the
/// bridge answers daprd's health probe as unhealthy, so daprd pauses
/// delivery and the broker keeps the 30 messages published meanwhile: all
/// arrive when the app is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_subscription_waits_for_the_app() {
    let redis = Redis::start().await;
    let declared = "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: declared
spec:
  pubsubname: pubsub
  topic: declared
  routes:
    default: /topic/declared
";
    let ports = Daprd::ports();
    let sc = bridged(ports, 0).spawn().await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd = Daprd::builder(APP, ports, bridge)
        .resource("pubsub.yaml", &redis_pubsub(redis.port))
        .resource("declared.yaml", declared)
        .spawn()
        .await;
    let mut app = AppBuilder::subscriber(sc.grpc).transport("tcp").spawn();
    app.wait_connected().await;
    // daprd subscribes at the broker once its probe sees the app; Redis
    // keeps only what comes after: publish until one arrives.
    let explain = || format!("dialbackd log:\n{}\ndaprd log:\n{}", sc.log_tail(), daprd.log_tail());
    let first = || async {
        if numbers(&sc, "declared").await.contains(&0) {
            return Some(());
        }
        publish(&sc, "declared", r#"{"n":0}"#).await;
        None
    };
    eventually_or("a first message on the declared subscription", PATIENCE, first, explain).await;
    let ev = wait_event(&sc, "the first declared event", |e| is_topic(e, "declared", "n", 0)).await;
    assert_eq!(ev["path"], "/topic/declared", "the declared route: {ev}");

    // Away long enough for daprd's probe to see it (the bridge would
    // otherwise hold a delivery for --callback-wait-timeout, 5 s).
    let unhealthy = || daprd.log().matches("App entered un-healthy status").count();
    let before = unhealthy();
    app.kill().await;
    eventually("daprd to see the app unhealthy", PATIENCE, || async { (unhealthy() > before).then_some(()) }).await;
    for n in 1..=30 {
        publish(&sc, "declared", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut app = app.respawn();
    app.wait_connected().await;
    // The first message (0) may come again, as in `durable_messages`.
    let all = || async { Some(numbers(&sc, "declared").await).filter(|ns| (1..=30).all(|n| ns.contains(&n))) };
    let got = eventually_or("all 30 messages to reach the restarted app", PATIENCE, all, explain).await;
    assert!(got.iter().all(|n| (0..=30).contains(n)), "only what was published: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_messages_wait_for_the_app_quic() {
    durable_messages("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_messages_wait_for_the_app_tcp() {
    durable_messages("tcp").await;
}

/// A hostile (or buggy) app that declares 300 subscriptions.
#[derive(Clone)]
struct Greedy;

#[tonic::async_trait]
impl dialback_proto::runtime::app_callback_server::AppCallback for Greedy {
    async fn on_invoke(
        &self,
        _r: tonic::Request<dialback_proto::common::InvokeRequest>,
    ) -> Result<tonic::Response<dialback_proto::common::InvokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
    async fn list_topic_subscriptions(
        &self,
        _r: tonic::Request<()>,
    ) -> Result<tonic::Response<dialback_proto::runtime::ListTopicSubscriptionsResponse>, tonic::Status> {
        let subscriptions = (0..300)
            .map(|i| dialback_proto::runtime::TopicSubscription {
                pubsub_name: "pubsub".into(),
                topic: format!("t{i}"),
                ..Default::default()
            })
            .collect();
        Ok(tonic::Response::new(dialback_proto::runtime::ListTopicSubscriptionsResponse { subscriptions }))
    }
    async fn on_topic_event(
        &self,
        _r: tonic::Request<dialback_proto::runtime::TopicEventRequest>,
    ) -> Result<tonic::Response<dialback_proto::runtime::TopicEventResponse>, tonic::Status> {
        Ok(tonic::Response::new(dialback_proto::runtime::TopicEventResponse::default()))
    }
    async fn list_input_bindings(
        &self,
        _r: tonic::Request<()>,
    ) -> Result<tonic::Response<dialback_proto::runtime::ListInputBindingsResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn on_binding_event(
        &self,
        _r: tonic::Request<dialback_proto::runtime::BindingEventRequest>,
    ) -> Result<tonic::Response<dialback_proto::runtime::BindingEventResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
}

/// An app cannot make dialbackd open any number of streams to daprd: the
/// first 256 subscriptions are held, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_declaring_too_many_subscriptions_gets_a_bounded_number() {
    let ports = Daprd::ports();
    let sc = bridged(ports, 0).spawn().await;
    let bridge = sc.bridge.expect("bridge port").port();
    let daprd = Daprd::builder(APP, ports, bridge).resource("pubsub.yaml", PUBSUB).spawn().await;
    let handle = dialback::CallbackServer::builder()
        .sidecar(dialback::SidecarOptions {
            grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
            ..Default::default()
        })
        .add_service(dialback_proto::runtime::app_callback_server::AppCallbackServer::new(Greedy))
        .start()
        .unwrap();
    handle.wait_connected(PATIENCE).await.unwrap();
    eventually("daprd to hold the 256 subscriptions dialbackd opens", PATIENCE, || async {
        (daprd.subscribed_topics().await.len() == 256).then_some(())
    })
    .await;
    assert!(sc.log().contains("more subscriptions than dialbackd holds"), "the log says why:\n{}", sc.log_tail());
    // The first ones, and none past the bound.
    let topics = daprd.subscribed_topics().await;
    assert!(topics.contains(&"pubsub/t0".to_string()) && !topics.contains(&"pubsub/t256".to_string()), "{topics:?}");
    handle.shutdown().await;
}
