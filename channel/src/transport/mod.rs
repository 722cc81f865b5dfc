//! Which transport a channel runs on, and the transports themselves: each
//! has its own file (`quic.rs`, `tcp.rs`) behind one small interface (the
//! `Link` of a live connection, in `io.rs`, and the [`Handshake`] of a dial
//! whose hello is not sent yet), and the dialer and the listener
//! pick one once. Above this crate nothing needs to know which is which:
//! it asks [`Transport::can_migrate`], [`Transports::intersect`] and
//! [`Transports::preferred_over`] instead.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;

use crate::error::DialError;
use crate::io::{Connection, Io};
use crate::{Hello, Verdict};

pub(crate) mod quic;
pub(crate) mod quic_accept;
pub(crate) mod tcp;

/// What a hello over a transport yields: the channel's byte stream, its
/// connection, and the sidecar's verdict (not yet checked).
pub(crate) type HelloFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Io, Connection, Verdict), DialError>> + Send + 'a>>;

/// A transport's connection whose TLS handshake is done and whose hello is
/// not sent yet; one implementation per transport.
pub(crate) trait Handshake: Send {
    /// Sends `hello` and reads the verdict.
    fn hello<'a>(self: Box<Self>, addr: SocketAddr, hello: &'a Hello) -> HelloFuture<'a>;
    /// Drops the connection, telling the peer where the transport can.
    fn abandon(self: Box<Self>);
    /// The connection for calls the sidecar sends on streams of their own
    /// before the verdict, where it can (QUIC with `dialback/2`).
    fn early(&self) -> Option<Connection> {
        None
    }
}

/// The transport under one channel, chosen once when it is dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP (quinn): migrates across address changes.
    Quic,
    /// TLS 1.3 over TCP (tokio-rustls): the fallback where UDP is blocked.
    TcpTls,
}

impl Transport {
    /// Both transports, QUIC first.
    pub const ALL: [Transport; 2] = [Transport::Quic, Transport::TcpTls];

    /// The short name used in flags, logs and metadata: `quic` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::TcpTls => "tcp",
        }
    }

    /// The `CallbackTransport` value of `ConnectAppCallbackResponse`.
    pub fn to_proto(self) -> dialback_proto::runtime::CallbackTransport {
        match self {
            Transport::Quic => dialback_proto::runtime::CallbackTransport::Quic,
            Transport::TcpTls => dialback_proto::runtime::CallbackTransport::TcpTls,
        }
    }

    /// Whether a connection over this transport lives on when either end's
    /// address changes (QUIC connection migration). Such a connection is
    /// moved, not redialed, on a network change, and it is known by
    /// connection IDs, which a restarted sidecar resets.
    pub fn can_migrate(self) -> bool {
        self == Transport::Quic
    }

    /// The transport named by a `CallbackTransport` value; `None` when unspecified or unknown.
    pub fn from_proto(value: i32) -> Option<Transport> {
        use dialback_proto::runtime::CallbackTransport as P;
        match P::try_from(value).ok()? {
            P::Quic => Some(Transport::Quic),
            P::TcpTls => Some(Transport::TcpTls),
            P::Unspecified => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of transports: what a listener accepts or a dialer may try.
///
/// Parsed from `quic`, `tcp` or `auto` (both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transports {
    /// QUIC is in the set.
    pub quic: bool,
    /// TCP+TLS is in the set.
    pub tcp: bool,
}

impl Transports {
    /// Both transports.
    pub const AUTO: Transports = Transports { quic: true, tcp: true };
    /// QUIC only.
    pub const QUIC: Transports = Transports { quic: true, tcp: false };
    /// TCP+TLS only.
    pub const TCP: Transports = Transports { quic: false, tcp: true };
    /// No transport.
    pub const NONE: Transports = Transports { quic: false, tcp: false };

    /// The transports in both sets: what an app allows and a sidecar offers.
    pub fn intersect(self, other: Transports) -> Transports {
        Transports { quic: self.quic && other.quic, tcp: self.tcp && other.tcp }
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        !self.quic && !self.tcp
    }

    /// The members preferred over `current` (QUIC ranks above TCP): what a
    /// channel on `current` should move to when it can.
    pub fn preferred_over(self, current: Transport) -> Transports {
        match current {
            Transport::Quic => Transports::NONE,
            Transport::TcpTls => self.intersect(Transports::QUIC),
        }
    }

    /// The set named by `CallbackTransport` values (unknown ones ignored).
    pub fn from_proto(values: &[i32]) -> Transports {
        values.iter().filter_map(|v| Transport::from_proto(*v)).fold(Transports::NONE, |mut set, t| {
            match t {
                Transport::Quic => set.quic = true,
                Transport::TcpTls => set.tcp = true,
            }
            set
        })
    }

    /// The members as `CallbackTransport` values, QUIC first.
    pub fn to_proto(self) -> Vec<i32> {
        self.iter().map(|t| t.to_proto() as i32).collect()
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: Transport) -> bool {
        match t {
            Transport::Quic => self.quic,
            Transport::TcpTls => self.tcp,
        }
    }

    /// The members, QUIC first.
    pub fn iter(self) -> impl Iterator<Item = Transport> {
        [self.quic.then_some(Transport::Quic), self.tcp.then_some(Transport::TcpTls)].into_iter().flatten()
    }
}

impl FromStr for Transports {
    type Err = String;

    /// Fails on anything but `quic`, `tcp` or `auto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "quic" => Ok(Transports::QUIC),
            "tcp" => Ok(Transports::TCP),
            "auto" => Ok(Transports::AUTO),
            other => Err(format!("unknown transport {other:?}: expected quic, tcp or auto")),
        }
    }
}

