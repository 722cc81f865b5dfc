//! Fewer, fuller QUIC packets: HTTP/2's small writes are held until it
//! flushes, and a flush of less than a packet waits one turn of the
//! scheduler for the rest of its message.
//!
//! Why: HTTP/2 flushes as soon as it has a frame, and one call's frames
//! come from different tasks a moment apart (the connection task writes a
//! request's or response's HEADERS, the call's own task then queues its
//! DATA and trailers). Over TCP with Nagle off each flush is a segment the
//! kernel sends cheaply. Over QUIC every write into quinn wakes its
//! connection driver, which builds, encrypts and sends a packet at once,
//! and the peer pays a receive, a decryption and a chain of task wake-ups
//! for each: measured on loopback, a small call took 4.5 datagrams both
//! ways, where one each way carries it (docs/benchmarks.md, "The cost on a
//! clean path"). Holding a small flush for one yield lets the frames
//! queued meanwhile join it; it never waits on a timer, so a lone frame
//! (a PING, a WINDOW_UPDATE, the last frame of a stream) goes out as soon
//! as the task runs again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before they are handed on without waiting for a flush;
/// a write at least this large is handed on as it is (after what is held).
const HOLD_LIMIT: usize = 16 * 1024;

/// A flush of less than this (QUIC's smallest packet payload) waits one
/// turn for more; a larger one fills a packet already and goes at once.
const ONE_PACKET: usize = 1200;

/// Buffer capacity kept between flushes.
const KEEP: usize = 2 * 1024;

/// A byte stream whose small writes are gathered until flushed (see the module docs).
pub(crate) struct Coalesced<T> {
    inner: T,
    held: Vec<u8>,
    /// How much of `held` the inner stream took.
    sent: usize,
    /// The turn a small flush waits for, while it waits.
    turn: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The current flush already waited its turn.
    waited: bool,
}

impl<T> Coalesced<T> {
    /// Gathers the writes to `inner`.
    pub(crate) fn new(inner: T) -> Self {
        Coalesced { inner, held: Vec::new(), sent: 0, turn: None, waited: false }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Hands everything held to the inner stream.
    fn hand_on(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        // A burst may have grown the buffer to HOLD_LIMIT; a sidecar holds
        // one per channel, mostly idle, so it keeps little more than a packet's worth.
        if self.held.capacity() > KEEP {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() + data.len() > HOLD_LIMIT {
            ready!(self.hand_on(cx))?;
            if data.len() >= HOLD_LIMIT {
                return Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        self.held.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let waiting = self.held.len() - self.sent;
        if waiting > 0 && waiting < ONE_PACKET && !self.waited {
            let turn = self.turn.get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(turn.as_mut().poll(cx));
            self.turn = None;
            self.waited = true;
        }
        ready!(self.hand_on(cx))?;
        self.waited = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.hand_on(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records each write it is handed.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Writes {
        fn seen(&self) -> Vec<Vec<u8>> {
            self.0.lock().map(|w| w.clone()).unwrap_or_default()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if let Ok(mut w) = self.0.lock() {
                w.push(data.to_vec());
            }
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_go_on_together_at_the_flush() -> io::Result<()> {
        let w = Writes::default();
        let mut c = Coalesced::new(w.clone());
        c.write_all(b"headers").await?;
        c.write_all(b"data").await?;
        assert!(w.seen().is_empty(), "nothing is handed on before the flush");
        c.flush().await?;
        assert_eq!(w.seen(), vec![b"headersdata".to_vec()]);
        c.write_all(b"trailers").await?;
        c.shutdown().await?;
        assert_eq!(w.seen(), vec![b"headersdata".to_vec(), b"trailers".to_vec()], "shutdown hands on what is held");
        Ok(())
    }

    #[tokio::test]
    async fn a_small_flush_waits_one_turn_for_what_another_task_writes() -> io::Result<()> {
        // The connection task flushes a lone HEADERS frame; the call's task,
        // already runnable, queues its DATA meanwhile: they go on as one.
        let w = Writes::default();
        let c = Arc::new(tokio::sync::Mutex::new(Coalesced::new(w.clone())));
        c.lock().await.write_all(b"headers").await?;
        let other = {
            let c = c.clone();
            tokio::spawn(async move { c.lock().await.write_all(b"data").await })
        };
        std::future::poll_fn(|cx| match c.try_lock() {
            Ok(mut c) => Pin::new(&mut *c).poll_flush(cx),
            Err(_) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await?;
        other.await.map_err(io::Error::other)??;
        assert_eq!(w.seen(), vec![b"headersdata".to_vec()]);
        Ok(())
    }

    #[tokio::test]
    async fn a_packet_s_worth_or_a_large_write_does_not_wait() -> io::Result<()> {
        let w = Writes::default();
        let mut c = Coalesced::new(w.clone());
        c.write_all(&[1; ONE_PACKET]).await?;
        // A flush that fills a packet completes on its first poll.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut c).poll_flush(cx))).await;
        assert!(matches!(first, Poll::Ready(Ok(()))), "a full packet goes at once");
        c.write_all(b"small").await?;
        c.write_all(&[2; HOLD_LIMIT]).await?;
        let seen = w.seen();
        assert_eq!(seen.len(), 3, "what was held, then the large write as it is");
        assert_eq!(seen[1], b"small".to_vec());
        assert_eq!(seen[2].len(), HOLD_LIMIT);
        Ok(())
    }
}
