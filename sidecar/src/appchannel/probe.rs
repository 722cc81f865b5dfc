//! Proving a new channel live before it may displace a live one: a Ping
//! call marked as a probe, answered within a deadline.
//!
//! Over QUIC the probe goes out in the sidecar's first flight, as soon as
//! the app's ClientHello is read ([`start_early`]): the app answers it with its
//! Finished and its hello, so that a new app process (whose fresh TLS
//! handshake names nobody until its hello) displaces its dead predecessor a
//! round trip sooner. The proof is the same: the connection answered a Ping
//! while its dialer was alive to send its hello.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialback_channel::notice::PROBE_KEY;
use dialback_channel::{EarlyChannel, h2};
use dialback_proto::runtime::dapr_app_channel_callback_client::DaprAppChannelCallbackClient;
use tokio::sync::watch;
use tracing::debug;

use super::registry::Registry;

/// A probe's outcome: the round trip it took, or why it failed.
pub(super) type Proof = Result<Duration, String>;

/// Sends a Ping marked as a probe (`dialback-probe`) on `client`, one Empty,
/// and waits up to `deadline` for one answer. Fails with the reason when
/// the app does not answer.
pub(super) async fn probe(client: h2::H2Client, deadline: Duration) -> Proof {
    let mut client = DaprAppChannelCallbackClient::new(client);
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
        Ok(Ok(())) => Ok(sent.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no Ping answer within {deadline:?}")),
    }
}

/// The probes sent before their connection's hello, by channel id, for the
/// hello's driver to take. An entry lives no longer than its connection.
#[derive(Debug, Default)]
pub(crate) struct EarlyProbes(Mutex<HashMap<u64, watch::Receiver<Option<Proof>>>>);

impl EarlyProbes {
    /// The probe sent before channel `id`'s hello, if one was.
    pub(super) fn take(&self, id: u64) -> Option<watch::Receiver<Option<Proof>>> {
        self.0.lock().ok()?.remove(&id)
    }

    fn put(&self, id: u64, rx: watch::Receiver<Option<Proof>>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, rx);
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
        }
    }
}

/// A QUIC connection offered before its hello that does not name the app
/// (a full handshake): while a channel is live, its hello's channel will
/// have to prove itself, so the probe goes now, in the first flight, and
/// is put on record at once (before the channel can be accepted). Nothing
/// else is sent on it before its hello.
pub(super) fn start_early(e: EarlyChannel, registry: &Registry, probes: &Arc<EarlyProbes>, deadline: Duration) {
    // With no channel live the hello's channel is installed without a probe.
    if !registry.is_taken() {
        return;
    }
    let EarlyChannel { conn, channel_id, peer_addr, .. } = e;
    let (tx, rx) = watch::channel(None);
    probes.put(channel_id, rx);
    let probes = probes.clone();
    tokio::spawn(async move {
        let proof = tokio::select! {
            p = probe(h2::H2Client::streams_only(&conn), deadline) => p,
            _ = conn.closed() => Err("the connection closed before the Ping probe was answered".to_string()),
        };
        debug!(channel_id, peer = %peer_addr, ?proof, "Ping probe sent before the hello");
        tx.send_replace(Some(proof));
        // Kept for the hello's driver to take while the connection lives.
        conn.closed().await;
        probes.forget(channel_id);
    });
}

/// Proves the channel on `client` live: by the probe sent before its hello
/// (`early`) when its hello said the app serves such streams (`served`),
/// waiting for that one's outcome; else, or when it failed, by one sent
/// now. Says which answered: "before its hello" or "after its hello".
pub(super) async fn prove(
    early: Option<watch::Receiver<Option<Proof>>>,
    served: bool,
    client: h2::H2Client,
    deadline: Duration,
) -> (Proof, &'static str) {
    if let Some(mut early) = early.filter(|_| served) {
        // The early probe always ends (answered, failed, or its connection
        // gone) within its own deadline.
        let outcome = early.wait_for(Option::is_some).await.ok().and_then(|p| p.clone());
        match outcome {
            Some(Ok(rtt)) => return (Ok(rtt), "before its hello"),
            Some(Err(e)) => debug!(error = %e, "the probe sent before the hello failed; probing again"),
            None => {}
        }
    }
    (probe(client, deadline).await, "after its hello")
}