impl fmt::Display for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.quic, self.tcp) {
            (true, true) => "auto",
            (true, false) => "quic",
            (false, true) => "tcp",
            (false, false) => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flag_values() {
        assert_eq!("auto".parse::<Transports>(), Ok(Transports::AUTO));
        assert_eq!("QUIC".parse::<Transports>(), Ok(Transports::QUIC));
        assert_eq!("tcp".parse::<Transports>(), Ok(Transports::TCP));
        assert!("udp".parse::<Transports>().is_err());
        assert_eq!(Transports::AUTO.iter().collect::<Vec<_>>(), vec![Transport::Quic, Transport::TcpTls]);
    }

    #[test]
    fn proto_round_trip() {
        for t in [Transport::Quic, Transport::TcpTls] {
            assert_eq!(Transport::from_proto(t.to_proto() as i32), Some(t));
        }
        assert_eq!(Transport::from_proto(0), None);
        assert_eq!(Transport::from_proto(99), None);
        for set in [Transports::AUTO, Transports::QUIC, Transports::TCP, Transports::NONE] {
            assert_eq!(Transports::from_proto(&set.to_proto()), set);
        }
        assert_eq!(Transports::from_proto(&[0, 99, Transport::TcpTls.to_proto() as i32]), Transports::TCP);
    }

    #[test]
    fn sets_intersect_and_rank() {
        let all = [Transports::AUTO, Transports::QUIC, Transports::TCP, Transports::NONE];
        for a in all {
            for b in all {
                let both = a.intersect(b);
                for t in [Transport::Quic, Transport::TcpTls] {
                    assert_eq!(both.contains(t), a.contains(t) && b.contains(t), "{a} & {b} for {t}");
                }
            }
            assert_eq!(a.preferred_over(Transport::Quic), Transports::NONE, "nothing ranks above QUIC");
            assert_eq!(a.preferred_over(Transport::TcpTls), Transports { quic: a.quic, tcp: false });
        }
        assert!(Transports::NONE.is_empty() && !Transports::TCP.is_empty());
        assert!(Transport::Quic.can_migrate() && !Transport::TcpTls.can_migrate());
    }
}
