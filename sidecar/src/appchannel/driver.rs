//! One driver per channel (quinn's `ConnectionDriver` is the model): a task
//! that owns a channel's life from its HTTP/2 handshake to its close. It
//! proves the channel (a Ping probe) when it would displace a live one,
//! installs it, pings it, watches it and
//! retires it when told to, and ends with one [`ChannelEnd`], which it
//! records in the registry and on the [`Live`] handle. The decisions are in
//! pure cores: [`ChannelEnd::explain`] (which reason wins) and
//! [`Retirement`] (notice, drain, close).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dialback_channel::notice::{CLOSE_NOTICE_KEY, PING_INTERVAL_KEY};
use dialback_channel::{Channel, ChannelInfo, CloseCode, CloseNotice, Connection, EarlyChannel, KeepAlive, h2};
use dialback_proto::runtime::dapr_app_channel_callback_client::DaprAppChannelCallbackClient;
use futures_util::FutureExt;
use futures_util::future::Fuse;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::end::ChannelEnd;
use super::probe::{Proof, prove};
use super::registry::{Live, Registry, Retire};
use super::retire::{Outcome, Retirement};
use crate::metrics::Metrics;

/// What a channel's driver needs to know.
#[derive(Clone, Debug)]
pub struct CallbackPolicy {
    /// The app this sidecar serves.
    pub app_id: String,
    /// HTTP/2 keepalive and the Ping deadline.
    pub keep_alive: KeepAlive,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Bound on the HTTP/2 handshake over a fresh channel.
    pub handshake: Duration,
    /// How long a replaced channel may finish its calls.
    pub drain: Duration,
    /// Each call on a QUIC stream of its own, where the app speaks dialback/2.
    pub stream_per_call: bool,
    /// Where to keep the QUIC apps' addresses and issued connection IDs, so
    /// that a restart can reset them at once.
    pub state_dir: std::path::PathBuf,
    /// Where the channel's life is counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// What the API ports serve, once they are bound: served as HTTP/3 on
    /// the channels that carry the app's own API calls.
    pub api: watch::Receiver<Option<crate::api::ChannelApi>>,
    /// The probes sent before their channel's hello (see `probe::start_early`).
    pub probes: std::sync::Arc<super::probe::EarlyProbes>,
}

/// Drives `ch` until it ends: the task the accept loop spawns per channel.
pub(crate) async fn run(ch: Channel, registry: Arc<Registry>, policy: CallbackPolicy) {
    let Channel { io, info, conn } = ch;
    let early_probe = policy.probes.take(info.channel_id);
    // The mobile profile has no HTTP/2 PINGs: the app's beat is the one keepalive.
    let pings = info.beat.is_none().then_some(policy.keep_alive);
    let started = tokio::time::timeout(policy.handshake, h2::client(io, pings)).await;
    let (client, h2_conn) = match started {
        Ok(Ok(c)) => c,
        failed => {
            let why = match failed {
                Ok(Err(e)) => format!("HTTP/2 handshake failed: {e}"),
                _ => "HTTP/2 handshake timed out".to_string(),
            };
            policy.metrics.channel_end(info.transport, &ChannelEnd::Unproven(why.clone()));
            return not_installed(&registry, &info, &conn, &why);
        }
    };
    let transport = info.transport;
    if conn.api_over_http3() {
        tokio::spawn(serve_api(conn.clone(), policy.api.clone()));
    }
    let client = if policy.stream_per_call { client.stream_per_call(&conn) } else { client };
    let live = Arc::new(Live::new(info, conn, client));
    // The HTTP/2 connection runs in a task of its own: it must go on while
    // calls drain. Its end is one of the driver's events.
    let mut h2 = H2 { task: tokio::spawn(h2_conn).fuse(), ended: None };
    let end = drive(&live, &registry, &policy, &mut h2, early_probe).await;
    let id = live.info.channel_id;
    match &end {
        ChannelEnd::Unproven(reason) => not_installed(&registry, &live.info, &live.conn, reason),
        ChannelEnd::SlotTaken => {
            info!(channel_id = id, "a standby channel arrived while another is live; closing it");
        }
        end => {
            let reason = end.reason();
            if registry.remove_if(id, &reason) {
                warn!(channel_id = id, %reason, "app channel down");
            }
        }
    }
    policy.metrics.channel_end(transport, &end);
    live.conn.close(end.close_code(), &end.reason());
    live.set_end(end);
}

