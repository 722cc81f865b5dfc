//! `AppCallback` methods dialbackd itself never names, carried by the
//! bridge from a real daprd to an app written with the official `dapr`
//! crate's `AppCallback` trait and served by dialback's SDK over its
//! channel (QUIC): `OnBulkTopicEvent` (a declarative subscription with
//! `bulkSubscribe`) and `OnJobEvent` (a job scheduled through dialbackd's
//! API, kept and triggered by Dapr's scheduler).
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
use dialback_e2e::dapr::components::PUBSUB;
use dialback_e2e::dapr::{Daprd, Scheduler};
use dialback_e2e::{PATIENCE, SidecarBuilder, eventually_or, http_call};
use serde_json::Value;
use tonic::{Request, Response, Status};

/// What the app saw: per bulk call, the `n` of each entry's data; per job
/// trigger, its name and data.
#[derive(Clone, Default)]
struct App {
    batches: Arc<Mutex<Vec<Vec<i64>>>>,
    jobs: Arc<Mutex<Vec<(String, Value)>>>,
}

impl App {
    fn seen(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.batches.lock().unwrap().iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[tonic::async_trait]
impl AppCallback for App {
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

    async fn on_job_event(&self, req: Request<JobEventRequest>) -> Result<Response<JobEventResponse>, Status> {
        let req = req.into_inner();
        // daprd hands the job's JSON data on as a protobuf Value in an Any.
        let data = req
            .data
            .and_then(|any| prost::Message::decode(any.value.as_slice()).ok())
            .map(|v: prost_types::Value| json_of(&v))
            .unwrap_or(Value::Null);
        self.jobs.lock().unwrap().push((req.name, data));
        Ok(Response::new(JobEventResponse::default()))
    }
}

/// A protobuf `Value` as JSON.
fn json_of(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => serde_json::json!(s),
        Some(Kind::BoolValue(b)) => serde_json::json!(b),
        Some(Kind::StructValue(st)) => Value::Object(st.fields.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_of).collect()),
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}

/// dialbackd in bridge mode for app `app`, on `ports` of a daprd to come.
async fn bridged(app: &str, ports: (u16, u16)) -> dialback_e2e::Sidecar {
    SidecarBuilder::bridged(app, ports, 0).spawn().await
}

/// The app, served over its channel to `sc`, connected.
async fn serve(sc: &dialback_e2e::Sidecar, app: &App) -> dialback::Handle {
    let handle = CallbackServer::builder()
        .sidecar(SidecarOptions { grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc), ..Default::default() })
        .add_service(AppCallbackServer::new(app.clone()))
        .start()
        .expect("start the app");
    handle.wait_connected(PATIENCE).await.expect("the app's channel");
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_events_cross_the_bridge_to_on_bulk_topic_event() {
    let ports = Daprd::ports();
    let sc = bridged("bulk", ports).await;
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
    let app = App::default();
    let handle = serve(&sc, &app).await;

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

/// A job scheduled through dialbackd's HTTP API (forwarded to daprd, kept
/// by Dapr's scheduler) triggers `OnJobEvent` on the app behind the
/// channel with its data; dialbackd's API reads it back and deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_triggers_on_job_event_through_the_bridge() {
    let scheduler = Scheduler::start().await;
    let ports = Daprd::ports();
    let sc = bridged("jobs", ports).await;
    let daprd = Daprd::builder("jobs", ports, sc.bridge.expect("bridge port").port())
        .args(["--scheduler-host-address".to_string(), format!("127.0.0.1:{}", scheduler.port)])
        .spawn()
        .await;
    let app = App::default();
    let handle = serve(&sc, &app).await;
    let explain = || {
        format!(
            "dialbackd log:\n{}\ndaprd log:\n{}\nscheduler log:\n{}",
            sc.log_tail(),
            daprd.log_tail(),
            scheduler.log_tail()
        )
    };

    let url = format!("{}/v1.0-alpha1/jobs/tick", sc.http_base());
    let job = r#"{"schedule":"@every 1s","repeats":100,"data":{"n":7}}"#;
    let r = http_call("POST", &url, &[("content-type", "application/json")], job).await.expect("schedule a job");
    assert!(r.status < 300, "schedule the job: {} {}\n{}", r.status, r.text(), explain());
    let r = http_call("GET", &url, &[], "").await.expect("get the job");
    assert_eq!(r.status, 200, "the job, read back: {}\n{}", r.text(), explain());
    assert_eq!(r.json()["name"], "tick", "{}", r.text());

    let fired = || async {
        let jobs = app.jobs.lock().unwrap().clone();
        jobs.into_iter().find(|(name, _)| name == "tick")
    };
    let (_, data) = eventually_or("the job to trigger OnJobEvent on the app", PATIENCE, fired, explain).await;
    assert_eq!(data, serde_json::json!({"n": 7.0}), "the job's data");

    let r = http_call("DELETE", &url, &[], "").await.expect("delete the job");
    assert!(r.status < 300, "delete the job: {} {}", r.status, r.text());
    let r = http_call("GET", &url, &[], "").await.expect("get the deleted job");
    assert!(r.status >= 400, "the job is gone: {} {}", r.status, r.text());
    handle.shutdown().await;
}
