//! Soak benchmark: the real `dialbackd` (callback mode, `auto`, API token,
//! advertising the netsim relay) and the real echo app, for 30 minutes,
//! under random faults (a seeded schedule: process kills, NAT rebinding,
//! address changes, blackholes, UDP loss, UDP blocked), with 64 callers on
//! the HTTP API and attackers on loopback the whole time.
//!
//! `cargo bench -p dialback-benches --bench soak`; `-- --quick` (2
//! minutes, for CI), `-- --minutes N`, `-- --seed N` (replay a schedule),
//! `-- --callers N`, `-- --pause-ms N` (each caller's pause between calls),
//! `-- --no-attackers`, `-- --no-faults`. Prints the faults as they happen,
//! then a table per minute, the first LOST calls by send time, and the
//! verdicts, and writes `target/bench-soak.json`; every process's log is
//! kept in `target/soak-logs/`. Exits non-zero only when calls were LOST or
//! a bypass attempt got past the API token; the memory, fd and log verdicts
//! print PASS/MISS without failing the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "soak/args.rs"]
mod args;
#[path = "soak/attackers.rs"]
mod attackers;
#[path = "soak/callers.rs"]
mod callers;
#[path = "soak/faults.rs"]
mod faults;
#[path = "soak/procfs.rs"]
mod procfs;
#[path = "soak/report.rs"]
mod report;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialback_e2e::{AppBuilder, SidecarBuilder};
use dialback_netsim::{Relay, RelayConfig};
use serde_json::json;

use crate::attackers::{ATTACKER_IP, AttackStats, Targets};
use crate::callers::Callers;
use crate::faults::Injector;
use crate::procfs::{APP, Lives, SIDECAR};
use crate::report::{Inputs, PER_MINUTE};

/// The API token the sidecar demands and the callers and the app present.
const TOKEN: &str = "soak-token-0123456789abcdef";
/// How often both processes are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args::parse();
    let seed = args.seed;
    // Every process and temp dir is gone when `run` returns (kill on drop).
    if run(args).await? {
        eprintln!("soak FAILED: calls were LOST or a bypass attempt got past the API token (seed {seed})");
        std::process::exit(1);
    }
    Ok(())
}

