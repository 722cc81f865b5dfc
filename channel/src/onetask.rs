//! One task per HTTP/2 client connection: what hyper spawns for a
//! connection (its connection task, a request body's pipe, a response
//! future) runs inside the task that drives the connection, instead of
//! beside it on another worker thread.
//!
//! Why: hyper hands each of those to its executor, and on tokio's
//! multi-threaded runtime they run wherever a worker is free. A call's
//! frames then come from two threads at once: the connection task flushes
//! a request's HEADERS frame while its body's pipe, on the other worker,
//! is still queuing the DATA behind it. Over QUIC every such flush is a
//! packet, with its wake-ups on both ends (docs/benchmarks.md, "One task
//! per HTTP/2 client connection"). Polled from one task, the pipe queues
//! its frames before the connection task runs again, so they leave
//! together.
//!
//! Used for the sidecar's HTTP/2 clients, where only hyper's own futures
//! run (the connection, request-body pipes, response futures). The app's
//! HTTP/2 server keeps hyper's plain executor: there a call's task runs the
//! app's handler, and one slow handler must not hold up the connection or
//! the other calls on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the executor and its driver share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The driver's task, woken when something is spawned.
    driver: AtomicWaker,
}

/// Spawned futures on their way to the driver.
#[derive(Default)]
struct Queue {
    /// Spawned and not yet picked up by the driver.
    new: Vec<Task>,
    /// The driver is gone: spawn on the runtime instead.
    gone: bool,
}

impl Shared {
    /// The queue (a panic elsewhere cannot leave it half-changed).
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// hyper's executor for one connection (clone it into the connection's
/// builder, then drive the connection with [`OneTask::drive`]).
#[derive(Clone, Default)]
pub(crate) struct OneTask(Arc<Shared>);

impl<F> hyper::rt::Executor<F> for OneTask
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut queue = self.0.queue();
        if queue.gone {
            drop(queue);
            spawn(Box::pin(fut));
            return;
        }
        queue.new.push(Box::pin(fut));
        drop(queue);
        self.0.driver.wake();
    }
}

impl OneTask {
    /// A new executor, for one connection.
    pub(crate) fn new() -> OneTask {
        OneTask::default()
    }

    /// Drives `main` (the connection future hyper returned) and everything
    /// spawned on this executor, in the task that polls the result.
    /// Resolves with `main`'s output; what is still running then goes on
    /// as tasks of the runtime, as it would have with a plain executor.
    pub(crate) fn drive<M>(self, main: M) -> Driven<M>
    where
        M: Future + Unpin,
    {
        Driven { main, tasks: FuturesUnordered::new(), exec: self }
    }
}

/// A connection future driven together with its spawned futures (see
/// [`OneTask::drive`]).
pub(crate) struct Driven<M> {
    main: M,
    tasks: FuturesUnordered<Task>,
    exec: OneTask,
}

impl<M> Driven<M> {
    /// Moves what was spawned since the last look into `tasks`.
    fn pick_up(&mut self) -> bool {
        let new = std::mem::take(&mut self.exec.0.queue().new);
        let any = !new.is_empty();
        self.tasks.extend(new);
        any
    }

    /// Hands everything still running, and all later spawns, to the runtime
    /// (again: nothing more to hand).
    fn let_go(&mut self) {
        let new = {
            let mut queue = self.exec.0.queue();
            queue.gone = true;
            std::mem::take(&mut queue.new)
        };
        for task in std::mem::take(&mut self.tasks).into_iter().chain(new) {
            spawn(task);
        }
    }
}

/// Runs `task` on the current runtime; drops it where there is none (the
/// runtime shutting down), as the runtime itself would.
fn spawn(task: Task) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(task);
    }
}

impl<M: Future + Unpin> Future for Driven<M> {
    type Output = M::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        self.exec.0.driver.register(cx.waker());
        loop {
            self.pick_up();
            // The spawned futures first: a call's task queues its frames
            // before the connection writes them out.
            while let Poll::Ready(Some(())) = self.tasks.poll_next_unpin(cx) {}
            if let Poll::Ready(out) = Pin::new(&mut self.main).poll(cx) {
                self.let_go();
                return Poll::Ready(out);
            }
            // Polling the connection may have spawned more (a new call).
            if !self.pick_up() {
                return Poll::Pending;
            }
        }
    }
}

