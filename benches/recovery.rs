//! Recovery benchmark: how fast the app is reachable again after a network
//! change or a process restart, over QUIC, TCP+TLS and auto, with a call
//! through the sidecar's HTTP API every 5 ms throughout.
//!
//! `cargo bench -p dialback-benches --bench recovery` (full: 10 repeats,
//! RTT 0 and 50 ms); `-- --quick` for a smoke run; `-- --repeats N`,
//! `-- --rtt-ms 0,50`, `-- --no-long` (skip the 20 s blackhole),
//! `-- --transports quic,tcp,auto`, `-- --events nat-rebind,...` (any
//! blackhole length by name: `blackhole-1s`) and
//! `-- --profile mobile` (the app in the
//! mobile liveness profile, 25 s beat) to choose. Prints one table and
//! writes `target/bench-recovery.json` (`bench-recovery-mobile.json` for
//! the mobile profile).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dialback_benches::{ms, percentile};
use dialback_e2e::{AppBuilder, CallLoop, PATIENCE, SidecarBuilder, eventually};
use dialback_netsim::{Relay, RelayConfig};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    NatRebind,
    AddressChange,
    SidecarRestart,
    /// The sidecar rescheduled elsewhere: a new state dir (identity, reset
    /// key) and channel port behind the same advertised address.
    SidecarMoved,
    AppRestart,
    Blackhole(u64),
    UdpBlocked,
}

impl Event {
    fn name(self) -> String {
        match self {
            Event::NatRebind => "nat-rebind".into(),
            Event::AddressChange => "addr-change".into(),
            Event::SidecarRestart => "sidecar-restart".into(),
            Event::SidecarMoved => "sidecar-moved".into(),
            Event::AppRestart => "app-restart".into(),
            Event::Blackhole(s) => format!("blackhole-{s}s"),
            Event::UdpBlocked => "udp-blocked".into(),
        }
    }
}

/// One run's result.
struct Sample {
    /// From the event (or the fault's end) to the first answered call sent after it.
    recovery: Duration,
    /// Blackholes only: from the fault's end to the first answer of any
    /// call, those sent during the fault included (the path is back; what
    /// `recovery` adds to it is the backlog of those calls).
    first_answer: Option<Duration>,
    /// UDP blocked only: from UDP's return to the channel being on QUIC.
    back_on_quic: Option<Duration>,
    /// Sidecar moved only: from the kill to the app's log line saying it
    /// found a new sidecar (the two processes' clocks are one: same host).
    found: Option<Duration>,
    sent: u64,
    failed: usize,
    lost: u64,
}

