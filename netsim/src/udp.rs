//! UDP relaying: one front socket, one session (own upstream socket, own task) per client address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::control::Control;
use crate::delay::DelayQueue;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;
/// A session with no traffic either way for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams held per direction per session while delayed; more are dropped.
const QUEUE_CAPACITY: usize = 4096;

/// A datagram waiting in a delay queue.
type Delayed = (Instant, Vec<u8>);

/// The UDP half of a relay: the front socket and the session table.
pub(crate) struct UdpRelay {
    front: UdpSocket,
    upstream_ip: IpAddr,
    control: Arc<Control>,
    sessions: Mutex<HashMap<SocketAddr, Arc<Session>>>,
    /// Origin for the sessions' millisecond activity stamps.
    base: Instant,
}

/// One client address's mapping: its upstream socket and the client-to-target delay queue feed.
struct Session {
    client: SocketAddr,
    /// `Control::forgets()` when the session was made: older sessions are dead.
    born_forgets: u64,
    upstream: Mutex<Upstream>,
    /// Client-to-target datagrams that must wait (delay on, or earlier ones still waiting).
    up_tx: mpsc::Sender<Delayed>,
    /// Datagrams handed to `up_tx` and not yet delivered; the front loop sends directly only at zero.
    up_pending: AtomicUsize,
    /// Milliseconds since `UdpRelay::base` of the last datagram either way.
    last_active_ms: AtomicU64,
}

/// The upstream socket of a session and the NAT generation it belongs to.
struct Upstream {
    generation: u64,
    socket: Arc<UdpSocket>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh upstream socket on (`ip`, new port), connected to `target`. Needs a Tokio runtime context.
fn bind_upstream(ip: IpAddr, target: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl Session {
    /// The upstream socket of the current NAT generation, replacing the old one (new port) after a rebind.
    fn socket(&self, relay: &UdpRelay) -> io::Result<Arc<UdpSocket>> {
        let mut up = lock(&self.upstream);
        let generation = relay.control.generation();
        if up.generation != generation {
            up.socket = Arc::new(bind_upstream(relay.upstream_ip, relay.control.target())?);
            up.generation = generation;
        }
        Ok(Arc::clone(&up.socket))
    }

    /// True if `socket` is still this session's mapping (no rebind since).
    fn is_current(&self, socket: &Arc<UdpSocket>, control: &Control) -> bool {
        let up = lock(&self.upstream);
        up.generation == control.generation() && Arc::ptr_eq(&up.socket, socket)
    }

    fn touch(&self, relay: &UdpRelay) {
        self.last_active_ms.store(relay.now_ms(), Ordering::Relaxed);
    }

    fn idle_deadline(&self, relay: &UdpRelay) -> Instant {
        relay.base + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed)) + IDLE_TIMEOUT
    }
}

