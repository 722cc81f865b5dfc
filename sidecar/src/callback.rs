//! Callback mode: accept channels, speak HTTP/2 to the app over each, keep
//! the Ping stream going, and retire channels that die or are replaced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialback_channel::notice::{CLOSE_NOTICE_KEY, PING_INTERVAL_KEY, PROBE_KEY};
use dialback_channel::{Channel, ChannelInfo, CloseCode, CloseNotice, Connection, KeepAlive, Listener, h2};
use dialback_proto::runtime::dapr_app_channel_callback_client::DaprAppChannelCallbackClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{Live, Registry};

/// What the acceptor needs to know.
#[derive(Clone, Debug)]
pub struct CallbackPolicy {
    /// HTTP/2 keepalive and the Ping deadline.
    pub keep_alive: KeepAlive,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Bound on the HTTP/2 handshake over a fresh channel.
    pub handshake: Duration,
    /// How long a replaced channel may finish its calls.
    pub drain: Duration,
    /// Where to keep the QUIC apps' addresses and issued connection IDs, so
    /// that a restart can reset them at once.
    pub state_dir: std::path::PathBuf,
}

/// Accepts channels until `stop`, installing each in `registry`.
pub async fn accept_loop(
    mut listener: Listener,
    registry: Arc<Registry>,
    policy: CallbackPolicy,
    stop: CancellationToken,
) {
    let mut persist = tokio::time::interval(Duration::from_millis(500));
    persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved = String::new();
    let mut changes = registry.subscribe();
    loop {
        let ch = tokio::select! {
            ch = listener.accept() => match ch { Some(ch) => ch, None => return },
            () = stop.cancelled() => { listener.close(); return; }
            // Record a new channel at once (a restart may follow right away),
            // and the connection IDs it is issued as they change.
            _ = changes.changed() => {
                save_quic_peers(&listener, &registry, &policy, &mut saved);
                continue;
            }
            _ = persist.tick() => {
                save_quic_peers(&listener, &registry, &policy, &mut saved);
                continue;
            }
        };
        tokio::spawn(setup(ch, registry.clone(), policy.clone()));
    }
}

/// Keeps the state dir's record of the live QUIC app and the connection IDs
/// issued up to date (written only when it changed).
fn save_quic_peers(listener: &Listener, registry: &Registry, policy: &CallbackPolicy, saved: &mut String) {
    let Some(live) = registry.current() else { return };
    if live.info.transport != dialback_channel::Transport::Quic {
        return;
    }
    let content = crate::statedir::format_peers(&[live.conn.peer_addr()], &listener.recent_cids());
    if content != *saved {
        match crate::statedir::save_peers(&policy.state_dir, &content) {
            Ok(()) => *saved = content,
            Err(e) => tracing::debug!(error = %e, "could not record the QUIC peers"),
        }
    }
}

