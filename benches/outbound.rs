//! The app's own calls to its sidecar's API: as HTTP/3 on its QUIC channel
//! (**channel**: `Handle::sidecar().api()`) against the API port over TCP
//! (**port**: a plain `SidecarClient`, HTTP/2 on one connection), side by
//! side in one run. The bench process is the app (the SDK in-process, a
//! QUIC channel to a real dialbackd). It calls `Dapr/GetMetadata`
//! (**metadata**: the sidecar answers alone) and `Dapr/InvokeService` on
//! itself (**invoke**: the sidecar sends the call back over the channel and
//! the answer returns the same way), with *c* calls in flight. With a round
//! trip set, both paths go through netsim relays that delay them alike
//! (UDP for the channel, TCP for the API port). Within a round the two modes
//! run back to back, in an order that rotates by round; medians over rounds.
//!
//! `cargo bench -p dialback-benches --bench outbound` (3 rounds of 2 s a
//! cell); `-- --quick` for a smoke run; `-- --rounds N`, `-- --seconds S`,
//! `-- --rtt-ms 0,50`, `-- --conc 1,16`, `-- --payload 100,16384` to
//! choose. Prints one table and writes `target/bench-outbound.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialback::proto::common::InvokeRequest;
use dialback::proto::runtime::dapr_client::DaprClient;
use dialback::proto::runtime::{GetMetadataRequest, InvokeServiceRequest};
use dialback::{ApiChannel, CallbackServer, Handle, SidecarClient, SidecarOptions, Transports};
use dialback_benches::drive::cpu_time;
use dialback_benches::drive::{ratio, size};
use dialback_benches::{median, percentile};
use dialback_e2e::{Sidecar, SidecarBuilder, eventually};
use dialback_netsim::{Relay, RelayConfig};
use serde_json::json;

/// A sidecar, this process as its app, and the two ways to its API.
struct Setup {
    sc: Sidecar,
    handle: Handle,
    channel: ApiChannel,
    port: ApiChannel,
    _relays: Vec<Relay>,
}

/// A TCP relay to `target` that delays both ways by half of `rtt`.
async fn relay(target: std::net::SocketAddr, rtt: Duration) -> Relay {
    let config = RelayConfig { udp: false, ..RelayConfig::new("127.0.0.1:0".parse().unwrap(), target) };
    let r = Relay::start(config).await.unwrap();
    r.set_delay(rtt / 2);
    r
}

async fn setup(rtt: Duration) -> Setup {
    // The sidecar advertises the channel's relay, so the app dials through it.
    let (ch_relay, sc) = SidecarBuilder::callback("echo").spawn_behind_relay().await;
    ch_relay.set_delay(rtt / 2);
    let api_relay = relay(format!("127.0.0.1:{}", sc.grpc).parse().unwrap(), rtt).await;
    let options = SidecarOptions {
        grpc_endpoint: format!("http://127.0.0.1:{}", api_relay.addr().port()),
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let channel_options = dialback::ChannelOptions { transports: Transports::QUIC, ..Default::default() };
    let handle = CallbackServer::builder()
        .sidecar(options.clone())
        .options(channel_options)
        .invoke_handler("echo", |req| async move {
            Ok(dialback::proto::common::InvokeResponse { data: req.into_inner().data, content_type: String::new() })
        })
        .start()
        .unwrap();
    handle.wait_connected(Duration::from_secs(60)).await.expect("the in-process app connects");
    let sidecar = handle.sidecar();
    eventually("the app's API calls to ride the channel", Duration::from_secs(60), || async {
        sidecar.over_channel().then_some(())
    })
    .await;
    let port = SidecarClient::new(options).unwrap().api();
    Setup { sc, handle, channel: sidecar.api(), port, _relays: vec![ch_relay, api_relay] }
}

/// What one cell measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Metadata,
    Invoke(usize),
}

impl Call {
    fn name(self) -> String {
        match self {
            Call::Metadata => "metadata".into(),
            Call::Invoke(n) => format!("invoke {}", size(n)),
        }
    }
}

async fn one(api: &ApiChannel, call: Call, data: &[u8]) -> Result<(), tonic::Status> {
    let mut c = DaprClient::new(api.clone());
    match call {
        Call::Metadata => c.get_metadata(GetMetadataRequest {}).await.map(drop),
        Call::Invoke(_) => {
            let req = InvokeServiceRequest {
                id: "echo".into(),
                message: Some(InvokeRequest {
                    method: "echo".into(),
                    data: Some(prost_types::Any { type_url: String::new(), value: data.to_vec() }),
                    content_type: "application/octet-stream".into(),
                    http_extension: None,
                }),
            };
            let got = c.invoke_service(req).await?;
            let len = got.get_ref().data.as_ref().map_or(0, |d| d.value.len());
            if len != data.len() {
                return Err(tonic::Status::data_loss(format!("{len} bytes came back of {}", data.len())));
            }
            Ok(())
        }
    }
}

/// One mode in one cell of one round.
#[derive(Clone, Copy, Default)]
struct Run {
    p50: f64,
    p99: f64,
    calls_per_s: f64,
    app_us: f64,
    sidecar_us: f64,
    failed: u64,
}

