//! Test fixtures: UDP and TCP echo servers on one port behind a relay, and bounded waits.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use dialback_netsim::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// Upper bound for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long we listen to conclude that nothing arrives.
pub const SILENCE: Duration = Duration::from_millis(200);

/// Echo servers (UDP and TCP on one port) plus the source address of every datagram the UDP one saw.
pub struct Echo {
    pub addr: SocketAddr,
    pub udp_sources: mpsc::UnboundedReceiver<SocketAddr>,
}

/// Starts UDP and TCP echo servers on the same loopback port.
pub async fn echo() -> Echo {
    for _ in 0..16 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = TcpListener::bind(addr).await else { continue };
        let (tx, udp_sources) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                let _ = tx.send(from);
                udp.send_to(&buf[..n], from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        return Echo { addr, udp_sources };
    }
    panic!("no port free for both UDP and TCP");
}

/// Echo servers and a relay in front of them.
pub async fn relay() -> (Relay, Echo) {
    let echo = echo().await;
    let relay = Relay::start(RelayConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr)).await.unwrap();
    (relay, echo)
}

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// A UDP client socket connected to the relay.
pub async fn udp_client(relay: &Relay) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(relay.addr()).await.unwrap();
    socket
}

/// Sends `msg` and expects exactly it back.
pub async fn udp_roundtrip(client: &UdpSocket, msg: &[u8]) {
    client.send(msg).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = within("udp echo reply", client.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], msg, "udp echo returned different bytes");
}

/// Asserts that nothing arrives on `client` for [`SILENCE`].
pub async fn udp_silent(client: &UdpSocket, what: &str) {
    let mut buf = [0u8; 2048];
    if let Ok(r) = tokio::time::timeout(SILENCE, client.recv(&mut buf)).await {
        panic!("{what}: expected silence, got {r:?}");
    }
}

/// Polls `cond` until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
