//! The subscriber app: a Dapr app with no listening socket that receives
//! pub/sub messages and input-binding events from a real daprd, through
//! dialbackd's bridge and the callback channel it dials.
//!
//! It subscribes to topic `orders` on pubsub component `pubsub` (`--pubsub`,
//! `--topic`, repeatable), declares input binding `cron` (`--binding`),
//! records every topic and binding event it receives, answers method
//! `events` with them as JSON, method `inspect` with the call as it arrived
//! (`{"verb","query","contentType","data","headers"}`), and echoes any other
//! method:
//!
//! ```text
//! [{"kind":"topic","pubsub":"pubsub","topic":"orders","id":"...","data":...,"attempts":1,...},
//!  {"kind":"binding","name":"cron","data":"..."}]
//! ```
//!
//! An event that came with a `dapr-api-token` (daprd's `APP_API_TOKEN`)
//! also carries it, as `"token"`.
//!
//! `--protocol grpc` (default) serves Dapr's `AppCallback` for daprd's
//! `--app-protocol grpc`; `--protocol http` serves the same as an axum
//! `Router` for daprd's `--app-protocol http` (`/dapr/subscribe`, a route
//! per topic, `OPTIONS`/`POST /<binding>`, `/<method>` for invocations).
//! `--actor-type T` (with `--protocol http`) hosts Dapr actors of type `T`.
//! `--retry-first N` answers RETRY to the first N deliveries of each event,
//! to show that a message asked for again comes again.
//!
//! ```text
//! dialbackd --app-id subscriber --enable-callback-channel --bridge-app-port 3500 \
//!     --dapr-upstream-grpc 127.0.0.1:50011 --dapr-upstream-http 127.0.0.1:3511
//! daprd --app-id subscriber --app-port 3500 --enable-app-health-check \
//!     --dapr-grpc-port 50011 --dapr-http-port 3511 --resources-path ./resources
//! DAPR_GRPC_PORT=50001 cargo run -p dialback --example subscriber
//! ```
//!
//! It prints `subscriber: connected transport=...` on each channel, and
//! `subscriber: topic <topic> id=<id>` / `subscriber: binding <name>` as
//! events arrive (a binding's first event only).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, ValueEnum};
use dialback::proto::common::{InvokeRequest, InvokeResponse};
use dialback::proto::runtime::app_callback_server::{AppCallback, AppCallbackServer};
use dialback::proto::runtime::topic_event_response::TopicEventResponseStatus;
use dialback::proto::runtime::{
    BindingEventRequest, BindingEventResponse, ListInputBindingsResponse, ListTopicSubscriptionsResponse,
    TopicEventRequest, TopicEventResponse, TopicRoutes, TopicSubscription,
};
use dialback::{CallbackServer, ChannelState, SidecarOptions, Transports};
use serde_json::{Value, json};

/// A Dapr subscriber over the callback channel.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// The pubsub component to subscribe on.
    #[arg(long, default_value = "pubsub")]
    pubsub: String,
    /// A topic to subscribe to (repeatable).
    #[arg(long = "topic", default_values_t = ["orders".to_string()])]
    topics: Vec<String>,
    /// The input binding to declare.
    #[arg(long, default_value = "cron")]
    binding: String,
    /// Which of daprd's app protocols to serve.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// With `--protocol http`: host Dapr actors of this type (daprd asks
    /// `GET /dapr/config`, then calls `PUT /actors/<type>/<id>/method/<m>`;
    /// each call answers how many calls that actor has had; a reminder's
    /// call is recorded as an event). daprd needs the placement service
    /// and an actor state store for it, and the scheduler for reminders.
    #[arg(long)]
    actor_type: Option<String>,
    /// Answer RETRY to the first N deliveries of each event.
    #[arg(long, default_value_t = 0)]
    retry_first: u32,
    /// Transports to use: quic, tcp or auto.
    #[arg(long, env = "DIALBACK_TRANSPORT", default_value = "auto")]
    transport: Transports,
}

