//! One error enum per operation.

use std::net::SocketAddr;

use crate::RefusalReason;
use crate::handshake::FrameError;

/// Why [`crate::Listener::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The UDP or TCP socket could not be bound.
    #[error("cannot bind the callback channel {transport} listener on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration does not fit QUIC (it must allow TLS 1.3).
    #[error("the TLS configuration is not usable for QUIC: {0}")]
    Tls(String),
    /// Neither QUIC nor TCP was asked for.
    #[error("no transport to listen on")]
    NoTransport,
}

/// Why one incoming connection did not become a channel. Logged by the
/// listener; the live channel is never affected.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// TLS or QUIC handshake failed (wrong ALPN, bad certificate, garbage).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The QUIC connection failed before the hello.
    #[error("QUIC connection failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// The hello frame was oversized, malformed or cut short.
    #[error("bad hello: {0}")]
    Frame(#[from] FrameError),
    /// The handshake did not finish within the bound.
    #[error("handshake not finished within {0:?}")]
    Timeout(std::time::Duration),
    /// The hello was refused.
    #[error("refused ({reason:?}): {message}")]
    Refused {
        /// The reason code sent to the app.
        reason: RefusalReason,
        /// The explanation sent to the app.
        message: String,
    },
}

/// Why [`crate::Dialer::dial`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The local socket could not be set up.
    #[error("cannot set up the local socket: {0}")]
    Socket(std::io::Error),
    /// The sidecar could not be reached (refused, unreachable).
    #[error("cannot reach the sidecar at {addr}: {source}")]
    Connect {
        /// Where we dialed.
        addr: SocketAddr,
        /// The OS or QUIC error.
        source: std::io::Error,
    },
    /// TLS failed: untrusted certificate, wrong pin, wrong ALPN.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// Where we dialed.
        addr: SocketAddr,
        /// The TLS error.
        source: std::io::Error,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} not finished within {after:?}")]
    Timeout {
        /// Where we dialed.
        addr: SocketAddr,
        /// The bound that ran out.
        after: std::time::Duration,
    },
    /// The sidecar's verdict could not be read.
    #[error("no verdict from {addr}: {source}")]
    Verdict {
        /// Where we dialed.
        addr: SocketAddr,
        /// What went wrong reading it.
        source: FrameError,
    },
    /// The sidecar refused the hello.
    #[error("the sidecar refused the channel ({reason:?}): {message}")]
    Refused {
        /// The sidecar's reason code.
        reason: RefusalReason,
        /// The sidecar's explanation.
        message: String,
    },
    /// The dial cannot be made as configured: a TLS configuration that does
    /// not fit QUIC, a bad server name, no transport to dial.
    #[error("cannot dial as configured: {0}")]
    Config(String),
}

pub(crate) fn quic_io(e: quinn::ConnectionError) -> std::io::Error {
    std::io::Error::other(e)
}
