//! `netsim`: run a fault-injecting relay in front of a sidecar, steered over a line-based control socket.
//!
//! Prints `netsim ready addr=<front addr> control=<control addr>` once bound; then each control line
//! (`rebind`, `blackhole on|off`, `block-udp on|off`, `delay <ms>`, `loss <0..1>`, `stats`) gets one answer
//! line (`ok`, the stats, or `error: <why>`). Exits 0 on SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use dialback_netsim::{Relay, RelayConfig, parse_command};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "netsim", about = "UDP + TCP relay on one port that injects network faults")]
struct Cli {
    /// Front address apps dial (UDP and TCP on the same port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to forward: the sidecar's callback address, HOST:PORT.
    #[arg(long)]
    target: String,
    /// Control socket (TCP, one command per line).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Do not relay UDP.
    #[arg(long)]
    no_udp: bool,
    /// Do not relay TCP.
    #[arg(long)]
    no_tcp: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();

    let target = tokio::net::lookup_host(&cli.target)
        .await
        .with_context(|| format!("resolving --target {}", cli.target))?
        .next()
        .with_context(|| format!("--target {} resolved to no address", cli.target))?;
    let mut config = RelayConfig::new(cli.listen, target);
    config.udp = !cli.no_udp;
    config.tcp = !cli.no_tcp;
    let relay = Arc::new(Relay::start(config).await.context("starting the relay")?);
    let control = TcpListener::bind(cli.control).await.with_context(|| format!("binding --control {}", cli.control))?;
    let control_addr = control.local_addr().context("reading the control address")?;

    // Install the signal handlers before announcing readiness, so a SIGTERM right after the ready line counts.
    let shutdown = shutdown_signal()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "netsim ready addr={} control={control_addr}", relay.addr()).context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    tokio::select! {
        r = serve_control(control, Arc::clone(&relay)) => r,
        () = shutdown => Ok(()),
    }
}

/// Accepts control connections forever; fails only if the listener breaks.
async fn serve_control(listener: TcpListener, relay: Arc<Relay>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accepting a control connection")?;
        let relay = Arc::clone(&relay);
        tokio::spawn(async move {
            if let Err(e) = control_session(stream, &relay).await {
                tracing::debug!(error = %e, %peer, "netsim control connection ended");
            }
        });
    }
}

/// Answers each line of one control connection until it closes.
async fn control_session(stream: TcpStream, relay: &Relay) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let mut answer = match parse_command(&line) {
            Ok(cmd) => cmd.apply(relay),
            Err(why) => format!("error: {why}"),
        };
        answer.push('\n');
        wr.write_all(answer.as_bytes()).await?;
    }
    Ok(())
}

/// Installs the SIGTERM / Ctrl-C handlers now; the returned future resolves on either. Fails if a handler
/// cannot be installed.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Returns a future that resolves on Ctrl-C (or if waiting for it fails); never fails itself.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
