//! TCP relaying: accept on the front listener, connect to the target per connection, copy both ways.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::Control;
use crate::delay::DelayQueue;

/// Copy buffer per direction.
const BUF_SIZE: usize = 64 * 1024;
/// Chunks held per direction while delayed; reading pauses when full.
const QUEUE_CAPACITY: usize = 64;

/// What a delay queue holds: bytes, or the sender's end of stream.
enum Chunk {
    Data(Vec<u8>),
    Eof,
}

/// Whether a connection may forward right now.
enum Gate {
    Open,
    /// Its NAT mapping died in a rebind: never forward again.
    Dead,
}

/// The halves a finished copy direction hands back, so dead connections stay open until both ends are done.
type Halves = (OwnedReadHalf, OwnedWriteHalf);

/// The TCP half of a relay.
pub(crate) struct TcpRelay {
    upstream_ip: IpAddr,
    control: Arc<Control>,
}

impl TcpRelay {
    pub(crate) fn new(upstream_ip: IpAddr, control: Arc<Control>) -> Arc<Self> {
        Arc::new(Self { upstream_ip, control })
    }

    /// The accept loop: one task per connection until shutdown.
    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<()>) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!(error = %e, "netsim tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            Control::count(&self.control.tcp_connections, 1);
            let generation = self.control.generation();
            let relay = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    r = relay.handle(stream, generation) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, %peer, "netsim tcp connection ended");
                        }
                    }
                }
            });
        }
    }

    /// Relays one accepted connection until both directions are done or one fails.
    async fn handle(&self, client: TcpStream, generation: u64) -> io::Result<()> {
        client.set_nodelay(true)?;
        // A blackholed network swallows the SYN: connect upstream only once it lifts.
        if let Gate::Dead = self.gate(&mut self.control.subscribe(), generation).await {
            let (mut rd, _wr) = client.into_split();
            discard(&mut rd).await;
            return Ok(());
        }
        let upstream = self.connect_upstream().await?;
        upstream.set_nodelay(true)?;
        let (client_rd, client_wr) = client.into_split();
        let (upstream_rd, upstream_wr) = upstream.into_split();
        let _halves = tokio::try_join!(
            self.pump(client_rd, upstream_wr, generation),
            self.pump(upstream_rd, client_wr, generation)
        )?;
        Ok(())
    }

    async fn connect_upstream(&self) -> io::Result<TcpStream> {
        let target = self.control.target();
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.upstream_ip, 0))?;
        socket.connect(target).await
    }

    /// Waits until forwarding is allowed (no blackhole) or the connection is dead.
    async fn gate(&self, epoch: &mut watch::Receiver<u64>, generation: u64) -> Gate {
        loop {
            epoch.borrow_and_update();
            if self.control.is_dead(generation) {
                return Gate::Dead;
            }
            if !self.control.blackhole() {
                return Gate::Open;
            }
            if epoch.changed().await.is_err() {
                return Gate::Dead;
            }
        }
    }

    /// Copies one direction, honouring blackhole (pause), rebind (dead: swallow forever) and delay (in order).
    ///
    /// A clean end of stream is passed on as a write shutdown; an error ends the whole connection.
    async fn pump(&self, mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, generation: u64) -> io::Result<Halves> {
        let mut epoch = self.control.subscribe();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut queue: DelayQueue<Chunk> = DelayQueue::new(QUEUE_CAPACITY);
        let mut eof = false;
        loop {
            epoch.borrow_and_update();
            if self.control.is_dead(generation) {
                // Keep both sockets open and silent: the endpoints must find out on their own.
                discard(&mut rd).await;
                return Ok((rd, wr));
            }
            let open = !self.control.blackhole();
            tokio::select! {
                biased;
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return Ok((rd, wr));
                    }
                }
                () = queue.due(), if open => match queue.pop() {
                    Some(Chunk::Data(data)) => self.write(&mut wr, &data).await?,
                    Some(Chunk::Eof) => {
                        wr.shutdown().await?;
                        return Ok((rd, wr));
                    }
                    None => {}
                },
                r = rd.read(&mut buf), if open && !eof && !queue.is_full() => {
                    let n = r?;
                    let delay = self.control.delay();
                    let direct = delay.is_zero()
                        && queue.is_empty()
                        && !self.control.blackhole()
                        && !self.control.is_dead(generation);
                    if n == 0 {
                        if direct {
                            wr.shutdown().await?;
                            return Ok((rd, wr));
                        }
                        eof = true;
                        queue.push(Instant::now() + delay, Chunk::Eof);
                    } else if direct {
                        self.write(&mut wr, &buf[..n]).await?;
                    } else {
                        queue.push(Instant::now() + delay, Chunk::Data(buf[..n].to_vec()));
                    }
                }
            }
        }
    }

    async fn write(&self, wr: &mut OwnedWriteHalf, data: &[u8]) -> io::Result<()> {
        // Counted before writing so that whoever sees the bytes arrive also sees the counter.
        let n = data.len() as u64;
        Control::count(&self.control.tcp_bytes_forwarded, n);
        let written = wr.write_all(data).await;
        if written.is_err() {
            Control::uncount(&self.control.tcp_bytes_forwarded, n);
        }
        written
    }
}

/// Reads and throws away everything until end of stream or an error.
async fn discard(rd: &mut OwnedReadHalf) {
    let mut buf = vec![0u8; BUF_SIZE];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
