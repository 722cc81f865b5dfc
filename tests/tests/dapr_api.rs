//! The rest of daprd's API through dialbackd's forwarding, each with a
//! real component behind a real daprd: secrets (`secretstores.local.env`),
//! configuration (`configuration.redis` on a real Redis) and workflows
//! (placement and Dapr's scheduler, a worker written with Dapr's Go SDK;
//! actors are in `dapr_actors.rs`), over dialbackd's HTTP API and, with the
//! official `dapr` crate's generated client, its gRPC API,
//! `SubscribeConfiguration` (a server-streaming RPC that stays open while
//! the store changes) and the workflow engine's work-item stream included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{
    GetBulkSecretRequest, GetConfigurationRequest, GetSecretRequest, SubscribeConfigurationRequest,
    SubscribeConfigurationResponse, UnsubscribeConfigurationRequest,
};
use dialback_e2e::dapr::components::ACTOR_STATE_STORE;
use dialback_e2e::dapr::{Daprd, Placement, Redis, Scheduler};
use dialback_e2e::sdks::{Sdk, SidecarEnv, run_program, sdk_dir};
use dialback_e2e::{AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call};
use serde_json::{Value, json};

/// The secret daprd's environment holds, and its value.
const SECRET: (&str, &str) = ("DIALBACK_TEST_SECRET", "s3cr3t-9c1f");

/// `secretstore`: daprd's environment as a secret store.
const SECRET_STORE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: secretstore
spec:
  type: secretstores.local.env
  version: v1
  metadata: []
";

/// `configstore` on the Redis at `port`.
fn config_store(port: u16) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: configstore
spec:
  type: configuration.redis
  version: v1
  metadata:
  - name: redisHost
    value: 127.0.0.1:{port}
"
    )
}

/// dialbackd in bridge mode, daprd behind it with both stores, the echo
/// app on its channel (the app whose calls these stand for), and Redis.
struct Setup {
    sc: Sidecar,
    daprd: Daprd,
    redis: Redis,
    _app: dialback_e2e::App,
}

impl Setup {
    async fn start() -> Setup {
        let redis = Redis::start().await;
        let ports = Daprd::ports();
        let sc = SidecarBuilder::bridged("echo", ports, 0).spawn().await;
        let bridge = sc.bridge.expect("bridge port").port();
        let daprd = Daprd::builder("echo", ports, bridge)
            .resource("secrets.yaml", SECRET_STORE)
            .resource("config.yaml", &config_store(redis.port))
            .env(SECRET.0, SECRET.1)
            .spawn()
            .await;
        let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
        app.wait_connected().await;
        Setup { sc, daprd, redis, _app: app }
    }

    fn logs(&self) -> String {
        format!("dialbackd log:\n{}\ndaprd log:\n{}", self.sc.log_tail(), self.daprd.log_tail())
    }

    /// GET on dialbackd's HTTP API: the answer as JSON, which must be a 200.
    async fn get_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.sc.http_base());
        let r = http_call("GET", &url, &[], "").await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}\n{}", r.text(), self.logs());
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", r.text()))
    }

    /// The `dapr` crate's generated client on dialbackd's gRPC API.
    async fn grpc(&self) -> DaprClient<tonic::transport::Channel> {
        let url = format!("http://127.0.0.1:{}", self.sc.grpc);
        let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("connect");
        DaprClient::new(channel)
    }
}

/// The next message on a configuration subscription, bounded by [`PATIENCE`].
async fn next(
    updates: &mut tonic::Streaming<SubscribeConfigurationResponse>,
) -> Result<Option<SubscribeConfigurationResponse>, tonic::Status> {
    tokio::time::timeout(PATIENCE, updates.message()).await.expect("a message on the subscription within PATIENCE")
}

/// Secrets: one and all, over HTTP and gRPC; an unknown store gets
/// daprd's own error, passed on as daprd gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_through_dialbackd() {
    let s = Setup::start().await;
    let got = s.get_json(&format!("/v1.0/secrets/secretstore/{}", SECRET.0)).await;
    assert_eq!(got, json!({ SECRET.0: SECRET.1 }));
    let bulk = s.get_json("/v1.0/secrets/secretstore/bulk").await;
    assert_eq!(bulk[SECRET.0], json!({ SECRET.0: SECRET.1 }), "bulk holds the secret");

    let mut client = s.grpc().await;
    let req = GetSecretRequest { store_name: "secretstore".into(), key: SECRET.0.into(), ..Default::default() };
    let got = client.get_secret(req).await.unwrap_or_else(|e| panic!("GetSecret: {e:?}\n{}", s.logs())).into_inner();
    assert_eq!(got.data.get(SECRET.0).map(String::as_str), Some(SECRET.1));
    let req = GetBulkSecretRequest { store_name: "secretstore".into(), ..Default::default() };
    let bulk = client.get_bulk_secret(req).await.expect("GetBulkSecret").into_inner();
    assert_eq!(bulk.data.get(SECRET.0).and_then(|m| m.secrets.get(SECRET.0)).map(String::as_str), Some(SECRET.1));

    // An error is daprd's, as daprd gives it (its status is 401 here).
    let path = "/v1.0/secrets/nosuchstore/x";
    let ours = http_call("GET", &format!("{}{path}", s.sc.http_base()), &[], "").await.unwrap();
    let daprds = http_call("GET", &format!("http://127.0.0.1:{}{path}", s.daprd.http), &[], "").await.unwrap();
    assert!(ours.text().contains("ERR_SECRET_STORE_NOT_FOUND"), "daprd's error code: {}", ours.text());
    assert_eq!((ours.status, ours.text()), (daprds.status, daprds.text()), "dialbackd passes daprd's error on");
    let req = GetSecretRequest { store_name: "nosuchstore".into(), key: "x".into(), ..Default::default() };
    let err = client.get_secret(req).await.expect_err("an unknown store");
    let url = format!("http://127.0.0.1:{}", s.daprd.grpc);
    let mut direct = DaprClient::new(tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap());
    let req = GetSecretRequest { store_name: "nosuchstore".into(), key: "x".into(), ..Default::default() };
    let want = direct.get_secret(req).await.expect_err("an unknown store, asked of daprd");
    assert_eq!((err.code(), err.message()), (want.code(), want.message()), "dialbackd passes daprd's status on");
}

