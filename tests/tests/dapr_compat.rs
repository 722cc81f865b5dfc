//! Wire compatibility with code that is not ours: an app written against the official `dapr` crate's generated `AppCallback` trait, served by our SDK over the callback channel, and the `dapr` crate's clients calling `dialbackd`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use dapr::dapr::proto::runtime::v1::app_callback_server::{AppCallback, AppCallbackServer};
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{
    BindingEventRequest, BindingEventResponse, GetMetadataRequest, InvokeServiceRequest, JobEventRequest,
    JobEventResponse, ListInputBindingsResponse, ListTopicSubscriptionsResponse, TopicEventBulkRequest,
    TopicEventBulkResponse, TopicEventRequest, TopicEventResponse,
};
use dialback::{CallbackServer, Handle, SidecarOptions, Transport, Transports};
use dialback_e2e::{PATIENCE, Sidecar, SidecarBuilder, http_call};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

/// The content type the app sets on every answer (distinct from any request's, so the test sees it came from the app).
const APP_CONTENT_TYPE: &str = "application/vnd.dapr-compat+json";

/// An app written only against the `dapr` crate's generated code, as a Dapr user would write it.
#[derive(Clone, Copy, Debug, Default)]
struct DaprTraitApp;

#[tonic::async_trait]
impl AppCallback for DaprTraitApp {
    async fn on_invoke(&self, request: Request<InvokeRequest>) -> Result<Response<InvokeResponse>, Status> {
        let x_trace = request.metadata().get("x-trace").and_then(|v| v.to_str().ok()).map(str::to_string);
        let req = request.into_inner();
        if req.method == "missing" {
            return Err(Status::not_found("no such order"));
        }
        let (verb, querystring) = match &req.http_extension {
            Some(ext) => (Some(ext.verb().as_str_name().to_string()), Some(ext.querystring.clone())),
            None => (None, None),
        };
        let data = req.data.map(|a| a.value).unwrap_or_default();
        let answer = json!({
            "echo": format!("dapr-app:{}", String::from_utf8_lossy(&data)),
            "method": req.method,
            "contentType": req.content_type,
            "verb": verb,
            "querystring": querystring,
            "xTrace": x_trace,
        });
        Ok(Response::new(InvokeResponse {
            data: Some(prost_types::Any { type_url: String::new(), value: serde_json::to_vec(&answer).unwrap() }),
            content_type: APP_CONTENT_TYPE.to_string(),
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse::default()))
    }

    async fn on_topic_event(&self, _: Request<TopicEventRequest>) -> Result<Response<TopicEventResponse>, Status> {
        Err(Status::unimplemented("no topics"))
    }

    async fn list_input_bindings(&self, _: Request<()>) -> Result<Response<ListInputBindingsResponse>, Status> {
        Ok(Response::new(ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        _: Request<BindingEventRequest>,
    ) -> Result<Response<BindingEventResponse>, Status> {
        Err(Status::unimplemented("no bindings"))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("no topics"))
    }

    async fn on_job_event(&self, _: Request<JobEventRequest>) -> Result<Response<JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

/// A callback-mode sidecar for app `echo`.
async fn sidecar() -> Sidecar {
    SidecarBuilder::callback("echo").spawn().await
}

/// Serves the dapr-trait app over a callback channel using only `transports`, and waits until it is up on `want`.
async fn serve_dapr_app(sc: &Sidecar, transports: Transports, want: Transport) -> Handle {
    let handle = CallbackServer::builder()
        .sidecar(SidecarOptions { grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc), ..Default::default() })
        .transports(transports)
        .add_service(AppCallbackServer::new(DaprTraitApp))
        .start()
        .expect("start the callback server");
    let connected = handle.wait_connected(PATIENCE).await.unwrap_or_else(|e| {
        panic!("the dapr-trait app's channel did not come up: {e}; sidecar log:\n{}", sc.log_tail())
    });
    assert_eq!(connected.transport, want, "the channel came up on the wrong transport");
    handle
}

/// `POST /v1.0/invoke/echo/method/orders/42?x=1` reaches the dapr-trait app with every part of the HTTP call mapped as daprd maps it.
async fn http_call_is_mapped_intact(transports: Transports, want: Transport) {
    let sc = sidecar().await;
    let handle = serve_dapr_app(&sc, transports, want).await;

    let url = format!("{}/v1.0/invoke/echo/method/orders/42?x=1", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain"), ("x-trace", "abc")], "hello")
        .await
        .expect("HTTP invoke");
    assert_eq!(reply.status, 200, "HTTP invoke failed: {}; sidecar log:\n{}", reply.text(), sc.log_tail());
    assert_eq!(reply.content_type.as_deref(), Some(APP_CONTENT_TYPE), "the app's content type must reach the caller");
    let got: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("body is not the app's JSON ({e}): {}", reply.text()));
    assert_eq!(got["echo"], "dapr-app:hello", "data: {got}");
    assert_eq!(got["method"], "orders/42", "method: {got}");
    assert_eq!(got["contentType"], "text/plain", "request content type: {got}");
    assert_eq!(got["verb"], "POST", "HTTPExtension verb: {got}");
    assert_eq!(got["querystring"], "x=1", "HTTPExtension querystring: {got}");
    assert_eq!(got["xTrace"], "abc", "the x-trace header must arrive as gRPC metadata: {got}");

    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_trait_app_over_quic_sees_the_http_call_intact() {
    http_call_is_mapped_intact(Transports::QUIC, Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_trait_app_over_tcp_sees_the_http_call_intact() {
    http_call_is_mapped_intact(Transports::TCP, Transport::TcpTls).await;
}

/// The `dapr` crate's generated `DaprClient` calls `InvokeService` and gets the app's answer.
async fn generated_client_invokes(transports: Transports, want: Transport) {
    let sc = sidecar().await;
    let handle = serve_dapr_app(&sc, transports, want).await;

    let mut client = tokio::time::timeout(PATIENCE, DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)))
        .await
        .expect("connecting the dapr crate's DaprClient timed out")
        .expect("connect the dapr crate's DaprClient");
    let mut req = Request::new(InvokeServiceRequest {
        id: "echo".into(),
        message: Some(InvokeRequest {
            method: "orders/7".into(),
            data: Some(prost_types::Any { type_url: String::new(), value: b"from-dapr-client".to_vec() }),
            content_type: "text/plain".into(),
            http_extension: None,
        }),
    });
    req.metadata_mut().insert("x-trace", "grpc-abc".parse().unwrap());
    let resp = tokio::time::timeout(PATIENCE, client.invoke_service(req))
        .await
        .expect("InvokeService timed out")
        .unwrap_or_else(|s| panic!("InvokeService failed: {s:?}; sidecar log:\n{}", sc.log_tail()))
        .into_inner();
    assert_eq!(resp.content_type, APP_CONTENT_TYPE);
    let got: Value = serde_json::from_slice(&resp.data.expect("data").value).expect("the app's JSON");
    assert_eq!(got["echo"], "dapr-app:from-dapr-client", "data: {got}");
    assert_eq!(got["method"], "orders/7", "method: {got}");
    assert_eq!(got["contentType"], "text/plain", "request content type: {got}");
    assert_eq!(got["xTrace"], "grpc-abc", "gRPC metadata must reach the app: {got}");

    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_generated_client_invokes_the_app_over_quic() {
    generated_client_invokes(Transports::QUIC, Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_generated_client_invokes_the_app_over_tcp() {
    generated_client_invokes(Transports::TCP, Transport::TcpTls).await;
}

/// The `dapr` crate's high-level `Client`, configured explicitly (no environment), invokes the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_high_level_client_invokes_the_app() {
    let sc = sidecar().await;
    let handle = serve_dapr_app(&sc, Transports::QUIC, Transport::Quic).await;

    let opts = dapr::client::ClientOptions::new()
        .with_address(format!("http://127.0.0.1:{}", sc.grpc))
        .without_api_token()
        .with_timeout(PATIENCE);
    let mut client =
        tokio::time::timeout(PATIENCE, dapr::Client::<dapr::client::TonicClientWithAuth>::from_options(opts))
            .await
            .expect("connecting dapr::Client timed out")
            .expect("connect dapr::Client");
    let data = prost_types::Any { type_url: String::new(), value: b"high-level".to_vec() };
    let resp = tokio::time::timeout(PATIENCE, client.invoke_service("echo", "orders/9", Some(data)))
        .await
        .expect("dapr::Client::invoke_service timed out")
        .unwrap_or_else(|e| panic!("dapr::Client::invoke_service failed: {e}; sidecar log:\n{}", sc.log_tail()));
    assert_eq!(resp.content_type, APP_CONTENT_TYPE);
    let got: Value = serde_json::from_slice(&resp.data.expect("data").value).expect("the app's JSON");
    assert_eq!(got["echo"], "dapr-app:high-level", "data: {got}");
    assert_eq!(got["method"], "orders/9", "method: {got}");

    handle.shutdown().await;
}

/// `Dapr/GetMetadata`, which Dapr's SDKs call at start-up to wait for their
/// sidecar, answers before any app is connected and decodes as the `dapr`
/// crate's own message; the app channel's state is in its extended metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_clients_get_metadata_before_and_after_the_app_connects() {
    let sc = sidecar().await;
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)).await.unwrap();
    let md = client.get_metadata(GetMetadataRequest::default()).await.expect("GetMetadata with no app").into_inner();
    assert_eq!(md.id, "echo");
    assert!(md.runtime_version.starts_with("dialback-"), "{}", md.runtime_version);
    assert_eq!(md.extended_metadata.get("appChannel.state").map(String::as_str), Some("disconnected"), "{md:?}");
    let conn = md.app_connection_properties.expect("appConnectionProperties");
    assert_eq!((conn.protocol.as_str(), conn.channel_address.as_str()), ("grpc", "callback"));

    let handle = serve_dapr_app(&sc, Transports::QUIC, Transport::Quic).await;
    let md = client.get_metadata(GetMetadataRequest::default()).await.unwrap().into_inner();
    let ext = &md.extended_metadata;
    assert_eq!(ext.get("appChannel.state").map(String::as_str), Some("connected"), "{ext:?}");
    assert_eq!(ext.get("appChannel.transport").map(String::as_str), Some("quic"), "{ext:?}");
    assert!(ext.get("appChannel.channelId").is_some_and(|id| id.parse::<u64>().is_ok()), "{ext:?}");
    handle.shutdown().await;
}

/// An app's `NOT_FOUND` is a 404 with Dapr's JSON error over HTTP, and stays `NOT_FOUND` over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_error_maps_to_404_and_not_found() {
    let sc = sidecar().await;
    let handle = serve_dapr_app(&sc, Transports::TCP, Transport::TcpTls).await;

    let url = format!("{}/v1.0/invoke/echo/method/missing", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain")], "x").await.expect("HTTP invoke");
    assert_eq!(reply.status, 404, "want 404 for the app's NOT_FOUND, got: {}", reply.text());
    let body = reply.json();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE", "error body: {}", reply.text());
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("no such order"), "the app's message must reach the caller: {}", reply.text());

    let mut client = tokio::time::timeout(PATIENCE, DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)))
        .await
        .expect("connecting the dapr crate's DaprClient timed out")
        .expect("connect the dapr crate's DaprClient");
    let req = InvokeServiceRequest {
        id: "echo".into(),
        message: Some(InvokeRequest { method: "missing".into(), ..Default::default() }),
    };
    let status = tokio::time::timeout(PATIENCE, client.invoke_service(req))
        .await
        .expect("InvokeService timed out")
        .expect_err("InvokeService of a missing order must fail");
    assert_eq!(status.code(), tonic::Code::NotFound, "status: {status:?}");
    assert!(status.message().contains("no such order"), "status: {status:?}");

    handle.shutdown().await;
}

/// Dapr's SDKs poll `/v1.0/healthz/outbound`; both health endpoints answer 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_endpoints_answer_204() {
    let sc = sidecar().await;
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let reply = http_call("GET", &format!("{}{path}", sc.http_base()), &[], "").await.expect("GET healthz");
        assert_eq!(reply.status, 204, "GET {path}: {}", reply.text());
    }
}
