//! Driving a Dapr API (dialbackd's or daprd's) with invocations of an echo
//! app, as the cost and bridge benchmarks do: `c` calls in flight for a
//! fixed time, rounds whose order rotates, percentiles and medians over
//! rounds, and the CPU time and RSS of the processes on the call's path,
//! read from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialback::{SidecarClient, SidecarOptions};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{median, percentile};

/// How long one call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The form of invocation a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// gRPC `dapr.proto.runtime.v1.Dapr/InvokeService`, one HTTP/2 connection.
    Grpc,
    /// HTTP `POST /v1.0/invoke/<app-id>/method/echo`, a pooled HTTP/1.1 client.
    Http,
}

impl Api {
    /// `grpc` or `http`.
    pub fn name(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::Http => "http",
        }
    }
}

/// One mode's Dapr API on loopback, its clients, and the processes a call
/// goes through (whose CPU time and RSS are measured).
pub struct Endpoint {
    /// The mode's name in tables and JSON.
    pub mode: &'static str,
    /// The processes on the path, as (role, pid), in the order of [`Run`]'s per-process figures.
    pub procs: Vec<(&'static str, u32)>,
    app_id: String,
    grpc: SidecarClient,
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
}

impl Endpoint {
    /// Clients of the Dapr API at `127.0.0.1:http_port` and `:grpc_port`
    /// that invoke method `echo` of `app_id`.
    pub fn new(
        mode: &'static str,
        http_port: u16,
        grpc_port: u16,
        app_id: &str,
        procs: Vec<(&'static str, u32)>,
    ) -> anyhow::Result<Endpoint> {
        let grpc = SidecarClient::new(SidecarOptions {
            grpc_endpoint: format!("http://127.0.0.1:{grpc_port}"),
            timeout: CALL_TIMEOUT,
            ..SidecarOptions::default()
        })?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Idle connections kept for less than the sidecar's HTTP/1 keep-alive (10 s).
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(128)
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        let url = format!("http://127.0.0.1:{http_port}/v1.0/invoke/{app_id}/method/echo");
        Ok(Endpoint { mode, procs, app_id: app_id.to_string(), grpc, http, url })
    }

    /// The pid of the process with `role`, 0 when there is none.
    pub fn pid(&self, role: &str) -> u32 {
        self.procs.iter().find(|(r, _)| *r == role).map_or(0, |(_, p)| *p)
    }

    /// One call; `Ok` only when as many bytes came back as were sent.
    pub async fn call(&self, api: Api, payload: &Bytes) -> anyhow::Result<()> {
        let got = match api {
            Api::Grpc => {
                let r = self.grpc.invoke(&self.app_id, "echo", payload.to_vec(), "application/octet-stream").await?;
                r.data.map(|d| d.value.len()).unwrap_or(0)
            }
            Api::Http => {
                let req = http::Request::post(&self.url)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(payload.clone()))?;
                let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req)).await??;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                anyhow::ensure!(status == 200, "status {status}: {}", String::from_utf8_lossy(&body));
                body.len()
            }
        };
        anyhow::ensure!(got == payload.len(), "{got} bytes came back of {}", payload.len());
        Ok(())
    }
}

/// Resident set size of `pid` in KiB (`VmRSS`), 0 when unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    dialback_e2e::proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// CPU time `pid` has used so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
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
pub fn udp_rcvbuf_errors() -> u64 {
    udp_counter("RcvbufErrors")
}

/// UDP datagrams sent, machine-wide (`OutDatagrams`): while one pair runs
/// alone, both ends' QUIC packets.
pub fn udp_out_datagrams() -> u64 {
    udp_counter("OutDatagrams")
}

/// One of the kernel's UDP counters in `/proc/net/snmp` (0 where unreadable).
fn udp_counter(name: &str) -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What one endpoint did in one cell of one round.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Median latency of the answered calls.
    pub p50: Duration,
    /// 99th percentile latency of the answered calls.
    pub p99: Duration,
    /// Answered calls per second.
    pub calls_per_s: f64,
    /// Payload megabytes (one way) per second.
    pub mb_per_s: f64,
    /// Calls that failed.
    pub failed: u64,
    /// Peak RSS of each of the endpoint's processes, KiB, in [`Endpoint::procs`] order.
    pub rss_kib: Vec<u64>,
    /// CPU time of each of the endpoint's processes per answered call, µs, in [`Endpoint::procs`] order.
    pub cpu_us_per_call: Vec<f64>,
    /// UDP datagrams the kernel dropped meanwhile (machine-wide).
    pub udp_drops: u64,
    /// UDP datagrams sent meanwhile per answered call (machine-wide: both
    /// ends of a QUIC channel; 0 over TCP).
    pub datagrams_per_call: f64,
}

