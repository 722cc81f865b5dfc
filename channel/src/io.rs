//! What a finished handshake hands up: the byte stream, who is on the other
//! end, and a handle on the connection's life.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::Transport;

/// Why a channel was closed, sent as the QUIC application error code.
///
/// Over TCP the code is not on the wire; the sidecar tells the app about a
/// replacement in-band instead (see the sidecar's Ping notice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// An orderly close: the peer is done.
    Done = 0,
    /// The hello was refused; the reason text says why.
    Refused = 1,
    /// A newer channel from the same app took this one's place.
    Replaced = 2,
    /// The liveness Ping went unanswered.
    PingTimeout = 3,
    /// The peer is shutting down.
    ShuttingDown = 4,
}

impl CloseCode {
    /// The code for a QUIC application close value; unknown values map to `Done`.
    pub fn from_u64(v: u64) -> CloseCode {
        match v {
            1 => CloseCode::Refused,
            2 => CloseCode::Replaced,
            3 => CloseCode::PingTimeout,
            4 => CloseCode::ShuttingDown,
            _ => CloseCode::Done,
        }
    }
}

/// Who is on the other end of a channel, and how it got there.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    /// The app-id the hello named (and the credential proved).
    pub app_id: String,
    /// The app instance's self-description from the hello, for logs.
    pub instance: String,
    /// The transport in use.
    pub transport: Transport,
    /// The peer's address when the channel was set up.
    pub peer_addr: SocketAddr,
    /// The sidecar-assigned id of this channel.
    pub channel_id: u64,
    /// The app's side: the sidecar's reconnect token from the verdict (empty if none).
    pub reconnect_token: String,
    /// How the app proved itself.
    pub credential: crate::CredentialKind,
    /// The hello asked for the channel only if no other is live.
    pub standby: bool,
    /// The largest message the app said it accepts (0: not said).
    pub max_message_bytes: u32,
}

/// A handle on a channel's underlying connection: cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    kind: ConnKind,
    /// Cancelled when the stream ends, fails, is dropped or is closed here.
    gone: CancellationToken,
}

#[derive(Clone, Debug)]
enum ConnKind {
    Quic(quinn::Connection),
    Tcp { peer: SocketAddr },
}

impl Connection {
    pub(crate) fn from_quic(conn: quinn::Connection, gone: CancellationToken) -> Connection {
        Connection { kind: ConnKind::Quic(conn), gone }
    }

    pub(crate) fn from_tcp(peer: SocketAddr, gone: CancellationToken) -> Connection {
        Connection { kind: ConnKind::Tcp { peer }, gone }
    }

    /// The peer's current address: follows QUIC migration.
    pub fn peer_addr(&self) -> SocketAddr {
        match &self.kind {
            ConnKind::Quic(c) => c.remote_address(),
            ConnKind::Tcp { peer } => *peer,
        }
    }

    /// The transport's own round-trip estimate, where it has one (QUIC).
    pub fn rtt(&self) -> Option<Duration> {
        match &self.kind {
            ConnKind::Quic(c) => Some(c.rtt()),
            ConnKind::Tcp { .. } => None,
        }
    }

    /// The QUIC connection, for callers that migrate or open more streams.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        match &self.kind {
            ConnKind::Quic(c) => Some(c),
            ConnKind::Tcp { .. } => None,
        }
    }

    /// Closes the connection with `code` and a reason for the peer's logs.
    /// Reads and writes on the channel's [`Io`] fail from then on.
    pub fn close(&self, code: CloseCode, reason: &str) {
        if let ConnKind::Quic(c) = &self.kind {
            c.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes());
        }
        self.gone.cancel();
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        if self.gone.is_cancelled() {
            return true;
        }
        match &self.kind {
            ConnKind::Quic(c) => c.close_reason().is_some(),
            ConnKind::Tcp { .. } => false,
        }
    }

    /// Resolves once the connection is gone, with the peer's close code when
    /// the peer said one (QUIC only).
    pub async fn closed(&self) -> Option<(CloseCode, String)> {
        match &self.kind {
            ConnKind::Quic(c) => {
                tokio::select! {
                    _ = c.closed() => {}
                    () = self.gone.cancelled() => {}
                }
                // The stream may fail a moment before the connection reports
                // why; the reason, once set, is what counts.
                match c.close_reason() {
                    Some(quinn::ConnectionError::ApplicationClosed(close)) => Some((
                        CloseCode::from_u64(close.error_code.into_inner()),
                        String::from_utf8_lossy(&close.reason).into_owned(),
                    )),
                    _ => None,
                }
            }
            ConnKind::Tcp { .. } => {
                self.gone.cancelled().await;
                None
            }
        }
    }
}

/// The channel's authenticated duplex byte stream: a QUIC bidirectional
/// stream or a TLS-over-TCP stream, behind one type.
///
/// Reads and writes fail once the connection is closed through its
/// [`Connection`]; dropping the `Io` marks the connection gone.
pub struct Io {
    inner: Inner,
    gone: CancellationToken,
    abort: Pin<Box<WaitForCancellationFutureOwned>>,
}

enum Inner {
    Quic { send: quinn::SendStream, recv: quinn::RecvStream },
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Io {
    pub(crate) fn quic(send: quinn::SendStream, recv: quinn::RecvStream, gone: CancellationToken) -> Io {
        Io::new(Inner::Quic { send, recv }, gone)
    }

    pub(crate) fn tls(stream: tokio_rustls::TlsStream<TcpStream>, gone: CancellationToken) -> Io {
        Io::new(Inner::Tls(Box::new(stream)), gone)
    }

    fn new(inner: Inner, gone: CancellationToken) -> Io {
        let abort = Box::pin(gone.clone().cancelled_owned());
        Io { inner, gone, abort }
    }

    /// Fails with `ConnectionAborted` once the connection was closed here.
    fn check_open(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        match self.abort.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "channel closed")),
            Poll::Pending => Ok(()),
        }
    }

    fn note<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &r {
            self.gone.cancel();
        }
        r
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl AsyncRead for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = match &mut this.inner {
            Inner::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        // A clean end of stream also means the channel is over.
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            this.gone.cancel();
        }
        this.note(r)
    }
}

impl AsyncWrite for Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        let r = match &mut this.inner {
            Inner::Quic { send, .. } => Pin::new(send).poll_write(cx, data).map_err(io::Error::from),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        this.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        let r = match &mut this.inner {
            Inner::Quic { send, .. } => Pin::new(send).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Quic { send, .. } => send.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Inner::Quic { send, .. } => Pin::new(send).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        this.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Quic { send, .. } => Pin::new(send).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An authenticated channel, ready for HTTP/2.
pub struct Channel {
    /// The byte stream to run HTTP/2 over.
    pub io: Io,
    /// Who is on the other end.
    pub info: ChannelInfo,
    /// The connection's life: watch it, close it.
    pub conn: Connection,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("info", &self.info).finish_non_exhaustive()
    }
}