impl<M> Drop for Driven<M> {
    fn drop(&mut self) {
        self.let_go();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use hyper::rt::Executor;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    use super::*;

    type TestError = Box<dyn std::error::Error + Send + Sync>;

    /// A byte stream that records each write it takes.
    struct Recorded {
        inner: DuplexStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Recorded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorded {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, data);
            if let Poll::Ready(Ok(n)) = r
                && let Ok(mut w) = self.writes.lock()
            {
                w.push(data[..n].to_vec());
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A request body of one chunk, not known to be empty up front (as a
    /// gRPC message's), so hyper pipes it from a future of its own.
    struct OneChunk(Option<Bytes>);

    impl http_body::Body for OneChunk {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    /// For each request stream of an HTTP/2 client's byte stream (after
    /// the preface), the writes that carried its HEADERS and DATA frames.
    fn frames_by_write(writes: &[Vec<u8>]) -> HashMap<u32, Vec<usize>> {
        let bytes: Vec<u8> = writes.concat();
        let mut starts = Vec::new();
        let mut at = 0;
        for (i, w) in writes.iter().enumerate() {
            starts.push((at, i));
            at += w.len();
        }
        let write_of = |off: usize| starts.iter().rev().find(|(s, _)| *s <= off).map_or(0, |(_, i)| *i);
        let mut by_stream: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut off = 24; // the client preface
        while off + 9 <= bytes.len() {
            let len = usize::from(bytes[off]) << 16 | usize::from(bytes[off + 1]) << 8 | usize::from(bytes[off + 2]);
            let kind = bytes[off + 3];
            let id = u32::from_be_bytes([bytes[off + 5], bytes[off + 6], bytes[off + 7], bytes[off + 8]]) & 0x7fff_ffff;
            if (kind == 0 || kind == 1) && id != 0 {
                by_stream.entry(id).or_default().push(write_of(off));
            }
            off += 9 + len;
        }
        by_stream
    }

    /// Serves HTTP/2 with `svc` on the app's end `io`, as the app does
    /// (hyper's plain executor), with a stream window of `window`.
    fn app_end<S>(io: DuplexStream, window: u32, svc: S) -> tokio::task::JoinHandle<()>
    where
        S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::ResBody: Send + 'static,
        <S::ResBody as http_body::Body>::Data: Send,
        <S::ResBody as http_body::Body>::Error: Into<TestError>,
    {
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(window)
                .serve_connection(TokioIo::new(io), svc)
                .await;
        })
    }

    /// The sidecar's HTTP/2 client on `io` with a connection window of
    /// `window`, driven by a [`OneTask`] in a task of its own.
    async fn driven_client<T>(io: T, window: u32) -> Result<SendRequest, TestError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let exec = OneTask::new();
        let (send, conn) = crate::h2::client_builder(window, exec.clone()).handshake(TokioIo::new(io)).await?;
        tokio::spawn(exec.drive(conn));
        Ok(send)
    }

    type SendRequest = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

    /// HTTP/2's initial stream window (RFC 9113), hyper's server default.
    const H2_DEFAULT_WINDOW: u32 = 65_535;

    /// A call carrying `msg` as one chunk.
    fn call_of(msg: Bytes) -> Result<http::Request<tonic::body::Body>, http::Error> {
        http::Request::post("http://app/echo").body(tonic::body::Body::new(OneChunk(Some(msg))))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_s_headers_and_body_leave_in_one_write() -> Result<(), TestError> {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        // The app's end answers every request with an empty 200.
        app_end(
            theirs,
            H2_DEFAULT_WINDOW,
            hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }),
        );
        let writes = Arc::new(Mutex::new(Vec::new()));
        let io = crate::coalesce::Coalesced::new(Recorded { inner: ours, writes: writes.clone() });
        let mut send = driven_client(io, crate::h2::CONN_WINDOW).await?;
        for _ in 0..50 {
            let req = call_of(Bytes::from_static(b"a call's message"))?;
            send.ready().await?;
            let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                .await
                .map_err(|_| "no answer within 10 s")??;
            assert_eq!(resp.status(), 200);
        }
        let writes = writes.lock().map_err(|_| "poisoned")?.clone();
        let mut by_stream = frames_by_write(&writes);
        assert_eq!(by_stream.len(), 50, "every request's frames were seen");
        // Not the first: its HEADERS join the flush of the connection's
        // preface and SETTINGS, which has already waited its turn.
        by_stream.remove(&1);
        for (id, at) in by_stream {
            assert!(at.len() >= 2, "stream {id}: HEADERS and DATA");
            assert!(at.iter().all(|w| *w == at[0]), "stream {id}: its frames left in writes {at:?}, not one");
        }
        Ok(())
    }

    /// Many callers on one connection, the app answering each after a
    /// random short wait, and bodies that need several flow-control windows:
    /// every call is answered (no wake-up lost between the connection's
    /// task and what it drives).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_on_one_connection_all_get_answers() -> Result<(), TestError> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        app_end(
            theirs,
            16 * 1024,
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await?.to_bytes();
                let wait = u64::from(body.first().copied().unwrap_or(0) % 4);
                if wait > 0 {
                    tokio::time::sleep(Duration::from_micros(100 * wait)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(body)))
            }),
        );
        let send = driven_client(ours, 32 * 1024).await?;
        let callers = (0..64u8).map(|c| {
            let mut send = send.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    // Every tenth body spans a few windows.
                    let len = if i % 10 == 0 { 40 * 1024 } else { 100 };
                    let msg = Bytes::from(vec![c.wrapping_add(i as u8); len]);
                    let req = call_of(msg.clone()).map_err(|e| e.to_string())?;
                    let call = async {
                        send.ready().await?;
                        let resp = send.send_request(req).await?;
                        http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes())
                    };
                    let got = tokio::time::timeout(Duration::from_secs(30), call)
                        .await
                        .map_err(|_| format!("caller {c}, call {i}: no answer within 30 s"))?
                        .map_err(|e| format!("caller {c}, call {i}: {e}"))?;
                    if got != msg {
                        return Err(format!("caller {c}, call {i}: a wrong body"));
                    }
                }
                Ok::<_, String>(())
            })
        });
        for r in futures_util::future::join_all(callers).await {
            r??;
        }
        Ok(())
    }

    /// The app's end goes away with calls in flight (a channel that dies):
    /// every call ends, with an answer or an error, none hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_in_flight_when_the_connection_dies_all_end() -> Result<(), TestError> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let answered = Arc::new(AtomicUsize::new(0));
        // Told once calls hang at the app.
        let hanging = Arc::new(tokio::sync::Notify::new());
        let (a, h) = (answered.clone(), hanging.clone());
        let server = app_end(
            theirs,
            H2_DEFAULT_WINDOW,
            hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    // Some answers come at once, later ones never (the app is gone first).
                    let n = a.fetch_add(1, Ordering::SeqCst);
                    if n == 230 {
                        h.notify_one();
                    }
                    if n > 200 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
                }
            }),
        );
        let send = driven_client(ours, 32 * 1024).await?;
        let callers: Vec<_> = (0..64u8)
            .map(|c| {
                let mut send = send.clone();
                tokio::spawn(async move {
                    for i in 0..20u32 {
                        let msg = Bytes::from(vec![c; 100]);
                        let req = call_of(msg).map_err(|e| e.to_string())?;
                        let call = async {
                            send.ready().await?;
                            send.send_request(req).await
                        };
                        match tokio::time::timeout(Duration::from_secs(30), call).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => return Ok(()),
                            Err(_) => {
                                return Err(format!("caller {c}, call {i}: neither answer nor error within 30 s"));
                            }
                        }
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        // Once calls hang at the app, it dies.
        tokio::time::timeout(Duration::from_secs(30), hanging.notified())
            .await
            .map_err(|_| format!("only {} calls reached the app", answered.load(Ordering::SeqCst)))?;
        server.abort();
        for r in futures_util::future::join_all(callers).await {
            r??;
        }
        Ok(())
    }

    #[tokio::test]
    async fn spawned_futures_run_in_the_driving_task() -> Result<(), String> {
        let exec = OneTask::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (r, e) = (ran.clone(), exec.clone());
        // The main future spawns one task; it ends once that task has run.
        let main = Box::pin(async move {
            let r2 = r.clone();
            e.execute(async move {
                r2.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            });
            let _ = rx.await;
            r.load(Ordering::SeqCst)
        });
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), exec.drive(main))
            .await
            .map_err(|_| "the driven future never finished".to_string())?;
        assert_eq!(seen, 1);
        Ok(())
    }

    #[tokio::test]
    async fn what_is_left_at_the_end_goes_on_as_tasks() -> Result<(), String> {
        let exec = OneTask::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let e = exec.clone();
        // Spawns a task that waits for `go`, then ends at once.
        let main = Box::pin(async move {
            e.execute(async move {
                let _ = wait.await;
                let _ = tx.send(());
            });
            tokio::task::yield_now().await;
        });
        exec.clone().drive(main).await;
        let _ = go.send(());
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .map_err(|_| "the task left running was dropped".to_string())?
            .map_err(|_| "the task left running was dropped".to_string())?;
        // And later spawns run on the runtime.
        let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
        exec.execute(async move {
            let _ = tx2.send(());
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), rx2)
            .await
            .map_err(|_| "a spawn after the end never ran".to_string())?
            .map_err(|_| "a spawn after the end never ran".to_string())?;
        Ok(())
    }
}
