//! Dapr's official SDKs, unchanged, against dialbackd: the `dapr` crate
//! (Rust), PyPI's `dapr` (Python), npm's `@dapr/dapr` (JavaScript),
//! `github.com/dapr/go-sdk` (Go) and Maven's `io.dapr:dapr-sdk` (Java),
//! the last four pinned and installed by `scripts/sdks.sh` and run as
//! separate processes (`tests/sdk/`) that find dialbackd only through
//! `DAPR_GRPC_PORT`, `DAPR_HTTP_PORT` and `DAPR_API_TOKEN`.
//!
//! State: through dialbackd's API, forwarded to a real daprd (built by
//! `scripts/daprd.sh`) with an in-memory state store, dialbackd checking
//! the API token. Invocation: the JavaScript SDK's gRPC and HTTP clients
//! against a standalone dialbackd, reaching the echo app over its channel.
//! And dialback's own SDK: an app's state calls as HTTP/3 on its QUIC
//! channel, forwarded to daprd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dapr::client::{ApiTokenInterceptor, ClientOptions, TonicClientWithAuth};
use dapr::dapr::proto::common::v1::StateItem;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{
    ExecuteStateTransactionRequest, GetStateRequest, SaveStateRequest, TransactionalStateOperation,
};
use dialback::ViaChannel;
use dialback_e2e::dapr::Daprd;
use dialback_e2e::dapr::components::STATE_STORE;
use dialback_e2e::sdks::{Sdk, SidecarEnv, run_program, sdk_dir};
use dialback_e2e::{App, AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call};
use serde_json::{Value, json};

/// The store's name.
const STORE: &str = "statestore";

/// dialbackd's `--dapr-api-token`, which the SDKs get as `DAPR_API_TOKEN`.
const TOKEN: &str = "sdk-test-token-5b1e";

/// dialbackd in bridge mode with a token, the real daprd behind it, and
/// the echo app connected over QUIC. daprd has the same token
/// (`DAPR_API_TOKEN`): dialbackd checks the SDK's and sends its own upstream.
struct Bridged {
    sc: Sidecar,
    daprd: Daprd,
    _app: App,
}

impl Bridged {
    async fn start() -> Bridged {
        let ports = Daprd::ports();
        let sc = SidecarBuilder::bridged("echo", ports, 0).args(["--dapr-api-token", TOKEN]).spawn().await;
        let bridge = sc.bridge.expect("bridge port").port();
        // daprd wants the same token: dialbackd sends its own upstream.
        let daprd = Daprd::builder("echo", ports, bridge)
            .resource("state.yaml", STATE_STORE)
            .env("DAPR_API_TOKEN", TOKEN)
            .spawn()
            .await;
        let mut app = AppBuilder::echo(sc.grpc).transport("quic").env("DAPR_API_TOKEN", TOKEN).spawn();
        assert_eq!(app.wait_connected().await, "quic", "the echo app's channel; sidecar log:\n{}", sc.log_tail());
        Bridged { sc, daprd, _app: app }
    }

    /// What the SDKs are told.
    fn env(&self) -> SidecarEnv {
        SidecarEnv { http: self.sc.http, grpc: self.sc.grpc, token: Some(TOKEN.into()) }
    }

    /// For failure messages.
    fn logs(&self) -> String {
        format!("dialbackd log:\n{}\ndaprd log:\n{}", self.sc.log_tail(), self.daprd.log_tail())
    }

    /// Asserts what dialbackd's own HTTP state API (forwarded to daprd)
    /// holds for `key`: `want` as JSON, or nothing (204).
    async fn assert_stored(&self, key: &str, want: Option<Value>) {
        let url = format!("{}/v1.0/state/{STORE}/{key}", self.sc.http_base());
        let r = http_call("GET", &url, &[("dapr-api-token", TOKEN)], "").await.expect("GET state over HTTP");
        match want {
            None => assert_eq!(r.status, 204, "{key} should be gone: {} {}\n{}", r.status, r.text(), self.logs()),
            Some(v) => {
                assert_eq!(r.status, 200, "{key}: {} {}\n{}", r.status, r.text(), self.logs());
                let got: Value =
                    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {}", r.text()));
                assert_eq!(got, v, "{key} as dialbackd's HTTP state API reads it");
            }
        }
    }
}

