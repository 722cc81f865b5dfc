//! OTLP export of the channel hop's spans (`--otlp-endpoint`): a stand-in
//! collector (OTLP's own generated gRPC service) receives what the real
//! dialbackd exports while calls go through a real app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dialback_e2e::{AppBuilder, PATIENCE, SidecarBuilder, eventually, http_call};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

/// Hands each exported span (with its resource's `service.name`) to the test.
struct Collector(mpsc::UnboundedSender<(String, Span)>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let _ = self.0.send((service.clone(), s));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A collector on a free loopback port: its endpoint and what it receives.
async fn collector() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream_from(listener)),
    );
    (format!("http://{addr}"), rx)
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The next span the collector receives, within the test's patience.
async fn next_span(rx: &mut mpsc::UnboundedReceiver<(String, Span)>) -> (String, Span) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a span at the collector in time")
        .expect("the collector is up")
}

async fn invoke(base: &str, traceparent: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = traceparent.map(|t| ("traceparent", t)).into_iter().collect();
    let r = http_call("POST", &format!("{base}/v1.0/invoke/echo/method/m"), &headers, "x").await.unwrap();
    let back = r.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (r.status, back)
}

/// With `--otlp-endpoint`, each sampled hop reaches the collector as one
/// span with the ids the caller got back: a caller's trace is continued
/// (the caller's span is the parent), a call without one starts a trace
/// (no parent), and an unsampled caller's trace is passed on, not exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hops_spans_reach_an_otlp_collector_with_the_ids_the_caller_got() {
    let (endpoint, mut spans) = collector().await;
    let sc = SidecarBuilder::callback("echo").args(["--otlp-endpoint", &endpoint]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).spawn();
    app.wait_connected().await;
    let base = sc.http_base();

    // Not sampled by the caller: passed on (a child span id), not exported.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let (status, back) = invoke(&base, Some(unsampled)).await;
    assert_eq!(status, 200);
    assert!(back.starts_with("00-11111111111111111111111111111111-") && back.ends_with("-00"), "{back}");

    // Sampled by the caller: a child of the caller's span.
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, back) = invoke(&base, Some(sampled)).await;
    assert_eq!(status, 200);
    let (service, span) = next_span(&mut spans).await;
    assert_eq!(service, "echo", "the service is the app-id, as in daprd's spans");
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736", "the unsampled trace was not exported first");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(back, format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id)), "the caller got this span's ids");
    assert_eq!(span.name, "channel_hop");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(1), "OK: {:?}", span.status);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);

    // No trace: the sidecar starts one (sampling rate 1 by default).
    let (status, back) = invoke(&base, None).await;
    assert_eq!(status, 200);
    let (_, root) = next_span(&mut spans).await;
    assert!(root.parent_span_id.is_empty(), "a root span: {root:?}");
    assert_eq!(back, format!("00-{}-{}-01", hex(&root.trace_id), hex(&root.span_id)));

    // A failed call is a span with an error status.
    let (status, _) = {
        let r = http_call("POST", &format!("{base}/v1.0/invoke/echo/method/sleep/x"), &[("traceparent", sampled)], "")
            .await
            .unwrap();
        (r.status, ())
    };
    assert_ne!(status, 200, "sleep/x is refused by the app");
    let (_, failed) = next_span(&mut spans).await;
    assert_eq!(failed.status.as_ref().map(|s| s.code), Some(2), "ERROR: {:?}", failed.status);
    let metrics = http_call("GET", &format!("http://{}/metrics", sc.metrics.unwrap()), &[], "").await.unwrap().text();
    let exported = eventually("the exporter to count its spans", PATIENCE, || async {
        let m = http_call("GET", &format!("http://{}/metrics", sc.metrics.unwrap()), &[], "").await.ok()?.text();
        m.contains("dialback_trace_spans_total{outcome=\"exported\"} 3").then_some(m)
    })
    .await;
    assert!(!exported.contains("outcome=\"dropped\""), "{metrics}");
}

/// A collector that is away costs the calls nothing: they all succeed, and
/// the spans are counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_collector_does_not_hold_calls_up() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let sc = SidecarBuilder::callback("echo").args(["--otlp-endpoint", &endpoint]).spawn().await;
    let mut app = AppBuilder::echo(sc.grpc).spawn();
    app.wait_connected().await;
    for _ in 0..20 {
        let (status, back) = invoke(&sc.http_base(), None).await;
        assert_eq!(status, 200);
        assert!(back.ends_with("-01"), "{back}");
    }
    eventually("the exporter to count the spans it could not send", PATIENCE, || async {
        let m = http_call("GET", &format!("http://{}/metrics", sc.metrics.unwrap()), &[], "").await.ok()?.text();
        m.contains("dialback_trace_spans_total{outcome=\"failed\"}").then_some(())
    })
    .await;
}

/// A bad endpoint or sampling rate stops dialbackd at start with an error
/// that names the flag.
#[test]
fn a_bad_otlp_flag_is_refused_at_start() {
    for (flag, value) in [
        ("--otlp-endpoint", "https://collector:4317"),
        ("--otlp-endpoint", "collector:4317"),
        ("--trace-sampling-rate", "1.5"),
    ] {
        let out = std::process::Command::new(&dialback_e2e::binaries().dialbackd)
            .args(["--app-id", "echo", "--enable-callback-channel", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
