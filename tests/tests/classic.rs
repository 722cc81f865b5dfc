//! Classic mode (`--app-port`): the sidecar dials the app's own gRPC server, and both APIs work as they do over a callback channel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dapr::dapr::proto::common::v1::InvokeRequest as DaprInvokeRequest;
use dapr::dapr::proto::runtime::v1::InvokeServiceRequest as DaprInvokeServiceRequest;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dialback::proto::common::{InvokeRequest, InvokeResponse};
use dialback::{InvokeHandlers, SidecarClient, SidecarOptions};
use dialback_e2e::{HttpReply, PATIENCE, Sidecar, SidecarBuilder, binaries, http_call, metadata};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The content type the app answers with (distinct from the request's, so the test sees it came from the app).
const APP_CONTENT_TYPE: &str = "text/x-classic-echo";

/// The app's `echo` method: its data prefixed with `classic:`.
async fn echo(req: tonic::Request<InvokeRequest>) -> Result<InvokeResponse, tonic::Status> {
    let data = req.into_inner().data.map(|a| a.value).unwrap_or_default();
    let mut value = b"classic:".to_vec();
    value.extend_from_slice(&data);
    Ok(InvokeResponse {
        data: Some(prost_types::Any { type_url: String::new(), value }),
        content_type: APP_CONTENT_TYPE.into(),
    })
}

/// The app's own gRPC server on a loopback port of its own.
struct AppServer {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl AppServer {
    async fn start() -> AppServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the app's listener");
        let port = listener.local_addr().expect("local addr").port();
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = InvokeHandlers::new().on("echo", echo).into_service();
        let task = tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                let _ = stopped.await;
            },
        ));
        AppServer { port, stop: Some(stop), task }
    }

    /// Stops accepting, closes its connections gracefully, and waits until the server has ended.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the app server did not stop")
            .expect("app server task")
            .expect("app server");
    }
}

/// An app server and a classic sidecar for app-id `app` dialing it.
async fn classic_pair() -> (AppServer, Sidecar) {
    let app = AppServer::start().await;
    let sc = SidecarBuilder::classic("app", app.port).spawn().await;
    (app, sc)
}

fn sdk_client(sc: &Sidecar) -> SidecarClient {
    SidecarClient::new(SidecarOptions { grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc), ..Default::default() })
        .expect("SDK client")
}

async fn dapr_client(sc: &Sidecar) -> DaprClient<tonic::transport::Channel> {
    tokio::time::timeout(PATIENCE, DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc)))
        .await
        .expect("connecting the dapr crate's DaprClient timed out")
        .expect("connect the dapr crate's DaprClient")
}

fn assert_echoed(reply: &HttpReply, want: &str, sc: &Sidecar) {
    assert_eq!(reply.status, 200, "invoke failed: {}; sidecar log:\n{}", reply.text(), sc.log_tail());
    assert_eq!(reply.text(), want);
    assert_eq!(reply.content_type.as_deref(), Some(APP_CONTENT_TYPE));
}

