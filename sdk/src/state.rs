//! The channel's state as the app sees it.

use std::net::SocketAddr;
use std::time::Instant;

use dialback_channel::Transport;

/// Where the callback channel stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Asking the sidecar where to dial, or dialing.
    Connecting {
        /// Attempts since the last stable channel.
        attempt: u32,
    },
    /// Up and serving the sidecar's calls.
    Connected(Connected),
    /// Down; the next attempt follows the backoff.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// Another instance of this app took over the channel; this one stands
    /// by, probing every [`crate::ChannelOptions::standby_probe_interval`],
    /// and takes the channel back only once it is free.
    Replaced,
    /// Shut down by the app.
    Stopped,
}

/// A live channel, as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The transport in use.
    pub transport: Transport,
    /// The sidecar-assigned channel id.
    pub channel_id: u64,
    /// The sidecar's channel address.
    pub sidecar: SocketAddr,
    /// When the channel came up.
    pub since: Instant,
    /// Channels set up since start, including this one.
    pub channels: u64,
}

impl ChannelState {
    /// The live channel, if connected.
    pub fn connected(&self) -> Option<&Connected> {
        match self {
            ChannelState::Connected(c) => Some(c),
            _ => None,
        }
    }
}

/// What the SDK puts in each request's extensions, so handlers can see
/// which channel carried the call (`request.extensions().get::<CallContext>()`).
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The transport in use.
    pub transport: Transport,
    /// The channel id (0 for a call that came before the sidecar's verdict:
    /// the first calls after a redial that resumed its TLS session).
    pub channel_id: u64,
}
