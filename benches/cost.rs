//! Cost benchmark: what calling the app in reverse costs against a classic
//! sidecar that dials the app's listening port.
//!
//! Three sidecar + echo app pairs run side by side, as real processes:
//! `classic` (`--app-port`, h2 over plain TCP: the baseline), `tcp` (the
//! app dialed a TCP+TLS callback channel) and `quic` (a QUIC one). For each
//! API (gRPC `InvokeService`, HTTP `/v1.0/invoke`), concurrency (1, 16, 64)
//! and payload (100 B, 16 KiB, 1 MiB), each pair is driven in turn for a
//! fixed time, in rounds whose order rotates, and the median over rounds is
//! reported next to its ratio to `classic` from the same rounds.
//!
//! `cargo bench -p dialback-benches --bench cost` (full: 3 rounds of 2 s a
//! cell); `-- --quick` for a smoke run; `-- --rounds N`, `-- --seconds S`,
//! `-- --api grpc,http`, `-- --conc 1,16,64`, `-- --payload 100,16384,1048576`
//! and `-- --modes classic,tcp,quic,quic-pc` to choose (`quic-pc`: QUIC
//! with a stream per call, not in the default set). Prints one table and writes
//! `target/bench-cost.json`. `--hold MODE` sets up the pairs and then drives
//! only MODE's first cell until killed, for attaching a profiler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dialback_benches::drive::{Api, Endpoint, Plan, cells, hold, rss_kib, size};
use dialback_e2e::{App, AppBuilder, Sidecar, SidecarBuilder};
use serde_json::json;

/// One sidecar + app pair (killed when dropped) and the endpoint driving it.
struct Pair {
    ep: Arc<Endpoint>,
    _sidecar: Sidecar,
    _app: App,
}

impl Pair {
    async fn start(mode: &'static str) -> Pair {
        let (sidecar, app) = match mode {
            "classic" => {
                let mut app = AppBuilder::classic().spawn();
                let port = app.wait_listening().await;
                (SidecarBuilder::classic("echo", port).spawn().await, app)
            }
            // QUIC with a stream per call (`--callback-quic-streams per-call`).
            "quic-pc" => {
                let sc = SidecarBuilder::callback("echo").args(["--callback-quic-streams", "per-call"]).spawn().await;
                let mut app = AppBuilder::echo(sc.grpc).transport("quic").spawn();
                let on = app.wait_connected().await;
                assert_eq!(on, "quic", "the quic app connected over {on}");
                (sc, app)
            }
            transport => {
                let sc = SidecarBuilder::callback("echo").spawn().await;
                let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
                let on = app.wait_connected().await;
                assert_eq!(on, transport, "the {transport} app connected over {on}");
                (sc, app)
            }
        };
        let procs = vec![("sidecar", sidecar.pid()), ("app", app.pid())];
        let ep = Endpoint::new(mode, sidecar.http, sidecar.grpc, "echo", procs).expect("client");
        Pair { ep: Arc::new(ep), _sidecar: sidecar, _app: app }
    }
}