impl UdpRelay {
    pub(crate) fn new(front: UdpSocket, upstream_ip: IpAddr, control: Arc<Control>) -> Arc<Self> {
        Arc::new(Self { front, upstream_ip, control, sessions: Mutex::new(HashMap::new()), base: Instant::now() })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn dropped(&self) {
        Control::count(&self.control.udp_dropped, 1);
    }

    /// Moves a datagram counted as forwarded to dropped after its send failed.
    fn unforwarded(&self) {
        Control::uncount(&self.control.udp_forwarded, 1);
        self.dropped();
    }

    /// The front loop: reads client datagrams until shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<()>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                r = self.front.recv_from(&mut buf) => r,
            };
            match received {
                Ok((n, from)) => self.client_to_target(&buf[..n], from, &shutdown).await,
                Err(e) => tracing::debug!(error = %e, "netsim udp front recv failed"),
            }
        }
    }

    async fn client_to_target(self: &Arc<Self>, data: &[u8], from: SocketAddr, shutdown: &watch::Receiver<()>) {
        if self.control.udp_blocked() || self.control.lose_packet() {
            return self.dropped();
        }
        let Some(session) = self.session(from, shutdown) else {
            return self.dropped();
        };
        if session.born_forgets < self.control.forgets() {
            return self.dropped();
        }
        session.touch(self);
        let delay = self.control.delay();
        if delay.is_zero() && session.up_pending.load(Ordering::SeqCst) == 0 {
            return self.send_up(&session, data).await;
        }
        session.up_pending.fetch_add(1, Ordering::SeqCst);
        if session.up_tx.try_send((Instant::now() + delay, data.to_vec())).is_err() {
            session.up_pending.fetch_sub(1, Ordering::SeqCst);
            self.dropped();
        }
    }

    /// Sends one datagram to the target through the session's current upstream socket.
    async fn send_up(&self, session: &Session, data: &[u8]) {
        // Counted before sending so that whoever sees the datagram arrive also sees the counter.
        Control::count(&self.control.udp_forwarded, 1);
        let sent = match session.socket(self) {
            Ok(socket) => socket.send(data).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(_) => Control::count(&self.control.udp_up, 1),
            Err(e) => {
                tracing::debug!(error = %e, client = %session.client, "netsim udp upstream send failed");
                self.unforwarded();
            }
        }
    }

    /// Sends one datagram back to the client from the front socket.
    async fn send_down(&self, client: SocketAddr, data: &[u8]) {
        let forgotten = lock(&self.sessions).get(&client).is_some_and(|s| s.born_forgets < self.control.forgets());
        if self.control.udp_blocked() || forgotten {
            return self.dropped();
        }
        Control::count(&self.control.udp_forwarded, 1);
        if let Err(e) = self.front.send_to(data, client).await {
            tracing::debug!(error = %e, %client, "netsim udp front send failed");
            self.unforwarded();
        }
    }

    /// The session for `client`, created (with its task) on first sight; `None` if no upstream socket binds.
    fn session(self: &Arc<Self>, client: SocketAddr, shutdown: &watch::Receiver<()>) -> Option<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get(&client) {
            return Some(Arc::clone(session));
        }
        let socket = match bind_upstream(self.upstream_ip, self.control.target()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, %client, "netsim udp upstream bind failed");
                return None;
            }
        };
        let (up_tx, up_rx) = mpsc::channel(QUEUE_CAPACITY);
        let session = Arc::new(Session {
            client,
            born_forgets: self.control.forgets(),
            upstream: Mutex::new(Upstream { generation: self.control.generation(), socket: Arc::new(socket) }),
            up_tx,
            up_pending: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
        });
        sessions.insert(client, Arc::clone(&session));
        drop(sessions);
        Control::count(&self.control.udp_sessions, 1);
        tokio::spawn(Arc::clone(self).run_session(Arc::clone(&session), up_rx, shutdown.clone()));
        Some(session)
    }

    /// A session's task: target replies to the client, delayed client datagrams to the target, rebinds, expiry.
    async fn run_session(
        self: Arc<Self>,
        session: Arc<Session>,
        mut up_rx: mpsc::Receiver<Delayed>,
        mut shutdown: watch::Receiver<()>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut epoch = self.control.subscribe();
        let mut up_queue: DelayQueue<Vec<u8>> = DelayQueue::new(QUEUE_CAPACITY);
        let mut down_queue: DelayQueue<Vec<u8>> = DelayQueue::new(QUEUE_CAPACITY);
        loop {
            epoch.borrow_and_update();
            let socket = match session.socket(&self) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, client = %session.client, "netsim udp rebind failed; session ends");
                    break;
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = epoch.changed() => {}
                () = up_queue.due() => {
                    if let Some(data) = up_queue.pop() {
                        if self.control.udp_blocked() {
                            self.dropped();
                        } else {
                            self.send_up(&session, &data).await;
                        }
                        session.up_pending.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                () = down_queue.due() => {
                    if let Some(data) = down_queue.pop() {
                        self.send_down(session.client, &data).await;
                    }
                }
                item = up_rx.recv(), if !up_queue.is_full() => match item {
                    Some((at, data)) => up_queue.push(at, data),
                    None => break,
                },
                r = socket.recv(&mut buf) => match r {
                    Ok(n) => self.target_to_client(&session, &socket, &buf[..n], &mut down_queue).await,
                    // E.g. ECONNREFUSED from an ICMP error while the target is down: keep the session.
                    Err(e) => tracing::debug!(error = %e, client = %session.client, "netsim udp upstream recv failed"),
                },
                () = tokio::time::sleep_until(session.idle_deadline(&self)) => {
                    let idle = Instant::now() >= session.idle_deadline(&self);
                    if idle && up_queue.is_empty() && down_queue.is_empty()
                        && session.up_pending.load(Ordering::SeqCst) == 0
                    {
                        break;
                    }
                }
            }
        }
        let mut sessions = lock(&self.sessions);
        if sessions.get(&session.client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            sessions.remove(&session.client);
        }
    }

    async fn target_to_client(
        &self,
        session: &Session,
        socket: &Arc<UdpSocket>,
        data: &[u8],
        down_queue: &mut DelayQueue<Vec<u8>>,
    ) {
        if !session.is_current(socket, &self.control) || self.control.udp_blocked() || self.control.lose_packet() {
            return self.dropped();
        }
        session.touch(self);
        let delay = self.control.delay();
        if delay.is_zero() && down_queue.is_empty() {
            self.send_down(session.client, data).await;
        } else if down_queue.is_full() {
            self.dropped();
        } else {
            down_queue.push(Instant::now() + delay, data.to_vec());
        }
    }
}