async fn setup(ch: Channel, registry: Arc<Registry>, policy: CallbackPolicy) {
    let Channel { io, info, conn } = ch;
    let started = tokio::time::timeout(policy.handshake, h2::client(io, policy.keep_alive)).await;
    let (client, h2_conn) = match started {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return not_installed(&registry, &info, &conn, format!("HTTP/2 handshake failed: {e}")),
        Err(_) => return not_installed(&registry, &info, &conn, "HTTP/2 handshake timed out".to_string()),
    };
    let live = Arc::new(Live::new(info, conn, client));
    let id = live.info.channel_id;
    // The HTTP/2 connection task ends when the channel is gone; an error
    // (the app broke the protocol) is the reason the channel ends.
    let h2_done = CancellationToken::new();
    {
        let (h2_done, live) = (h2_done.clone(), live.clone());
        tokio::spawn(async move {
            if let Err(e) = h2_conn.await {
                tracing::debug!(channel_id = id, error = %e, "HTTP/2 connection ended");
                if let Some(why) = protocol_error(&e)
                    && !live.stop.is_cancelled()
                {
                    live.fail(format!("HTTP/2 protocol error on the channel: {why}"));
                }
            }
            h2_done.cancel();
        });
    }
    // Prove the channel live (HTTP/2 served, a Ping answered) before it may
    // displace anything: a dial that authenticates and then dies must never
    // take the healthy app's place.
    let proven = tokio::select! {
        r = probe(&live, policy.keep_alive.idle_timeout) => r,
        () = h2_done.cancelled() => Err(live.failure().unwrap_or_else(|| "connection closed".to_string())),
        c = live.conn.closed() => Err(match c {
            Some((code, why)) => format!("closed by the app ({code:?}): {why}"),
            None => "connection lost".to_string(),
        }),
    };
    let proven = match proven {
        Ok(()) => Ok(()),
        Err(reason) => {
            settle(h2_done.clone()).await;
            Err(live.failure().unwrap_or(reason))
        }
    };
    if let Err(reason) = proven {
        live.stop.cancel();
        return not_installed(&registry, &live.info, &live.conn, reason);
    }
    let installed =
        if live.info.standby { registry.install_if_free(live.clone()) } else { Ok(registry.install(live.clone())) };
    let old = match installed {
        Ok(old) => old,
        Err(()) => {
            info!(channel_id = id, "a standby channel arrived while another is live; closing it");
            live.stop.cancel();
            live.conn.close(CloseCode::Refused, "another instance of this app holds the channel");
            return;
        }
    };
    if let Some(old) = old {
        info!(old = old.info.channel_id, new = id, "a new channel replaces the old one");
        tokio::spawn(retire(old, CloseCode::Replaced, policy.drain));
    }
    // The regular Ping stream opens once the channel is installed: for the
    // SDK, its arrival means "the sidecar calls you over this channel now".
    tokio::spawn(ping_loop(live.clone(), policy.ping_interval, policy.keep_alive.idle_timeout));
    info!(
        app_id = %live.info.app_id, transport = %live.info.transport, peer = %live.info.peer_addr,
        channel_id = id, "app channel up"
    );
    // Watch for the end, whatever ends it.
    let reason = tokio::select! {
        () = h2_done.cancelled() => "connection closed".to_string(),
        c = live.conn.closed() => match c {
            Some((code, why)) => format!("closed by the app ({code:?}): {why}"),
            None => "connection lost".to_string(),
        },
        () = live.stop.cancelled() => "retired".to_string(),
    };
    // A failure recorded by the Ping loop or the HTTP/2 connection explains
    // the end better than the closed connection it caused.
    settle(h2_done.clone()).await;
    let reason = live.failure().unwrap_or(reason);
    if registry.remove_if(id, &reason) {
        warn!(channel_id = id, %reason, "app channel down");
    }
    live.stop.cancel();
    live.conn.close(CloseCode::Done, &reason);
}

/// A new channel failed before it went live: say why (in the log, and in
/// the metadata when no channel is up) and close it.
fn not_installed(registry: &Registry, info: &ChannelInfo, conn: &Connection, reason: String) {
    let id = info.channel_id;
    let reason = format!("channel {id} from {} failed before it went live: {reason}", info.peer_addr);
    warn!(channel_id = id, %reason, "new app channel not installed");
    registry.note_failed(&reason);
    conn.close(CloseCode::PingTimeout, &reason);
}