/// daprd's `--app-protocol`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Grpc,
    Http,
}

/// What the app has received, shared by both protocols.
#[derive(Clone)]
struct Recorder {
    args: Arc<Args>,
    events: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
    bindings_seen: Arc<Mutex<HashSet<String>>>,
    /// Calls per actor id.
    actor_calls: Arc<Mutex<HashMap<String, u64>>>,
}

impl Recorder {
    fn new(args: Args) -> Recorder {
        Recorder {
            args: Arc::new(args),
            events: Arc::default(),
            attempts: Arc::default(),
            bindings_seen: Arc::default(),
            actor_calls: Arc::default(),
        }
    }

    /// Counts a delivery of event `id`; true when it is to be answered RETRY.
    fn retry(&self, id: &str) -> (bool, u32) {
        let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let n = a.entry(id.to_string()).or_insert(0);
        *n += 1;
        (*n <= self.args.retry_first, *n)
    }

    /// Records a topic event that was accepted, with the `dapr-api-token`
    /// it came with (daprd's `APP_API_TOKEN`), if any.
    fn topic(&self, mut record: Value, attempts: u32, token: Option<&str>) {
        let topic = record["topic"].as_str().unwrap_or_default().to_string();
        let id = record["id"].as_str().unwrap_or_default().to_string();
        record["kind"] = json!("topic");
        record["attempts"] = json!(attempts);
        if let Some(t) = token {
            record["token"] = json!(t);
        }
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        println!("subscriber: topic {topic} id={id}");
    }

    /// Records an input-binding event, with its token as for [`Recorder::topic`].
    fn binding(&self, name: &str, data: &[u8], token: Option<&str>) {
        let mut record = json!({ "kind": "binding", "name": name, "data": data_value("", data) });
        if let Some(t) = token {
            record["token"] = json!(t);
        }
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        if self.bindings_seen.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string()) {
            println!("subscriber: binding {name}");
        }
    }

    /// The answer to method `events`.
    fn events_json(&self) -> Vec<u8> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_vec(&*events).unwrap_or_default()
    }
}

/// A call as the app saw it, for checking what arrived intact.
fn inspect(verb: &str, query: &str, content_type: &str, data: &[u8], headers: &HeaderMap) -> Vec<u8> {
    let headers: serde_json::Map<String, Value> =
        (headers.iter()).map(|(k, v)| (k.as_str().to_string(), json!(String::from_utf8_lossy(v.as_bytes())))).collect();
    let seen = json!({
        "verb": verb, "query": query, "contentType": content_type,
        "data": String::from_utf8_lossy(data), "headers": headers,
    });
    serde_json::to_vec(&seen).unwrap_or_default()
}

/// An event's data as JSON when it is JSON, else as text.
fn data_value(content_type: &str, data: &[u8]) -> Value {
    if (content_type.is_empty() || content_type.contains("json"))
        && let Ok(v) = serde_json::from_slice(data)
    {
        return v;
    }
    Value::String(String::from_utf8_lossy(data).into_owned())
}

