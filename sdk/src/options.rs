//! What the app may tune about its channel: [`ChannelOptions`], and how it
//! proves itself ([`CredentialChoice`]) and trusts the sidecar ([`TrustChoice`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dialback_certs::Identity;
use dialback_channel::{Congestion, KeepAlive, Liveness, MAX_IDLE_TIMEOUT, MOBILE_BEAT, Timeouts, Transports};

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
    /// Local IP to dial from (`None`: any, the kernel's choice per route).
    /// If it goes away while [`ChannelOptions::watch_network`] is on, the
    /// channel moves to the kernel's choice rather than stay dead.
    pub local_ip: Option<IpAddr>,
    /// Watch the kernel's address and route changes (Linux, netlink) and
    /// move the channel by itself when the address it uses goes away or a
    /// new route leads to the sidecar from another one; a reconnect wait is
    /// cut short by a change too. Elsewhere the app calls
    /// [`crate::Handle::rebind`] when the OS reports a change.
    pub watch_network: bool,
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
    /// How the channel stays alive while idle: [`Liveness::Default`] (both
    /// ends, every keepalive interval) or [`Liveness::Mobile`] (one
    /// keepalive from the app per beat, nothing else); see [`ChannelOptions::mobile`].
    pub liveness: Liveness,
    /// QUIC's congestion controller for what the app sends (its answers);
    /// see [`Congestion`] and docs/benchmarks.md for how they compare on a
    /// lossy link.
    pub congestion: Congestion,
    /// Send the app's own calls to the sidecar's API ([`crate::SidecarClient`]
    /// from [`crate::Handle::sidecar`]) as HTTP/3 on the channel's QUIC
    /// connection when the sidecar offers it, so that they need no second
    /// flow and migrate with the channel; over TCP, or with this off, they
    /// go to the API endpoint. Default: on.
    pub api_over_http3: bool,
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
            watch_network: true,
            backoff: Backoff::default(),
            quic_probe_interval: Duration::from_secs(5),
            standby_probe_interval: Duration::from_secs(15),
            max_message_size: 4 * 1024 * 1024,
            liveness: Liveness::Default,
            congestion: Congestion::default(),
            api_over_http3: true,
        }
    }
}

/// Beats a mobile channel may miss before the app gives it up.
const MOBILE_BEATS_TO_IDLE: u32 = 4;

/// How often a mobile app on TCP tries QUIC again (a dial wakes the radio).
const MOBILE_QUIC_PROBE: Duration = Duration::from_secs(300);

impl ChannelOptions {
    /// The mobile profile, for an app on a battery: one small keepalive
    /// every 25 s ([`MOBILE_BEAT`], under the ~30 s a carrier NAT keeps a
    /// UDP mapping), which the sidecar acknowledges, and nothing else while
    /// idle (no HTTP/2 PINGs, no Ping stream, no keepalive from the
    /// sidecar). A dead path or sidecar is noticed after 4 missed beats
    /// (100 s) instead of seconds; an address change still migrates at
    /// once, and a restarted sidecar still resets the connection at once.
    /// While on TCP, QUIC is tried again every 5 minutes.
    pub fn mobile() -> ChannelOptions {
        ChannelOptions::mobile_with_beat(MOBILE_BEAT)
    }

    /// The mobile profile with another beat (a NAT with shorter mappings, or a test).
    pub fn mobile_with_beat(beat: Duration) -> ChannelOptions {
        let mut o = ChannelOptions {
            liveness: Liveness::Mobile { beat },
            quic_probe_interval: MOBILE_QUIC_PROBE,
            ..ChannelOptions::default()
        };
        o.timeouts.keep_alive = mobile_keep_alive(beat);
        o
    }

    /// The options as the channel uses them: in the mobile profile the beat
    /// is the keepalive interval, and the idle timeout a few beats.
    pub(crate) fn normalized(mut self) -> ChannelOptions {
        if let Liveness::Mobile { beat } = self.liveness {
            self.timeouts.keep_alive = mobile_keep_alive(beat);
        }
        self
    }

    /// HTTP/2 PINGs for the channel's server: none in the mobile profile.
    pub(crate) fn h2_pings(&self) -> Option<KeepAlive> {
        (self.liveness == Liveness::Default).then_some(self.timeouts.keep_alive)
    }
}

fn mobile_keep_alive(beat: Duration) -> KeepAlive {
    let beat = beat.max(Duration::from_millis(1));
    KeepAlive { interval: beat, idle_timeout: (beat * MOBILE_BEATS_TO_IDLE).min(MAX_IDLE_TIMEOUT).max(beat * 2) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mobile_profile_beats_every_25_s_and_gives_up_after_4_beats() {
        let o = ChannelOptions::mobile();
        assert_eq!(o.liveness, Liveness::Mobile { beat: Duration::from_secs(25) });
        assert_eq!(o.timeouts.keep_alive.interval, Duration::from_secs(25));
        assert_eq!(o.timeouts.keep_alive.idle_timeout, Duration::from_secs(100));
        assert_eq!(o.h2_pings(), None);
        assert!(ChannelOptions::default().h2_pings().is_some());
        // A beat too slow for the sidecar's idle bound is capped by it.
        let slow = ChannelOptions::mobile_with_beat(Duration::from_secs(60));
        assert_eq!(slow.timeouts.keep_alive.idle_timeout, MAX_IDLE_TIMEOUT);
        // Asking for the profile by hand keeps the timeouts in step.
        let by_hand =
            ChannelOptions { liveness: Liveness::Mobile { beat: Duration::from_secs(10) }, ..Default::default() };
        assert_eq!(by_hand.normalized().timeouts.keep_alive.interval, Duration::from_secs(10));
    }
}