/// A state value an SDK read back as text, parsed as the JSON it holds.
fn json_text(v: &Value) -> Value {
    let s = v.as_str().unwrap_or_else(|| panic!("want a JSON text, got {v}"));
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The `dapr` crate's high-level `Client` saves, reads and deletes state,
/// and its generated `DaprClient` (with the crate's token interceptor)
/// runs a transaction, all through dialbackd to daprd; a wrong token is
/// refused by dialbackd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_state_through_dialbackd_to_daprd() {
    let b = Bridged::start().await;
    let url = format!("http://127.0.0.1:{}", b.sc.grpc);
    let opts = ClientOptions::new().with_address(&url).with_api_token(TOKEN).with_timeout(PATIENCE);
    let mut client = tokio::time::timeout(PATIENCE, dapr::Client::<TonicClientWithAuth>::from_options(opts))
        .await
        .expect("connecting dapr::Client timed out")
        .expect("connect dapr::Client");
    let fail = |what: &str, e: &dyn std::fmt::Debug| -> ! { panic!("{what} failed: {e:?}\n{}", b.logs()) };

    let tx_value = serde_json::to_vec(&json!({"tx": "rs"})).unwrap();
    client.save_state(STORE, "rs-k1", b"v1".to_vec(), None, None, None).await.unwrap_or_else(|e| fail("save k1", &e));
    client
        .save_state(STORE, "rs-k2", br#"{"n":2,"by":"rs"}"#.to_vec(), None, None, None)
        .await
        .unwrap_or_else(|e| fail("save k2", &e));
    let got = client.get_state(STORE, "rs-k1", None).await.unwrap_or_else(|e| fail("get k1", &e));
    assert_eq!(got.data, b"v1");
    let got = client.get_state(STORE, "rs-k2", None).await.unwrap_or_else(|e| fail("get k2", &e));
    assert_eq!(got.data, br#"{"n":2,"by":"rs"}"#);
    client.delete_state(STORE, "rs-k1", None).await.unwrap_or_else(|e| fail("delete k1", &e));
    let got = client.get_state(STORE, "rs-k1", None).await.unwrap_or_else(|e| fail("get k1 after delete", &e));
    assert!(got.data.is_empty(), "k1 after delete: {:?}", String::from_utf8_lossy(&got.data));

    // The high-level client has no transaction; the crate's generated
    // client does, with the crate's own token interceptor.
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("connect");
    let mut raw =
        DaprClient::with_interceptor(channel.clone(), ApiTokenInterceptor::try_new(Some(TOKEN.into())).unwrap());
    let op = |kind: &str, key: &str, value: Vec<u8>| TransactionalStateOperation {
        operation_type: kind.into(),
        request: Some(StateItem { key: key.into(), value, ..Default::default() }),
    };
    raw.execute_state_transaction(ExecuteStateTransactionRequest {
        store_name: STORE.into(),
        operations: vec![op("upsert", "rs-k3", tx_value.clone()), op("delete", "rs-k2", vec![])],
        metadata: Default::default(),
    })
    .await
    .unwrap_or_else(|e| fail("ExecuteStateTransaction", &e));
    let got = client.get_state(STORE, "rs-k2", None).await.unwrap_or_else(|e| fail("get k2 after tx", &e));
    assert!(got.data.is_empty(), "k2 after the transaction: {:?}", String::from_utf8_lossy(&got.data));
    let got = client.get_state(STORE, "rs-k3", None).await.unwrap_or_else(|e| fail("get k3 after tx", &e));
    assert_eq!(got.data, tx_value);

    b.assert_stored("rs-k1", None).await;
    b.assert_stored("rs-k2", None).await;
    b.assert_stored("rs-k3", Some(json!({"tx": "rs"}))).await;

    // dialbackd, not daprd, checks the caller's token.
    let mut wrong = DaprClient::with_interceptor(channel, ApiTokenInterceptor::try_new(Some("wrong".into())).unwrap());
    let req = GetStateRequest { store_name: STORE.into(), key: "rs-k3".into(), ..Default::default() };
    let status = wrong.get_state(req).await.expect_err("a wrong token must be refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

/// dialback's SDK: an app's own calls to dialbackd's API as HTTP/3 on its
/// QUIC channel reach daprd too (the forwarded API): the `dapr` crate's
/// generated client on `Handle::sidecar().api()` saves and reads state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_state_calls_ride_its_quic_channel_to_daprd() {
    let b = Bridged::start().await;
    // An app in this process takes the channel over from the echo app.
    let handle = dialback_e2e::echo_in_process(format!("http://127.0.0.1:{}", b.sc.grpc), Some(TOKEN)).await;
    let sidecar = handle.sidecar();
    eventually("the app's API calls to ride the channel", PATIENCE, || async { sidecar.over_channel().then_some(()) })
        .await;
    let mut raw =
        DaprClient::with_interceptor(sidecar.api(), ApiTokenInterceptor::try_new(Some(TOKEN.into())).unwrap());
    let value = serde_json::to_vec(&json!({"via": "http3"})).unwrap();
    let item = StateItem { key: "h3-k1".into(), value: value.clone(), ..Default::default() };
    let saved =
        raw.save_state(SaveStateRequest { store_name: STORE.into(), states: vec![item] }).await.unwrap_or_else(|e| {
            panic!(
                "SaveState over the channel: {e:?}
{}",
                b.logs()
            )
        });
    assert!(saved.extensions().get::<ViaChannel>().is_some(), "SaveState went to the API port");
    let got = raw
        .get_state(GetStateRequest { store_name: STORE.into(), key: "h3-k1".into(), ..Default::default() })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GetState over the channel: {e:?}
{}",
                b.logs()
            )
        });
    assert!(got.extensions().get::<ViaChannel>().is_some(), "GetState went to the API port");
    assert_eq!(got.get_ref().data, value);
    b.assert_stored("h3-k1", Some(json!({"via": "http3"}))).await;
    handle.shutdown().await;
}

