//! An app's own API calls as HTTP/3 on its channel meet the same checks as
//! on the API ports: a call without the API token is refused, on the gRPC
//! and the HTTP API alike, and one with it is answered over the channel.

use dialback::ViaChannel;
use dialback::proto::runtime::GetMetadataRequest;
use dialback::proto::runtime::dapr_client::DaprClient;
use dialback_e2e::{PATIENCE, SidecarBuilder, eventually};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "the-api-token";

fn http_metadata(token: Option<&str>) -> http::Request<tonic::body::Body> {
    let mut req = http::Request::get("/v1.0/metadata");
    if let Some(t) = token {
        req = req.header("dapr-api-token", t);
    }
    req.body(tonic::body::Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_on_the_channel_pass_the_api_token_check() {
    let sc = SidecarBuilder::callback("echo").args(["--dapr-api-token", TOKEN]).spawn().await;
    let handle = dialback_e2e::echo_in_process(format!("http://127.0.0.1:{}", sc.grpc), Some(TOKEN)).await;
    let sidecar = handle.sidecar();
    eventually("the app's API calls to ride the channel", PATIENCE, || async { sidecar.over_channel().then_some(()) })
        .await;
    let mut dapr = DaprClient::new(sidecar.api());

    // gRPC: without the token refused, with it answered over the channel.
    let refused = dapr.get_metadata(GetMetadataRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let answered = dapr.get_metadata(sidecar.request(GetMetadataRequest {})).await.unwrap();
    assert!(answered.extensions().get::<ViaChannel>().is_some(), "not over the channel");
    assert_eq!(answered.get_ref().id, "echo");

    // HTTP: the same.
    let refused = sidecar.api().oneshot(http_metadata(None)).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.extensions().get::<ViaChannel>().is_some(), "not over the channel");
    let answered = sidecar.api().oneshot(http_metadata(Some(TOKEN))).await.unwrap();
    assert_eq!(answered.status(), 200);
    let body = answered.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["appChannel"]["transport"], "quic", "{json}");

    // And a call the sidecar brings back to the app over the same connection.
    let echoed = sidecar.invoke("echo", "echo", b"round trip".to_vec(), "text/plain").await.unwrap();
    assert_eq!(echoed.data.unwrap().value, b"round trip");
    handle.shutdown().await;
}
