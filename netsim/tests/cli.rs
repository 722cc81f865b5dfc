//! The `netsim` binary: ready line, control protocol, exit on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::{echo, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;

#[tokio::test]
async fn ready_line_and_control_commands() {
    let echo = echo().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_netsim"))
        .args(["--listen", "127.0.0.1:0", "--target", &echo.addr.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = within("netsim ready line", stdout.next_line()).await.unwrap().expect("netsim exited early");
    let fields: Vec<&str> = ready.split(' ').collect();
    assert_eq!(fields.len(), 4, "ready line: {ready}");
    assert_eq!(&fields[..2], ["netsim", "ready"]);
    let addr = fields[2].strip_prefix("addr=").unwrap();
    let control = fields[3].strip_prefix("control=").unwrap();

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(addr).await.unwrap();
    udp.send(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("udp echo via netsim", udp.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"ping");

    let stream = within("control connect", TcpStream::connect(control)).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut answers = BufReader::new(rd).lines();
    for (line, want) in [
        ("delay 5", "ok"),
        ("loss 0", "ok"),
        ("blackhole off", "ok"),
        ("block-udp off", "ok"),
        ("rebind", "ok"),
        (
            "stats",
            "udp_forwarded=2 udp_dropped=0 tcp_bytes_forwarded=0 tcp_connections=0 udp_sessions=1 rebinds=1 udp_up=1",
        ),
    ] {
        wr.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let got = within(line, answers.next_line()).await.unwrap().unwrap();
        assert_eq!(got, want, "answer to {line:?}");
    }
    wr.write_all(b"teleport\n").await.unwrap();
    let got = within("bad command answer", answers.next_line()).await.unwrap().unwrap();
    assert!(got.starts_with("error: "), "answer to a bad command: {got}");

    #[cfg(unix)]
    {
        let pid = child.id().unwrap().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(kill.success());
        let status = within("netsim exits on SIGTERM", child.wait()).await.unwrap();
        assert!(status.success(), "netsim exit status: {status}");
    }
}