#[tonic::async_trait]
impl AppCallback for Recorder {
    async fn on_invoke(
        &self,
        req: tonic::Request<InvokeRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, tonic::Status> {
        let headers = req.metadata().clone().into_headers();
        let req = req.into_inner();
        if req.method == "inspect" {
            let ext = req.http_extension.clone().unwrap_or_default();
            let verb = dialback::proto::common::http_extension::Verb::try_from(ext.verb)
                .map(|v| v.as_str_name().to_string())
                .unwrap_or_default();
            let data = req.data.map(|d| d.value).unwrap_or_default();
            let seen = inspect(&verb, &ext.querystring, &req.content_type, &data, &headers);
            return Ok(tonic::Response::new(InvokeResponse {
                data: Some(prost_types::Any { type_url: String::new(), value: seen }),
                content_type: "application/json".into(),
            }));
        }
        if req.method == "events" {
            return Ok(tonic::Response::new(InvokeResponse {
                data: Some(prost_types::Any { type_url: String::new(), value: self.events_json() }),
                content_type: "application/json".into(),
            }));
        }
        Ok(tonic::Response::new(InvokeResponse { data: req.data, content_type: req.content_type }))
    }

    async fn list_topic_subscriptions(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<ListTopicSubscriptionsResponse>, tonic::Status> {
        let subscriptions = (self.args.topics.iter())
            .map(|topic| TopicSubscription {
                pubsub_name: self.args.pubsub.clone(),
                topic: topic.clone(),
                routes: Some(TopicRoutes { rules: vec![], default: format!("/topic/{topic}") }),
                ..TopicSubscription::default()
            })
            .collect();
        Ok(tonic::Response::new(ListTopicSubscriptionsResponse { subscriptions }))
    }

    async fn on_topic_event(
        &self,
        req: tonic::Request<TopicEventRequest>,
    ) -> Result<tonic::Response<TopicEventResponse>, tonic::Status> {
        let token = api_token(req.metadata().get("dapr-api-token").map(|v| v.as_bytes()));
        let ev = req.into_inner();
        let (retry, attempts) = self.retry(&ev.id);
        if retry {
            return Ok(tonic::Response::new(TopicEventResponse { status: TopicEventResponseStatus::Retry as i32 }));
        }
        self.topic(
            json!({
                "pubsub": ev.pubsub_name, "topic": ev.topic, "id": ev.id, "source": ev.source,
                "type": ev.r#type, "specversion": ev.spec_version, "datacontenttype": ev.data_content_type,
                "path": ev.path, "data": data_value(&ev.data_content_type, &ev.data),
            }),
            attempts,
            token.as_deref(),
        );
        Ok(tonic::Response::new(TopicEventResponse { status: TopicEventResponseStatus::Success as i32 }))
    }

    async fn list_input_bindings(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<ListInputBindingsResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListInputBindingsResponse { bindings: vec![self.args.binding.clone()] }))
    }

    async fn on_binding_event(
        &self,
        req: tonic::Request<BindingEventRequest>,
    ) -> Result<tonic::Response<BindingEventResponse>, tonic::Status> {
        let token = api_token(req.metadata().get("dapr-api-token").map(|v| v.as_bytes()));
        let ev = req.into_inner();
        self.binding(&ev.name, &ev.data, token.as_deref());
        Ok(tonic::Response::new(BindingEventResponse::default()))
    }
}