/// An early channel (see [`EarlyChannel`]) whose session names the app:
/// when no channel is up it takes the calls that wait, each on a stream of
/// its own, from the sidecar's first flight, until its hello decides.
/// Accepted, the hello's channel takes its place (same id, in [`drive`]);
/// refused, or its connection gone first, it is removed, and the calls sent
/// on it fail as calls on a broken channel do. Installed at once (so that
/// its hello's driver finds it); not installed, it is handed back.
pub(crate) fn try_early(mut e: EarlyChannel, app_id: String, registry: &Arc<Registry>) -> Result<(), EarlyChannel> {
    // A hello already decided (the loop got here late): its channel, if
    // accepted, comes by itself; a refused one must take no calls.
    if !matches!(e.decided.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
        return Err(e);
    }
    // Only from where the app was last seen: a ClientHello replayed from
    // elsewhere gets no calls before its hello, which it cannot send. And a
    // live channel is displaced only by a hello that proves itself (the probe).
    let waits = |e: EarlyChannel| {
        debug!(channel_id = e.channel_id, peer = %e.peer_addr, last = ?registry.last_peer(), "an early channel waits for its hello");
        Err(e)
    };
    if registry.last_peer() != Some(e.peer_addr) {
        return waits(e);
    }
    let live = Arc::new(Live::new_early(e.info(app_id), e.conn.clone(), h2::H2Client::streams_only(&e.conn)));
    if !registry.install_early(live.clone()) {
        return waits(e);
    }
    tokio::spawn(early(e, live, registry.clone()));
    Ok(())
}

/// An installed early channel's life, until its hello decides.
async fn early(e: EarlyChannel, live: Arc<Live>, registry: Arc<Registry>) {
    let EarlyChannel { conn, channel_id, peer_addr, decided, .. } = e;
    info!(channel_id, peer = %peer_addr, "app channel up early: its resumed TLS session names the app; calls go out before its hello");
    let accepted = tokio::select! {
        d = decided => d.unwrap_or(false),
        _ = conn.closed() => false,
    };
    if !accepted {
        let reason = format!("channel {channel_id} from {peer_addr} failed before its hello was accepted");
        if registry.remove_live(&live, &reason) {
            info!(channel_id, %reason, "early app channel removed");
        }
        live.set_end(ChannelEnd::Unproven(reason));
        return;
    }
    // Its hello's channel takes its place, under the same id, and records
    // the end; should that channel fail before it is installed, this one
    // is taken out when the connection closes.
    conn.closed().await;
    registry.remove_live(&live, &format!("channel {channel_id} from {peer_addr} closed before it was installed"));
    live.set_end(ChannelEnd::ConnectionClosed);
}

/// Serves the API as HTTP/3 on `conn` until it ends, once the API ports are up.
async fn serve_api(conn: Connection, mut api: watch::Receiver<Option<crate::api::ChannelApi>>) {
    let svc = tokio::select! {
        got = api.wait_for(Option::is_some) => match got.ok().and_then(|s| s.clone()) {
            Some(s) => s,
            None => return,
        },
        _ = conn.closed() => return,
    };
    dialback_channel::http3::serve_api(&conn, svc).await;
}

