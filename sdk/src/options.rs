//! What the app may tune about its channel: [`ChannelOptions`], and how it
//! proves itself ([`CredentialChoice`]) and trusts the sidecar ([`TrustChoice`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dialback_certs::Identity;
use dialback_channel::{Timeouts, Transports};

use crate::backoff::Backoff;

/// How the app proves itself on the channel.
#[derive(Clone, Debug, Default)]
pub enum CredentialChoice {
    /// The one-time token from ConnectAppCallback (the default).
    #[default]
    OneTimeToken,
    /// The sidecar's API token (`DAPR_API_TOKEN`).
    ApiToken,
    /// An mTLS client certificate naming the app-id.
    ClientCertificate(Identity),
}

/// How the app trusts the sidecar's certificate.
#[derive(Clone, Debug, Default)]
pub enum TrustChoice {
    /// Pin the fingerprint ConnectAppCallback reports (the default; the
    /// API call itself is the trust anchor).
    #[default]
    FromSidecar,
    /// Verify against these roots (e.g. the dev CA).
    Roots(Arc<rustls::RootCertStore>),
}

/// Everything about the channel the app may tune.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Which transports to try: QUIC, TCP, or both (`auto`: QUIC first, TCP after a head start).
    pub transports: Transports,
    /// How long QUIC may try alone before TCP joins the race.
    pub tcp_head_start: Duration,
    /// Credential to present.
    pub credential: CredentialChoice,
    /// Trust in the sidecar.
    pub trust: TrustChoice,
    /// Handshake deadline and keepalive.
    pub timeouts: Timeouts,
    /// Local IP to dial from (`None`: any).
    pub local_ip: Option<IpAddr>,
    /// Reconnect pacing.
    pub backoff: Backoff,
    /// While on TCP with QUIC allowed, how often to try QUIC again; when it
    /// works the channel moves to QUIC, make-before-break.
    pub quic_probe_interval: Duration,
    /// After another instance of this app took the channel over, how often
    /// (jittered by up to a half) to ask whether it is free again; a probe
    /// never displaces a live instance, so two real replicas do not fight,
    /// and a replaced app comes back when the one that replaced it is gone.
    pub standby_probe_interval: Duration,
    /// The largest message the app accepts, in bytes; told to the sidecar in
    /// the hello, which then refuses larger calls itself (413 /
    /// RESOURCE_EXHAUSTED) instead of sending them. Applied to the built-in
    /// [`crate::InvokeHandlers`]; a service of your own should set the same
    /// `max_decoding_message_size` (tonic's default is 4 MiB, as here).
    pub max_message_size: usize,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            transports: Transports::AUTO,
            tcp_head_start: Duration::from_millis(250),
            credential: CredentialChoice::default(),
            trust: TrustChoice::default(),
            timeouts: Timeouts::default(),
            local_ip: None,
            backoff: Backoff::default(),
            quic_probe_interval: Duration::from_secs(5),
            standby_probe_interval: Duration::from_secs(15),
            max_message_size: 4 * 1024 * 1024,
        }
    }
}