/// The `dapr-api-token` a delivery came with, as text.
fn api_token(value: Option<&[u8]>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The same app for daprd's `--app-protocol http`.
fn http_app(rec: Recorder) -> axum::Router {
    let router = axum::Router::new();
    let router = match rec.args.actor_type {
        Some(_) => router
            .route("/dapr/config", get(actor_config))
            .route("/actors/{ty}/{id}/method/{method}", axum::routing::put(actor_call))
            .route("/actors/{ty}/{id}/method/remind/{name}", axum::routing::put(actor_reminder))
            .route("/actors/{ty}/{id}", axum::routing::delete(|| async { StatusCode::OK })),
        None => router,
    };
    router
        .route("/dapr/subscribe", get(subscribe_list))
        .route("/topic/{topic}", post(http_topic_event))
        .route("/events", get(http_events).post(http_events))
        .route("/inspect", axum::routing::any(http_inspect))
        .fallback(http_binding_or_echo)
        .with_state(rec)
}

/// `GET /dapr/config`: the actor type this app hosts.
async fn actor_config(State(rec): State<Recorder>) -> Json<Value> {
    Json(json!({"entities": [rec.args.actor_type]}))
}

/// `PUT /actors/<type>/<id>/method/remind/<name>`: a reminder fired;
/// recorded as `{"kind":"reminder","actor":..,"name":..}`.
async fn actor_reminder(
    State(rec): State<Recorder>,
    Path((_ty, id, name)): Path<(String, String, String)>,
) -> StatusCode {
    rec.events.lock().unwrap_or_else(|e| e.into_inner()).push(json!({"kind": "reminder", "actor": id, "name": name}));
    StatusCode::OK
}

/// `PUT /actors/<type>/<id>/method/<method>`: counts the actor's calls.
async fn actor_call(
    State(rec): State<Recorder>,
    Path((ty, id, method)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if rec.args.actor_type.as_deref() != Some(ty.as_str()) {
        return (StatusCode::NOT_FOUND, "no such actor type").into_response();
    }
    let calls = {
        let mut calls = rec.actor_calls.lock().unwrap_or_else(|e| e.into_inner());
        let n = calls.entry(id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let data = String::from_utf8_lossy(&body);
    Json(json!({"type": ty, "id": id, "method": method, "calls": calls, "data": data})).into_response()
}

async fn subscribe_list(State(rec): State<Recorder>) -> Json<Value> {
    let subs: Vec<Value> = (rec.args.topics.iter())
        .map(|t| json!({"pubsubname": rec.args.pubsub, "topic": t, "routes": {"default": format!("/topic/{t}")}}))
        .collect();
    Json(Value::Array(subs))
}

async fn http_topic_event(
    State(rec): State<Recorder>,
    Path(_topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(mut ce) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a CloudEvent").into_response();
    };
    let id = ce["id"].as_str().unwrap_or_default().to_string();
    let (retry, attempts) = rec.retry(&id);
    if retry {
        return Json(json!({"status": "RETRY"})).into_response();
    }
    // daprd sends the data as JSON when it is JSON, as a string otherwise.
    let record = json!({
        "pubsub": ce["pubsubname"].take(), "topic": ce["topic"].take(), "id": id,
        "source": ce["source"].take(), "type": ce["type"].take(), "specversion": ce["specversion"].take(),
        "datacontenttype": ce["datacontenttype"].take(), "data": ce["data"].take(),
    });
    rec.topic(record, attempts, api_token(headers.get("dapr-api-token").map(|v| v.as_bytes())).as_deref());
    Json(json!({"status": "SUCCESS"})).into_response()
}

async fn http_events(State(rec): State<Recorder>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], rec.events_json()).into_response()
}

async fn http_inspect(
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let seen = inspect(method.as_str(), uri.query().unwrap_or_default(), ct, &body, &headers);
    ([(axum::http::header::CONTENT_TYPE, "application/json")], seen).into_response()
}

/// `OPTIONS`/`POST /<binding>`: the binding; anything else is echoed.
async fn http_binding_or_echo(
    State(rec): State<Recorder>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let name = uri.path().trim_start_matches('/');
    if name == rec.args.binding {
        if method == axum::http::Method::POST {
            rec.binding(name, &body, api_token(headers.get("dapr-api-token").map(|v| v.as_bytes())).as_deref());
        }
        return StatusCode::OK.into_response();
    }
    let ct = headers.get(axum::http::header::CONTENT_TYPE).cloned();
    let mut resp = body.into_response();
    if let Some(ct) = ct {
        resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
    }
    resp
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rec = Recorder::new(args.clone());
    let builder = CallbackServer::builder().sidecar(SidecarOptions::from_env()).transports(args.transport);
    let builder = match args.protocol {
        Protocol::Grpc => builder.add_service(AppCallbackServer::new(rec)),
        Protocol::Http => builder.http_service(http_app(rec)),
    };
    let handle = builder.start()?;

    let mut states = handle.watch();
    let printer = tokio::spawn(async move {
        loop {
            match states.borrow_and_update().clone() {
                ChannelState::Connected(c) => {
                    println!("subscriber: connected transport={} channel_id={}", c.transport, c.channel_id)
                }
                ChannelState::Disconnected { reason } => println!("subscriber: disconnected reason={reason:?}"),
                _ => {}
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await.ok();
    printer.abort();
    Ok(())
}