/// Runs an SDK's state program (`tests/sdk/`) against `b` and checks what
/// it read back and what the store holds after it. Each writes keys
/// `t-<who>-k1..k3`.
async fn state_program(b: &Bridged, sdk: Sdk, program: &[&str], who: &str) {
    let (program, first) = program.split_first().expect("a program");
    let args: Vec<&str> = first.iter().copied().chain([STORE, "t"]).collect();
    let out = run_program(sdk, program, &args, &b.env()).await.unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    assert_eq!(out["k1"], "v1", "{out}");
    assert_eq!(json_text(&out["k2"]), json!({"n": 2, "by": who}), "{out}");
    assert_eq!(out["k1_after_delete"], Value::Null, "{out}");
    assert_eq!(out["k2_after_tx"], Value::Null, "{out}");
    assert_eq!(json_text(&out["k3_after_tx"]), json!({"tx": who}), "{out}");

    b.assert_stored(&format!("t-{who}-k1"), None).await;
    b.assert_stored(&format!("t-{who}-k2"), None).await;
    b.assert_stored(&format!("t-{who}-k3"), Some(json!({"tx": who}))).await;
}

/// The Python SDK's gRPC client (`DaprClient`) saves, reads, deletes and
/// transacts state through dialbackd to daprd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_state_through_dialbackd_to_daprd() {
    sdk_dir(Sdk::Py); // installed (or its absence reported) before anything starts
    let b = Bridged::start().await;
    state_program(&b, Sdk::Py, &["state.py"], "py").await;
}

/// The Go SDK's client (`NewClient`: a blocking gRPC dial, its only
/// start-up check) saves, reads, deletes and transacts state through
/// dialbackd to daprd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_state_through_dialbackd_to_daprd() {
    sdk_dir(Sdk::Go); // built (or its absence reported) before anything starts
    let b = Bridged::start().await;
    state_program(&b, Sdk::Go, &["sdkcheck", "state"], "go").await;
}

/// The Java SDK's client waits for the sidecar (`waitForSidecar`: `GET
/// /v1.0/healthz/outbound`), then saves, reads, deletes and transacts
/// state through dialbackd to daprd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_sdk_state_through_dialbackd_to_daprd() {
    sdk_dir(Sdk::Java); // resolved (or its absence reported) before anything starts
    let b = Bridged::start().await;
    state_program(&b, Sdk::Java, &["java/SdkCheck.java", "state"], "java").await;
}

