//! Strangers on loopback, all from [`ATTACKER_IP`] (not the app's or the
//! callers' 127.0.0.1, so per-source limits spare them), bounded so they
//! hold about two hundred connections and send a few dozen datagrams a
//! second: idle connections on both APIs, a slowloris on the HTTP API,
//! silent and garbage TCP on the callback port, garbage UDP and half-open
//! QUIC handshakes on it, and attempts to get past the API token.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The attackers' source address.
pub const ATTACKER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

/// A held connection is re-opened this long after it closed (or failed to open).
const REOPEN: Duration = Duration::from_secs(1);

/// Where the attackers aim: the sidecar's ports, which stay the same across its restarts.
#[derive(Clone, Debug)]
pub struct Targets {
    /// HTTP API.
    pub http: SocketAddr,
    /// gRPC API.
    pub grpc: SocketAddr,
    /// Callback channel listener (UDP and TCP), not the relay.
    pub callback: SocketAddr,
    /// Bumped by the fault injector before each sidecar SIGKILL, so that a
    /// connection cut by a kill is not taken for one the sidecar closed.
    pub generation: Arc<AtomicU64>,
}

/// Counters of one kind of held TCP connection.
#[derive(Debug, Default)]
pub struct ConnStats {
    opened: AtomicU64,
    refused: AtomicU64,
    closed_by_peer: AtomicU64,
    cut_by_kill: AtomicU64,
    open_now: AtomicU64,
    closed_life_ms: AtomicU64,
}

impl ConnStats {
    /// Mean life in seconds of the connections the sidecar closed.
    fn mean_life(&self) -> f64 {
        let closed = self.closed_by_peer.load(Relaxed);
        if closed > 0 { self.closed_life_ms.load(Relaxed) as f64 / closed as f64 / 1e3 } else { 0.0 }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "opened": self.opened.load(Relaxed),
            "connect_failed": self.refused.load(Relaxed),
            "closed_by_sidecar": self.closed_by_peer.load(Relaxed),
            "cut_by_sidecar_kill": self.cut_by_kill.load(Relaxed),
            "open_now": self.open_now.load(Relaxed),
            "mean_life_of_closed_s": self.mean_life(),
        })
    }
}

/// Everything the attackers did and saw.
#[derive(Debug, Default)]
pub struct AttackStats {
    idle_http: ConnStats,
    idle_grpc: ConnStats,
    slowloris: ConnStats,
    callback_silent: ConnStats,
    callback_garbage: ConnStats,
    udp_garbage: AtomicU64,
    quic_initials: AtomicU64,
    quic_reply_bytes: AtomicU64,
    bypass_attempts: AtomicU64,
    bypass_refused_401: AtomicU64,
    bypass_unreachable: AtomicU64,
    /// Bypass attempts answered with anything but 401: "request -> status" and how often.
    bypass_failures: Mutex<BTreeMap<String, u64>>,
}

impl AttackStats {
    /// Connections and handshakes opened so far, of every kind.
    pub fn opened(&self) -> u64 {
        [&self.idle_http, &self.idle_grpc, &self.slowloris, &self.callback_silent, &self.callback_garbage]
            .iter()
            .map(|c| c.opened.load(Relaxed))
            .sum::<u64>()
            + self.quic_initials.load(Relaxed)
            + self.bypass_attempts.load(Relaxed)
    }