/// Drives `ep` at `conc` calls in flight for `dur` (after a short warm-up).
pub async fn drive(ep: &Arc<Endpoint>, api: Api, conc: usize, payload: &Bytes, dur: Duration) -> Run {
    let warmup = (dur / 5).max(Duration::from_millis(100));
    let _ = load(ep, api, conc, payload, warmup).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pids: Vec<u32> = ep.procs.iter().map(|(_, p)| *p).collect();
    let sampler = {
        let (stop, pids) = (stop.clone(), pids.clone());
        tokio::spawn(async move {
            let mut peak = vec![0u64; pids.len()];
            while !stop.load(Ordering::Relaxed) {
                for (m, &pid) in peak.iter_mut().zip(&pids) {
                    *m = (*m).max(rss_kib(pid));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let cpu0: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect();
    let (drops0, out0) = (udp_rcvbuf_errors(), udp_out_datagrams());
    let t0 = Instant::now();
    let (lat, failed) = load(ep, api, conc, payload, dur).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu: Vec<Duration> = pids.iter().zip(&cpu0).map(|(&p, c0)| cpu_time(p).saturating_sub(*c0)).collect();
    let udp_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    let datagrams = udp_out_datagrams().saturating_sub(out0) as f64;
    stop.store(true, Ordering::Relaxed);
    let rss_kib = sampler.await.unwrap_or_else(|_| vec![0; pids.len()]);
    let calls = lat.len() as f64;
    Run {
        p50: percentile(&lat, 50.0).unwrap_or_default(),
        p99: percentile(&lat, 99.0).unwrap_or_default(),
        calls_per_s: calls / elapsed,
        mb_per_s: calls * payload.len() as f64 / elapsed / 1e6,
        failed,
        rss_kib,
        cpu_us_per_call: cpu.iter().map(|c| if calls > 0.0 { c.as_secs_f64() * 1e6 / calls } else { 0.0 }).collect(),
        udp_drops,
        datagrams_per_call: if calls > 0.0 { datagrams / calls } else { 0.0 },
    }
}

/// `conc` workers calling back to back until `dur` is up: the latencies of
/// the answered calls and the count of failed ones (the first failure of
/// each worker is printed).
pub async fn load(ep: &Arc<Endpoint>, api: Api, conc: usize, payload: &Bytes, dur: Duration) -> (Vec<Duration>, u64) {
    let deadline = Instant::now() + dur;
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let ep = ep.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match ep.call(api, &payload).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => {
                            failed += 1;
                            if failed == 1 {
                                eprintln!("{} {} call failed: {e:#}", ep.mode, api.name());
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
        match w.await {
            Ok((l, f)) => {
                lat.extend(l);
                failed += f;
            }
            Err(e) => {
                eprintln!("{} {} worker died: {e}", ep.mode, api.name());
                failed += 1;
            }
        }
    }
    (lat, failed)
}

/// The medians over rounds of one endpoint in one cell.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Median over rounds of the p50, ms.
    pub p50_ms: f64,
    /// Median over rounds of the p99, ms.
    pub p99_ms: f64,
    /// Median over rounds of calls/s.
    pub calls_per_s: f64,
    /// Median over rounds of MB/s.
    pub mb_per_s: f64,
    /// Failed calls, all rounds.
    pub failed: u64,
    /// Peak RSS of each process over the rounds, MiB.
    pub rss_mib: Vec<f64>,
    /// Median over rounds of the CPU time of all the processes together per call, µs.
    pub cpu_us_per_call: f64,
    /// Median over rounds of each process's CPU time per call, µs.
    pub cpu_us_per_call_each: Vec<f64>,
    /// UDP datagrams dropped, all rounds.
    pub udp_drops: u64,
    /// Median over rounds of the UDP datagrams sent per call.
    pub datagrams_per_call: f64,
}

impl Summary {
    /// The medians of `runs` (failures and drops summed, RSS peaks maxed).
    pub fn of(runs: &[Run]) -> Summary {
        let m = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        let n = runs.iter().map(|r| r.rss_kib.len().max(r.cpu_us_per_call.len())).max().unwrap_or(0);
        Summary {
            p50_ms: m(&|r| r.p50.as_secs_f64() * 1e3),
            p99_ms: m(&|r| r.p99.as_secs_f64() * 1e3),
            calls_per_s: m(&|r| r.calls_per_s),
            mb_per_s: m(&|r| r.mb_per_s),
            failed: runs.iter().map(|r| r.failed).sum(),
            rss_mib: (0..n)
                .map(|i| runs.iter().filter_map(|r| r.rss_kib.get(i)).max().copied().unwrap_or(0) as f64 / 1024.0)
                .collect(),
            cpu_us_per_call: m(&|r| r.cpu_us_per_call.iter().sum()),
            cpu_us_per_call_each: (0..n).map(|i| m(&|r| r.cpu_us_per_call.get(i).copied().unwrap_or(0.0))).collect(),
            udp_drops: runs.iter().map(|r| r.udp_drops).sum(),
            datagrams_per_call: m(&|r| r.datagrams_per_call),
        }
    }

    /// The peak RSS of all the processes together, MiB.
    pub fn rss_total_mib(&self) -> f64 {
        self.rss_mib.iter().sum()
    }
}

/// Drives every endpoint in turn for `dur`, `rounds` times, the order
/// rotating by one each round (so no mode always goes first, or always
/// after the same one); the medians over rounds, in `eps` order.
pub async fn rotate(
    eps: &[Arc<Endpoint>],
    api: Api,
    conc: usize,
    payload: &Bytes,
    rounds: usize,
    dur: Duration,
) -> Vec<Summary> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); eps.len()];
    for round in 0..rounds {
        for k in 0..eps.len() {
            let i = (k + round) % eps.len();
            runs[i].push(drive(&eps[i], api, conc, payload, dur).await);
        }
    }
    runs.iter().map(|r| Summary::of(r)).collect()
}

/// One mode's figures in one cell, with the baseline's (the first mode's)
/// from the same rounds, for a benchmark's table row and JSON.
pub struct Row<'a> {
    /// The API driven.
    pub api: Api,
    /// Calls in flight.
    pub conc: usize,
    /// Payload size, bytes.
    pub payload_len: usize,
    /// The mode's endpoint.
    pub ep: &'a Endpoint,
    /// The mode's medians.
    pub s: &'a Summary,
    /// The baseline's medians.
    pub base: &'a Summary,
}

impl Row<'_> {
    /// `x / base` as a ratio column, blank on the baseline's own row.
    pub fn ratio(&self, x: f64, base: f64) -> String {
        if std::ptr::eq(self.s, self.base) { String::new() } else { ratio(x, base) }
    }
}