fn plan() -> Plan {
    Plan {
        rounds: 3,
        seconds: 2.0,
        apis: vec![Api::Grpc, Api::Http],
        conc: vec![1, 16, 64],
        payloads: vec![100, 16 * 1024, 1024 * 1024],
        modes: vec!["classic", "tcp", "quic"],
        hold: None,
    }
    .from_args(&["classic", "tcp", "quic", "quic-pc"], |a| {
        a.rounds = 1;
        a.seconds = 0.3;
        a.conc = vec![1, 16];
        a.payloads = vec![100, 1024 * 1024];
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = plan();
    let mut pairs = Vec::new();
    for mode in &args.modes {
        pairs.push(Pair::start(mode).await);
    }
    let eps: Vec<Arc<Endpoint>> = pairs.iter().map(|p| p.ep.clone()).collect();
    let idle: Vec<(f64, f64)> = eps
        .iter()
        .map(|e| (rss_kib(e.pid("sidecar")) as f64 / 1024.0, rss_kib(e.pid("app")) as f64 / 1024.0))
        .collect();
    if let Some(mode) = &args.hold {
        let ep = eps.iter().find(|e| e.mode == mode).expect("--hold names one of --modes");
        let payload = Bytes::from(vec![0x5a; args.payloads[0]]);
        eprintln!(
            "holding: {mode} {} c{} {} sidecar pid {} app pid {}",
            args.apis[0].name(),
            args.conc[0],
            size(args.payloads[0]),
            ep.pid("sidecar"),
            ep.pid("app")
        );
        // Until SIGTERM or Ctrl-C; then the pairs drop, which kills their processes.
        hold(ep, args.apis[0], args.conc[0], &payload).await?;
        drop(pairs);
        return Ok(());
    }
    let dur = Duration::from_secs_f64(args.seconds);
    println!(
        "cost: {} rounds of {:.1} s a cell; medians over rounds; ratios against classic from the same rounds",
        args.rounds, args.seconds
    );
    println!(
        "{:<5} {:>3} {:>7} {:<8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>9} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6}",
        "api",
        "c",
        "payload",
        "mode",
        "p50 ms",
        "p99 ms",
        "calls/s",
        "MB/s",
        "sc MiB",
        "app MiB",
        "cpu us/c",
        "dgm/c",
        "failed",
        "p50 x",
        "p99 x",
        "calls x",
        "cpu x",
        "RSS x"
    );
    let (cells, failed) = cells(&eps, &args, dur, |row| {
        let (s, base, ep) = (row.s, row.base, row.ep);
        let (api, conc, payload_len) = (row.api, row.conc, row.payload_len);
        let r = |x: f64, b: f64| row.ratio(x, b);
        let (rss_sc, rss_app) = (s.rss_mib[0], s.rss_mib[1]);
        println!(
            "{:<5} {:>3} {:>7} {:<8} {:>8.3} {:>8.3} {:>9.0} {:>8.1} {:>7.1} {:>7.1} {:>9.0} {:>6.1} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6}",
            api.name(),
            conc,
            size(payload_len),
            ep.mode,
            s.p50_ms,
            s.p99_ms,
            s.calls_per_s,
            s.mb_per_s,
            rss_sc,
            rss_app,
            s.cpu_us_per_call,
            s.datagrams_per_call,
            s.failed,
            r(s.p50_ms, base.p50_ms),
            r(s.p99_ms, base.p99_ms),
            r(s.calls_per_s, base.calls_per_s),
            r(s.cpu_us_per_call, base.cpu_us_per_call),
            r(s.rss_total_mib(), base.rss_total_mib()),
        );
        json!({
            "mode": ep.mode,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "calls_per_s": s.calls_per_s,
            "mb_per_s": s.mb_per_s,
            "failed": s.failed,
            "rss_sidecar_mib": rss_sc,
            "rss_app_mib": rss_app,
            "cpu_us_per_call": s.cpu_us_per_call,
            "udp_rcvbuf_drops": s.udp_drops,
            "udp_datagrams_per_call": s.datagrams_per_call,
            "vs_baseline": {
                "p50": s.p50_ms / base.p50_ms,
                "p99": s.p99_ms / base.p99_ms,
                "calls_per_s": s.calls_per_s / base.calls_per_s,
                "mb_per_s": s.mb_per_s / base.mb_per_s,
                "cpu_per_call": s.cpu_us_per_call / base.cpu_us_per_call,
                "rss": s.rss_total_mib() / base.rss_total_mib(),
            },
        })
    })
    .await;
    println!("idle RSS after setup (MiB, sidecar/app):");
    for (ep, (sc, app)) in eps.iter().zip(&idle) {
        println!("  {:<8} {sc:.1} / {app:.1}", ep.mode);
    }
    let out = json!({
        "rounds": args.rounds,
        "seconds": args.seconds,
        "idle_rss_mib": eps.iter().zip(&idle).map(|(e, (sc, app))| json!({"mode": e.mode, "sidecar": sc, "app": app})).collect::<Vec<_>>(),
        "cells": cells,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(())
}
