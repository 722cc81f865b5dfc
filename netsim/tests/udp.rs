//! UDP relaying through a [`dialback_netsim::Relay`] to an echo server, with each fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{SILENCE, eventually, relay, udp_client, udp_roundtrip, udp_silent, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn datagrams_round_trip() {
    let (relay, mut echo) = relay().await;
    let client = udp_client(&relay).await;
    for i in 0..5u8 {
        udp_roundtrip(&client, &[i; 100]).await;
    }
    let first = within("echo saw a datagram", echo.udp_sources.recv()).await.unwrap();
    assert_eq!(first.ip(), relay.addr().ip());
    assert_ne!(first, client.local_addr().unwrap(), "echo should see the relay, not the client");
    let stats = relay.stats();
    assert_eq!(stats.udp_forwarded, 10);
    assert_eq!(stats.udp_dropped, 0);
    assert_eq!(stats.udp_sessions, 1);
}

#[tokio::test]
async fn rebind_changes_the_source_port_and_replies_still_arrive() {
    let (relay, mut echo) = relay().await;
    let client = udp_client(&relay).await;
    udp_roundtrip(&client, b"before").await;
    let before = within("echo saw the first datagram", echo.udp_sources.recv()).await.unwrap();

    relay.rebind();
    udp_roundtrip(&client, b"after").await;
    let after = within("echo saw the second datagram", echo.udp_sources.recv()).await.unwrap();
    assert_ne!(before.port(), after.port(), "rebind should give the session a new source port");

    udp_roundtrip(&client, b"again").await;
    let again = within("echo saw the third datagram", echo.udp_sources.recv()).await.unwrap();
    assert_eq!(after, again, "the new mapping should stick until the next rebind");
    assert_eq!(relay.stats().rebinds, 1);
    assert_eq!(relay.stats().udp_sessions, 1);
}

#[tokio::test]
async fn blackhole_drops_and_off_restores() {
    let (relay, _echo) = relay().await;
    let client = udp_client(&relay).await;
    udp_roundtrip(&client, b"warm-up").await;

    relay.set_blackhole(true);
    client.send(b"lost").await.unwrap();
    udp_silent(&client, "blackhole on").await;
    eventually("udp_dropped counts the datagram", || relay.stats().udp_dropped >= 1).await;

    relay.set_blackhole(false);
    udp_roundtrip(&client, b"back").await;
}

#[tokio::test]
async fn blackhole_drops_delayed_datagrams_in_flight() {
    let (relay, _echo) = relay().await;
    let client = udp_client(&relay).await;
    // Long enough that the datagram is still queued when the blackhole goes on.
    relay.set_delay(SILENCE);
    client.send(b"in flight").await.unwrap();
    relay.set_blackhole(true);
    udp_silent(&client, "blackhole on while delayed").await;
    tokio::time::sleep(SILENCE).await;
    udp_silent(&client, "blackhole still on").await;
    eventually("udp_dropped counts the datagram", || relay.stats().udp_dropped >= 1).await;
}

#[tokio::test]
async fn block_udp_drops_udp_but_tcp_still_forwards() {
    let (relay, _echo) = relay().await;
    let client = udp_client(&relay).await;
    udp_roundtrip(&client, b"warm-up").await;

    relay.set_block_udp(true);
    client.send(b"blocked").await.unwrap();
    udp_silent(&client, "block-udp on").await;
    eventually("udp_dropped counts the datagram", || relay.stats().udp_dropped >= 1).await;

    let mut tcp = within("tcp connect", TcpStream::connect(relay.addr())).await.unwrap();
    tcp.write_all(b"tcp works").await.unwrap();
    let mut buf = [0u8; 9];
    within("tcp echo", tcp.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"tcp works");

    relay.set_block_udp(false);
    udp_roundtrip(&client, b"unblocked").await;
}

#[tokio::test]
async fn loss_one_drops_all_and_zero_none() {
    let (relay, _echo) = relay().await;
    let client = udp_client(&relay).await;
    relay.set_loss(1.0);
    for i in 0..10u8 {
        client.send(&[i]).await.unwrap();
    }
    udp_silent(&client, "loss 1.0").await;
    eventually("udp_dropped reaches 10", || relay.stats().udp_dropped == 10).await;
    assert_eq!(relay.stats().udp_forwarded, 0);

    relay.set_loss(0.0);
    for i in 0..10u8 {
        udp_roundtrip(&client, &[i]).await;
    }
    assert_eq!(relay.stats().udp_dropped, 10);
    assert_eq!(relay.stats().udp_forwarded, 20);
}

#[tokio::test]
async fn delay_keeps_order() {
    let (relay, _echo) = relay().await;
    let client = udp_client(&relay).await;
    relay.set_delay(Duration::from_millis(20));
    for i in 0..20u32 {
        client.send(&i.to_be_bytes()).await.unwrap();
    }
    let mut buf = [0u8; 16];
    for i in 0..20u32 {
        let n = within("delayed echo", client.recv(&mut buf)).await.unwrap();
        assert_eq!(n, 4);
        let got = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert_eq!(got, i, "datagrams reordered");
    }
    relay.set_delay(Duration::ZERO);
    udp_roundtrip(&client, b"no delay").await;
}

#[tokio::test]
async fn sessions_are_per_client_address() {
    let (relay, mut echo) = relay().await;
    let a = udp_client(&relay).await;
    let b = udp_client(&relay).await;
    udp_roundtrip(&a, b"a").await;
    udp_roundtrip(&b, b"b").await;
    let sa = within("echo saw a", echo.udp_sources.recv()).await.unwrap();
    let sb = within("echo saw b", echo.udp_sources.recv()).await.unwrap();
    assert_ne!(sa, sb);
    assert_eq!(relay.stats().udp_sessions, 2);
}
