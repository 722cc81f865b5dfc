//! The echo app: serves Dapr's `AppCallback` to its sidecar over a callback
//! channel, with no listening socket. `OnInvoke` returns the request's data
//! and content type unchanged; method `whoami` returns the transport in use;
//! method `sleep/<ms>` echoes after waiting that long (at most 30 s), for
//! trying calls in flight across restarts; a call carrying the header
//! (metadata) `x-echo-method` is answered with the method name it arrived as.
//!
//! ```text
//! cargo run -p dialbackd -- --app-id echo --enable-callback-channel   # in one shell
//! DAPR_GRPC_PORT=50001 cargo run -p dialback --example echo           # in another
//! ```
//!
//! It prints one line per channel change (`echo: connected transport=quic ...`).
//! SIGUSR1 moves its QUIC socket to a new port, as on a network change.
//!
//! With `--call-app <app-id>` it also makes calls of its own: it invokes
//! method `ping` of that app through its sidecar every `--call-every-ms`,
//! with Dapr's gRPC API (`--call-api grpc`, the default) or its HTTP API
//! (`--call-api http`: `POST /v1.0/invoke/<app-id>/method/ping`), over
//! HTTP/3 on the channel while the channel is QUIC, else to the API port of
//! that kind (`DAPR_GRPC_PORT`, `DAPR_HTTP_PORT`), and prints
//! `echo: outbound calls=<n> failed=<n> over_channel=<n>` every 25 calls,
//! and a line for each failure.
//!
//! With `--listen 127.0.0.1:0` it is instead a classic app: it serves the same
//! handler on a listening gRPC port for a sidecar started with `--app-port`,
//! and prints `echo: listening port=<port>` (the cost benchmark's baseline).

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use dialback::proto::common::{InvokeRequest, InvokeResponse};
use dialback::{CallContext, CallbackServer, ChannelOptions, ChannelState, SidecarOptions, Transports};

/// Echo app for dialback.
#[derive(Parser, Debug)]
struct Args {
    /// Transports to use: quic, tcp or auto.
    #[arg(long, env = "DIALBACK_TRANSPORT", default_value = "auto")]
    transport: Transports,
    /// Local IP to dial from.
    #[arg(long)]
    local_ip: Option<IpAddr>,
    /// Do not watch the kernel's network changes (move only on SIGUSR1).
    #[arg(long)]
    no_watch_network: bool,
    /// On SIGUSR1, move to this local IP (default: a new port on the same IP).
    #[arg(long)]
    rebind_ip: Option<IpAddr>,
    /// While on TCP, how often to try QUIC again, in ms.
    #[arg(long, value_parser = parse_ms, default_value = "5000")]
    quic_probe_ms: Duration,
    /// Keepalive interval on a quiet channel, in ms.
    #[arg(long, value_parser = parse_ms, default_value = "2000")]
    keepalive_ms: Duration,
    /// Declare the channel dead after this long without hearing the sidecar, in ms.
    #[arg(long, value_parser = parse_ms, default_value = "6000")]
    idle_timeout_ms: Duration,
    /// After being replaced by another instance, how often to check whether
    /// the channel is free again, in ms.
    #[arg(long, value_parser = parse_ms, default_value = "15000")]
    standby_probe_ms: Duration,
    /// The largest message the app accepts, in bytes (told to the sidecar).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// The mobile liveness profile: one keepalive per beat (this many ms;
    /// 25000 is the profile's own) and nothing else while idle; replaces
    /// --keepalive-ms and --idle-timeout-ms.
    #[arg(long, value_parser = parse_ms)]
    mobile_beat_ms: Option<Duration>,
    /// QUIC's congestion controller for the app's answers: cubic, newreno, bbr or tolerant.
    #[arg(long, default_value_t)]
    quic_congestion: dialback::Congestion,
    /// Classic mode: listen here for a sidecar started with `--app-port`, and dial nothing.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Invoke method `ping` of this app through the sidecar, over and over.
    #[arg(long)]
    call_app: Option<String>,
    /// Which of the sidecar's APIs those calls use: grpc or http.
    #[arg(long, default_value = "grpc", value_parser = ["grpc", "http"])]
    call_api: String,
    /// Send those calls to the API port even when the channel could carry them.
    #[arg(long)]
    no_api_over_http3: bool,
    /// Pause between those calls, in ms.
    #[arg(long, value_parser = parse_ms, default_value = "20")]
    call_every_ms: Duration,
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    s.parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{s:?}: {e}"))
}

