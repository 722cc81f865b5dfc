//! What a finished handshake hands up: the byte stream, who is on the other
//! end, and a handle on the connection's life.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// How the app proved itself.
    pub credential: crate::CredentialKind,
    /// The hello asked for the channel only if no other is live.
    pub standby: bool,
    /// The largest message the app said it accepts (0: not said).
    pub max_message_bytes: u32,
    /// The mobile liveness profile's beat, when the app asked for it (see
    /// [`crate::Liveness`]); `None`: the default profile.
    pub beat: Option<std::time::Duration>,
    /// The hello said the app serves the sidecar's streams before its
    /// verdict, so a probe sent before the hello is answered.
    pub serves_early_streams: bool,
}

/// A connection's packet counts so far (QUIC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Datagrams received from the peer.
    pub received: u64,
    /// Frames sent that the peer must acknowledge (stream data, PINGs,
    /// flow control, ...): while these grow and nothing is received, the
    /// path has gone quiet.
    pub eliciting_sent: u64,
    /// The smoothed round trip.
    pub rtt: Duration,
}

impl From<&quinn::ConnectionStats> for PathCounts {
    fn from(s: &quinn::ConnectionStats) -> PathCounts {
        let f = &s.frame_tx;
        let eliciting = [
            f.stream,
            f.ping,
            f.datagram,
            f.immediate_ack,
            f.max_data,
            f.max_stream_data,
            f.reset_stream,
            f.stop_sending,
            f.new_connection_id,
            f.retire_connection_id,
            f.path_challenge,
            f.path_response,
        ];
        PathCounts { received: s.udp_rx.datagrams, eliciting_sent: eliciting.iter().sum(), rtt: s.path.rtt }
    }
}

/// What a transport's live connection answers; one implementation per
/// transport (`transport/quic.rs`, `transport/tcp.rs`).
pub(crate) trait Link: Send + Sync + std::fmt::Debug + 'static {
    /// The transport it runs on.
    fn transport(&self) -> Transport;
    /// The peer's current address (follows QUIC migration).
    fn peer_addr(&self) -> SocketAddr;
    /// This end's address, where the transport knows it exactly (TCP); a
    /// QUIC socket on a wildcard address sends from whatever the kernel picks.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// The transport's own round-trip estimate, where it has one.
    fn rtt(&self) -> Option<Duration>;
    /// What the connection has received and sent so far, where the
    /// transport counts packets (QUIC).
    fn path_counts(&self) -> Option<PathCounts> {
        None
    }
    /// Closes the connection, with `code` on the wire where the transport has close codes.
    fn close(&self, code: CloseCode, reason: &str);
    /// Whether the transport itself has seen the connection end.
    fn is_closed(&self) -> bool;
    /// Resolves once the transport itself sees the connection end; never,
    /// for a transport that learns it only through the byte stream.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// The close code and reason the peer sent, if it sent one.
    fn peer_close(&self) -> Option<(CloseCode, String)>;
    /// Whether both ends agreed on a stream per call (QUIC, `dialback/2`).
    fn streams(&self) -> bool {
        false
    }
    /// Opens a stream for one call (the sidecar's side); fails where
    /// [`Link::streams`] is false.
    fn open_stream(&self) -> StreamFuture<'_, io::Result<CallStream>> {
        Box::pin(async { Err(io::Error::new(io::ErrorKind::Unsupported, "no stream per call on this channel")) })
    }
    /// The next stream the peer opened for a call (the app's side); `None`
    /// once the connection is gone, or at once where [`Link::streams`] is false.
    fn accept_stream(&self) -> StreamFuture<'_, Option<CallStream>> {
        Box::pin(async { None })
    }
    /// The QUIC connection, where the app's API calls ride on it as
    /// HTTP/3 (both ends agreed in the hello and verdict).
    fn api_over_http3(&self) -> Option<quinn::Connection> {
        None
    }
}

/// What [`Link`]'s stream methods return.
pub(crate) type StreamFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handle on a channel's underlying connection: cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    link: Arc<dyn Link>,
    /// Cancelled when the stream ends, fails, is dropped or is closed here.
    gone: CancellationToken,
}