/// The channel's life after its HTTP/2 handshake.
async fn drive(
    live: &Arc<Live>,
    registry: &Registry,
    policy: &CallbackPolicy,
    h2: &mut H2,
    early_probe: Option<watch::Receiver<Option<Proof>>>,
) -> ChannelEnd {
    let id = live.info.channel_id;
    // With no channel up there is nothing to displace: this one takes the
    // waiting calls at once, and its first Ping proves it (a redial after a
    // sidecar restart saves the probe's round trip). Otherwise prove it live
    // (HTTP/2 served, a Ping answered) before it may displace anything: a
    // dial that authenticates and then dies must never take the healthy
    // app's place. Over QUIC that probe went out before the hello, and is
    // most often answered by now (`probe.rs`).
    // Its early self (offered before the hello, same id) is replaced at once.
    if !registry.replace_early(live.clone()) && registry.install_if_free(live.clone()).is_err() {
        let served = live.info.serves_early_streams;
        let proof = prove(early_probe, served, live.client.first_stream(), policy.keep_alive.idle_timeout);
        let proven = tokio::select! {
            (r, when) = proof => r.map(|rtt| { live.set_rtt(rtt); when }).map_err(ChannelEnd::Unproven),
            end = h2.ended() => Err(end),
            c = live.conn.closed() => Err(closed_end(c)),
        };
        let probed = match proven {
            Ok(when) => when,
            Err(seen) => {
                let end = ChannelEnd::explain(seen, h2.settle().await);
                return ChannelEnd::Unproven(end.reason());
            }
        };
        let installed =
            if live.info.standby { registry.install_if_free(live.clone()) } else { Ok(registry.install(live.clone())) };
        match installed {
            Ok(Some(old)) => {
                info!(old = old.info.channel_id, new = id, probed, "a new channel replaces the old one");
                old.retire(CloseCode::Replaced, policy.drain);
            }
            Ok(None) => {}
            Err(()) => return ChannelEnd::SlotTaken,
        }
    }
    let liveness = live.info.beat.map_or_else(|| "default".to_string(), |b| format!("mobile (beat {b:?})"));
    info!(
        app_id = %live.info.app_id, transport = %live.info.transport, peer = %live.info.peer_addr,
        channel_id = id, %liveness, "app channel up"
    );
    policy.metrics.channel_up(live.info.transport);
    // The regular Ping stream opens once the channel is installed: for the
    // SDK, its arrival means "the sidecar calls you over this channel now".
    let pinging = ping_loop(live, policy.ping_interval, policy.keep_alive.idle_timeout, &policy.metrics);
    tokio::pin!(pinging);
    let mut orders = live.retire_orders();
    let mut retiring: Option<Retirement> = None;
    let mut notice: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
    loop {
        // Registered before the count is read, so that no "idle" is missed.
        let idle = live.idle().notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if let Some(r) = retiring.as_mut() {
            if !r.noticing() {
                r.on_inflight(live.inflight());
            }
            if let Some(outcome) = r.outcome() {
                return retired(live, r, outcome);
            }
        }
        let wake = retiring.as_ref().and_then(Retirement::poll_timeout).map(Instant::from_std);
        tokio::select! {
            reason = &mut pinging => {
                // When the app broke HTTP/2, the Ping stream may fail before
                // the connection's task has ended: that says better why.
                if reason.contains("protocol error")
                    && let Some(end @ ChannelEnd::ProtocolError(_)) = h2.settle().await
                {
                    return end;
                }
                warn!(channel_id = id, %reason, "closing the app channel");
                return ChannelEnd::PingFailed(reason);
            }
            end = h2.ended() => return end,
            c = live.conn.closed() => {
                let seen = closed_end(c);
                return ChannelEnd::explain(seen, h2.settle().await);
            }
            order = next_order(&mut orders), if retiring.is_none() => {
                let r = Retirement::new(order.code, live.rtt(), order.drain, std::time::Instant::now());
                notice = Some(Box::pin(notify_close(live.client.first_stream(), r.notice())));
                retiring = Some(r);
            }
            answered = until_some(&mut notice) => {
                notice = None;
                if let Some(r) = retiring.as_mut() {
                    r.on_notice(answered, std::time::Instant::now(), live.inflight());
                }
            }
            () = &mut idle, if retiring.is_some() => {}
            () = sleep_until(wake), if wake.is_some() => {
                if let Some(r) = retiring.as_mut() {
                    r.handle_timeout(std::time::Instant::now(), live.inflight());
                }
            }
        }
    }
}

