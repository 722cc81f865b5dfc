//! Early channels: a QUIC connection handed up as soon as its ClientHello
//! is read, a flight before the app's hello. When its resumed TLS session
//! names the app, the sidecar can send the calls that wait for the app in
//! its first flight (0.5-RTT data; docs/architecture.md, "The credential in
//! TLS"); when it does not (a full handshake: a new app process, or a
//! stranger), the sidecar may only probe it, so that its hello's channel,
//! if it must prove itself before displacing a live one, has done so by
//! the time its hello arrives.
//!
//! Only a stream per call (`dialback/2`) can carry them: the channel's first
//! stream is the app's to open. The hello still follows and decides; until
//! it has, the channel is provisional.

use std::net::SocketAddr;

use tokio::sync::oneshot;

use crate::io::{ChannelInfo, Connection};
use crate::notice::CredentialKind;

/// A connection offered before its hello.
#[derive(Debug)]
pub struct EarlyChannel {
    /// The connection: calls may go on streams of their own from now.
    pub conn: Connection,
    /// The channel id its hello gets, if accepted.
    pub channel_id: u64,
    /// Where it comes from.
    pub peer_addr: SocketAddr,
    /// Whether its resumed TLS session's certificate names the app: only
    /// then may calls go on it before its hello. Otherwise nobody is known
    /// yet, and only a probe may.
    pub names_app: bool,
    /// Resolves `Ok(true)` once its hello is accepted (the channel is then
    /// handed up by [`crate::Listener::accept`] as usual), `Ok(false)` or an
    /// error when it is refused or the connection fails first.
    pub decided: oneshot::Receiver<bool>,
}

impl EarlyChannel {
    /// What is known of the channel before its hello: `app_id` (which the
    /// session's certificate named), the transport, the peer and the id;
    /// the rest as a hello that says nothing would have it.
    pub fn info(&self, app_id: String) -> ChannelInfo {
        ChannelInfo {
            app_id,
            instance: String::new(),
            transport: crate::Transport::Quic,
            peer_addr: self.peer_addr,
            channel_id: self.channel_id,
            credential: CredentialKind::ClientCertificate,
            standby: false,
            max_message_bytes: 0,
            beat: None,
            serves_early_streams: true,
        }
    }
}
