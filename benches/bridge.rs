//! Bridge benchmark: what standing between a real daprd and its app costs
//! (issue 10's bridge mode).
//!
//! Four setups run side by side, as real processes, each with its own
//! daprd (built by `scripts/daprd.sh`), app and ports, all started up front:
//! `direct` (daprd's `--app-port` is the classic echo app's listening gRPC
//! port: the baseline), `relay` (the same, with a `netsim` process between
//! them that only copies bytes: what one more process on the path costs by
//! itself; its figures are in the dialbackd column), `quic` and `tcp`
//! (daprd's `--app-port` is dialbackd's bridge port, and the echo app, with
//! no listening socket, dialed dialbackd's callback channel over QUIC or
//! TCP+TLS). Each is ready
//! once an invocation through its daprd succeeds on both APIs. Then, for
//! each invocation API of daprd (HTTP `POST /v1.0/invoke/<app-id>/method/echo`,
//! gRPC `Dapr/InvokeService`), concurrency (1, 64) and payload (100 B,
//! 16 KiB), each daprd is driven in turn for a fixed time, in rounds whose
//! order rotates; the median over rounds is reported next to its ratio to
//! `direct` from the same rounds, with the CPU time per call of every
//! process on the path.
//!
//! `cargo bench -p dialback-benches --bench bridge` (full: 5 rounds of 3 s a
//! cell); `-- --quick` for a smoke run (one round of 0.3 s a mode: about a
//! second a cell; fails only when a call fails); `-- --rounds N`,
//! `-- --seconds S`, `-- --api http,grpc`, `-- --conc 1,64`,
//! `-- --payload 100,16384` and `-- --modes direct,relay,quic,tcp` to choose.
//! Prints one table and writes `target/bench-bridge.json`. `--hold MODE`
//! sets up and then drives only MODE's first cell until killed, for
//! attaching a profiler (it prints the pids).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dialback_benches::drive::{Api, Endpoint, Plan, cells, hold, rss_kib, size};
use dialback_e2e::dapr::Daprd;
use dialback_e2e::{App, AppBuilder, Netsim, PATIENCE, Sidecar, SidecarBuilder};
use serde_json::json;

/// The processes on a call's path, in the order of the per-process figures.
const ROLES: [&str; 3] = ["daprd", "dialbackd", "app"];

/// One daprd with its app (and, bridged, the dialbackd between them); all
/// killed when dropped.
struct Setup {
    ep: Arc<Endpoint>,
    daprd: Daprd,
    sidecar: Option<Sidecar>,
    /// `relay` only: the byte relay between daprd and the app.
    relay: Option<Netsim>,
    app: App,
}

impl Setup {
    async fn start(mode: &'static str) -> Setup {
        // An app-id of its own per daprd, so that no name resolution can
        // mix them up.
        let app_id = format!("echo-{mode}");
        let ports = Daprd::ports();
        let (daprd, sidecar, relay, app) = match mode {
            "direct" | "relay" => {
                let mut app = AppBuilder::classic().spawn();
                let app_port = app.wait_listening().await;
                let relay = match mode {
                    "relay" => Some(Netsim::spawn(([127, 0, 0, 1], app_port).into()).await),
                    _ => None,
                };
                let port = relay.as_ref().map_or(app_port, |r| r.addr.port());
                // The classic echo app serves no AppCallbackHealthCheck, which
                // daprd's gRPC health probe needs; the bridge answers it itself.
                let daprd = Daprd::spawn(&app_id, ports, port, "grpc", &[], &["--enable-app-health-check=false"]).await;
                (daprd, None, relay, app)
            }
            transport => {
                let up = |p: u16| format!("127.0.0.1:{p}");
                let sc = SidecarBuilder::callback(&app_id)
                    .args(["--bridge-app-port", "0"])
                    .args(["--dapr-upstream-http", &up(ports.0), "--dapr-upstream-grpc", &up(ports.1)])
                    .spawn()
                    .await;
                let bridge = sc.bridge.expect("dialbackd's ready line names its bridge port").port();
                let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
                let on = app.wait_connected().await;
                assert_eq!(on, transport, "the {transport} app connected over {on}");
                let daprd = Daprd::spawn(&app_id, ports, bridge, "grpc", &[], &[]).await;
                (daprd, Some(sc), None, app)
            }
        };
        let middle = sidecar.as_ref().map(Sidecar::pid).or(relay.as_ref().map(Netsim::pid)).unwrap_or(0);
        let procs = vec![(ROLES[0], daprd.pid()), (ROLES[1], middle), (ROLES[2], app.pid())];
        let ep = Endpoint::new(mode, daprd.http, daprd.grpc, &app_id, procs).expect("client");
        Setup { ep: Arc::new(ep), daprd, sidecar, relay, app }
    }

