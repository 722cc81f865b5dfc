//! Moving the channel when the network changes: on the app's word
//! ([`crate::Handle::rebind`]) or the kernel's ([`crate::netwatch`]).
//! QUIC migrates to a new socket; TCP gets a new channel, make-before-break.

use std::net::IpAddr;
use std::time::Duration;

use dialback_channel::{CloseCode, NetworkChange};
use dialback_proto::runtime::ConnectAppCallbackResponse;
use tracing::{debug, info, warn};

use super::Runner;
use super::session::Session;
use crate::error::Error;
use crate::netwatch::{self, Move};

impl Runner {
    /// A move asked for while no channel is up fails, as there is nothing
    /// to move; but the network changed, so the next dial (at once) tries
    /// hard again, as after a change the kernel announces.
    pub(super) fn refuse(&mut self, cmd: Option<super::Command>) {
        if let Some(super::Command::Rebind(_, reply)) = cmd {
            let _ = reply.send(Err(Error::NotConnected));
            self.pace.reset();
        }
    }

    /// Whether `answer` comes from another sidecar than the channel's: its
    /// certificate differs from the one remembered.
    pub(super) fn is_new_sidecar(&self, answer: &ConnectAppCallbackResponse) -> bool {
        self.cache.as_ref().is_some_and(|c| {
            !c.remembered.fingerprint.is_empty()
                && !answer.cert_sha256.is_empty()
                && c.remembered.fingerprint != answer.cert_sha256
        })
    }

    /// The kernel announced a network change: move the channel if the
    /// address it uses went away or is no longer the way to the sidecar.
    pub(super) async fn on_network_change(&mut self, current: &mut Session) {
        let Some(used) = current.local_ip else { return };
        let pinned = self.dialer.local_ip();
        let now = netwatch::source_for(current.conn.peer_addr());
        match netwatch::decide(used, pinned.is_some(), netwatch::is_local(used), now) {
            Move::Stay => debug!(%used, ?now, "the network changed; the channel's address is still the way"),
            Move::Go { unpin } => {
                if unpin {
                    info!(%used, "the local IP the app chose went away; dialing from the kernel's choice from now on");
                    self.dialer.forget_local_ip();
                } else {
                    info!(%used, ?now, "the network changed under the channel; moving it");
                }
                if let Err(e) = self.network_changed(current, None, "network").await {
                    warn!(error = %e, "moving the channel after a network change failed; the next change or the keepalive decides");
                }
            }
        }
    }

    /// The local IP `conn` sends from, as far as a network change is
    /// checked against it: TCP's own source; for QUIC the IP the app chose
    /// or else the kernel's choice toward the sidecar, which a wildcard
    /// socket follows. `None` (and no routing lookup) when not watching.
    pub(super) fn local_ip_of(&self, conn: &dialback_channel::Connection) -> Option<IpAddr> {
        if !self.net.is_watching() {
            return None;
        }
        conn.local_addr().map(|a| a.ip()).or(self.dialer.local_ip()).or_else(|| netwatch::source_for(conn.peer_addr()))
    }

    /// The Pings are late (`late`), or what the app sent went unanswered
    /// on a QUIC path that has gone quiet: move the socket, the `nth` time
    /// in this silence. A dead path may be a lost NAT mapping: a new
    /// source port makes a new one. quinn may swallow send errors after an
    /// interface change, so silence is the signal. Repeated while a QUIC
    /// path stays silent: the first move that gets through ends a dead
    /// spell at once (see health.rs). A connection that cannot migrate
    /// waits for the verdict.
    pub(super) fn move_on_late_pings(&mut self, conn: &dialback_channel::Connection, nth: u32, late: bool) {
        match self.dialer.network_changed(conn, None) {
            Ok(NetworkChange::Migrated(addr)) => {
                crate::metrics::migrated("late_pings");
                if nth == 1 && late {
                    info!(%addr, "pings are late; moved the socket");
                } else if nth == 1 {
                    info!(%addr, "nothing came back for what the app sent; moved the socket");
                } else {
                    debug!(%addr, nth, "the path is still silent; moved the socket again");
                }
            }
            Ok(NetworkChange::NeedsRedial) => {}
            Err(e) => debug!(error = %e, "moving the socket after late pings failed"),
        }
    }

    /// QUIC migrates to a new socket; TCP gets a new channel from the new address.
    pub(super) async fn network_changed(
        &mut self,
        current: &mut Session,
        ip: Option<IpAddr>,
        cause: &'static str,
    ) -> Result<(), Error> {
        if let NetworkChange::Migrated(addr) = self.dialer.network_changed(&current.conn, ip)? {
            crate::metrics::migrated(cause);
            current.local_ip = self.local_ip_of(&current.conn);
            info!(%addr, "network changed; the connection migrates");
            return Ok(());
        }
        let ch = self.connect(self.options.transports).await?;
        let new = self.start_session(ch);
        self.switch(current, new);
        Ok(())
    }

    /// Makes `new` the current channel; the old one keeps serving its calls
    /// in flight until the sidecar, which has switched too, closes it.
    pub(super) fn switch(&mut self, current: &mut Session, new: Session) {
        let mut old = std::mem::replace(current, new);
        info!(from = %old.transport, to = %current.transport, channel_id = current.channel_id, "channel moved, make-before-break");
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), old.ended()).await;
            old.conn.close(CloseCode::Done, "superseded");
        });
    }
}
