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
//! and `-- --modes classic,tcp,quic` to choose. Prints one table and writes
//! `target/bench-cost.json`. `--hold MODE` sets up the pairs and then drives
//! only MODE's first cell until killed, for attaching a profiler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialback::{SidecarClient, SidecarOptions};
use dialback_benches::percentile;
use dialback_e2e::{App, AppBuilder, Sidecar, SidecarBuilder};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    Grpc,
    Http,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::Http => "http",
        }
    }
}

/// One sidecar + app pair and its clients.
struct Pair {
    mode: &'static str,
    sidecar: Sidecar,
    app: App,
    grpc: SidecarClient,
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
}

impl Pair {
    async fn start(mode: &'static str) -> Pair {
        let (sidecar, app) = match mode {
            "classic" => {
                let mut app = AppBuilder::classic().spawn();
                let port = app.wait_listening().await;
                (SidecarBuilder::classic("echo", port).spawn().await, app)
            }
            transport => {
                let sc = SidecarBuilder::callback("echo").spawn().await;
                let mut app = AppBuilder::echo(sc.grpc).transport(transport).spawn();
                let on = app.wait_connected().await;
                assert_eq!(on, transport, "the {transport} app connected over {on}");
                (sc, app)
            }
        };
        let grpc = SidecarClient::new(SidecarOptions {
            grpc_endpoint: format!("http://127.0.0.1:{}", sidecar.grpc),
            timeout: CALL_TIMEOUT,
            ..SidecarOptions::default()
        })
        .expect("client");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(128).build(connector);
        let url = format!("http://127.0.0.1:{}/v1.0/invoke/echo/method/echo", sidecar.http);
        Pair { mode, sidecar, app, grpc, http, url }
    }

    /// One call; `Ok` only when as many bytes came back as were sent.
    async fn call(&self, api: Api, payload: &Bytes) -> anyhow::Result<()> {
        let got = match api {
            Api::Grpc => {
                let r = self.grpc.invoke("echo", "echo", payload.to_vec(), "application/octet-stream").await?;
                r.data.map(|d| d.value.len()).unwrap_or(0)
            }
            Api::Http => {
                let req = http::Request::post(&self.url)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(payload.clone()))?;
                let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req)).await??;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                resp.into_body().collect().await?.to_bytes().len()
            }
        };
        anyhow::ensure!(got == payload.len(), "{got} bytes came back of {}", payload.len());
        Ok(())
    }
}

/// Resident set size of `pid` in KiB (`VmRSS`), 0 when unreadable.
fn rss_kib(pid: u32) -> u64 {
    dialback_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// CPU time `pid` has used so far (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails).
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// UDP datagrams the kernel dropped for want of socket buffer, machine-wide (`RcvbufErrors`).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What one pair did in one cell of one round.
#[derive(Clone, Debug, Default)]
struct Run {
    p50: Duration,
    p99: Duration,
    calls_per_s: f64,
    mb_per_s: f64,
    failed: u64,
    rss_sidecar_kib: u64,
    rss_app_kib: u64,
    /// CPU time of the sidecar and the app together, per answered call, in µs.
    cpu_us_per_call: f64,
    udp_drops: u64,
}

/// Drives `pair` at `conc` calls in flight for `dur` (after a short warm-up).
async fn drive(pair: &Arc<Pair>, api: Api, conc: usize, payload: &Bytes, dur: Duration) -> Run {
    let warmup = (dur / 5).max(Duration::from_millis(100));
    let _ = load(pair, api, conc, payload, warmup).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (sc_pid, app_pid) = (pair.sidecar.pid(), pair.app.pid());
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut sc, mut app) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                sc = sc.max(rss_kib(sc_pid));
                app = app.max(rss_kib(app_pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sc, app)
        })
    };
    let cpu0 = cpu_time(sc_pid) + cpu_time(app_pid);
    let drops0 = udp_rcvbuf_errors();
    let t0 = Instant::now();
    let (lat, failed) = load(pair, api, conc, payload, dur).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time(sc_pid) + cpu_time(app_pid)).saturating_sub(cpu0);
    let udp_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    stop.store(true, Ordering::Relaxed);
    let (rss_sidecar_kib, rss_app_kib) = sampler.await.unwrap_or((0, 0));
    let calls = lat.len() as f64;
    Run {
        p50: percentile(&lat, 50.0).unwrap_or_default(),
        p99: percentile(&lat, 99.0).unwrap_or_default(),
        calls_per_s: calls / elapsed,
        mb_per_s: calls * payload.len() as f64 / elapsed / 1e6,
        failed,
        rss_sidecar_kib,
        rss_app_kib,
        cpu_us_per_call: if calls > 0.0 { cpu.as_secs_f64() * 1e6 / calls } else { 0.0 },
        udp_drops,
    }
}

