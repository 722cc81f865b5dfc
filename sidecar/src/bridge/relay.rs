//! The subscription relay: the app's pub/sub subscriptions, held as daprd
//! streaming subscriptions (`SubscribeTopicEventsAlpha1`, Dapr 1.14+) for
//! exactly as long as the app's channel is up.
//!
//! Why not let daprd ask the app through the bridge: daprd lists an app's
//! programmatic subscriptions once per runtime (docs/dapr.md), so an app
//! that connects after daprd's first question, or comes back with other
//! topics, would not get what it declared until daprd restarts. A
//! streaming subscription is daprd's per connection: when a channel comes
//! up the relay asks the app what it subscribes to (gRPC
//! `ListTopicSubscriptions`, HTTP `GET /dapr/subscribe`) and opens one
//! stream per subscription; each event goes to the app over the channel
//! (gRPC `OnTopicEvent`, HTTP `POST <route>` with the CloudEvent) and its
//! answer goes back to daprd. When the channel ends, the streams close:
//! daprd stops delivering, and a message in flight counts as not handled,
//! so a durable broker keeps it for the next subscriber.
//!
//! daprd's streaming subscriptions have no routing rules and no bulk
//! delivery: every event goes to the subscription's default route, one at
//! a time (the app is told so in the log when it declares rules).

use std::sync::Arc;
use std::time::Duration;

use dialback_proto::runtime::app_callback_client::AppCallbackClient;
use dialback_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Req;
use dialback_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Resp;
use dialback_proto::runtime::topic_event_response::TopicEventResponseStatus;
use dialback_proto::runtime::{
    SubscribeTopicEventsRequestAlpha1, SubscribeTopicEventsRequestInitialAlpha1,
    SubscribeTopicEventsRequestProcessedAlpha1, TopicEventRequest, TopicEventResponse,
};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::bindings::Asked;
use super::cloudevent::{self, Subscription};
use crate::api::token::API_TOKEN_HEADER;
use crate::api::upstream::GrpcUpstream;
use crate::appchannel::{Live, Registry};
use crate::config::BridgeProtocol;

/// Events of one subscription handled at once.
const EVENTS_IN_FLIGHT: usize = 64;

/// Subscriptions held for one app at most: each is a stream to daprd, and an
/// app (buggy or hostile) could declare any number. The first ones are held.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// The largest `/dapr/subscribe` answer read from an HTTP app.
const MAX_SUBSCRIBE_BODY: usize = 1024 * 1024;

/// Bindings named at most in the warning about those daprd was not told of.
const MAX_NAMED: usize = 16;

/// Between tries to open a stream or to ask the app, growing to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// What the relay needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Relay {
    /// The app's channel.
    pub registry: Arc<Registry>,
    /// daprd's gRPC API.
    pub upstream: GrpcUpstream,
    /// How the app is spoken to.
    pub protocol: BridgeProtocol,
    /// daprd's `APP_API_TOKEN`, sent to the app with each event as daprd would.
    pub app_token: Option<http::HeaderValue>,
    /// Bound on one event's delivery to the app.
    pub call_timeout: Duration,
    /// What daprd was told of the app's input bindings.
    pub told: Arc<super::bindings::Told>,
    /// `--bridge-reload-daprd-pid-file`: daprd to reload when it was not
    /// told of a binding the app declares.
    pub reload_daprd: Option<std::path::PathBuf>,
    /// When it was last reloaded.
    pub reloads: Arc<super::bindings::Reloads>,
}