/// Configuration: read over HTTP and gRPC, and a subscription over gRPC
/// (a stream through dialbackd) that sees the store change, then ends
/// when unsubscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_through_dialbackd() {
    let s = Setup::start().await;
    s.redis.set("color", "blue||1").await;
    let got = s.get_json("/v1.0/configuration/configstore?key=color").await;
    assert_eq!(got["color"]["value"], "blue", "{got}");
    assert_eq!(got["color"]["version"], "1", "{got}");

    let mut client = s.grpc().await;
    let req =
        GetConfigurationRequest { store_name: "configstore".into(), keys: vec!["color".into()], ..Default::default() };
    let got = client.get_configuration(req).await.unwrap_or_else(|e| panic!("GetConfiguration: {e:?}\n{}", s.logs()));
    let item = got.into_inner().items.remove("color").expect("color");
    assert_eq!((item.value.as_str(), item.version.as_str()), ("blue", "1"));

    let req = SubscribeConfigurationRequest {
        store_name: "configstore".into(),
        keys: vec!["color".into()],
        ..Default::default()
    };
    let mut updates = client.subscribe_configuration(req).await.expect("SubscribeConfiguration").into_inner();
    // daprd's first message names the subscription.
    let first = next(&mut updates).await.expect("the subscription's first message").expect("a first message");
    assert!(!first.id.is_empty(), "the subscription's id: {first:?}");
    // daprd names the subscription before its store listens to Redis's
    // keyspace events, which Redis sends only to those listening then.
    eventually("daprd's store to listen for changes of color", PATIENCE, || async {
        (s.redis.subscribers("__keyspace@0__:color").await > 0).then_some(())
    })
    .await;
    s.redis.set("color", "green||2").await;
    let changed = loop {
        let m = next(&mut updates).await.expect("an update").expect("the stream is still open");
        if let Some(item) = m.items.get("color") {
            break item.clone();
        }
    };
    assert_eq!((changed.value.as_str(), changed.version.as_str()), ("green", "2"));

    let req = UnsubscribeConfigurationRequest { store_name: "configstore".into(), id: first.id.clone() };
    let done = client.unsubscribe_configuration(req).await.expect("UnsubscribeConfiguration").into_inner();
    assert!(done.ok, "unsubscribed: {done:?}");
    // daprd ends the stream; dialbackd passes the end on.
    while let Ok(Some(_)) = next(&mut updates).await {}
}

/// Workflows: a worker written with Dapr's Go SDK, pointed at dialbackd's
/// gRPC API only, hosts workflow `Greet` (an activity, a durable timer,
/// another activity) and runs it to completion. Its work items come over
/// the workflow engine's stream, forwarded by dialbackd to daprd, whose
/// workflow actors are placed by the placement service and whose timer is
/// a reminder kept by the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_through_dialbackd() {
    sdk_dir(Sdk::Go); // built (or its absence reported) before anything starts
    const APP: &str = "echo";
    let (placement, scheduler) = (Placement::start().await, Scheduler::start().await);
    let ports = Daprd::ports();
    let up = |p: u16| format!("127.0.0.1:{p}");
    let sc = SidecarBuilder::bridged(APP, ports, 0).spawn().await;
    let mut daprd = Daprd::builder(APP, ports, sc.bridge.expect("bridge port").port())
        .resource("actorstate.yaml", ACTOR_STATE_STORE)
        .args(["--placement-host-address".to_string(), up(placement.port)])
        .args(["--scheduler-host-address".to_string(), up(scheduler.port)])
        .start();
    // daprd's runtime waits for its app to be healthy: the echo app's channel.
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
    app.wait_connected().await;
    daprd.wait_ready().await;

    let env = SidecarEnv { http: sc.http, grpc: sc.grpc, token: None };
    let out = run_program(Sdk::Go, "sdkcheck", &["workflow", "dialback", "-"], &env).await.unwrap_or_else(|e| {
        panic!(
            "{e}\ndialbackd log:\n{}\ndaprd log:\n{}\nscheduler log:\n{}",
            sc.log_tail(),
            daprd.log_tail(),
            scheduler.log_tail()
        )
    });
    assert_eq!(out["status"], "COMPLETED", "{out}");
    assert_eq!(out["output"], r#""hello hello dialback""#, "{out}");
}
