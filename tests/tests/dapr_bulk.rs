//! Bulk pub/sub through the bridge: a declarative subscription with
//! `bulkSubscribe` makes daprd call the app's `OnBulkTopicEvent`, an
//! `AppCallback` method dialbackd itself never names. An app written with
//! the official `dapr` crate's `AppCallback` trait, served by dialback's
//! SDK over its channel (QUIC), receives the batches from a real daprd
//! through dialbackd's bridge and answers each entry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse};
use dapr::dapr::proto::runtime::v1::app_callback_server::{AppCallback, AppCallbackServer};
use dapr::dapr::proto::runtime::v1::topic_event_bulk_request_entry::Event;
use dapr::dapr::proto::runtime::v1::{
    BindingEventRequest, BindingEventResponse, JobEventRequest, JobEventResponse, ListInputBindingsResponse,
    ListTopicSubscriptionsResponse, TopicEventBulkRequest, TopicEventBulkResponse, TopicEventBulkResponseEntry,
    TopicEventRequest, TopicEventResponse,
};
use dialback::{CallbackServer, SidecarOptions};
use dialback_e2e::dapr::Daprd;
use dialback_e2e::dapr::components::PUBSUB;
use dialback_e2e::{PATIENCE, SidecarBuilder, eventually_or, http_call};
use serde_json::Value;
use tonic::{Request, Response, Status};

/// What the app saw: per bulk call, the `n` of each entry's data.
#[derive(Clone, Default)]
struct BulkApp {
    batches: Arc<Mutex<Vec<Vec<i64>>>>,
}

impl BulkApp {
    fn seen(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.batches.lock().unwrap().iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[tonic::async_trait]
impl AppCallback for BulkApp {
    async fn on_invoke(&self, _: Request<InvokeRequest>) -> Result<Response<InvokeResponse>, Status> {
        Err(Status::unimplemented("no methods"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(ListTopicSubscriptionsResponse::default()))
    }

    async fn on_topic_event(&self, _: Request<TopicEventRequest>) -> Result<Response<TopicEventResponse>, Status> {
        Err(Status::unimplemented("bulk only"))
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
        req: Request<TopicEventBulkRequest>,
    ) -> Result<Response<TopicEventBulkResponse>, Status> {
        let req = req.into_inner();
        let mut ns = Vec::new();
        let mut statuses = Vec::new();
        for entry in req.entries {
            let data = match entry.event {
                Some(Event::CloudEvent(ce)) => ce.data,
                Some(Event::Bytes(b)) => serde_json::from_slice::<Value>(&b)
                    .ok()
                    .and_then(|ce| serde_json::to_vec(&ce["data"]).ok())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(n) = serde_json::from_slice::<Value>(&data).ok().and_then(|v| v["n"].as_i64()) {
                ns.push(n);
            }
            // 0: SUCCESS.
            statuses.push(TopicEventBulkResponseEntry { entry_id: entry.entry_id, status: 0 });
        }
        self.batches.lock().unwrap().push(ns);
        Ok(Response::new(TopicEventBulkResponse { statuses }))
    }

    async fn on_job_event(&self, _: Request<JobEventRequest>) -> Result<Response<JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_events_cross_the_bridge_to_on_bulk_topic_event() {
    let ports = Daprd::ports();
    let up = |p: u16| format!("127.0.0.1:{p}");
    let sc = SidecarBuilder::callback("bulk")
        .args(["--bridge-app-port", "0", "--dapr-upstream-http", &up(ports.0), "--dapr-upstream-grpc", &up(ports.1)])
        .spawn()
        .await;
    let declared = "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: bulk
spec:
  pubsubname: pubsub
  topic: bulk
  routes:
    default: /bulk
  bulkSubscribe:
    enabled: true
    maxMessagesCount: 10
    maxAwaitDurationMs: 200
";
    let daprd = Daprd::builder("bulk", ports, sc.bridge.expect("bridge port").port())
        .resource("pubsub.yaml", PUBSUB)
        .resource("bulk.yaml", declared)
        .spawn()
        .await;
    let app = BulkApp::default();
    let handle = CallbackServer::builder()
        .sidecar(SidecarOptions { grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc), ..Default::default() })
        .add_service(AppCallbackServer::new(app.clone()))
        .start()
        .expect("start the app");
    handle.wait_connected(PATIENCE).await.expect("the app's channel");

    let publish = |n: i64| {
        let url = format!("{}/v1.0/publish/pubsub/bulk", sc.http_base());
        async move {
            let r = http_call("POST", &url, &[("content-type", "application/json")], format!(r#"{{"n":{n}}}"#))
                .await
                .expect("publish");
            assert_eq!(r.status, 204, "publish {n}: {}", r.text());
        }
    };
    let explain = || format!("dialbackd log:\n{}\ndaprd log:\n{}", sc.log_tail(), daprd.log_tail());
    // In-memory pub/sub drops what comes before daprd subscribes, which it
    // does once its probe sees the app: publish until one arrives.
    let first = || async {
        if app.seen().contains(&0) {
            return Some(());
        }
        publish(0).await;
        None
    };
    eventually_or("a first bulk delivery", PATIENCE, first, explain).await;
    for n in 1..=20 {
        publish(n).await;
    }
    let all = || async { (1..=20).all(|n| app.seen().contains(&n)).then_some(()) };
    eventually_or("all 20 messages in bulk deliveries", PATIENCE, all, explain).await;
    let batches = app.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|b| b.len() <= 10), "at most maxMessagesCount per call: {batches:?}");
    handle.shutdown().await;
}
