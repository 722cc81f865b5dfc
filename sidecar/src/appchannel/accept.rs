//! Accepting channels: the loop that hands each accepted channel to a
//! driver of its own, and keeps the state dir's record of the live QUIC app.

use std::sync::Arc;
use std::time::Duration;

use dialback_channel::Listener;
use tokio_util::sync::CancellationToken;

use super::driver::{self, CallbackPolicy};
use super::probe;
use super::registry::Registry;

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
    let mut early = listener.early_channels();
    loop {
        let ch = tokio::select! {
            // A connection is offered early before its channel is accepted:
            // taken first, its probe is on record before the channel's driver
            // looks for it.
            biased;
            Some(e) = next_early(&mut early) => {
                // Calls go on it before its hello only where its session names
                // the app and nothing is live; otherwise it may be probed.
                let e = if e.names_app { driver::try_early(e, policy.app_id.clone(), &registry).err() } else { Some(e) };
                if let Some(e) = e {
                    probe::start_early(e, &registry, &policy.probes, policy.keep_alive.idle_timeout);
                }
                continue;
            }
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
        tokio::spawn(driver::run(ch, registry.clone(), policy.clone()));
    }
}

/// The next early channel, if any come (pending forever otherwise).
async fn next_early(
    rx: &mut Option<tokio::sync::mpsc::Receiver<dialback_channel::EarlyChannel>>,
) -> Option<dialback_channel::EarlyChannel> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the state dir's record of the live QUIC app and the connection IDs
/// issued up to date (written only when it changed).
fn save_quic_peers(listener: &Listener, registry: &Registry, policy: &CallbackPolicy, saved: &mut String) {
    let Some(live) = registry.current() else { return };
    // Only a connection that migrates is known by connection IDs that a
    // restarted sidecar must reset.
    if !live.conn.can_migrate() {
        return;
    }
    let peer = live.conn.peer_addr();
    listener.watch_peer(peer);
    let content = crate::statedir::format_peers(&[peer], &listener.recent_cids());
    if content != *saved {
        match crate::statedir::save_peers(&policy.state_dir, &content) {
            Ok(()) => *saved = content,
            Err(e) => tracing::debug!(error = %e, "could not record the QUIC peers"),
        }
    }
}