async fn run_once(transport: &str, event: Event, rtt: Duration, mobile: bool) -> anyhow::Result<Sample> {
    let relay = Relay::start(RelayConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:9".parse()?)).await?;
    relay.set_delay(rtt / 2);
    let mut sc = SidecarBuilder::callback("echo")
        .args(["--callback-advertise-address".to_string(), relay.addr().to_string()])
        .spawn()
        .await;
    relay.set_target(sc.callback.expect("callback address"));
    let app_builder = AppBuilder::echo(sc.grpc).transport(transport).args([
        "--local-ip",
        "127.0.0.2",
        "--rebind-ip",
        "127.0.0.3",
        "--quic-probe-ms",
        "1000",
    ]);
    let app_builder = if mobile { app_builder.args(["--mobile-beat-ms", "25000"]) } else { app_builder };
    if event == Event::UdpBlocked {
        relay.set_block_udp(true);
    }
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(5));
    let spawned = calls.elapsed();
    let mut app = app_builder.spawn();
    app.wait_connected().await;
    let mut keep = Vec::new();
    let mut back_on_quic = None;
    let mut found = None;
    let t_ref = match event {
        Event::UdpBlocked => {
            // Time from the app's start to its first answered call (on TCP).
            let t_ref = spawned;
            eventually("a first answer", PATIENCE, || async { calls.first_ok_after(t_ref).map(|_| ()) }).await;
            relay.set_block_udp(false);
            let unblocked = std::time::SystemTime::now();
            eventually("the channel back on QUIC", PATIENCE, || async {
                let md = dialback_e2e::metadata(sc.http).await.ok()?;
                (md["appChannel"]["transport"] == "quic").then_some(())
            })
            .await;
            // From the sidecar's own log line, not from when the polling above
            // saw it (which backs off to 100 ms between looks).
            let up = sc
                .log()
                .lines()
                .rfind(|l| l.contains(CHANNEL_UP_LINE) && l.contains("transport=quic"))
                .and_then(logged_time)
                .and_then(|t| t.duration_since(unblocked).ok())
                .ok_or_else(|| anyhow::anyhow!("no QUIC \"{CHANNEL_UP_LINE}\" in the sidecar's log"))?;
            back_on_quic = Some(up);
            t_ref
        }
        _ => {
            let base = calls.ok_so_far();
            eventually("warm-up calls", PATIENCE, || async { (calls.ok_so_far() >= base + 10).then_some(()) }).await;
            match event {
                Event::NatRebind => {
                    let t = calls.elapsed();
                    relay.rebind();
                    t
                }
                Event::AddressChange => {
                    let t = calls.elapsed();
                    app.signal("USR1");
                    t
                }
                Event::SidecarRestart => {
                    sc.kill().await;
                    let sc2 = sc.restart().await;
                    let t = calls.elapsed();
                    keep.push(sc2);
                    t
                }
                // Timed, like a restart, from the new sidecar being ready.
                Event::SidecarMoved => {
                    let killed = std::time::SystemTime::now();
                    sc.kill().await;
                    let moved = sc.relocate().await;
                    relay.set_target(moved.callback.expect("callback address"));
                    let t = calls.elapsed();
                    keep.push(moved);
                    found = Some(killed);
                    t
                }
                Event::AppRestart => {
                    app.kill().await;
                    let t = calls.elapsed();
                    app = app.respawn();
                    t
                }
                Event::Blackhole(secs) => {
                    relay.set_blackhole(true);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    relay.set_blackhole(false);
                    calls.elapsed()
                }
                Event::UdpBlocked => unreachable!(),
            }
        }
    };
    let recovery =
        eventually("a call answered after the event", PATIENCE, || async { calls.first_ok_after(t_ref) }).await;
    // TCP learns of the move from the old connection's reset, not from the API.
    let found = match found.filter(|_| transport != "tcp") {
        Some(killed) => Some(
            logged_at(&app.log(), FOUND_LINE)
                .and_then(|t| t.duration_since(killed).ok())
                .ok_or_else(|| anyhow::anyhow!("no \"{FOUND_LINE}\" in the app's log:\n{}", app.log_tail()))?,
        ),
        None => None,
    };
    // Let calls sent around the event settle, then count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_answer = matches!(event, Event::Blackhole(_)).then(|| calls.first_answer_after(t_ref)).flatten();
    let s = calls.stop(PATIENCE).await;
    if let Some(first) = s.failures().first() {
        eprintln!("{transport} {}: {} failed; the first: {:?}", event.name(), s.failures().len(), first.result);
    }
    drop(app);
    Ok(Sample { recovery, first_answer, back_on_quic, found, sent: s.sent, failed: s.failures().len(), lost: s.lost() })
}

/// What the SDK logs when it learns that a new sidecar answers.
const FOUND_LINE: &str = "a new sidecar; moving to it";

/// What the sidecar logs when it installs a channel.
const CHANNEL_UP_LINE: &str = "app channel up";

/// When the first log line containing `needle` was written, from its
/// RFC 3339 timestamp (tracing's default format, colours off).
fn logged_at(log: &str, needle: &str) -> Option<std::time::SystemTime> {
    logged_time(log.lines().find(|l| l.contains(needle))?)
}