async fn drive(api: &ApiChannel, sidecar_pid: u32, call: Call, conc: usize, dur: Duration) -> Run {
    let data = Arc::new(vec![7u8; if let Call::Invoke(n) = call { n } else { 0 }]);
    let warm = Instant::now() + dur / 4;
    while Instant::now() < warm {
        let _ = one(api, call, &data).await;
    }
    let (app0, sc0) = (cpu_time(std::process::id()), cpu_time(sidecar_pid));
    let start = Instant::now();
    let until = start + dur;
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (api, data) = (api.clone(), data.clone());
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0u64);
                while Instant::now() < until {
                    let t = Instant::now();
                    match one(&api, call, &data).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.len().max(1) as f64;
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / n;
    Run {
        p50: percentile(&lat, 50.0).unwrap_or_default().as_secs_f64() * 1000.0,
        p99: percentile(&lat, 99.0).unwrap_or_default().as_secs_f64() * 1000.0,
        calls_per_s: lat.len() as f64 / secs,
        app_us: per_call(cpu_time(std::process::id()).saturating_sub(app0)),
        sidecar_us: per_call(cpu_time(sidecar_pid).saturating_sub(sc0)),
        failed,
    }
}

/// Medians over rounds of each figure.
fn summary(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
    Run {
        p50: m(|r| r.p50),
        p99: m(|r| r.p99),
        calls_per_s: m(|r| r.calls_per_s),
        app_us: m(|r| r.app_us),
        sidecar_us: m(|r| r.sidecar_us),
        failed: runs.iter().map(|r| r.failed).sum(),
    }
}

fn list<T: std::str::FromStr>(args: &[String], flag: &str, default: Vec<T>) -> Vec<T> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = list(&args, "--rounds", vec![if quick { 1 } else { 3 }])[0];
    let seconds: f64 = list(&args, "--seconds", vec![if quick { 0.3 } else { 2.0 }])[0];
    let rtts: Vec<u64> = list(&args, "--rtt-ms", if quick { vec![0] } else { vec![0, 50] });
    let concs: Vec<usize> = list(&args, "--conc", vec![1, 16]);
    let payloads: Vec<usize> = list(&args, "--payload", if quick { vec![100] } else { vec![100, 16384] });
    let dur = Duration::from_secs_f64(seconds);
    let mut calls = vec![Call::Metadata];
    calls.extend(payloads.iter().map(|&n| Call::Invoke(n)));

    println!(
        "{:>4} {:<14} {:>3} {:<8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "rtt",
        "call",
        "c",
        "mode",
        "p50 ms",
        "p99 ms",
        "calls/s",
        "app us/c",
        "sc us/c",
        "failed",
        "p50 x",
        "p99 x",
        "calls x",
        "cpu x"
    );
    let mut json_rows = Vec::new();
    let mut failures = 0;
    for &rtt in &rtts {
        let s = setup(Duration::from_millis(rtt)).await;
        for &call in &calls {
            for &conc in &concs {
                let (mut ch, mut port) = (Vec::new(), Vec::new());
                for round in 0..rounds {
                    if round % 2 == 0 {
                        ch.push(drive(&s.channel, s.sc.pid(), call, conc, dur).await);
                        port.push(drive(&s.port, s.sc.pid(), call, conc, dur).await);
                    } else {
                        port.push(drive(&s.port, s.sc.pid(), call, conc, dur).await);
                        ch.push(drive(&s.channel, s.sc.pid(), call, conc, dur).await);
                    }
                }
                let (ch, port) = (summary(&ch), summary(&port));
                failures += ch.failed + port.failed;
                for (mode, r) in [("port", port), ("channel", ch)] {
                    let x = |a: f64, b: f64| if mode == "port" { String::new() } else { ratio(a, b) };
                    println!(
                        "{:>4} {:<14} {:>3} {:<8} {:>8.3} {:>8.3} {:>9.0} {:>8.0} {:>8.0} {:>6} {:>7} {:>7} {:>7} {:>7}",
                        rtt,
                        call.name(),
                        conc,
                        mode,
                        r.p50,
                        r.p99,
                        r.calls_per_s,
                        r.app_us,
                        r.sidecar_us,
                        r.failed,
                        x(r.p50, port.p50),
                        x(r.p99, port.p99),
                        x(r.calls_per_s, port.calls_per_s),
                        x(r.app_us + r.sidecar_us, port.app_us + port.sidecar_us),
                    );
                    json_rows.push(json!({
                        "rtt_ms": rtt, "call": call.name(), "conc": conc, "mode": mode,
                        "p50_ms": r.p50, "p99_ms": r.p99, "calls_per_s": r.calls_per_s,
                        "app_us_per_call": r.app_us, "sidecar_us_per_call": r.sidecar_us, "failed": r.failed,
                    }));
                }
            }
        }
        s.handle.shutdown().await;
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-outbound.json");
    let _ = std::fs::write(&out, serde_json::to_vec_pretty(&json_rows).unwrap_or_default());
    if failures > 0 {
        eprintln!("{failures} calls failed");
        std::process::exit(1);
    }
}