    /// Waits until an invocation through daprd answers on both APIs (daprd
    /// has seen the app healthy, the app's channel is up); fails with the
    /// last error and the logs after [`PATIENCE`].
    async fn ready(&self) -> anyhow::Result<Duration> {
        let t0 = tokio::time::Instant::now();
        let payload = Bytes::from_static(b"ready?");
        loop {
            let mut last = None;
            for api in [Api::Http, Api::Grpc] {
                if let Err(e) = self.ep.call(api, &payload).await {
                    last = Some(format!("{}: {e:#}", api.name()));
                }
            }
            let Some(err) = last else { return Ok(t0.elapsed()) };
            if t0.elapsed() > PATIENCE {
                anyhow::bail!("{} not ready after {PATIENCE:?}: {err}\n{}", self.ep.mode, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ends of the processes' logs.
    fn logs(&self) -> String {
        let sc = self.sidecar.as_ref().map_or_else(|| "(none)".to_string(), |s| s.log_tail());
        let relay = self.relay.as_ref().map_or_else(|| "(none)".to_string(), |r| r.log_tail());
        format!(
            "--- daprd log:\n{}\n--- dialbackd log:\n{sc}\n--- netsim log:\n{relay}\n--- app log:\n{}",
            self.daprd.log_tail(),
            self.app.log_tail()
        )
    }
}

fn plan() -> Plan {
    Plan {
        rounds: 5,
        seconds: 3.0,
        apis: vec![Api::Http, Api::Grpc],
        conc: vec![1, 64],
        payloads: vec![100, 16 * 1024],
        modes: vec!["direct", "relay", "quic", "tcp"],
        hold: None,
    }
    .from_args(&["direct", "relay", "quic", "tcp"], |a| {
        a.rounds = 1;
        a.seconds = 0.3;
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = plan();
    let mut setups = Vec::new();
    for mode in &args.modes {
        setups.push(Setup::start(mode).await);
    }
    for s in &setups {
        let t = s.ready().await?;
        eprintln!("bridge: {} ready ({:.1} s after daprd answered its healthz)", s.ep.mode, t.as_secs_f64());
    }
    let eps: Vec<Arc<Endpoint>> = setups.iter().map(|s| s.ep.clone()).collect();
    let idle: Vec<Vec<f64>> =
        eps.iter().map(|e| e.procs.iter().map(|(_, p)| rss_kib(*p) as f64 / 1024.0).collect()).collect();
    if let Some(mode) = &args.hold {
        let ep = eps.iter().find(|e| e.mode == mode).expect("--hold names one of --modes");
        let payload = Bytes::from(vec![0x5a; args.payloads[0]]);
        let pids: Vec<String> = ep.procs.iter().map(|(r, p)| format!("{r} pid {p}")).collect();
        eprintln!(
            "holding: {mode} {} c{} {} {}",
            args.apis[0].name(),
            args.conc[0],
            size(args.payloads[0]),
            pids.join(" ")
        );
        // Until SIGTERM or Ctrl-C; then the setups drop, which kills their processes.
        hold(ep, args.apis[0], args.conc[0], &payload).await?;
        drop(setups);
        return Ok(());
    }
    let dur = Duration::from_secs_f64(args.seconds);
    let base_mode = eps[0].mode;
    println!(
        "bridge: {} rounds of {:.1} s a cell; medians over rounds; ratios against {base_mode} from the same rounds",
        args.rounds, args.seconds
    );
    println!(
        "{:<4} {:>2} {:>7} {:<6} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6}",
        "api",
        "c",
        "payload",
        "mode",
        "p50 ms",
        "p99 ms",
        "calls/s",
        "cpu us/c",
        "daprd",
        "dialbd",
        "app",
        "failed",
        "p50 x",
        "p99 x",
        "calls x",
        "cpu x"
    );
    let (cells, failed) = cells(&eps, &args, dur, |row| {
        let (s, base, ep) = (row.s, row.base, row.ep);
        let (api, conc, payload_len) = (row.api, row.conc, row.payload_len);
        let r = |x: f64, b: f64| row.ratio(x, b);
        let each = |i: usize| {
            if ep.procs[i].1 == 0 { "-".to_string() } else { format!("{:.0}", s.cpu_us_per_call_each[i]) }
        };
        println!(
            "{:<4} {:>2} {:>7} {:<6} {:>7.3} {:>7.3} {:>7.0} {:>8.0} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6}",
            api.name(),
            conc,
            size(payload_len),
            ep.mode,
            s.p50_ms,
            s.p99_ms,
            s.calls_per_s,
            s.cpu_us_per_call,
            each(0),
            each(1),
            each(2),
            s.failed,
            r(s.p50_ms, base.p50_ms),
            r(s.p99_ms, base.p99_ms),
            r(s.calls_per_s, base.calls_per_s),
            r(s.cpu_us_per_call, base.cpu_us_per_call),
        );
        let per_proc: Vec<_> = ep
            .procs
            .iter()
            .enumerate()
            .filter(|(_, (_, pid))| *pid != 0)
            .map(|(i, (role, _))| {
                json!({
                "process": role,
                "cpu_us_per_call": s.cpu_us_per_call_each[i],
                "peak_rss_mib": s.rss_mib[i],
                        })
            })
            .collect();
        json!({
            "mode": ep.mode,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "calls_per_s": s.calls_per_s,
            "mb_per_s": s.mb_per_s,
            "failed": s.failed,
            "cpu_us_per_call": s.cpu_us_per_call,
            "processes": per_proc,
            "udp_rcvbuf_drops": s.udp_drops,
            "vs_direct": {
                "p50": s.p50_ms / base.p50_ms,
                "p99": s.p99_ms / base.p99_ms,
                "calls_per_s": s.calls_per_s / base.calls_per_s,
                "cpu_per_call": s.cpu_us_per_call / base.cpu_us_per_call,
            },
        })
    })
    .await;
    println!("idle RSS after setup (MiB, {}):", ROLES.join("/"));
    for (ep, rss) in eps.iter().zip(&idle) {
        let v: Vec<String> = rss.iter().map(|m| if *m > 0.0 { format!("{m:.1}") } else { "-".into() }).collect();
        println!("  {:<8} {}", ep.mode, v.join(" / "));
    }
    let out = json!({
        "rounds": args.rounds,
        "seconds": args.seconds,
        "baseline": base_mode,
        "idle_rss_mib": eps.iter().zip(&idle).map(|(e, rss)| {
            let by: serde_json::Map<String, serde_json::Value> =
                e.procs.iter().zip(rss).filter(|((_, p), _)| *p != 0).map(|((r, _), m)| (r.to_string(), json!(m))).collect();
            json!({"mode": e.mode, "processes": by})
        }).collect::<Vec<_>>(),
        "cells": cells,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-bridge.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    if failed > 0 {
        for s in &setups {
            eprintln!("=== {}\n{}", s.ep.mode, s.logs());
        }
    }
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(())
}
