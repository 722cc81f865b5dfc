//! Which transport a channel runs on.

use std::fmt;
use std::str::FromStr;

/// The transport under one channel, chosen once when it is dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP (quinn): migrates across address changes.
    Quic,
    /// TLS 1.3 over TCP (tokio-rustls): the fallback where UDP is blocked.
    TcpTls,
}

impl Transport {
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
    }
}
