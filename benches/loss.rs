//! Loss benchmark: QUIC's congestion controllers on a lossy path. Calls
//! (16 in flight, 16 KiB each way by default) go through netsim's relay
//! with a 50 ms round trip and random UDP loss (0, 1 % and 3 %), once per
//! controller (quinn's CUBIC, NewReno and BBR, set on both ends: the
//! sidecar's `--callback-quic-congestion`, the app's `--quic-congestion`)
//! and per way of carrying calls (the sidecar's `--callback-quic-streams`:
//! one stream for all, or a stream per call). Within one loss rate the
//! setups run back to back, in an order that rotates by round; medians
//! over rounds.
//!
//! `cargo bench -p dialback-benches --bench loss` (3 rounds of 20 s a
//! cell); `-- --quick` for a smoke run; `-- --rounds N`, `-- --seconds S`,
//! `-- --loss 0,0.01,0.03`, `-- --rtt-ms 50`, `-- --conc 16`,
//! `-- --payload 16384`, `-- --cc cubic,newreno,bbr,tolerant`,
//! `-- --streams single,per-call` to choose. Prints one table and writes
//! `target/bench-loss.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dialback::Congestion;
use dialback_benches::drive::{Api, Endpoint, load};
use dialback_benches::{median, percentile};
use dialback_e2e::{App, AppBuilder, Sidecar, SidecarBuilder};
use dialback_netsim::Relay;
use serde_json::json;

/// One setup (controller, streams): a relay, a sidecar behind it and an app.
struct Pair {
    cc: Congestion,
    streams: String,
    relay: Relay,
    ep: Arc<Endpoint>,
    _sc: Sidecar,
    _app: App,
}

async fn pair(cc: Congestion, streams: &str, rtt: Duration) -> Pair {
    let (relay, sc) = SidecarBuilder::callback("echo")
        .args(["--callback-quic-congestion", cc.as_str()])
        .args(["--callback-quic-streams", streams])
        .spawn_behind_relay()
        .await;
    relay.set_delay(rtt / 2);
    let mut app = AppBuilder::echo(sc.grpc).transport("quic").args(["--quic-congestion", cc.as_str()]).spawn();
    app.wait_connected().await;
    let ep = Arc::new(Endpoint::new(cc.as_str(), sc.http, sc.grpc, "echo", vec![]).unwrap());
    Pair { cc, streams: streams.to_string(), relay, ep, _sc: sc, _app: app }
}