/// The whole run; `Ok(true)` when it failed (LOST calls or a security failure).
async fn run(args: args::Args) -> anyhow::Result<bool> {
    dialback_e2e::binaries();
    println!(
        "soak: {} min, seed {} (replay with -- --seed {}), {} callers pausing {} ms, attackers {}, faults {}",
        args.minutes,
        args.seed,
        args.seed,
        args.callers,
        args.pause.as_millis(),
        if args.attackers { "on" } else { "off" },
        if args.faults { "on" } else { "off" },
    );

    // The relay first (its address is what the sidecar advertises), then the sidecar, then the app.
    let relay = Relay::start(RelayConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:9".parse()?)).await?;
    let state = tempfile::tempdir()?;
    let sidecar = SidecarBuilder::callback("echo")
        .args(["--callback-advertise-address", &relay.addr().to_string(), "--dapr-api-token", TOKEN])
        .state_dir(state.path())
        .env("RUST_LOG", "info")
        .spawn()
        .await;
    let callback = sidecar.callback.expect("callback address");
    relay.set_target(callback);
    let mut app = AppBuilder::echo(sidecar.grpc)
        .transport("auto")
        .args(["--local-ip", "127.0.0.2", "--rebind-ip", "127.0.0.3"])
        .env("DAPR_API_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .spawn();
    let on = app.wait_connected().await;
    println!(
        "sidecar pid {} callback {callback}, app pid {} on {on}, relay {}",
        sidecar.pid(),
        app.pid(),
        relay.addr()
    );
    let lives = Arc::new(Mutex::new([Lives::default(), Lives::default()]));
    {
        let mut l = lives.lock().expect("lock");
        l[SIDECAR].born(sidecar.pid(), sidecar.log_path());
        l[APP].born(app.pid(), app.log_path());
    }

    let start = Instant::now();
    let callers = Callers::start(start, args.minutes, sidecar.http, TOKEN, args.callers, args.pause);
    let stats = Arc::new(AttackStats::default());
    let generation = Arc::new(AtomicU64::new(0));
    let attack_tasks = if args.attackers {
        let ip = |port| std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port);
        let targets =
            Targets { http: ip(sidecar.http), grpc: ip(sidecar.grpc), callback, generation: generation.clone() };
        attackers::start(&targets, &stats, args.seed)
    } else {
        Vec::new()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every process's log, kept for a look after a failed run (a killed process's temp dir goes).
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let injector = Injector {
        sidecar,
        app,
        relay,
        lives: lives.clone(),
        down: Arc::new(Mutex::new(Vec::new())),
        progress: callers.progress(),
        generation,
        logs: logs.clone(),
        kept: AtomicU64::new(0),
    };
    let injecting = tokio::spawn(injector.run(args.seed, args.faults, stop_rx));

    // The clock: one sample per tick, tick 0 now, the run ends with the last minute's last tick.
    let mut samples = Vec::new();
    let mut opened = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    // SIGTERM or Ctrl-C ends the run: returning drops the runtime's tasks, and with them
    // the processes (kill on drop), which a signal's default action would orphan.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    for k in 0..=args.minutes * PER_MINUTE {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => anyhow::bail!("interrupted by SIGTERM"),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        }
        let s = procfs::sample(&lives, k, start.elapsed());
        samples.push(s);
        opened.push(stats.opened());
        if k > 0 && k % PER_MINUTE == 0 {
            let [sc, app] = s.procs;
            println!(
                "minute {:>2} done: {} calls answered so far; sidecar {:.1} MiB {} fds, app {:.1} MiB {} fds; \
                 {} attacker connections",
                k / PER_MINUTE - 1,
                callers.ok_so_far(),
                sc.rss_kib as f64 / 1024.0,
                sc.fds,
                app.rss_kib as f64 / 1024.0,
                app.fds,
                stats.opened(),
            );
        }
    }

    // Wind down: finish the fault under way, let the last calls finish, stop the attackers.
    let _ = stop_tx.send(true);
    let (injector, faults) = match injecting.await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let down = injector.down.lock().expect("lock").clone();
    let calls = callers.stop(&down).await;
    for t in &attack_tasks {
        t.abort();
    }
    let attacker_lines = lives.lock().expect("lock")[SIDECAR].attacker_lines(&ATTACKER_IP.to_string());
    let inputs = Inputs {
        samples: &samples,
        attacks_opened: &opened,
        calls: &calls,
        faults: &faults,
        attacker_lines,
        security_failures: args.attackers.then(|| stats.security_failures()),
        minutes: args.minutes,
    };

    let (table, rows) = report::minute_table(&inputs);
    println!(
        "\nper minute (calls by the minute they finished; RSS/fds: medians of warm 10 s samples; log: bytes/minute)"
    );
    table.iter().for_each(|l| println!("{l}"));
    println!("\nfaults ({}):", faults.len());
    report::fault_lines(&faults).iter().for_each(|l| println!("{l}"));
    if !calls.down_reasons.is_empty() {
        println!("connection errors while the sidecar was down (not lost):");
        calls.down_reasons.iter().for_each(|(k, n)| println!("  {n:>6} x {k}"));
    }
    if !calls.lost_calls.is_empty() {
        println!("LOST calls (sent and ended, seconds since the start; logs in {}):", logs.display());
        for l in &calls.lost_calls {
            let later = l.later.as_deref().map(|x| format!(" ({x})")).unwrap_or_default();
            println!("  {:>7.1} .. {:>7.1}  {}: {}{later}", l.sent.as_secs_f64(), l.ended.as_secs_f64(), l.what, l.why);
        }
    }
    if args.attackers {
        println!("attackers (from {ATTACKER_IP}):");
        stats.held_lines().iter().for_each(|l| println!("{l}"));
    }
    let verdicts = report::verdicts(&inputs);
    println!("\nverdict (seed {}):", args.seed);
    for (target, verdict, detail) in &verdicts.lines {
        println!("  {verdict:<4} {target:<40} {detail}");
    }

    let out = json!({
        "minutes": args.minutes,
        "seed": args.seed,
        "callers": args.callers,
        "pause_ms": args.pause.as_millis() as u64,
        "attackers": args.attackers,
        "faults_enabled": args.faults,
        "quick": args.quick,
        "failed": verdicts.failed,
        "verdicts": verdicts
            .lines
            .iter()
            .map(|(t, v, d)| json!({ "target": t, "verdict": v, "detail": d }))
            .collect::<Vec<_>>(),
        "per_minute": rows,
        "calls": callers::report_json(&calls),
        "faults": faults.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
        "attacks": stats.to_json(),
        "sidecar_log_lines_naming_attackers": { "lines": attacker_lines.0, "bytes": attacker_lines.1 },
        "lives_over_a_minute": report::lives(&samples),
        "samples": samples.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", path.display());
    injector.keep_log("sidecar", injector.sidecar.log_path());
    injector.keep_log("app", injector.app.log_path());
    drop(injector);
    Ok(verdicts.failed)
}