/// The JavaScript SDK's gRPC and HTTP clients save, read, delete and
/// transact state through dialbackd to daprd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_state_through_dialbackd_to_daprd() {
    sdk_dir(Sdk::Js); // installed (or its absence reported) before anything starts
    let b = Bridged::start().await;
    let out = run_program(Sdk::Js, "state.mjs", &[STORE, "t", "grpc,http"], &b.env())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", b.logs()));
    for p in ["grpc", "http"] {
        let got = &out[p];
        assert_eq!(got["k1"], "v1", "{p}: {out}");
        assert_eq!(got["k2"], json!({"n": 2, "by": p}), "{p}: {out}");
        assert_eq!(got["k1_after_delete"], Value::Null, "{p}: {out}");
        assert_eq!(got["k2_after_tx"], Value::Null, "{p}: {out}");
        assert_eq!(got["k3_after_tx"], json!({"tx": p}), "{p}: {out}");

        b.assert_stored(&format!("t-{p}-k1"), None).await;
        b.assert_stored(&format!("t-{p}-k2"), None).await;
        b.assert_stored(&format!("t-{p}-k3"), Some(json!({"tx": p}))).await;
    }
}

/// An SDK's client starts against a standalone dialbackd (JavaScript:
/// `Dapr/GetMetadata` over gRPC, `GET /v1.0/metadata` over HTTP; Go: its
/// blocking dial; Java: `waitForSidecar`), and the program `program` with
/// `args` invokes the echo app over its `transport` channel and prints its
/// answers, which must be `want`.
async fn sdk_invokes_the_app(
    sdk: Sdk,
    program: &str,
    args: &[&str],
    want: Value,
    transport: &str,
    token: Option<&str>,
) {
    sdk_dir(sdk); // installed (or its absence reported) before anything starts
    let sc = match token {
        Some(t) => SidecarBuilder::callback("echo").args(["--dapr-api-token", t]),
        None => SidecarBuilder::callback("echo"),
    };
    let sc = sc.spawn().await;
    let app = AppBuilder::echo(sc.grpc).transport(transport);
    let mut app = match token {
        Some(t) => app.env("DAPR_API_TOKEN", t),
        None => app,
    }
    .spawn();
    assert_eq!(app.wait_connected().await, transport, "the echo app's channel; sidecar log:\n{}", sc.log_tail());

    let env = SidecarEnv { http: sc.http, grpc: sc.grpc, token: token.map(str::to_string) };
    let out = run_program(sdk, program, args, &env)
        .await
        .unwrap_or_else(|e| panic!("{e}\ndialbackd log:\n{}\necho app log:\n{}", sc.log_tail(), app.log_tail()));
    assert_eq!(out, want);
}

/// `client.invoker.invoke`, with the gRPC and the HTTP client.
async fn js_sdk_invokes_the_app(transport: &str, token: Option<&str>) {
    let want = json!({"grpc": {"from": "grpc", "n": 42}, "http": {"from": "http", "n": 42}});
    sdk_invokes_the_app(Sdk::Js, "invoke.mjs", &["echo", "orders/7", "grpc,http"], want, transport, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_invokes_the_app_on_standalone_dialbackd_over_quic_with_a_token() {
    js_sdk_invokes_the_app("quic", Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_invokes_the_app_on_standalone_dialbackd_over_tcp() {
    js_sdk_invokes_the_app("tcp", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_invokes_the_app_on_standalone_dialbackd_over_quic_with_a_token() {
    let want = json!({"go": {"from": "go", "n": 42}});
    sdk_invokes_the_app(Sdk::Go, "sdkcheck", &["invoke", "echo", "orders/7"], want, "quic", Some(TOKEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_sdk_invokes_the_app_on_standalone_dialbackd_over_tcp() {
    let want = json!({"java": {"from": "java", "n": 42}});
    sdk_invokes_the_app(Sdk::Java, "java/SdkCheck.java", &["invoke", "echo", "orders/7"], want, "tcp", None).await;
}
