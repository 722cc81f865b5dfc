//! TCP relaying through a [`dialback_netsim::Relay`] to an echo server, with each fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{SILENCE, relay, within};
use dialback_netsim::{Relay, RelayConfig, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(relay: &Relay) -> TcpStream {
    within("tcp connect", TcpStream::connect(relay.addr())).await.unwrap()
}

async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    within("tcp echo", stream.read_exact(&mut buf)).await.unwrap();
    assert_eq!(buf, msg);
}

async fn silent(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(SILENCE, stream.read(&mut buf)).await {
        panic!("{what}: expected silence, got {r:?}");
    }
}

#[tokio::test]
async fn bytes_round_trip() {
    let (relay, _echo) = relay().await;
    let mut stream = connect(&relay).await;
    roundtrip(&mut stream, b"hello").await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(&big).await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; big.len()];
        rd.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = within("1 MB echo", async { tokio::join!(write, read) }).await;
    assert!(back == big, "1 MB came back different");
    let stats = relay.stats();
    assert_eq!(stats.tcp_connections, 1);
    assert_eq!(stats.tcp_bytes_forwarded, 2 * (5 + 1_000_000));
}

#[tokio::test]
async fn blackhole_pauses_and_resumes_without_loss() {
    let (relay, _echo) = relay().await;
    let mut stream = connect(&relay).await;
    roundtrip(&mut stream, b"warm-up").await;

    relay.set_blackhole(true);
    stream.write_all(b"held").await.unwrap();
    silent(&mut stream, "blackhole on").await;
    stream.write_all(b" back").await.unwrap();

    relay.set_blackhole(false);
    let mut buf = [0u8; 9];
    within("echo after blackhole off", stream.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"held back");
}

#[tokio::test]
async fn connections_accepted_during_blackhole_forward_after_it() {
    let (relay, _echo) = relay().await;
    relay.set_blackhole(true);
    let mut stream = connect(&relay).await;
    stream.write_all(b"early").await.unwrap();
    silent(&mut stream, "new connection while blackholed").await;
    relay.set_blackhole(false);
    let mut buf = [0u8; 5];
    within("echo after blackhole off", stream.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"early");
}

#[tokio::test]
async fn rebind_kills_existing_connections_but_new_ones_work() {
    let (relay, _echo) = relay().await;
    let mut old = connect(&relay).await;
    roundtrip(&mut old, b"before").await;

    relay.rebind();
    old.write_all(b"into the void").await.unwrap();
    silent(&mut old, "connection after rebind").await;

    let mut new = connect(&relay).await;
    roundtrip(&mut new, b"fresh").await;
    silent(&mut old, "old connection stays dead").await;
    assert_eq!(relay.stats().tcp_connections, 2);
    assert_eq!(relay.stats().rebinds, 1);
}

#[tokio::test]
async fn delay_keeps_order() {
    let (relay, _echo) = relay().await;
    let mut stream = connect(&relay).await;
    relay.set_delay(Duration::from_millis(20));
    for i in 0..20u32 {
        stream.write_all(&i.to_be_bytes()).await.unwrap();
    }
    let mut buf = [0u8; 80];
    within("delayed echo", stream.read_exact(&mut buf)).await.unwrap();
    for (i, chunk) in buf.chunks(4).enumerate() {
        assert_eq!(u32::from_be_bytes(chunk.try_into().unwrap()), i as u32);
    }
}

#[tokio::test]
async fn close_is_passed_on() {
    let (relay, _echo) = relay().await;
    let mut stream = connect(&relay).await;
    roundtrip(&mut stream, b"bye").await;
    stream.shutdown().await.unwrap();
    let mut buf = [0u8; 8];
    let n = within("relay closes after the echo server does", stream.read(&mut buf)).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn udp_and_tcp_share_the_port_and_config_errors_are_reported() {
    let (relay, _echo) = relay().await;
    let udp = tokio::net::UdpSocket::bind(relay.addr()).await;
    assert!(udp.is_err(), "the relay should hold the UDP port too");

    let target = relay.addr();
    let mut none = RelayConfig::new("127.0.0.1:0".parse().unwrap(), target);
    none.udp = false;
    none.tcp = false;
    assert!(matches!(Relay::start(none).await, Err(StartError::NothingToRelay)));

    let mut mixed = RelayConfig::new("127.0.0.1:0".parse().unwrap(), target);
    mixed.upstream_ip = "::1".parse().unwrap();
    assert!(matches!(Relay::start(mixed).await, Err(StartError::FamilyMismatch { .. })));

    let taken = RelayConfig::new(relay.addr(), target);
    assert!(matches!(Relay::start(taken).await, Err(StartError::BindUdp { .. })));
}

#[tokio::test]
async fn dropping_the_relay_closes_everything() {
    let (relay, _echo) = relay().await;
    let addr = relay.addr();
    let mut stream = connect(&relay).await;
    roundtrip(&mut stream, b"alive").await;
    let udp = common::udp_client(&relay).await;
    common::udp_roundtrip(&udp, b"alive").await;

    drop(relay);
    let mut buf = [0u8; 8];
    let n = within("forwarded connection closes", stream.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF or reset, got {n:?}");
    within("front port is free again", async {
        loop {
            let udp = tokio::net::UdpSocket::bind(addr).await;
            let tcp = tokio::net::TcpListener::bind(addr).await;
            if udp.is_ok() && tcp.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