/// Gives the HTTP/2 task a moment to record a protocol error, so that the
/// reason names it rather than the closed connection it caused.
async fn settle(h2_done: CancellationToken) {
    let _ = tokio::time::timeout(Duration::from_millis(500), h2_done.cancelled()).await;
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

/// Takes a channel out of service: tells the app why (replacement), lets
/// calls in flight finish within `drain`, then closes it with `code`.
pub async fn retire(live: Arc<Live>, code: CloseCode, drain: Duration) {
    let note = if code == CloseCode::Replaced { CloseNotice::Replaced } else { CloseNotice::ShuttingDown };
    // The notice doubles as a liveness probe: an app that cannot answer it
    // is gone (killed, or its path is dead), and calls in flight on it would
    // only hang until the idle timeout. Fail them now instead.
    let alive = notify_close(&live, note).await;
    if !alive {
        info!(channel_id = live.info.channel_id, "the old channel does not answer; closing it at once");
    } else if !live.drained(drain).await {
        warn!(
            channel_id = live.info.channel_id,
            inflight = live.inflight(),
            "closing a channel with calls still in flight"
        );
    }
    live.stop.cancel();
    live.conn.close(
        code,
        match code {
            CloseCode::Replaced => "replaced by a newer channel",
            CloseCode::ShuttingDown => "sidecar shutting down",
            _ => "closed",
        },
    );
}

/// Sends the in-band close notice: a Ping call whose metadata says why.
/// Works on both transports (TCP has no close codes). Bounded by a few
/// round trips; returns whether the app answered.
async fn notify_close(live: &Live, why: CloseNotice) -> bool {
    let mut client = DaprAppChannelCallbackClient::new(live.client.clone());
    let mut req = tonic::Request::new(futures_util::stream::empty());
    req.metadata_mut().insert(CLOSE_NOTICE_KEY, tonic::metadata::MetadataValue::from_static(why.as_str()));
    let bound = live.rtt().map_or(NOTICE_WAIT, |rtt| (rtt * 4).max(NOTICE_WAIT));
    matches!(tokio::time::timeout(bound, client.ping(req)).await, Ok(Ok(_)))
}

/// The least time an app gets to answer the close notice.
const NOTICE_WAIT: Duration = Duration::from_millis(250);

/// Proves a new channel live before it is installed: a Ping call marked as
/// a probe (`dialback-probe`), one Empty sent and one answered within
/// `deadline`. Fails with the reason when the app does not answer.
async fn probe(live: &Live, deadline: Duration) -> Result<(), String> {
    let mut client = DaprAppChannelCallbackClient::new(live.client.clone());
    let mut req = tonic::Request::new(futures_util::stream::iter([()]));
    req.metadata_mut().insert(PROBE_KEY, tonic::metadata::MetadataValue::from_static("1"));
    let sent = Instant::now();
    let answered = async {
        let mut inbound = client.ping(req).await.map_err(|s| format!("Ping refused by the app: {}", s.message()))?;
        match inbound.get_mut().message().await {
            Ok(Some(())) => Ok(()),
            Ok(None) => Err("the app ended the Ping probe without answering".to_string()),
            Err(s) => Err(format!("Ping probe failed: {}", s.message())),
        }
    };
    match tokio::time::timeout(deadline, answered).await {
        Ok(Ok(())) => {
            live.set_rtt(sent.elapsed());
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no Ping answer within {deadline:?}")),
    }
}

/// The liveness stream: one Empty per `interval`, each answered within
/// `deadline`, else the channel is closed on both sides.
async fn ping_loop(live: Arc<Live>, interval: Duration, deadline: Duration) {
    let mut client = DaprAppChannelCallbackClient::new(live.client.clone());
    let (tx, rx) = mpsc::channel::<()>(1);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|()| ((), rx)) });
    let mut req = tonic::Request::new(outbound);
    if let Ok(v) = interval.as_millis().to_string().parse() {
        req.metadata_mut().insert(PING_INTERVAL_KEY, v);
    }
    let failure = async {
        let mut inbound = match tokio::time::timeout(deadline, client.ping(req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return format!("Ping refused by the app: {}", status.message()),
            Err(_) => return "Ping not answered".to_string(),
        };
        loop {
            let sent = Instant::now();
            if tx.send(()).await.is_err() {
                return "Ping stream closed".to_string();
            }
            match tokio::time::timeout(deadline, inbound.message()).await {
                Ok(Ok(Some(()))) => live.set_rtt(sent.elapsed()),
                Ok(Ok(None)) => return "the app ended the Ping stream".to_string(),
                Ok(Err(status)) => return format!("Ping stream failed: {}", status.message()),
                Err(_) => return format!("no Ping answer within {deadline:?}"),
            }
            tokio::time::sleep(interval).await;
        }
    };
    tokio::select! {
        reason = failure => {
            if !live.stop.is_cancelled() {
                warn!(channel_id = live.info.channel_id, %reason, "closing the app channel");
                live.fail(reason.clone());
                live.conn.close(CloseCode::PingTimeout, &reason);
            }
        }
        () = live.stop.cancelled() => {}
    }
}