/// The end of a retirement, logged as it went.
fn retired(live: &Live, r: &Retirement, outcome: Outcome) -> ChannelEnd {
    let id = live.info.channel_id;
    match outcome {
        // The notice doubles as a liveness probe: an app that cannot answer
        // it is gone (killed, or its path is dead), and calls in flight on
        // it would only hang until the idle timeout. They fail now instead.
        Outcome::Unanswered => info!(channel_id = id, "the old channel does not answer; closing it at once"),
        Outcome::Drained => {}
        Outcome::CutShort(inflight) => warn!(channel_id = id, inflight, "closing a channel with calls still in flight"),
    }
    if r.close().0 == CloseCode::Replaced { ChannelEnd::Replaced } else { ChannelEnd::ShuttingDown }
}

/// A new channel failed before it went live: say why (in the log, and in
/// the metadata when no channel is up) and close it.
fn not_installed(registry: &Registry, info: &ChannelInfo, conn: &Connection, reason: &str) {
    let id = info.channel_id;
    let reason = format!("channel {id} from {} failed before it went live: {reason}", info.peer_addr);
    warn!(channel_id = id, %reason, "new app channel not installed");
    registry.note_failed(&reason);
    conn.close(CloseCode::PingTimeout, &reason);
}

/// The HTTP/2 connection task, and how it ended once it has.
struct H2 {
    task: Fuse<JoinHandle<Result<(), hyper::Error>>>,
    ended: Option<ChannelEnd>,
}

impl H2 {
    /// Resolves when the connection ends (at once if it has), saying how.
    async fn ended(&mut self) -> ChannelEnd {
        if let Some(end) = &self.ended {
            return end.clone();
        }
        let end = match (&mut self.task).await {
            Ok(Err(e)) => {
                debug!(error = %e, "HTTP/2 connection ended");
                protocol_error(&e).map_or(ChannelEnd::ConnectionClosed, ChannelEnd::ProtocolError)
            }
            _ => ChannelEnd::ConnectionClosed,
        };
        self.ended = Some(end.clone());
        end
    }

    /// Gives the connection a moment to end and say whether the app broke
    /// HTTP/2, so that the reason names that rather than the closed
    /// connection it caused.
    async fn settle(&mut self) -> Option<ChannelEnd> {
        tokio::time::timeout(Duration::from_millis(500), self.ended()).await.ok()
    }
}

/// What a closed connection says.
fn closed_end(c: Option<(CloseCode, String)>) -> ChannelEnd {
    match c {
        Some((code, why)) => ChannelEnd::ClosedByApp(code, why),
        None => ChannelEnd::ConnectionLost,
    }
}

/// The error's text with its causes, when it is the peer breaking HTTP/2
/// (garbage, a frame or header block over the limits) rather than the
/// connection going away, which the transport reports better.
fn protocol_error(e: &hyper::Error) -> Option<String> {
    if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        return None;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() || c.downcast_ref::<::h2::Error>().is_some_and(::h2::Error::is_io) {
            return None;
        }
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    Some(text)
}

/// The retirement order, once there is one.
async fn next_order(rx: &mut watch::Receiver<Option<Retire>>) -> Retire {
    match rx.wait_for(Option::is_some).await.ok().and_then(|o| *o) {
        Some(order) => order,
        // The handle holds the sender: no order can come any more.
        None => std::future::pending().await,
    }
}

