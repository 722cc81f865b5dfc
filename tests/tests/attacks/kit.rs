//! What the attack tests share: a live app with a steady caller, the checks
//! that it was not disturbed, and raw sockets from an attacker's address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dialback_certs::{Fingerprint, ServerTrust};
use dialback_channel::{Channel, Credential, DialConfig, DialError, Dialer, Hello, Timeouts, Transport, handshake};
use dialback_e2e::{App, AppBuilder, CallLoop, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call};
use serde_json::Value;

/// Where attackers come from: not the app's address, so per-source limits
/// on the sidecar apply to them and not to the app.
pub const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

/// A sidecar, an echo app connected over `transport`, and the live channel's id.
pub struct Live {
    pub sc: Sidecar,
    pub app: App,
    pub id: u64,
    pub headers: Vec<(&'static str, String)>,
}

/// The `channel_id=` of an echo app's connected line.
pub fn channel_id_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("channel_id="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no channel_id in {line:?}"))
}

impl Live {
    /// Starts `sidecar` and an echo app (with `app_args`) over `transport`,
    /// and waits until the sidecar shows the app's channel live.
    pub async fn start(sidecar: SidecarBuilder, transport: &str, app_args: &[&str]) -> Live {
        Live::start_with_token(sidecar, transport, app_args, None).await
    }

    /// [`Live::start`] with an API token on both ends.
    pub async fn start_with_token(
        sidecar: SidecarBuilder,
        transport: &str,
        app_args: &[&str],
        token: Option<&str>,
    ) -> Live {
        let sidecar = match token {
            Some(t) => sidecar.args(["--dapr-api-token", t]),
            None => sidecar,
        };
        let sc = sidecar.spawn().await;
        let mut app = AppBuilder::echo(sc.grpc).transport(transport).args(app_args.iter().copied());
        if let Some(t) = token {
            app = app.env("DAPR_API_TOKEN", t);
        }
        let mut app = app.spawn();
        let id = channel_id_of(&app.wait_line("echo: connected").await);
        let headers = token.map(|t| vec![("dapr-api-token", t.to_string())]).unwrap_or_default();
        let live = Live { sc, app, id, headers };
        live.wait_installed(id).await;
        live
    }

    /// The headers every call of the app's callers carries (the API token, if any).
    pub fn headers(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// `GET /v1.0/metadata`.
    pub async fn metadata(&self) -> Value {
        let r = http_call("GET", &format!("{}/v1.0/metadata", self.sc.http_base()), &self.headers(), "").await.unwrap();
        assert_eq!(r.status, 200, "metadata: {}", r.text());
        r.json()
    }

    /// Waits until the metadata shows channel `id` as the live one.
    pub async fn wait_installed(&self, id: u64) -> Value {
        eventually(&format!("metadata showing channel {id} connected"), PATIENCE, || async {
            let md = self.metadata().await;
            (md["appChannel"]["state"] == "connected" && md["appChannel"]["channelId"] == id).then_some(md)
        })
        .await
    }

    /// A steady caller: one call every 20 ms, each checked for its echo.
    pub fn steady_caller(&self) -> CallLoop {
        CallLoop::start_with(self.sc.http, "echo", "steady", Duration::from_millis(20), &self.headers())
    }

    /// The live channel is still the first one, never replaced or
    /// reconnected, and calls still reach the app over it.
    pub async fn assert_untouched(&self, after: &str) {
        let md = self.metadata().await;
        let ch = &md["appChannel"];
        assert_eq!(ch["state"], "connected", "after {after}: {ch}");
        assert_eq!(ch["channelId"], self.id, "after {after}, the live channel changed: {ch}");
        assert_eq!(ch["instance"], format!("pid {}", self.app.pid()), "after {after}: {ch}");
        assert_eq!(ch["reconnects"], 0, "after {after}, the app reconnected: {ch}");
        let r = self.call("whoami", "").await;
        assert_eq!(r.0, 200, "whoami after {after}: {}", r.1);
    }

    /// `POST /v1.0/invoke/echo/method/<method>` with the callers' headers.
    pub async fn call(&self, method: &str, body: &str) -> (u16, String) {
        let url = format!("{}/v1.0/invoke/echo/method/{method}", self.sc.http_base());
        let r = http_call("POST", &url, &self.headers(), body.to_string()).await.unwrap();
        (r.status, r.text())
    }
}

/// Stops the steady caller and asserts that it lost nothing and every call was answered.
pub async fn assert_caller_undisturbed(calls: CallLoop, during: &str) {
    let summary = calls.stop(PATIENCE).await;
    assert!(summary.ok() > 0, "during {during}: the steady caller got no answer at all");
    assert_eq!(summary.lost(), 0, "during {during}: calls never finished");
    let failures: Vec<_> = summary.failures().into_iter().take(5).collect();
    assert!(failures.is_empty(), "during {during}: the steady caller saw failures, e.g. {failures:?}");
}

/// A TLS config that pins the sidecar's certificate (what an app uses).
pub fn pinned_tls(sc: &Sidecar) -> Arc<rustls::ClientConfig> {
    let pin = Fingerprint::from_hex(sc.cert_sha256.as_deref().expect("the ready line names cert_sha256")).unwrap();
    Arc::new(dialback_certs::client_config(&ServerTrust::Pinned(pin), None).unwrap())
}

/// How to dial the sidecar's callback port, as an app would.
pub fn dial_config(sc: &Sidecar) -> DialConfig {
    DialConfig {
        addr: sc.callback.expect("the ready line names the callback address"),
        server_name: "localhost".into(),
        tls: pinned_tls(sc),
        timeouts: Timeouts { handshake: PATIENCE, ..Timeouts::default() },
        congestion: Default::default(),
    }
}

/// A hello for app `echo` with `credential`.
pub fn hello(credential: Credential, standby: bool) -> Hello {
    Hello {
        version: handshake::VERSION,
        app_id: "echo".into(),
        credential: Some(credential),
        instance: "attacker".into(),
        standby,
        ..Default::default()
    }
}

/// A one-time token from ConnectAppCallback, as anyone local may ask for one.
pub async fn one_time_token(sc: &Sidecar, api_token: Option<&str>) -> String {
    let client = dialback::SidecarClient::new(dialback::SidecarOptions {
        grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
        api_token: api_token.map(str::to_string),
        timeout: PATIENCE,
        ..Default::default()
    })
    .unwrap();
    client.connect_app_callback().await.unwrap().token
}

/// Dials the callback port from `from` over `transport` and says `hello`.
pub async fn dial(sc: &Sidecar, from: IpAddr, transport: Transport, hello: &Hello) -> Result<Channel, DialError> {
    Dialer::new(Some(from)).dial(transport, &dial_config(sc), hello).await.map(|(ch, _)| ch)
}

/// A TCP connection to `addr` from the attacker's address.
pub async fn tcp_from_attacker(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ATTACKER, 0))?;
    sock.connect(addr).await
}

/// Whether the peer closed `s` (EOF or reset) within `limit`, reading and
/// discarding whatever it sends first.
pub async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.is_ok()
}