impl Connection {
    /// The handle for `link`; when the transport sees the connection end,
    /// `gone` (and so the channel's byte stream) ends with it.
    pub(crate) fn new(link: Arc<dyn Link>, gone: CancellationToken) -> Connection {
        let conn = Connection { link, gone };
        let watch = conn.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watch.link.closed() => watch.gone.cancel(),
                () = watch.gone.cancelled() => {}
            }
        });
        conn
    }

    /// The transport it runs on.
    pub fn transport(&self) -> Transport {
        self.link.transport()
    }

    /// Whether it lives on when either end's address changes (see [`Transport::can_migrate`]).
    pub fn can_migrate(&self) -> bool {
        self.link.transport().can_migrate()
    }

    /// The peer's current address: follows QUIC migration.
    pub fn peer_addr(&self) -> SocketAddr {
        self.link.peer_addr()
    }

    /// This end's address, where the transport knows it exactly (TCP: the
    /// connection's source; `None` for QUIC, whose socket may be on a
    /// wildcard address and follows the kernel's choice of source).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.link.local_addr()
    }

    /// The transport's own round-trip estimate, where it has one (QUIC).
    pub fn rtt(&self) -> Option<Duration> {
        self.link.rtt()
    }

    /// What the connection has received and sent so far, where the
    /// transport counts packets (QUIC; `None` for TCP): a received count
    /// that stands still means a silent path, whatever the streams above
    /// it are doing.
    pub fn path_counts(&self) -> Option<PathCounts> {
        self.link.path_counts()
    }

    /// Closes the connection with `code` and a reason for the peer's logs.
    /// Reads and writes on the channel's [`Io`] fail from then on.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.link.close(code, reason);
        self.gone.cancel();
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.gone.is_cancelled() || self.link.is_closed()
    }

    /// Whether the sidecar may carry each call on a stream of its own: QUIC
    /// with `dialback/2` negotiated (see [`Connection::open_stream`]).
    pub fn has_streams(&self) -> bool {
        self.link.streams()
    }

    /// The sidecar's side: a new stream of the connection for one call, to
    /// run an HTTP/2 connection of its own over. Fails when the channel has
    /// no streams per call ([`Connection::has_streams`]) or is gone.
    pub async fn open_stream(&self) -> io::Result<CallStream> {
        self.link.open_stream().await
    }

    /// The app's side: the next stream the sidecar opened for a call;
    /// `None` once the connection is gone (at once without streams per call).
    pub async fn accept_stream(&self) -> Option<CallStream> {
        tokio::select! {
            s = self.link.accept_stream() => s,
            () = self.gone.cancelled() => None,
        }
    }

    /// Whether the app's own API calls ride on this connection as HTTP/3
    /// (QUIC, and both ends agreed in the hello and verdict; see [`crate::http3`]).
    pub fn api_over_http3(&self) -> bool {
        self.link.api_over_http3().is_some()
    }

    /// The QUIC connection to run HTTP/3 on, where [`Connection::api_over_http3`].
    pub(crate) fn http3_quic(&self) -> Option<quinn::Connection> {
        self.link.api_over_http3()
    }

    /// Resolves once the connection is gone, with the peer's close code when
    /// the peer said one (QUIC only).
    pub async fn closed(&self) -> Option<(CloseCode, String)> {
        tokio::select! {
            () = self.link.closed() => {}
            () = self.gone.cancelled() => {}
        }
        // The stream may fail a moment before the connection reports why;
        // the reason, once set, is what counts.
        self.link.peer_close()
    }
}

/// What a transport's byte stream is: a QUIC stream pair or a TLS stream.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The channel's authenticated duplex byte stream: a QUIC bidirectional
/// stream or a TLS-over-TCP stream, behind one type.
///
/// Reads and writes fail once the connection is closed through its
/// [`Connection`]; dropping the `Io` marks the connection gone.
pub struct Io {
    inner: Box<dyn ByteStream>,
    gone: CancellationToken,
    abort: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Io {
    /// The byte stream of a connection whose life `gone` tracks.
    pub(crate) fn new(inner: Box<dyn ByteStream>, gone: CancellationToken) -> Io {
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
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
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
        let r = Pin::new(&mut *this.inner).poll_write(cx, data);
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
        let r = Pin::new(&mut *this.inner).poll_write_vectored(cx, bufs);
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut *this.inner).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// One call's stream of a channel with streams per call: a QUIC
/// bidirectional stream other than the channel's first. Unlike [`Io`], its
/// end is only the call's end, never the channel's.
pub struct CallStream(Box<dyn ByteStream>);

impl CallStream {
    /// Wraps a transport's stream.
    pub(crate) fn new(inner: Box<dyn ByteStream>) -> CallStream {
        CallStream(inner)
    }
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallStream")
    }
}

impl AsyncRead for CallStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CallStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
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