/// Resolves with the future's output once there is one to wait for.
async fn until_some<T>(f: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends the in-band close notice: a Ping call whose metadata says why.
/// Works on both transports (TCP has no close codes). Resolves with whether
/// the app answered; the retirement bounds the wait.
async fn notify_close(client: h2::H2Client, why: CloseNotice) -> bool {
    let mut client = DaprAppChannelCallbackClient::new(client);
    let mut req = tonic::Request::new(futures_util::stream::empty());
    req.metadata_mut().insert(CLOSE_NOTICE_KEY, tonic::metadata::MetadataValue::from_static(why.as_str()));
    client.ping(req).await.is_ok()
}

/// The liveness stream: one Empty per `interval`, each answered within
/// `deadline`. Resolves only when it fails, saying how. In the mobile
/// profile one Ping only (it tells the app it is installed); the stream
/// then stays open and quiet, announced as interval 0.
async fn ping_loop(live: &Live, interval: Duration, deadline: Duration, metrics: &Metrics) -> String {
    let mut client = DaprAppChannelCallbackClient::new(live.client.first_stream());
    let (tx, rx) = mpsc::channel::<()>(1);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|()| ((), rx)) });
    let mut req = tonic::Request::new(outbound);
    let mobile = live.info.beat.is_some();
    let announced = if mobile { Duration::ZERO } else { interval };
    if let Ok(v) = announced.as_millis().to_string().parse() {
        req.metadata_mut().insert(PING_INTERVAL_KEY, v);
    }
    let mut inbound = match tokio::time::timeout(deadline, client.ping(req)).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(status)) => return format!("Ping refused by the app: {}", status.message()),
        Err(_) => return "Ping not answered".to_string(),
    };
    let transport = live.info.transport;
    let mut peer = live.conn.peer_addr();
    loop {
        let sent = tokio::time::Instant::now();
        if tx.send(()).await.is_err() {
            return "Ping stream closed".to_string();
        }
        match tokio::time::timeout(deadline, inbound.message()).await {
            Ok(Ok(Some(()))) => {
                let rtt = sent.elapsed();
                live.set_rtt(rtt);
                metrics.ping(transport, rtt);
                // The answered Ping shows the path works, wherever it goes now.
                note_move(live, &mut peer, metrics);
            }
            Ok(Ok(None)) => return "the app ended the Ping stream".to_string(),
            Ok(Err(status)) => return format!("Ping stream failed: {}", status.message()),
            Err(_) => return format!("no Ping answer within {deadline:?}"),
        }
        if mobile {
            return quiet(live, &mut inbound, peer, metrics).await;
        }
        // On a fixed beat from each send, not from each answer: the app
        // then sees Pings an interval apart, whatever the RTT, and can tell
        // a late one sooner (its margin follows the beat's jitter).
        tokio::time::sleep_until(sent + interval).await;
    }
}

/// The mobile profile's Ping stream after its one Ping: open, sending
/// nothing; it ends only when the stream or the connection does. The app's
/// address is looked at once a second (local, no packet) to count moves.
async fn quiet(
    live: &Live,
    inbound: &mut tonic::Streaming<()>,
    mut peer: std::net::SocketAddr,
    metrics: &Metrics,
) -> String {
    let mut look = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(())) => {}
                Ok(None) => return "the app ended the Ping stream".to_string(),
                Err(status) => return format!("Ping stream failed: {}", status.message()),
            },
            _ = look.tick() => note_move(live, &mut peer, metrics),
        }
    }
}

/// Logs and counts a change of the app's address since `peer` (QUIC
/// follows the app: migration, NAT rebinding), and remembers the new one.
fn note_move(live: &Live, peer: &mut std::net::SocketAddr, metrics: &Metrics) {
    let now = live.conn.peer_addr();
    if now != *peer {
        info!(channel_id = live.info.channel_id, from = %peer, to = %now, "the app's address changed; the channel moved with it");
        metrics.migrated(live.info.transport);
        *peer = now;
    }
}