async fn echo(req: tonic::Request<InvokeRequest>) -> Result<InvokeResponse, tonic::Status> {
    if let Some(ms) = req.get_ref().method.strip_prefix("sleep/") {
        let ms: u64 = ms.parse().map_err(|_| tonic::Status::invalid_argument("sleep/<ms> wants a number"))?;
        tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
    }
    let transport = req.extensions().get::<CallContext>().map(|c| c.transport.as_str()).unwrap_or("unknown");
    let tell_method = req.metadata().contains_key("x-echo-method");
    let req = req.into_inner();
    if tell_method {
        return Ok(InvokeResponse {
            data: Some(prost_types::Any { type_url: String::new(), value: req.method.into_bytes() }),
            content_type: "text/plain".into(),
        });
    }
    if req.method == "whoami" {
        return Ok(InvokeResponse {
            data: Some(prost_types::Any { type_url: String::new(), value: transport.as_bytes().to_vec() }),
            content_type: "text/plain".into(),
        });
    }
    Ok(InvokeResponse { data: req.data, content_type: req.content_type })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let handlers = dialback::InvokeHandlers::new().fallback(echo);
    if let Some(addr) = args.listen {
        return serve_classic(addr, handlers).await;
    }
    let options = ChannelOptions {
        transports: args.transport,
        local_ip: args.local_ip,
        watch_network: !args.no_watch_network,
        congestion: args.quic_congestion,
        quic_probe_interval: args.quic_probe_ms,
        standby_probe_interval: args.standby_probe_ms,
        max_message_size: args.max_message_bytes,
        timeouts: dialback::Timeouts {
            keep_alive: dialback::KeepAlive { interval: args.keepalive_ms, idle_timeout: args.idle_timeout_ms },
            ..dialback::Timeouts::default()
        },
        liveness: args.mobile_beat_ms.map_or(dialback::Liveness::Default, |beat| dialback::Liveness::Mobile { beat }),
        api_over_http3: !args.no_api_over_http3,
        ..ChannelOptions::default()
    };
    let handle = CallbackServer::builder()
        .sidecar(SidecarOptions::from_env())
        .options(options)
        .add_service(handlers.into_service().max_decoding_message_size(args.max_message_bytes))
        .start()?;

    let mut states = handle.watch();
    let printer = tokio::spawn(async move {
        loop {
            let s = states.borrow_and_update().clone();
            match s {
                ChannelState::Connected(c) => {
                    println!(
                        "echo: connected transport={} channel_id={} sidecar={}",
                        c.transport, c.channel_id, c.sidecar
                    )
                }
                ChannelState::Disconnected { reason } => println!("echo: disconnected reason={reason:?}"),
                ChannelState::Replaced => println!("echo: replaced"),
                ChannelState::Stopped => println!("echo: stopped"),
                ChannelState::Connecting { .. } => {}
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    });

    let caller = args.call_app.clone().map(|app| {
        let http = args.call_api == "http";
        tokio::spawn(call_loop(handle.sidecar(), app, http, args.call_every_ms))
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => match handle.rebind(args.rebind_ip).await {
                Ok(()) => println!("echo: rebound"),
                Err(e) => println!("echo: rebind failed: {e}"),
            },
        }
    }
    if let Some(c) = caller {
        c.abort();
    }
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown()).await.ok();
    printer.abort();
    Ok(())
}

/// Invokes `ping` of `app` through the sidecar every `every`, with the
/// HTTP API when `http` (else the gRPC API), counting failures and the
/// calls that went over the channel.
async fn call_loop(sidecar: dialback::SidecarClient, app: String, http: bool, every: Duration) {
    let (mut calls, mut failed, mut over_channel) = (0u64, 0u64, 0u64);
    loop {
        calls += 1;
        let body = calls.to_string().into_bytes();
        let result =
            if http { invoke_http(&sidecar, &app, body).await } else { invoke_grpc(&sidecar, &app, body).await };
        match result {
            Ok(true) => over_channel += 1,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                println!("echo: outbound call failed: {e}");
            }
        }
        if calls % 25 == 0 {
            println!("echo: outbound calls={calls} failed={failed} over_channel={over_channel}");
        }
        tokio::time::sleep(every).await;
    }
}

/// `Dapr/InvokeService` of `app`'s `ping` with `data`: whether it went over
/// the channel, or why it failed.
async fn invoke_grpc(sidecar: &dialback::SidecarClient, app: &str, data: Vec<u8>) -> anyhow::Result<bool> {
    use dialback::proto::runtime::dapr_client::DaprClient;
    let req = dialback::proto::runtime::InvokeServiceRequest {
        id: app.into(),
        message: Some(InvokeRequest {
            method: "ping".into(),
            data: Some(prost_types::Any { type_url: String::new(), value: data.clone() }),
            content_type: "text/plain".into(),
            http_extension: None,
        }),
    };
    let resp = DaprClient::new(sidecar.api()).invoke_service(sidecar.request(req)).await?;
    let got = resp.get_ref().data.as_ref().map(|d| d.value.as_slice());
    anyhow::ensure!(got == Some(data.as_slice()), "the answer is not the echo of {data:?}: {got:?}");
    Ok(resp.extensions().get::<dialback::ViaChannel>().is_some())
}

/// `POST /v1.0/invoke/<app>/method/ping` with `data`: whether it went over
/// the channel, or why it failed.
async fn invoke_http(sidecar: &dialback::SidecarClient, app: &str, data: Vec<u8>) -> anyhow::Result<bool> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req =
        http::Request::post(format!("/v1.0/invoke/{app}/method/ping")).header(http::header::CONTENT_TYPE, "text/plain");
    if let Some(token) = &sidecar.options().api_token {
        req = req.header("dapr-api-token", token);
    }
    let req = req.body(tonic::body::Body::new(http_body_util::Full::from(data.clone())))?;
    let resp = sidecar.api().oneshot(req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let via_channel = resp.extensions().get::<dialback::ViaChannel>().is_some();
    let status = resp.status();
    let got = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e}"))?.to_bytes();
    anyhow::ensure!(status == http::StatusCode::OK, "status {status}: {}", String::from_utf8_lossy(&got));
    anyhow::ensure!(got == data, "the answer is not the echo of {data:?}: {got:?}");
    Ok(via_channel)
}

/// Classic mode: a plain gRPC server on `addr` until SIGTERM or Ctrl-C, with
/// Nagle off and the same HTTP/2 settings as the SDK's callback server.
async fn serve_classic(addr: std::net::SocketAddr, handlers: dialback::InvokeHandlers) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    println!("echo: listening port={}", incoming.local_addr()?.port());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .initial_stream_window_size(dialback_channel::h2::STREAM_WINDOW)
        .initial_connection_window_size(dialback_channel::h2::CONN_WINDOW)
        .max_frame_size(dialback_channel::h2::MAX_FRAME)
        .add_service(handlers.into_service())
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