/// `conc` workers calling back to back until `dur` is up: the latencies of
/// the answered calls and the count of failed ones.
async fn load(pair: &Arc<Pair>, api: Api, conc: usize, payload: &Bytes, dur: Duration) -> (Vec<Duration>, u64) {
    let deadline = Instant::now() + dur;
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let pair = pair.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match pair.call(api, &payload).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => {
                            failed += 1;
                            if failed == 1 {
                                eprintln!("{} {} call failed: {e:#}", pair.mode, api.name());
                            }
                        }
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for w in workers {
        let (l, f) = w.await.expect("worker");
        lat.extend(l);
        failed += f;
    }
    (lat, failed)
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The medians over rounds of one pair in one cell.
#[derive(Clone, Debug)]
struct Summary {
    p50_ms: f64,
    p99_ms: f64,
    calls_per_s: f64,
    mb_per_s: f64,
    failed: u64,
    rss_sidecar_mib: f64,
    rss_app_mib: f64,
    cpu_us_per_call: f64,
    udp_drops: u64,
}

impl Summary {
    fn of(runs: &[Run]) -> Summary {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        Summary {
            p50_ms: m(&|r| r.p50.as_secs_f64() * 1e3),
            p99_ms: m(&|r| r.p99.as_secs_f64() * 1e3),
            calls_per_s: m(&|r| r.calls_per_s),
            mb_per_s: m(&|r| r.mb_per_s),
            failed: runs.iter().map(|r| r.failed).sum(),
            rss_sidecar_mib: runs.iter().map(|r| r.rss_sidecar_kib).max().unwrap_or(0) as f64 / 1024.0,
            rss_app_mib: runs.iter().map(|r| r.rss_app_kib).max().unwrap_or(0) as f64 / 1024.0,
            cpu_us_per_call: m(&|r| r.cpu_us_per_call),
            udp_drops: runs.iter().map(|r| r.udp_drops).sum(),
        }
    }
}

struct Args {
    rounds: usize,
    seconds: f64,
    apis: Vec<Api>,
    conc: Vec<usize>,
    payloads: Vec<usize>,
    modes: Vec<&'static str>,
    hold: Option<String>,
}

fn list<T>(v: &str, f: impl Fn(&str) -> T) -> Vec<T> {
    v.split(',').filter(|s| !s.is_empty()).map(f).collect()
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 2.0,
        apis: vec![Api::Grpc, Api::Http],
        conc: vec![1, 16, 64],
        payloads: vec![100, 16 * 1024, 1024 * 1024],
        modes: vec!["classic", "tcp", "quic"],
        hold: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} wants a value"));
        match arg.as_str() {
            "--quick" => {
                a.rounds = 1;
                a.seconds = 0.3;
                a.conc = vec![1, 16];
                a.payloads = vec![100, 1024 * 1024];
            }
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds S"),
            "--api" => {
                a.apis = list(&val(), |s| match s {
                    "grpc" => Api::Grpc,
                    "http" => Api::Http,
                    _ => panic!("--api grpc,http"),
                })
            }
            "--conc" => a.conc = list(&val(), |s| s.parse().expect("--conc 1,16,64")),
            "--payload" => a.payloads = list(&val(), |s| s.parse().expect("--payload bytes,...")),
            "--modes" => {
                a.modes = list(&val(), |s| match s {
                    "classic" => "classic",
                    "tcp" => "tcp",
                    "quic" => "quic",
                    _ => panic!("--modes classic,tcp,quic"),
                })
            }
            "--hold" => a.hold = Some(val()),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn size(n: usize) -> String {
    match n {
        n if n >= 1024 * 1024 && n % (1024 * 1024) == 0 => format!("{}MiB", n / (1024 * 1024)),
        n if n >= 1024 && n % 1024 == 0 => format!("{}KiB", n / 1024),
        n => format!("{n}B"),
    }
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 { format!("{:.2}x", x / base) } else { "-".into() }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let mut pairs = Vec::new();
    for mode in &args.modes {
        pairs.push(Arc::new(Pair::start(mode).await));
    }
    let idle: Vec<(f64, f64)> = pairs
        .iter()
        .map(|p| (rss_kib(p.sidecar.pid()) as f64 / 1024.0, rss_kib(p.app.pid()) as f64 / 1024.0))
        .collect();
    if let Some(mode) = &args.hold {
        let pair = pairs.iter().find(|p| p.mode == mode).expect("--hold names one of --modes");
        let payload = Bytes::from(vec![0x5a; args.payloads[0]]);
        eprintln!(
            "holding: {mode} {} c{} {} sidecar pid {} app pid {}",
            args.apis[0].name(),
            args.conc[0],
            size(args.payloads[0]),
            pair.sidecar.pid(),
            pair.app.pid()
        );
        // Until SIGTERM or Ctrl-C; then the pairs drop, which kills their processes.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                (lat, _) = load(pair, args.apis[0], args.conc[0], &payload, Duration::from_secs(5)) => {
                    eprintln!("held: {:.0} calls/s", lat.len() as f64 / 5.0);
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        drop(pairs);
        return Ok(());
    }
    let dur = Duration::from_secs_f64(args.seconds);
    println!(
        "cost: {} rounds of {:.1} s a cell; medians over rounds; ratios against classic from the same rounds",
        args.rounds, args.seconds
    );
    println!(
        "{:<5} {:>3} {:>7} {:<8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>9} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6}",
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
        "failed",
        "p50 x",
        "p99 x",
        "calls x",
        "cpu x",
        "RSS x"
    );
    let mut cells = Vec::new();
    let mut failed = 0;
    // Payload outermost: the allocators keep what a cell grew to, so the
    // peak RSS of a cell is that of the largest payload so far, its own.
    for &payload_len in &args.payloads {
        for &conc in &args.conc {
            for &api in &args.apis {
                let payload = Bytes::from(vec![0x5a; payload_len]);
                let mut runs: Vec<Vec<Run>> = vec![Vec::new(); pairs.len()];
                for round in 0..args.rounds {
                    for k in 0..pairs.len() {
                        let i = (k + round) % pairs.len();
                        runs[i].push(drive(&pairs[i], api, conc, &payload, dur).await);
                    }
                }
                let sums: Vec<Summary> = runs.iter().map(|r| Summary::of(r)).collect();
                failed += sums.iter().map(|s| s.failed).sum::<u64>();
                let base = sums[0].clone();
                let base_mode = pairs[0].mode;
                let mut modes = Vec::new();
                for (pair, s) in pairs.iter().zip(&sums) {
                    let vs = pair.mode != base_mode;
                    let r = |x: f64, b: f64| if vs { ratio(x, b) } else { String::new() };
                    println!(
                        "{:<5} {:>3} {:>7} {:<8} {:>8.3} {:>8.3} {:>9.0} {:>8.1} {:>7.1} {:>7.1} {:>9.0} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6}",
                        api.name(),
                        conc,
                        size(payload_len),
                        pair.mode,
                        s.p50_ms,
                        s.p99_ms,
                        s.calls_per_s,
                        s.mb_per_s,
                        s.rss_sidecar_mib,
                        s.rss_app_mib,
                        s.cpu_us_per_call,
                        s.failed,
                        r(s.p50_ms, base.p50_ms),
                        r(s.p99_ms, base.p99_ms),
                        r(s.calls_per_s, base.calls_per_s),
                        r(s.cpu_us_per_call, base.cpu_us_per_call),
                        r(s.rss_sidecar_mib + s.rss_app_mib, base.rss_sidecar_mib + base.rss_app_mib),
                    );
                    modes.push(json!({
                        "mode": pair.mode,
                        "p50_ms": s.p50_ms,
                        "p99_ms": s.p99_ms,
                        "calls_per_s": s.calls_per_s,
                        "mb_per_s": s.mb_per_s,
                        "failed": s.failed,
                        "rss_sidecar_mib": s.rss_sidecar_mib,
                        "rss_app_mib": s.rss_app_mib,
                        "cpu_us_per_call": s.cpu_us_per_call,
                        "udp_rcvbuf_drops": s.udp_drops,
                        "vs_baseline": {
                            "p50": s.p50_ms / base.p50_ms,
                            "p99": s.p99_ms / base.p99_ms,
                            "calls_per_s": s.calls_per_s / base.calls_per_s,
                            "mb_per_s": s.mb_per_s / base.mb_per_s,
                            "cpu_per_call": s.cpu_us_per_call / base.cpu_us_per_call,
                            "rss": (s.rss_sidecar_mib + s.rss_app_mib) / (base.rss_sidecar_mib + base.rss_app_mib),
                        },
                    }));
                }
                cells.push(json!({ "api": api.name(), "concurrency": conc, "payload": payload_len, "modes": modes }));
            }
        }
    }
    println!("idle RSS after setup (MiB, sidecar/app):");
    for (pair, (sc, app)) in pairs.iter().zip(&idle) {
        println!("  {:<8} {sc:.1} / {app:.1}", pair.mode);
    }
    let out = json!({
        "rounds": args.rounds,
        "seconds": args.seconds,
        "idle_rss_mib": pairs.iter().zip(&idle).map(|(p, (sc, app))| json!({"mode": p.mode, "sidecar": sc, "app": app})).collect::<Vec<_>>(),
        "cells": cells,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    Ok(())
}
