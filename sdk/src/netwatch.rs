//! Noticing network changes without the app's help: on Linux the kernel
//! announces address, route, routing-rule and link changes over netlink,
//! and the runner moves the channel when the address it uses went away or the kernel would
//! now reach the sidecar from another one (a new default route). Elsewhere
//! (Android, iOS, ...) the app hears of changes from the OS and calls
//! [`crate::Handle::rebind`].
//!
//! The announcements only say *that* something changed. What it means is
//! decided by asking the kernel again ([`source_for`], [`is_local`]) and a
//! pure rule ([`decide`]): no netlink message is parsed, so a message the
//! SDK does not understand cannot mislead it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long the network must stay quiet before a burst of announcements
/// (an interface coming up brings addresses, routes and link changes) is
/// acted on once.
const SETTLE: Duration = Duration::from_millis(50);

/// The longest a burst is coalesced: a network that never settles is
/// still looked at twice a second.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// What a network change means for the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Move {
    /// The channel's address is still there and still the kernel's choice.
    Stay,
    /// Move the channel to a new socket (QUIC) or a new connection (TCP);
    /// with `unpin`, the address the app chose is gone: bind any from now on.
    Go {
        /// The app's chosen local IP went away.
        unpin: bool,
    },
}

/// What to do after a network change. `used`: the local IP the channel
/// sends from; `pinned`: the app chose it; `used_exists`: it is still one of
/// this host's addresses; `now`: the source the kernel would pick to reach
/// the sidecar now (`None`: no route at all).
pub(crate) fn decide(used: IpAddr, pinned: bool, used_exists: bool, now: Option<IpAddr>) -> Move {
    if now.is_none() {
        // No route to the sidecar at all: nothing to move to yet; the next
        // change (an address or route coming back) is looked at again.
        return Move::Stay;
    }
    if !used_exists {
        return Move::Go { unpin: pinned };
    }
    if !pinned && now != Some(used) {
        // A new default route (or a better one) leads elsewhere.
        return Move::Go { unpin: false };
    }
    Move::Stay
}