impl Relay {
    /// Follows the app's channel until `stop`: for each channel, its
    /// subscriptions; none while no channel is up.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let mut channels = self.registry.subscribe();
        // The channel whose subscriptions are held; dropping its set closes them.
        let mut held: Option<(Arc<Live>, JoinSet<()>)> = None;
        loop {
            // A provisional channel's subscriptions would be closed and
            // opened again a round trip later: wait for its hello's.
            let current = channels.borrow_and_update().clone().filter(|l| !l.early);
            let same = match (&held, &current) {
                (Some((h, _)), Some(c)) => Arc::ptr_eq(h, c),
                (None, None) => true,
                _ => false,
            };
            if !same {
                // A new channel or none: the old one's streams close.
                held = current.map(|live| {
                    let mut set = JoinSet::new();
                    set.spawn(self.clone().hold_all(live.clone()));
                    (live, set)
                });
            }
            tokio::select! {
                changed = channels.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Asks the app on `live` for its subscriptions and holds them; beside
    /// that, checks what daprd asked it once against what it says now.
    async fn hold_all(self, live: Arc<Live>) {
        let check = self.clone();
        tokio::join!(check.check_told(&live), self.hold_subscriptions(live.clone()));
    }

    /// Asks the app on `live` for its subscriptions and holds them.
    async fn hold_subscriptions(self, live: Arc<Live>) {
        let mut pause = FIRST_PAUSE;
        let mut subs = loop {
            match self.list(&live).await {
                Ok(subs) => break subs,
                Err(e) => {
                    warn!(channel_id = live.info.channel_id, error = %e, "could not ask the app for its subscriptions; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        };
        if subs.len() > MAX_SUBSCRIPTIONS {
            warn!(
                channel_id = live.info.channel_id,
                declared = subs.len(),
                held = MAX_SUBSCRIPTIONS,
                "the app declares more subscriptions than dialbackd holds for one app; the first ones are held"
            );
            subs.truncate(MAX_SUBSCRIPTIONS);
        }
        info!(
            channel_id = live.info.channel_id,
            subscriptions = subs.len(),
            topics = ?subs.iter().map(|s| format!("{}/{}", s.pubsub, s.topic)).collect::<Vec<_>>(),
            "relaying the app's subscriptions as daprd streaming subscriptions"
        );
        let mut held = JoinSet::new();
        for sub in subs {
            if sub.has_rules {
                warn!(pubsub = %sub.pubsub, topic = %sub.topic, route = %sub.route,
                    "routing rules are not carried by daprd's streaming subscriptions: every event goes to the default route");
            }
            held.spawn(self.clone().hold(live.clone(), sub));
        }
        while held.join_next().await.is_some() {}
    }

    /// Asks the app on `live` what daprd asks an app once per run (a gRPC
    /// app's input bindings, an HTTP app's actor types) and, when it names
    /// any daprd was not told of, warns or reloads daprd
    /// ([`Relay::not_told`]): daprd would never deliver to them
    /// (docs/dapr.md).
    async fn check_told(&self, live: &Arc<Live>) {
        let (asked, declared) = match self.protocol {
            BridgeProtocol::Grpc => {
                let answer = {
                    let _call = live.begin_call();
                    let mut client = AppCallbackClient::new(live.client.clone());
                    tokio::time::timeout(self.call_timeout, client.list_input_bindings(())).await
                };
                let Ok(Ok(answer)) = answer else { return };
                (Asked::Bindings, answer.into_inner().bindings)
            }
            BridgeProtocol::Http => {
                let Ok(req) = http::Request::get(super::APP_CONFIG_PATH).body(tonic::body::Body::empty()) else {
                    return;
                };
                let answer = {
                    let _call = live.begin_call();
                    self.http_call(live, req).await
                };
                let Ok((200, body)) = answer else { return };
                let Some(types) = super::bindings::actor_types(&body) else { return };
                (Asked::ActorTypes, types)
            }
        };
        let mut missing = self.told.missing(asked, &declared);
        if !missing.is_empty() {
            // A hostile app's list could be megabytes: name a few.
            let count = missing.len();
            missing.truncate(MAX_NAMED);
            self.not_told(live, asked, count, &missing).await;
        }
    }

    /// The app declares `count` `asked` daprd was not told of (`names`, the
    /// first few): a warning naming the ways out, or daprd sent SIGHUP.
    async fn not_told(&self, live: &Arc<Live>, asked: Asked, count: usize, names: &[String]) {
        let (channel_id, what) = (live.info.channel_id, asked.what());
        let Some(pid_file) = &self.reload_daprd else {
            let also = if asked == Asked::Bindings { "; or give the binding component `direction: input`" } else { "" };
            warn!(
                channel_id, count, names = ?names,
                "the app declares {what} daprd was not told of, so daprd will not deliver to them: daprd asks an app \
                 once per run (send daprd SIGHUP, which restarts its runtime in place, or restart it{also}; or give \
                 dialbackd --bridge-reload-daprd-pid-file to do it)"
            );
            return;
        };
        if let Err(ago) = self.reloads.take(std::time::Instant::now()) {
            warn!(
                channel_id, count, names = ?names, reloaded_secs_ago = ago.as_secs(),
                "the app declares {what} daprd was not told of, but daprd was reloaded moments ago: not again \
                 within {}s (an app that changes them at every connection would keep daprd restarting)",
                super::bindings::RELOAD_GAP.as_secs()
            );
            return;
        }
        match super::bindings::reload_daprd(pid_file).await {
            Ok(pid) => info!(
                channel_id, count, names = ?names, daprd_pid = pid,
                "the app declares {what} daprd was not told of: sent daprd SIGHUP, which restarts its runtime in \
                 place and asks the app again"
            ),
            Err(e) => warn!(
                channel_id, count, names = ?names, pid_file = %pid_file.display(), error = %e,
                "the app declares {what} daprd was not told of, and daprd could not be reloaded: daprd will not \
                 deliver to them until it restarts"
            ),
        }
    }

    /// The app's subscriptions, asked over its channel.
    async fn list(&self, live: &Arc<Live>) -> Result<Vec<Subscription>, String> {
        let _call = live.begin_call();
        match self.protocol {
            BridgeProtocol::Grpc => {
                let mut client = AppCallbackClient::new(live.client.clone());
                let asked = tokio::time::timeout(self.call_timeout, client.list_topic_subscriptions(()));
                match asked.await {
                    Err(_) => Err("ListTopicSubscriptions timed out".into()),
                    // As daprd: an app without the method subscribes to nothing.
                    Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(Vec::new()),
                    Ok(Err(s)) => Err(format!("ListTopicSubscriptions: {s}")),
                    Ok(Ok(r)) => Ok(r.into_inner().subscriptions.into_iter().map(Subscription::from_grpc).collect()),
                }
            }
            BridgeProtocol::Http => {
                let req = http::Request::get(super::HTTP_SUBSCRIBE_PATH)
                    .body(tonic::body::Body::empty())
                    .map_err(|e| e.to_string())?;
                let (code, body) = self.http_call(live, req).await?;
                match code {
                    200..=299 => cloudevent::parse_http_subscriptions(&body),
                    404 => Ok(Vec::new()),
                    _ => Err(format!("GET /dapr/subscribe answered {code}")),
                }
            }
        }
    }

    /// One subscription, held as a stream to daprd until aborted; opened
    /// again (with a growing pause) when daprd ends it or is away.
    async fn hold(self, live: Arc<Live>, sub: Subscription) {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.stream(&live, &sub).await {
                Ok(()) => {
                    info!(pubsub = %sub.pubsub, topic = %sub.topic, "daprd ended the streaming subscription; opening it again");
                    pause = FIRST_PAUSE;
                }
                Err(e) => {
                    warn!(pubsub = %sub.pubsub, topic = %sub.topic, error = %e, "streaming subscription failed; trying again")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// One stream: the initial request, then each event to the app and its
    /// answer back. Returns when daprd ends the stream.
    async fn stream(&self, live: &Arc<Live>, sub: &Subscription) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel::<SubscribeTopicEventsRequestAlpha1>(EVENTS_IN_FLIGHT + 1);
        let initial = SubscribeTopicEventsRequestInitialAlpha1 {
            pubsub_name: sub.pubsub.clone(),
            topic: sub.topic.clone(),
            metadata: sub.metadata.clone(),
            dead_letter_topic: sub.dead_letter_topic.clone(),
        };
        // The channel has room for it: this cannot wait.
        let _ = tx.try_send(SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(Req::InitialRequest(initial)),
        });
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let (client, req) = self.upstream.client(tonic::Request::new(outbound));
        // daprd is trusted and bounds its events by its own --max-body-size.
        let mut client = client.max_decoding_message_size(usize::MAX);
        let mut inbound = client.subscribe_topic_events_alpha1(req).await?.into_inner();
        let mut deliveries = JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT));
        while let Some(msg) = inbound.message().await? {
            match msg.subscribe_topic_events_response_type {
                Some(Resp::InitialResponse(_)) => {
                    info!(pubsub = %sub.pubsub, topic = %sub.topic, route = %sub.route, "subscribed through daprd")
                }
                Some(Resp::EventMessage(ev)) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    let (relay, live, tx, route) = (self.clone(), live.clone(), tx.clone(), sub.route.clone());
                    deliveries.spawn(async move {
                        let id = ev.id.clone();
                        let status = relay.deliver(&live, ev, &route).await;
                        drop(permit);
                        let done = SubscribeTopicEventsRequestProcessedAlpha1 {
                            id,
                            status: Some(TopicEventResponse { status: status as i32 }),
                        };
                        let _ = tx
                            .send(SubscribeTopicEventsRequestAlpha1 {
                                subscribe_topic_events_request_type: Some(Req::EventProcessed(done)),
                            })
                            .await;
                    });
                    while deliveries.try_join_next().is_some() {}
                }
                None => debug!("an empty message on a streaming subscription"),
            }
        }
        Ok(())
    }

    /// Delivers one event to the app; what the app said, as daprd reads it.
    async fn deliver(&self, live: &Arc<Live>, mut ev: TopicEventRequest, route: &str) -> TopicEventResponseStatus {
        let _call = live.begin_call();
        ev.path = route.to_string();
        let id = ev.id.clone();
        let result = match self.protocol {
            BridgeProtocol::Grpc => {
                let mut req = tonic::Request::new(ev);
                if let Some(t) =
                    self.app_token.as_ref().and_then(|t| tonic::metadata::MetadataValue::try_from(t.as_bytes()).ok())
                {
                    req.metadata_mut().insert(API_TOKEN_HEADER, t);
                }
                let mut client = AppCallbackClient::new(live.client.clone());
                match tokio::time::timeout(self.call_timeout, client.on_topic_event(req)).await {
                    Err(_) => Err("timed out".to_string()),
                    // As daprd: UNIMPLEMENTED means the app takes no events; the message is dropped.
                    Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(TopicEventResponseStatus::Drop),
                    Ok(Err(s)) => Err(s.to_string()),
                    Ok(Ok(r)) => Ok(TopicEventResponseStatus::try_from(r.into_inner().status)
                        .unwrap_or(TopicEventResponseStatus::Retry)),
                }
            }
            BridgeProtocol::Http => {
                let body = serde_json::to_vec(&cloudevent::to_json(&ev)).unwrap_or_default();
                let mut req = http::Request::post(route)
                    .header(http::header::CONTENT_TYPE, "application/cloudevents+json")
                    .header("pubsubname", ev.pubsub_name.as_str());
                if let Some(t) = &self.app_token {
                    req = req.header(API_TOKEN_HEADER, t.clone());
                }
                match req.body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)))) {
                    Err(e) => Err(e.to_string()),
                    Ok(req) => self.http_call(live, req).await.map(|(code, body)| cloudevent::http_status(code, &body)),
                }
            }
        };
        result.unwrap_or_else(|e| {
            warn!(event = %id, error = %e, "delivering an event to the app failed; daprd is told RETRY");
            TopicEventResponseStatus::Retry
        })
    }

    /// One HTTP request to the app over its channel: status and body
    /// (bounded, as every answer read here).
    async fn http_call(
        &self,
        live: &Arc<Live>,
        req: http::Request<tonic::body::Body>,
    ) -> Result<(u16, bytes::Bytes), String> {
        let call = async {
            let resp = live.client.clone().oneshot(req).await.map_err(|e| e.to_string())?;
            let code = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_SUBSCRIBE_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((code, body))
        };
        tokio::time::timeout(self.call_timeout, call).await.map_err(|_| "timed out".to_string())?
    }
}