/// When `line` was logged, from its leading RFC 3339 timestamp.
fn logged_time(line: &str) -> Option<std::time::SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let t = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(std::time::SystemTime::from(t))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let repeats: usize = flag("--repeats").and_then(|v| v.parse().ok()).unwrap_or(if quick { 1 } else { 10 });
    let rtts: Vec<Duration> = match flag("--rtt-ms") {
        Some(list) => list.split(',').filter_map(|v| v.parse().ok()).map(Duration::from_millis).collect(),
        None if quick => vec![Duration::ZERO],
        None => vec![Duration::ZERO, Duration::from_millis(50)],
    };
    let mobile = flag("--profile").is_some_and(|p| p == "mobile");
    let transports: Vec<String> = flag("--transports").map_or_else(
        || vec!["quic".into(), "tcp".into(), "auto".into()],
        |l| l.split(',').map(str::to_string).collect(),
    );
    let mut events = vec![
        Event::NatRebind,
        Event::AddressChange,
        Event::SidecarRestart,
        Event::SidecarMoved,
        Event::AppRestart,
        Event::Blackhole(2),
    ];
    if !quick && !args.iter().any(|a| a == "--no-long") {
        events.push(Event::Blackhole(20));
    }
    if let Some(only) = flag("--events") {
        let only: Vec<&str> = only.split(',').collect();
        events.retain(|e| only.contains(&e.name().as_str()));
        // Any other blackhole length, by name: `blackhole-1s`.
        for name in &only {
            let secs = name.strip_prefix("blackhole-").and_then(|s| s.strip_suffix('s')).and_then(|s| s.parse().ok());
            if let Some(secs) = secs
                && !events.contains(&Event::Blackhole(secs))
            {
                events.push(Event::Blackhole(secs));
            }
        }
    }
    dialback_e2e::binaries();
    let profile = if mobile { "mobile" } else { "default" };
    println!("recovery benchmark: {repeats} repeat(s) per cell, a call every 5 ms, {profile} liveness profile\n");
    println!(
        "{:<5} {:<16} {:>6} {:>3} {:>10} {:>10} {:>7} {:>7} {:>5}",
        "tx", "event", "rtt", "n", "median ms", "p95 ms", "sent", "failed", "lost"
    );
    let mut cells = Vec::new();
    for rtt in &rtts {
        for transport in transports.iter().map(String::as_str) {
            let mut evs = events.clone();
            if transport == "auto" {
                evs.push(Event::UdpBlocked);
            }
            for event in evs {
                let mut samples = Vec::new();
                for _ in 0..repeats {
                    samples.push(run_once(transport, event, *rtt, mobile).await?);
                }
                let rec: Vec<Duration> = samples.iter().map(|s| s.recovery).collect();
                let back: Vec<Duration> = samples.iter().filter_map(|s| s.back_on_quic).collect();
                let first: Vec<Duration> = samples.iter().filter_map(|s| s.first_answer).collect();
                let found: Vec<Duration> = samples.iter().filter_map(|s| s.found).collect();
                let (sent, failed, lost) =
                    samples.iter().fold((0, 0, 0), |(a, b, c), s| (a + s.sent, b + s.failed, c + s.lost));
                println!(
                    "{:<5} {:<16} {:>6} {:>3} {:>10} {:>10} {:>7} {:>7} {:>5}{}{}{}",
                    transport,
                    event.name(),
                    format!("{}ms", rtt.as_millis()),
                    samples.len(),
                    ms(percentile(&rec, 50.0)),
                    ms(percentile(&rec, 95.0)),
                    sent,
                    failed,
                    lost,
                    if first.is_empty() {
                        String::new()
                    } else {
                        format!("  first answer of any call: median {} ms", ms(percentile(&first, 50.0)))
                    },
                    if back.is_empty() {
                        String::new()
                    } else {
                        format!("  back on QUIC: median {} ms", ms(percentile(&back, 50.0)))
                    },
                    if found.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "  found: median {} ms, max {} ms after the kill",
                            ms(percentile(&found, 50.0)),
                            ms(percentile(&found, 100.0))
                        )
                    }
                );
                cells.push(json!({
                    "transport": transport,
                    "event": event.name(),
                    "rtt_ms": rtt.as_millis() as u64,
                    "recovery_ms": rec.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
                    "median_ms": percentile(&rec, 50.0).map(|d| d.as_secs_f64() * 1000.0),
                    "p95_ms": percentile(&rec, 95.0).map(|d| d.as_secs_f64() * 1000.0),
                    "first_answer_ms": first.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
                    "back_on_quic_ms": back.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
                    "found_after_kill_ms": found.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
                    "sent": sent,
                    "failed": failed,
                    "lost": lost,
                }));
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let name = if mobile { "bench-recovery-mobile.json" } else { "bench-recovery.json" };
    let out = root.join("target").join(name);
    let doc = json!({ "quick": quick, "repeats": repeats, "profile": profile, "cells": cells });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    println!("\nwrote {}", out.display());
    Ok(())
}