/// One cell's figures over rounds.
#[derive(Default)]
struct Cell {
    calls_per_s: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    failed: u64,
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let list = |name: &str, default: &str| -> Vec<String> {
        flag(name).unwrap_or_else(|| default.to_string()).split(',').map(str::to_string).collect()
    };
    let rounds: usize = flag("--rounds").and_then(|v| v.parse().ok()).unwrap_or(if quick { 1 } else { 3 });
    let seconds: f64 = flag("--seconds").and_then(|v| v.parse().ok()).unwrap_or(if quick { 2.0 } else { 20.0 });
    let rtt = Duration::from_millis(flag("--rtt-ms").and_then(|v| v.parse().ok()).unwrap_or(50));
    let conc: usize = flag("--conc").and_then(|v| v.parse().ok()).unwrap_or(16);
    let payload_len: usize = flag("--payload").and_then(|v| v.parse().ok()).unwrap_or(16 * 1024);
    let losses: Vec<f64> =
        list("--loss", if quick { "0,0.01" } else { "0,0.01,0.03" }).iter().filter_map(|v| v.parse().ok()).collect();
    let ccs: Vec<Congestion> = list("--cc", "cubic,newreno,bbr,tolerant")
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let streams = list("--streams", if quick { "single,per-call" } else { "single" });
    dialback_e2e::binaries();
    let mut pairs = Vec::new();
    for &cc in &ccs {
        for s in &streams {
            pairs.push(pair(cc, s, rtt).await);
        }
    }
    let payload = Bytes::from(vec![b'x'; payload_len]);
    let dur = Duration::from_secs_f64(seconds);
    let mut cells: Vec<Vec<Cell>> = losses.iter().map(|_| pairs.iter().map(|_| Cell::default()).collect()).collect();
    for (li, &loss) in losses.iter().enumerate() {
        for round in 0..rounds {
            for k in 0..pairs.len() {
                let i = (k + round) % pairs.len();
                let p = &pairs[i];
                p.relay.set_loss(loss);
                let (lat, failed) = load(&p.ep, Api::Grpc, conc, &payload, dur).await;
                p.relay.set_loss(0.0);
                let cell = &mut cells[li][i];
                cell.calls_per_s.push(lat.len() as f64 / seconds);
                cell.p50_ms.push(ms(percentile(&lat, 50.0)));
                cell.p99_ms.push(ms(percentile(&lat, 99.0)));
                cell.failed += failed;
                eprintln!(
                    "loss {loss} round {round} {} {}: {} calls, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms, {failed} failed",
                    p.cc,
                    p.streams,
                    lat.len(),
                    ms(percentile(&lat, 50.0)),
                    ms(percentile(&lat, 99.0)),
                    ms(percentile(&lat, 99.9)),
                    ms(lat.iter().max().copied())
                );
            }
        }
    }
    println!(
        "loss: QUIC, {} ms RTT, {conc} calls in flight of {payload_len} B each way, {rounds} rounds of {seconds} s; medians over rounds\n",
        rtt.as_millis()
    );
    println!(
        "{:<6} {:<8} {:<9} {:>9} {:>9} {:>9} {:>13} {:>13} {:>7}",
        "loss", "cc", "streams", "calls/s", "p50 ms", "p99 ms", "calls vs 0%", "p99 vs 0%", "failed"
    );
    let mut out = Vec::new();
    for (li, &loss) in losses.iter().enumerate() {
        for (i, p) in pairs.iter().enumerate() {
            let c = &cells[li][i];
            let (cps, p50, p99) = (
                median(&c.calls_per_s).unwrap_or(0.0),
                median(&c.p50_ms).unwrap_or(f64::NAN),
                median(&c.p99_ms).unwrap_or(f64::NAN),
            );
            // Against the same controller on the clean path, when it ran.
            let clean = losses.iter().position(|l| *l == 0.0).map(|z| &cells[z][i]);
            let (vs_calls, vs_p99) = clean.map_or((f64::NAN, f64::NAN), |z| {
                (cps / median(&z.calls_per_s).unwrap_or(f64::NAN), p99 / median(&z.p99_ms).unwrap_or(f64::NAN))
            });
            println!(
                "{:<6} {:<8} {:<9} {:>9.1} {:>9.1} {:>9.1} {:>12.2}x {:>12.2}x {:>7}",
                format!("{}%", loss * 100.0),
                p.cc.as_str(),
                p.streams,
                cps,
                p50,
                p99,
                vs_calls,
                vs_p99,
                c.failed
            );
            out.push(json!({
                "loss": loss, "cc": p.cc.as_str(), "streams": p.streams, "calls_per_s": cps, "p50_ms": p50, "p99_ms": p99,
                "calls_vs_clean": vs_calls, "p99_vs_clean": vs_p99, "failed": c.failed,
                "rounds": { "calls_per_s": c.calls_per_s, "p50_ms": c.p50_ms, "p99_ms": c.p99_ms },
            }));
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-loss.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({
            "rtt_ms": rtt.as_millis() as u64, "conc": conc, "payload": payload_len,
            "rounds": rounds, "seconds": seconds, "cells": out,
        }))?,
    )?;
    println!("\nwrote {}", path.display());
    let failed: u64 = cells.iter().flatten().map(|c| c.failed).sum();
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(())
}