/// Every cell of `plan` (payload outermost: allocators keep what a cell
/// grew to, so a cell's peak RSS is that of the largest payload so far,
/// its own; then concurrency, then API), each driven with [`rotate`]; `row`
/// prints one mode's row and returns its JSON. Returns the cells' JSON and
/// the calls that failed.
pub async fn cells(
    eps: &[Arc<Endpoint>],
    plan: &Plan,
    dur: Duration,
    mut row: impl FnMut(&Row<'_>) -> serde_json::Value,
) -> (Vec<serde_json::Value>, u64) {
    let (mut cells, mut failed) = (Vec::new(), 0);
    for &payload_len in &plan.payloads {
        for &conc in &plan.conc {
            for &api in &plan.apis {
                let payload = Bytes::from(vec![0x5a; payload_len]);
                let sums = rotate(eps, api, conc, &payload, plan.rounds, dur).await;
                failed += sums.iter().map(|s| s.failed).sum::<u64>();
                let modes: Vec<_> = (eps.iter().zip(&sums))
                    .map(|(ep, s)| row(&Row { api, conc, payload_len, ep, s, base: &sums[0] }))
                    .collect();
                cells.push(serde_json::json!({
                    "api": api.name(), "concurrency": conc, "payload": payload_len, "modes": modes,
                }));
            }
        }
    }
    (cells, failed)
}

/// Drives one cell of `ep` until SIGTERM or Ctrl-C, printing `held: N calls/s`
/// every 5 s, for attaching a profiler.
pub async fn hold(ep: &Arc<Endpoint>, api: Api, conc: usize, payload: &Bytes) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            (lat, _) = load(ep, api, conc, payload, Duration::from_secs(5)) => {
                eprintln!("held: {:.0} calls/s", lat.len() as f64 / 5.0);
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// What to run: rounds, time per cell and the cells, from the command line.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Rounds per cell.
    pub rounds: usize,
    /// Seconds each mode is driven per cell and round (after its warm-up).
    pub seconds: f64,
    /// The APIs, in table order.
    pub apis: Vec<Api>,
    /// Calls in flight.
    pub conc: Vec<usize>,
    /// Payload sizes, bytes.
    pub payloads: Vec<usize>,
    /// The modes; the first is the baseline of the ratios.
    pub modes: Vec<&'static str>,
    /// `--hold MODE`: set up, then drive MODE's first cell until killed.
    pub hold: Option<String>,
}

impl Plan {
    /// These defaults overridden by the command line: `--rounds N`,
    /// `--seconds S`, `--api grpc,http`, `--conc 1,64`, `--payload 100,16384`,
    /// `--modes` (of `known`), `--hold MODE`, and `--quick`, which applies
    /// `quick` where it stands. Panics with the usage of a bad flag.
    pub fn from_args(mut self, known: &[&'static str], quick: impl Fn(&mut Plan)) -> Plan {
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut val = || it.next().unwrap_or_else(|| panic!("{arg} wants a value"));
            match arg.as_str() {
                "--quick" => quick(&mut self),
                "--rounds" => self.rounds = val().parse().unwrap_or_else(|_| panic!("--rounds N")),
                "--seconds" => self.seconds = val().parse().unwrap_or_else(|_| panic!("--seconds S")),
                "--api" => {
                    self.apis = list(&val(), |s| match s {
                        "grpc" => Api::Grpc,
                        "http" => Api::Http,
                        _ => panic!("--api grpc,http"),
                    })
                }
                "--conc" => self.conc = list(&val(), |s| s.parse().unwrap_or_else(|_| panic!("--conc 1,16,64"))),
                "--payload" => {
                    self.payloads = list(&val(), |s| s.parse().unwrap_or_else(|_| panic!("--payload bytes,...")))
                }
                "--modes" => {
                    self.modes = list(&val(), |s| {
                        known.iter().copied().find(|k| *k == s).unwrap_or_else(|| panic!("--modes {}", known.join(",")))
                    })
                }
                "--hold" => self.hold = Some(val()),
                "--bench" => {}
                other => panic!("unknown flag {other}"),
            }
        }
        self
    }
}

fn list<T>(v: &str, f: impl Fn(&str) -> T) -> Vec<T> {
    v.split(',').filter(|s| !s.is_empty()).map(f).collect()
}

/// A payload size as `100B`, `16KiB`, `1MiB`.
pub fn size(n: usize) -> String {
    match n {
        n if n >= 1024 * 1024 && n % (1024 * 1024) == 0 => format!("{}MiB", n / (1024 * 1024)),
        n if n >= 1024 && n % 1024 == 0 => format!("{}KiB", n / 1024),
        n => format!("{n}B"),
    }
}

/// `x / base` as `1.23x`, or `-` when there is no base.
pub fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 { format!("{:.2}x", x / base) } else { "-".into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let run = |p50_ms: u64, cpu: [f64; 2]| Run {
            p50: Duration::from_millis(p50_ms),
            calls_per_s: p50_ms as f64,
            rss_kib: vec![1024 * p50_ms, 2048],
            cpu_us_per_call: cpu.to_vec(),
            failed: 1,
            ..Run::default()
        };
        let s = Summary::of(&[run(3, [10.0, 1.0]), run(1, [30.0, 3.0]), run(2, [20.0, 2.0])]);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.calls_per_s, 2.0);
        assert_eq!(s.failed, 3);
        assert_eq!(s.rss_mib, vec![3.0, 2.0]);
        assert_eq!(s.cpu_us_per_call, 22.0);
        assert_eq!(s.cpu_us_per_call_each, vec![20.0, 2.0]);
        assert_eq!(s.rss_total_mib(), 5.0);
        assert_eq!(size(100), "100B");
        assert_eq!(size(16384), "16KiB");
        assert_eq!(size(1 << 20), "1MiB");
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(3.0, 0.0), "-");
    }
}