    /// Bypass attempts that got something other than 401: security failures.
    pub fn security_failures(&self) -> u64 {
        self.bypass_failures.lock().expect("lock").values().sum()
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "idle_http": self.idle_http.to_json(),
            "idle_grpc": self.idle_grpc.to_json(),
            "slowloris_http": self.slowloris.to_json(),
            "callback_tcp_silent": self.callback_silent.to_json(),
            "callback_tcp_garbage": self.callback_garbage.to_json(),
            "udp_garbage_datagrams": self.udp_garbage.load(Relaxed),
            "quic_half_open_initials": self.quic_initials.load(Relaxed),
            "quic_reply_bytes_to_silent_client": self.quic_reply_bytes.load(Relaxed),
            "bypass_attempts": self.bypass_attempts.load(Relaxed),
            "bypass_401": self.bypass_refused_401.load(Relaxed),
            "bypass_unreachable": self.bypass_unreachable.load(Relaxed),
            "bypass_not_401": *self.bypass_failures.lock().expect("lock"),
        })
    }

    /// One line per held-connection kind, for the report.
    pub fn held_lines(&self) -> Vec<String> {
        let kinds = [
            ("idle HTTP API", &self.idle_http),
            ("idle gRPC API", &self.idle_grpc),
            ("slowloris HTTP API", &self.slowloris),
            ("callback TCP, no ClientHello", &self.callback_silent),
            ("callback TCP, garbage", &self.callback_garbage),
        ];
        kinds
            .iter()
            .map(|(name, c)| {
                format!(
                    "  {name:<29} opened {:>6} | closed by the sidecar {:>6} (mean life {:>5.1} s) \
                     | cut by kills {:>4} | open at the end {:>3} | connect failed {:>4}",
                    c.opened.load(Relaxed),
                    c.closed_by_peer.load(Relaxed),
                    c.mean_life(),
                    c.cut_by_kill.load(Relaxed),
                    c.open_now.load(Relaxed),
                    c.refused.load(Relaxed),
                )
            })
            .chain([
                format!(
                    "  garbage UDP datagrams {}; half-open QUIC handshakes {} \
                     (the sidecar sent {} KiB back to the silent client)",
                    self.udp_garbage.load(Relaxed),
                    self.quic_initials.load(Relaxed),
                    self.quic_reply_bytes.load(Relaxed) / 1024,
                ),
                format!(
                    "  API token bypass attempts {}: 401 {}, unreachable {}, anything else {:?}",
                    self.bypass_attempts.load(Relaxed),
                    self.bypass_refused_401.load(Relaxed),
                    self.bypass_unreachable.load(Relaxed),
                    *self.bypass_failures.lock().expect("lock"),
                ),
            ])
            .collect()
    }
}

/// Starts every attacker; abort the handles to stop them.
pub fn start(t: &Targets, stats: &Arc<AttackStats>, seed: u64) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut held = |n: usize, addr: SocketAddr, how: Hold, pick: fn(&AttackStats) -> &ConnStats| {
        for i in 0..n {
            let (stats, generation) = (stats.clone(), t.generation.clone());
            let rng = StdRng::seed_from_u64(seed ^ (i as u64) << 8 ^ how as u64);
            tasks.push(tokio::spawn(async move { hold(addr, how, &stats, pick, &generation, rng).await }));
        }
    };
    held(64, t.http, Hold::Silent, |s| &s.idle_http);
    held(64, t.grpc, Hold::Silent, |s| &s.idle_grpc);
    held(32, t.http, Hold::Slowloris, |s| &s.slowloris);
    held(32, t.callback, Hold::Silent, |s| &s.callback_silent);
    held(8, t.callback, Hold::Garbage, |s| &s.callback_garbage);
    let (s, to) = (stats.clone(), t.callback);
    tasks.push(tokio::spawn(async move { udp_garbage(to, &s, StdRng::seed_from_u64(seed ^ 0x5eed)).await }));
    let s = stats.clone();
    tasks.push(tokio::spawn(async move { quic_half_open(to, &s).await }));
    let (s, to) = (stats.clone(), t.http);
    tasks.push(tokio::spawn(async move { bypass(to, &s).await }));
    tasks
}

/// What a held connection does.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// Sends nothing.
    Silent,
    /// An HTTP request whose headers never end: one byte a second.
    Slowloris,
    /// 256 random bytes every 200 ms.
    Garbage,
}

/// A TCP connection from [`ATTACKER_IP`], bounded to 5 s.
async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ATTACKER_IP, 0))?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(addr)).await.map_err(|_| io::ErrorKind::TimedOut)?
}

/// Keeps one connection of kind `how` open to `addr`, re-opening it when the sidecar closes it.
async fn hold(
    addr: SocketAddr,
    how: Hold,
    stats: &AttackStats,
    pick: fn(&AttackStats) -> &ConnStats,
    generation: &AtomicU64,
    mut rng: StdRng,
) {
    let c = pick(stats);
    loop {
        let born = generation.load(Relaxed);
        let Ok(mut s) = connect(addr).await else {
            c.refused.fetch_add(1, Relaxed);
            tokio::time::sleep(REOPEN).await;
            continue;
        };
        c.opened.fetch_add(1, Relaxed);
        c.open_now.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let (mut rd, mut wr) = s.split();
        let mut buf = [0u8; 4096];
        let mut tick = tokio::time::interval(match how {
            Hold::Garbage => Duration::from_millis(200),
            _ => Duration::from_secs(1),
        });
        if let Hold::Slowloris = how {
            let _ = wr.write_all(b"POST /v1.0/invoke/echo/method/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await;
        }
        // Until the sidecar closes it (EOF, reset, or a failed write).
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tick.tick() => {
                    let wrote = match how {
                        Hold::Silent => Ok(()),
                        Hold::Slowloris => wr.write_all(b"a").await,
                        Hold::Garbage => {
                            let mut junk = [0u8; 256];
                            rng.fill_bytes(&mut junk);
                            wr.write_all(&junk).await
                        }
                    };
                    if wrote.is_err() {
                        break;
                    }
                }
            }
        }
        c.open_now.fetch_sub(1, Relaxed);
        if generation.load(Relaxed) == born {
            c.closed_by_peer.fetch_add(1, Relaxed);
            c.closed_life_ms.fetch_add(t0.elapsed().as_millis() as u64, Relaxed);
        } else {
            c.cut_by_kill.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(REOPEN).await;
    }
}