/// The local IP the kernel would send from to reach `peer` (a routing
/// lookup through an unconnected UDP socket; nothing is sent).
pub(crate) fn source_for(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Whether `ip` is still one of this host's addresses: binding it succeeds
/// (with `net.ipv4.ip_nonlocal_bind` set, any address binds: then only a
/// route change moves the channel).
pub(crate) fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The kernel's change announcements, when this platform has them and the
/// app wants them.
pub(crate) struct NetWatch {
    socket: Option<imp::Socket>,
    /// When the burst being settled began: kept here, not in the future,
    /// so that a [`NetWatch::changed`] cancelled by the runner's other
    /// events (a health check, a command) loses no announcement.
    burst: Option<tokio::time::Instant>,
}

impl NetWatch {
    /// Starts listening, if `enabled` and the platform can (Linux netlink;
    /// a sandbox that forbids it just means no watching, said once in the log).
    pub(crate) fn new(enabled: bool) -> NetWatch {
        if !enabled {
            return NetWatch { socket: None, burst: None };
        }
        match imp::Socket::open() {
            Ok(s) => NetWatch { socket: Some(s), burst: None },
            Err(e) => {
                tracing::info!(error = %e, "not watching the network (call Handle::rebind on changes)");
                NetWatch { socket: None, burst: None }
            }
        }
    }

    /// Whether announcements can arrive (watching is on and the socket open).
    pub(crate) fn is_watching(&self) -> bool {
        self.socket.is_some()
    }

    /// Resolves once the kernel announced a change and the network then
    /// stayed quiet for a moment; never, when not watching. Cancel-safe: a
    /// burst seen by a cancelled call is settled and reported by the next.
    pub(crate) async fn changed(&mut self) {
        let Some(socket) = &mut self.socket else {
            return std::future::pending().await;
        };
        let started = match self.burst {
            Some(t) => t,
            None => {
                // An error that is not an overflow (announcements dropped,
                // so something changed: look now) ends the watching.
                if let Err(e) = socket.next().await
                    && !imp::overflowed(&e)
                {
                    tracing::info!(error = %e, "the network watch failed; no longer watching (call Handle::rebind on changes)");
                    self.socket = None;
                    return std::future::pending().await;
                }
                *self.burst.insert(tokio::time::Instant::now())
            }
        };
        let deadline = started + MAX_SETTLE;
        loop {
            let quiet = tokio::time::Instant::now() + SETTLE;
            tokio::select! {
                r = socket.next() => if r.is_err() { break },
                () = tokio::time::sleep_until(quiet.min(deadline)) => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        self.burst = None;
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use netlink_sys::protocols::NETLINK_ROUTE;
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

    /// A netlink socket in the groups that announce addresses, routes,
    /// routing rules and links.
    pub(super) struct Socket {
        socket: TokioSocket,
        buf: Vec<u8>,
    }

    impl Socket {
        pub(super) fn open() -> std::io::Result<Socket> {
            let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
            let groups = libc::RTMGRP_LINK
                | libc::RTMGRP_IPV4_IFADDR
                | libc::RTMGRP_IPV6_IFADDR
                | libc::RTMGRP_IPV4_ROUTE
                | libc::RTMGRP_IPV6_ROUTE
                | libc::RTMGRP_IPV4_RULE;
            socket.socket_mut().bind(&SocketAddr::new(0, groups.cast_unsigned()))?;
            // IPv6 rules have no name in the legacy bitmask: joined by group number.
            socket.socket_ref().add_membership(libc::RTNLGRP_IPV6_RULE)?;
            Ok(Socket { socket, buf: Vec::with_capacity(16 * 1024) })
        }

        /// Waits for the next announcement (its content is not needed).
        pub(super) async fn next(&mut self) -> std::io::Result<()> {
            self.buf.clear();
            self.socket.recv(&mut self.buf).await
        }
    }

    /// The kernel dropped announcements because the SDK read too slowly.
    pub(super) fn overflowed(e: &std::io::Error) -> bool {
        e.raw_os_error() == Some(libc::ENOBUFS)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// No announcements on this platform: the app calls `Handle::rebind`.
    pub(super) struct Socket;

    impl Socket {
        pub(super) fn open() -> std::io::Result<Socket> {
            Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "only Linux announces network changes here"))
        }

        pub(super) async fn next(&mut self) -> std::io::Result<()> {
            std::future::pending().await
        }
    }

    pub(super) fn overflowed(_: &std::io::Error) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn a_channel_moves_when_its_address_goes_or_the_route_leads_elsewhere() {
        let (a, b) = (ip("10.0.0.2"), ip("192.168.1.5"));
        // Nothing changed for the channel.
        assert_eq!(decide(a, false, true, Some(a)), Move::Stay);
        assert_eq!(decide(a, true, true, Some(a)), Move::Stay);
        // A new default route: an unpinned channel follows it...
        assert_eq!(decide(a, false, true, Some(b)), Move::Go { unpin: false });
        // ...a pinned one stays on the address the app chose while it exists.
        assert_eq!(decide(a, true, true, Some(b)), Move::Stay);
        // The address went away.
        assert_eq!(decide(a, false, false, Some(b)), Move::Go { unpin: false });
        assert_eq!(decide(a, true, false, Some(b)), Move::Go { unpin: true });
        // No route to the sidecar at all: wait for the next change.
        assert_eq!(decide(a, false, false, None), Move::Stay);
        assert_eq!(decide(a, true, false, None), Move::Stay);
    }

    #[test]
    fn the_kernel_says_which_source_reaches_loopback() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(source_for(peer), Some(ip("127.0.0.1")));
        assert!(is_local(ip("127.0.0.1")));
        // TEST-NET-1 is never this host's.
        assert!(!is_local(ip("192.0.2.1")));
    }
}
