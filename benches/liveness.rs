//! Liveness benchmark: what an idle channel costs the network, per
//! liveness profile: QUIC datagrams and TCP payload bytes per idle hour,
//! counted by netsim's relay between the app and the sidecar; then what a
//! path that stays dead costs, while the app notices and redials.
//!
//! `cargo bench -p dialback-benches --bench liveness` (300 s idle, then a
//! 300 s outage); `-- --seconds N` and `-- --outage-seconds N` to choose;
//! `-- --quick` for a smoke run (6 s and 3 s). The four setups (default and
//! mobile profile, QUIC and TCP) idle side by side, each with its own relay,
//! sidecar (default flags) and echo app; one call first, then nothing. Then
//! every relay drops all it gets (a blackhole) and counts what it dropped.
//! Prints two tables and writes `target/bench-liveness.json`.
//!
//! TCP keepalive probes are answered by the relay's own kernel and carry
//! no payload, so the TCP rows count what crosses as bytes (HTTP/2 PINGs,
//! Pings): the probes themselves are one empty segment and its ACK per
//! keepalive interval on top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dialback_e2e::{AppBuilder, SidecarBuilder, http_call};
use dialback_netsim::Relay;
use serde_json::json;

/// One idle setup.
struct Setup {
    profile: &'static str,
    transport: &'static str,
    relay: Relay,
    _sc: dialback_e2e::Sidecar,
    _app: dialback_e2e::App,
}

async fn setup(profile: &'static str, transport: &'static str) -> Setup {
    let (relay, sc) = SidecarBuilder::callback("echo").spawn_behind_relay().await;
    let mut app = AppBuilder::echo(sc.grpc).transport(transport);
    if profile == "mobile" {
        app = app.args(["--mobile-beat-ms", "25000"]);
    }
    let mut app = app.spawn();
    app.wait_connected().await;
    let r = http_call("POST", &format!("{}/v1.0/invoke/echo/method/m", sc.http_base()), &[], "hi").await.unwrap();
    assert_eq!(r.status, 200, "a first call");
    Setup { profile, transport, relay, _sc: sc, _app: app }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds: u64 = flag("--seconds").and_then(|v| v.parse().ok()).unwrap_or(if quick { 6 } else { 300 });
    let outage: u64 = flag("--outage-seconds").and_then(|v| v.parse().ok()).unwrap_or(if quick { 3 } else { 300 });
    dialback_e2e::binaries();
    let mut setups = Vec::new();
    for profile in ["default", "mobile"] {
        for transport in ["quic", "tcp"] {
            setups.push(setup(profile, transport).await);
        }
    }
    // Let the first call's traffic settle before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start: Vec<_> = setups.iter().map(|s| s.relay.stats()).collect();
    let t0 = Instant::now();
    println!("liveness benchmark: {} setups idle side by side for {seconds} s\n", setups.len());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let hours = t0.elapsed().as_secs_f64() / 3600.0;
    println!(
        "{:<8} {:<5} {:>14} {:>14} {:>16} {:>16}",
        "profile", "tx", "app->sc /h", "sc->app /h", "datagrams /h", "tcp bytes /h"
    );
    let mut rows = Vec::new();
    for (s, a) in setups.iter().zip(&start) {
        let b = s.relay.stats();
        let up = (b.udp_up - a.udp_up) as f64 / hours;
        let down = ((b.udp_forwarded - b.udp_up) - (a.udp_forwarded - a.udp_up)) as f64 / hours;
        let tcp = (b.tcp_bytes_forwarded - a.tcp_bytes_forwarded) as f64 / hours;
        println!("{:<8} {:<5} {:>14.0} {:>14.0} {:>16.0} {:>16.0}", s.profile, s.transport, up, down, up + down, tcp);
        rows.push(json!({
            "profile": s.profile, "transport": s.transport,
            "datagrams_app_to_sidecar_per_hour": up, "datagrams_sidecar_to_app_per_hour": down,
            "tcp_payload_bytes_per_hour": tcp,
        }));
    }
    let outage_rows = dead_path(&setups, outage).await;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("bench-liveness.json");
    let all = json!({ "seconds": seconds, "rows": rows, "outage_seconds": outage, "outage": outage_rows });
    std::fs::write(&out, serde_json::to_string_pretty(&all)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

/// The last stretch of an outage, read as its steady state: by then every
/// profile has noticed the dead path and is redialing.
const TAIL: Duration = Duration::from_secs(100);

/// Every relay drops all it gets for `seconds`: what each setup sent into
/// the dead path, in all and per minute over the outage's last [`TAIL`]
/// (or its whole length, when shorter), and the TCP connections its
/// redials opened.
async fn dead_path(setups: &[Setup], seconds: u64) -> Vec<serde_json::Value> {
    let outage = Duration::from_secs(seconds);
    let tail = TAIL.min(outage);
    for s in setups {
        s.relay.set_blackhole(true);
    }
    let start: Vec<_> = setups.iter().map(|s| s.relay.stats()).collect();
    println!("\nthen a dead path for {seconds} s (every relay drops all it gets)\n");
    tokio::time::sleep(outage - tail).await;
    let mid: Vec<_> = setups.iter().map(|s| s.relay.stats()).collect();
    let t_mid = Instant::now();
    tokio::time::sleep(tail).await;
    let minutes = t_mid.elapsed().as_secs_f64() / 60.0;
    println!("{:<8} {:<5} {:>16} {:>22} {:>16}", "profile", "tx", "dropped, all", "dropped /min, tail", "tcp dials");
    let mut rows = Vec::new();
    for ((s, a), m) in setups.iter().zip(&start).zip(&mid) {
        let b = s.relay.stats();
        let all = b.udp_dropped - a.udp_dropped;
        let per_min = (b.udp_dropped - m.udp_dropped) as f64 / minutes;
        let dials = b.tcp_connections - a.tcp_connections;
        println!("{:<8} {:<5} {:>16} {:>22.1} {:>16}", s.profile, s.transport, all, per_min, dials);
        rows.push(json!({
            "profile": s.profile, "transport": s.transport, "datagrams_dropped": all,
            "datagrams_dropped_per_minute_tail": per_min, "tail_seconds": tail.as_secs(), "tcp_connections": dials,
        }));
        s.relay.set_blackhole(false);
    }
    rows
}
