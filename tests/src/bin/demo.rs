//! The dialback demo: real `dialbackd` and echo app processes, calls
//! through the sidecar's HTTP API over QUIC and over TCP+TLS, and each side
//! killed and restarted once, with the times it took to be reachable again.
//!
//! Run: `cargo run -p dialback-e2e --bin demo`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dialback_e2e::{AppBuilder, CallLoop, Sidecar, SidecarBuilder, binaries, http_call, tcp_listening_sockets};
use dialback_netsim::{Relay, RelayConfig};

/// Runs `event` with calls flowing every 5 ms and says what the callers saw.
async fn under_load<F: std::future::Future<Output = ()>>(sc: &Sidecar, what: &str, event: F) -> String {
    let calls = CallLoop::start(sc.http, "echo", "m", Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    event.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = calls.stop(Duration::from_secs(30)).await;
    let worst = s.outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    let line = format!(
        "{} calls, {} answered, {} failed, {} lost, slowest {}",
        s.sent,
        s.ok(),
        s.failures().len(),
        s.lost(),
        ms(worst)
    );
    println!("{what}: {line}");
    line
}

/// Starts a call every 5 ms, each on its own (as a steady stream of
/// callers would), until one succeeds; returns its reply and the time from
/// the start to its answer.
async fn first_success(sc: &Sidecar, method: &str, body: &str) -> anyhow::Result<(String, Duration)> {
    let start = Instant::now();
    let url = format!("{}/v1.0/invoke/echo/method/{method}", sc.http_base());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (url, body, tx) = (url.clone(), body.to_string(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(r) = http_call("POST", &url, &[("content-type", "text/plain")], body).await
                        && r.status == 200
                    {
                        let _ = tx.send((r.text(), start.elapsed()));
                    }
                });
            }
            Some(done) = rx.recv() => return Ok(done),
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "no successful call within 60s");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("== dialback demo ==");
    println!("building dialbackd and the echo app ...");
    let built = Instant::now();
    binaries();
    println!("built in {:.1} s\n", built.elapsed().as_secs_f64());
    let mut rows = Vec::new();
    let mut events = Vec::new();
    for transport in ["quic", "tcp"] {
        println!("-- transport: {transport} --");
        // A relay on loopback stands for the network between app and sidecar.
        let relay = Relay::start(RelayConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:9".parse()?)).await?;
        let mut sc = SidecarBuilder::callback("echo")
            .args(["--callback-advertise-address".to_string(), relay.addr().to_string()])
            .spawn()
            .await;
        relay.set_target(sc.callback.expect("callback address"));
        println!(
            "sidecar up: HTTP :{}  gRPC :{}  callback {}",
            sc.http,
            sc.grpc,
            sc.callback.map(|a| a.to_string()).unwrap_or_default()
        );
        let app_builder = AppBuilder::echo(sc.grpc).transport(transport).args([
            "--local-ip",
            "127.0.0.2",
            "--rebind-ip",
            "127.0.0.3",
        ]);
        let started = Instant::now();
        let mut app = app_builder.spawn();
        let t = app.wait_connected().await;
        println!("app (pid {}) dialed out over {t} in {}", app.pid(), ms(started.elapsed()));
        let listening = tcp_listening_sockets(app.pid());
        println!(
            "app's listening TCP sockets: {}",
            if listening.is_empty() { "none".into() } else { listening.join(", ") }
        );

        let (reply, took) = first_success(&sc, "hello", "hi from the demo").await?;
        println!("POST /v1.0/invoke/echo/method/hello -> {reply:?} in {}", ms(took));
        let (who, _) = first_success(&sc, "whoami", "").await?;
        println!("whoami -> {who:?}");
        rows.push((transport, "first call", took));

        // The network changes under the app: its address moves (Wi-Fi to cellular).
        let line = under_load(&sc, "app address 127.0.0.2 -> 127.0.0.3 (SIGUSR1)", async {
            app.signal("USR1");
            app.wait_line("echo: rebound").await;
        })
        .await;
        let md = dialback_e2e::metadata(sc.http).await?;
        println!(
            "  the channel is still {} (peer as the sidecar sees it: {})",
            md["appChannel"]["transport"], md["appChannel"]["peerAddress"]
        );
        events.push((transport, "address change", line));
        // A NAT in the path forgets the mapping and picks a new port.
        let line = under_load(&sc, "NAT rebinding (relay moves to a new source port)", async {
            relay.rebind();
        })
        .await;
        events.push((transport, "NAT rebinding", line));
        if transport == "tcp" {
            app.wait_connected().await;
        }

        // The app dies and comes back.
        app.kill().await;
        println!("app killed (SIGKILL)");
        let started = Instant::now();
        let mut app = app_builder.spawn();
        let (_, _) = first_success(&sc, "hello", "again").await?;
        app.wait_connected().await;
        let back = started.elapsed();
        println!("app restarted; first successful call {} after the new process started", ms(back));
        rows.push((transport, "app restart", back));

        // The sidecar dies and comes back on the same ports.
        sc.kill().await;
        println!("sidecar killed (SIGKILL)");
        let started = Instant::now();
        let sc2 = sc.restart().await;
        let ready = started.elapsed();
        let (_, took) = first_success(&sc2, "hello", "after restart").await?;
        println!(
            "sidecar restarted (ready in {}); the app was reachable again {} after the ready line",
            ms(ready),
            ms(took)
        );
        rows.push((transport, "sidecar restart", took));
        let md = dialback_e2e::metadata(sc2.http).await?;
        println!("metadata appChannel: {}\n", md["appChannel"]);
        drop(app);
        drop(sc2);
    }
    println!("== summary (one run; see docs/benchmarks.md for medians) ==");
    println!("{:<6} {:<16} {:>12}", "transport", "event", "time");
    for (t, e, d) in rows {
        println!("{t:<9} {e:<16} {:>12}", ms(d));
    }
    println!("\nnetwork changes with a call every 5 ms:");
    for (t, e, line) in events {
        println!("{t:<9} {e:<16} {line}");
    }
    Ok(())
}