fn assert_invoke_error(reply: &HttpReply, what: &str) {
    let body = reply.json();
    assert_eq!(
        body["errorCode"],
        "ERR_DIRECT_INVOKE",
        "{what}: want Dapr's JSON error, got {} {}",
        reply.status,
        reply.text()
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: the error must say why: {}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_http_api_both_forms() {
    let (app, sc) = classic_pair().await;

    let url = format!("{}/v1.0/invoke/app/method/echo", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain")], "path-form").await.expect("HTTP invoke");
    assert_echoed(&reply, "classic:path-form", &sc);

    let url = format!("{}/echo", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain"), ("dapr-app-id", "app")], "header-form")
        .await
        .expect("HTTP invoke with dapr-app-id");
    assert_echoed(&reply, "classic:header-form", &sc);

    let md = metadata(sc.http).await.expect("metadata");
    assert_eq!(md["appChannel"]["mode"], "classic", "metadata: {md}");
    assert_eq!(md["id"], "app", "metadata: {md}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_grpc_api_sdk_and_dapr_clients() {
    let (app, sc) = classic_pair().await;

    let resp = tokio::time::timeout(PATIENCE, sdk_client(&sc).invoke("app", "echo", b"sdk".to_vec(), "text/plain"))
        .await
        .expect("SDK invoke timed out")
        .unwrap_or_else(|e| panic!("SDK invoke failed: {e}; sidecar log:\n{}", sc.log_tail()));
    assert_eq!(resp.data.expect("data").value, b"classic:sdk");
    assert_eq!(resp.content_type, APP_CONTENT_TYPE);

    let mut client = dapr_client(&sc).await;
    let req = DaprInvokeServiceRequest {
        id: "app".into(),
        message: Some(DaprInvokeRequest {
            method: "echo".into(),
            data: Some(prost_types::Any { type_url: String::new(), value: b"dapr".to_vec() }),
            content_type: "text/plain".into(),
            http_extension: None,
        }),
    };
    let resp = tokio::time::timeout(PATIENCE, client.invoke_service(req))
        .await
        .expect("InvokeService timed out")
        .unwrap_or_else(|s| panic!("InvokeService failed: {s:?}; sidecar log:\n{}", sc.log_tail()))
        .into_inner();
    assert_eq!(resp.data.expect("data").value, b"classic:dapr");
    assert_eq!(resp.content_type, APP_CONTENT_TYPE);

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_id_is_rejected_on_both_apis() {
    let (app, sc) = classic_pair().await;

    let url = format!("{}/v1.0/invoke/nosuch/method/echo", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain")], "x").await.expect("HTTP invoke");
    assert_eq!(reply.status, 500, "unknown app-id over HTTP: {}", reply.text());
    assert_invoke_error(&reply, "unknown app-id over HTTP");

    let err = tokio::time::timeout(PATIENCE, sdk_client(&sc).invoke("nosuch", "echo", b"x".to_vec(), "text/plain"))
        .await
        .expect("SDK invoke timed out")
        .expect_err("invoking an unknown app-id must fail");
    match err {
        dialback::Error::Api(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "status: {s:?}"),
        other => panic!("want the sidecar's UNAVAILABLE status, got {other:?}"),
    }

    let mut client = dapr_client(&sc).await;
    let req = DaprInvokeServiceRequest {
        id: "nosuch".into(),
        message: Some(DaprInvokeRequest { method: "echo".into(), ..Default::default() }),
    };
    let status = tokio::time::timeout(PATIENCE, client.invoke_service(req))
        .await
        .expect("InvokeService timed out")
        .expect_err("invoking an unknown app-id must fail");
    assert_eq!(status.code(), tonic::Code::Unavailable, "status: {status:?}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_app_server_fails_clearly() {
    let (app, sc) = classic_pair().await;

    // A first call connects the sidecar to the app, so the stop below also has a live connection to break.
    let url = format!("{}/v1.0/invoke/app/method/echo", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "text/plain")], "before").await.expect("HTTP invoke");
    assert_echoed(&reply, "classic:before", &sc);

    app.stop().await;

    let reply = tokio::time::timeout(PATIENCE, http_call("POST", &url, &[("content-type", "text/plain")], "after"))
        .await
        .expect("a call to a stopped app must fail, not hang")
        .expect("the sidecar must answer the HTTP call");
    assert!((500..600).contains(&reply.status), "want a 5xx for a stopped app, got {}: {}", reply.status, reply.text());
    assert_invoke_error(&reply, "stopped app over HTTP");

    let err = tokio::time::timeout(PATIENCE, sdk_client(&sc).invoke("app", "echo", b"after".to_vec(), "text/plain"))
        .await
        .expect("a gRPC call to a stopped app must fail, not hang")
        .expect_err("a gRPC call to a stopped app must fail");
    match err {
        dialback::Error::Api(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "status: {s:?}"),
        other => panic!("want the sidecar's UNAVAILABLE status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_port_and_callback_channel_are_mutually_exclusive() {
    let mut cmd = tokio::process::Command::new(&binaries().dialbackd);
    cmd.args(["--app-id", "a", "--app-port", "1", "--enable-callback-channel"])
        .env_remove("APP_PORT")
        .env_remove("DAPR_HTTP_PORT")
        .env_remove("DAPR_GRPC_PORT")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("dialbackd with conflicting flags must exit, not run")
        .expect("run dialbackd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "want exit code 64 (EX_USAGE), got {:?}; stderr:\n{stderr}", out.status);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want a one-line error, got:\n{stderr}");
    assert!(lines[0].contains("mutually exclusive"), "the error must say the flags are mutually exclusive: {stderr}");
}

/// The echo example's classic mode (`--listen`, the cost benchmark's
/// baseline) is a real app process that a classic sidecar reaches on both
/// APIs, with a payload larger than one HTTP/2 frame intact both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_echo_process_serves_both_apis() {
    let mut app = dialback_e2e::AppBuilder::classic().spawn();
    let port = app.wait_listening().await;
    assert_ne!(port, 0, "the echo app printed no port; log:\n{}", app.log_tail());
    let sc = SidecarBuilder::classic("echo", port).spawn().await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let url = format!("{}/v1.0/invoke/echo/method/echo", sc.http_base());
    let reply = http_call("POST", &url, &[("content-type", "application/octet-stream")], big.clone()).await.unwrap();
    assert_eq!(reply.status, 200, "HTTP API: {}", reply.text());
    assert!(reply.body == big, "HTTP API: {} bytes came back, not the 200000 sent", reply.body.len());
    let resp = sdk_client(&sc).invoke("echo", "echo", big.clone(), "application/octet-stream").await.unwrap();
    assert!(resp.data.expect("data").value == big, "gRPC API: the payload came back changed");
    assert!(app.terminate().await.success(), "the echo app did not exit cleanly on SIGTERM");
}