/// 20 random datagrams a second, 1-1200 bytes, at the callback port.
async fn udp_garbage(addr: SocketAddr, stats: &AttackStats, mut rng: StdRng) {
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(ATTACKER_IP, 0)).await else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut junk = vec![0u8; 1200];
    loop {
        tick.tick().await;
        let n = rng.random_range(1..=junk.len());
        rng.fill_bytes(&mut junk[..n]);
        if sock.send_to(&junk[..n], addr).await.is_ok() {
            stats.udp_garbage.fetch_add(1, Relaxed);
        }
    }
}

/// Five QUIC handshakes a second that never go past the client's first
/// flight: a real quinn client's Initial (with its ClientHello) is caught on
/// a local socket and sent to the callback port from a socket that reads
/// the sidecar's answers and never replies, so the sidecar holds a
/// half-open handshake until its own timeout.
async fn quic_half_open(addr: SocketAddr, stats: &AttackStats) {
    let pin = dialback_certs::Fingerprint::from_slice(&[0u8; 32]).expect("32 bytes");
    let tls = dialback_certs::client_config(&dialback_certs::ServerTrust::Pinned(pin), None).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic tls");
    let Ok(mut client) = quinn::Endpoint::client(SocketAddr::new(ATTACKER_IP, 0)) else { return };
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let Ok(silent) = UdpSocket::bind(SocketAddr::new(ATTACKER_IP, 0)).await else { return };
    let silent = Arc::new(silent);
    let reader = silent.clone();
    let sink = async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = reader.recv_from(&mut buf).await {
            stats.quic_reply_bytes.fetch_add(n as u64, Relaxed);
        }
    };
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut buf = vec![0u8; 65536];
        loop {
            tick.tick().await;
            let Ok(catch) = UdpSocket::bind(SocketAddr::new(ATTACKER_IP, 0)).await else { continue };
            let Ok(to) = catch.local_addr() else { continue };
            let Ok(connecting) = client.connect(to, "localhost") else { continue };
            let caught = tokio::time::timeout(Duration::from_secs(1), catch.recv_from(&mut buf)).await;
            drop(connecting);
            if let Ok(Ok((n, _))) = caught
                && silent.send_to(&buf[..n], addr).await.is_ok()
            {
                stats.quic_initials.fetch_add(1, Relaxed);
            }
        }
    };
    tokio::join!(sink, send);
}

/// The requests that try to get past the API token; each must get 401.
const BYPASSES: [(&str, &str); 2] = [
    (
        "POST /v1.0/healthzX (dapr-app-id: echo)",
        "POST /v1.0/healthzX HTTP/1.1\r\nHost: 127.0.0.1\r\ndapr-app-id: echo\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    ),
    (
        "PUT /v1.0/healthz/../../admin",
        "PUT /v1.0/healthz/../../admin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ),
];

/// One bypass attempt a second, alternating; anything but 401 is a security failure.
async fn bypass(addr: SocketAddr, stats: &AttackStats) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for (name, request) in BYPASSES.iter().cycle() {
        tick.tick().await;
        stats.bypass_attempts.fetch_add(1, Relaxed);
        match tokio::time::timeout(Duration::from_secs(10), status_of(addr, request)).await {
            Ok(Ok(401)) => {
                stats.bypass_refused_401.fetch_add(1, Relaxed);
            }
            Ok(Ok(status)) => {
                *stats.bypass_failures.lock().expect("lock").entry(format!("{name} -> {status}")).or_default() += 1;
            }
            // The sidecar is down (restart) or too slow: not an answer either way.
            _ => {
                stats.bypass_unreachable.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Sends a raw HTTP/1.1 request and reads the status code of the answer.
async fn status_of(addr: SocketAddr, request: &str) -> io::Result<u16> {
    let mut s = connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line in {line:?}")))
}
