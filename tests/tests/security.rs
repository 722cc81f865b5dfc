//! Who may open the callback channel, end to end with the real `dialbackd`
//! and echo app: hellos that prove nothing never displace the live channel
//! (the seed's "first connection wins" hole), one-time tokens are single-use
//! and expire, a valid second app replaces the first as documented, the API
//! token guards the HTTP and gRPC APIs and works as a channel credential, and
//! mTLS client certificates name the app. Over QUIC and over TCP+TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use dialback::{SidecarClient, SidecarOptions};
use dialback_certs::{DevCa, Fingerprint, Identity, ServerTrust};
use dialback_channel::{
    Channel, Credential, DialConfig, DialError, Dialer, Hello, RefusalReason, Timeouts, Transport, handshake,
};
use dialback_e2e::{AppBuilder, PATIENCE, Sidecar, SidecarBuilder, eventually, http_call};
use serde_json::Value;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BOTH: [Transport; 2] = [Transport::Quic, Transport::TcpTls];

fn sdk_client(sc: &Sidecar, api_token: Option<&str>) -> SidecarClient {
    SidecarClient::new(SidecarOptions {
        grpc_endpoint: format!("http://127.0.0.1:{}", sc.grpc),
        api_token: api_token.map(str::to_string),
        timeout: PATIENCE,
        ..Default::default()
    })
    .unwrap()
}

/// A TLS config that pins the sidecar's certificate, with an optional client identity.
fn tls(sc: &Sidecar, client: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let pin = Fingerprint::from_hex(sc.cert_sha256.as_deref().expect("the ready line names cert_sha256")).unwrap();
    Arc::new(dialback_certs::client_config(&ServerTrust::Pinned(pin), client).unwrap())
}

fn dial_config(sc: &Sidecar, tls: Arc<rustls::ClientConfig>) -> DialConfig {
    DialConfig {
        addr: sc.callback.expect("the ready line names the callback address"),
        server_name: "localhost".into(),
        tls,
        // The client side's bound is generous; the sidecar enforces its own.
        timeouts: Timeouts { handshake: PATIENCE, ..Timeouts::default() },
        congestion: Default::default(),
    }
}

fn hello(app_id: &str, credential: Option<Credential>) -> Hello {
    Hello {
        version: handshake::VERSION,
        app_id: app_id.into(),
        credential,
        instance: "e2e hand-made hello".into(),
        ..Default::default()
    }
}

async fn dial(transport: Transport, config: &DialConfig, hello: &Hello) -> Result<Channel, DialError> {
    Dialer::new(Some(LOOPBACK)).dial(transport, config, hello).await.map(|(ch, _)| ch)
}

/// Asserts `r` is the sidecar's refusal with `want`, its message mentioning `needle`.
fn expect_refused(r: Result<Channel, DialError>, want: RefusalReason, needle: &str, what: &str) {
    match r {
        Err(DialError::Refused { reason, message }) => {
            assert_eq!(reason, want, "{what}: refused for the wrong reason; message: {message:?}");
            assert!(
                message.to_lowercase().contains(&needle.to_lowercase()),
                "{what}: the refusal message {message:?} does not mention {needle:?}"
            );
        }
        Ok(ch) => panic!("{what}: accepted as channel {} (expected a {want:?} refusal)", ch.info.channel_id),
        Err(e) => panic!("{what}: expected a {want:?} refusal, got: {e}"),
    }
}

fn expect_accepted(r: Result<Channel, DialError>, what: &str) -> Channel {
    let ch = r.unwrap_or_else(|e| panic!("{what}: expected the hello to be accepted, got: {e}"));
    assert!(ch.info.channel_id > 0, "{what}: accepted without a channel id");
    ch
}

/// The `channel_id=` of an echo app's connected line.
fn channel_id_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("channel_id="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no channel_id in {line:?}"))
}

async fn metadata_with(sc: &Sidecar, headers: &[(&str, &str)]) -> Value {
    let r = http_call("GET", &format!("{}/v1.0/metadata", sc.http_base()), headers, "").await.unwrap();
    assert_eq!(r.status, 200, "metadata: {}", r.text());
    r.json()
}

/// Waits until the sidecar's metadata shows channel `id` as the live one.
async fn wait_installed(sc: &Sidecar, headers: &[(&str, &str)], id: u64) -> Value {
    eventually(&format!("metadata showing channel {id} connected"), PATIENCE, || async {
        let md = metadata_with(sc, headers).await;
        (md["appChannel"]["state"] == "connected" && md["appChannel"]["channelId"] == id).then_some(md)
    })
    .await
}

async fn whoami(sc: &Sidecar, headers: &[(&str, &str)]) -> (u16, String) {
    let r =
        http_call("POST", &format!("{}/v1.0/invoke/echo/method/whoami", sc.http_base()), headers, "").await.unwrap();
    (r.status, r.text())
}

/// The live channel is still channel `id` of the app with `pid`, never
/// replaced or reconnected, and calls still reach the app over it.
async fn assert_untouched(sc: &Sidecar, pid: u32, id: u64, transport: &str, after: &str) {
    let md = metadata_with(sc, &[]).await;
    let ch = &md["appChannel"];
    assert_eq!(ch["state"], "connected", "after {after}: {ch}");
    assert_eq!(ch["channelId"], id, "after {after}, the live channel changed: {ch}");
    assert_eq!(ch["instance"], format!("pid {pid}"), "after {after}: {ch}");
    assert_eq!(ch["transport"], transport, "after {after}: {ch}");
    assert_eq!(ch["reconnects"], 0, "after {after}, the app reconnected: {ch}");
    assert_eq!(whoami(sc, &[]).await, (200, transport.to_string()), "whoami after {after}");
}

/// (1) With a live echo channel up, hellos that prove nothing are refused
/// with the right reason and never displace it.
async fn unproven_hellos_never_displace_the_live_channel(transport: Transport) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let config = dial_config(&sc, tls(&sc, None));

    // The seed's hole: with no app connected yet, the first connection won.
    let r = dial(transport, &config, &hello("echo", None)).await;
    expect_refused(
        r,
        RefusalReason::NoCredential,
        "credential",
        &format!("a first hello without a credential over {transport}"),
    );
    let md = metadata_with(&sc, &[]).await;
    assert_eq!(md["appChannel"]["state"], "disconnected", "an unproven hello became the channel: {}", md["appChannel"]);

    let mut app = AppBuilder::echo(sc.grpc).transport(transport.as_str()).spawn();
    let id = channel_id_of(&app.wait_line("echo: connected").await);
    wait_installed(&sc, &[], id).await;

    // A real token, minted for this sidecar, does not make a hello for another app-id good.
    let minted = sdk_client(&sc, None).connect_app_callback().await.unwrap();
    let cases = [
        ("a hello without a credential", hello("echo", None), RefusalReason::NoCredential, "credential"),
        (
            "a wrong one-time token",
            hello("echo", Some(Credential::OneTimeToken("00".repeat(32)))),
            RefusalReason::BadCredential,
            "token",
        ),
        (
            "a forged reconnect token",
            hello("echo", Some(Credential::ReconnectToken(format!("r1.{}", "00".repeat(56))))),
            RefusalReason::BadCredential,
            "reconnect token",
        ),
        (
            "a wrong API token",
            hello("echo", Some(Credential::ApiToken("not-the-api-token".into()))),
            RefusalReason::BadCredential,
            "API token",
        ),
        (
            "a wrong app-id",
            hello("intruder", Some(Credential::OneTimeToken(minted.token.clone()))),
            RefusalReason::WrongAppId,
            "intruder",
        ),
    ];
    for (what, h, reason, needle) in cases {
        let what = format!("{what} over {transport}");
        expect_refused(dial(transport, &config, &h).await, reason, needle, &what);
        assert_untouched(&sc, app.pid(), id, transport.as_str(), &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_hellos_never_displace_the_live_channel_quic() {
    unproven_hellos_never_displace_the_live_channel(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_hellos_never_displace_the_live_channel_tcp() {
    unproven_hellos_never_displace_the_live_channel(Transport::TcpTls).await;
}

/// (2) A one-time token opens one channel; presenting it again is refused as used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_token_is_single_use() {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let client = sdk_client(&sc, None);
    for transport in BOTH {
        let answer = client.connect_app_callback().await.unwrap();
        assert_eq!(answer.app_id, "echo");
        assert!(!answer.token.is_empty(), "ConnectAppCallback returned no token");
        // Pin what ConnectAppCallback says, as the SDK does; it must be the sidecar's certificate.
        let pin = Fingerprint::from_slice(&answer.cert_sha256).unwrap();
        assert_eq!(Some(pin.to_hex()), sc.cert_sha256, "ConnectAppCallback pins another certificate");
        let config =
            dial_config(&sc, Arc::new(dialback_certs::client_config(&ServerTrust::Pinned(pin), None).unwrap()));
        let h = hello("echo", Some(Credential::OneTimeToken(answer.token.clone())));

        let first =
            expect_accepted(dial(transport, &config, &h).await, &format!("the token's first use over {transport}"));
        expect_refused(
            dial(transport, &config, &h).await,
            RefusalReason::TokenUsed,
            "used",
            &format!("the token's second use over {transport}"),
        );
        drop(first);
    }
}

/// (3) A one-time token presented after its TTL is refused as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_token_expires() {
    let sc = SidecarBuilder::callback("echo").args(["--callback-token-ttl", "300ms"]).spawn().await;
    let client = sdk_client(&sc, None);
    let config = dial_config(&sc, tls(&sc, None));
    for transport in BOTH {
        let answer = client.connect_app_callback().await.unwrap();
        // Let the 300 ms TTL pass, with a wide margin.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let h = hello("echo", Some(Credential::OneTimeToken(answer.token.clone())));
        expect_refused(
            dial(transport, &config, &h).await,
            RefusalReason::TokenExpired,
            "expired",
            &format!("an expired token over {transport}"),
        );
    }
}

/// (4) A second instance with a valid credential replaces the first: the
/// first is told, stops, and the sidecar serves the second.
async fn a_valid_second_app_replaces_the_first(transport: &str) {
    let sc = SidecarBuilder::callback("echo").spawn().await;
    let mut a = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    let a_id = channel_id_of(&a.wait_line("echo: connected").await);
    wait_installed(&sc, &[], a_id).await;

    let mut b = AppBuilder::echo(sc.grpc).transport(transport).spawn();
    let b_line = b.wait_line("echo: connected").await;
    assert!(b_line.contains(&format!("transport={transport}")), "{b_line}");
    let b_id = channel_id_of(&b_line);
    assert_ne!(a_id, b_id);

    // The first learns it was replaced (and so stops instead of reconnecting).
    a.wait_line("echo: replaced").await;
    let md = wait_installed(&sc, &[], b_id).await;
    assert_eq!(md["appChannel"]["instance"], format!("pid {}", b.pid()), "{}", md["appChannel"]);
    assert_eq!(whoami(&sc, &[]).await, (200, transport.to_string()));

    // Still B, and exactly one replacement: A did not come back.
    let md = metadata_with(&sc, &[]).await;
    let ch = &md["appChannel"];
    assert_eq!(ch["channelId"], b_id, "{ch}");
    assert_eq!(ch["instance"], format!("pid {}", b.pid()), "{ch}");
    assert_eq!(ch["reconnects"], 1, "A reconnected after being replaced: {ch}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_second_app_replaces_the_first_quic() {
    a_valid_second_app_replaces_the_first("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_second_app_replaces_the_first_tcp() {
    a_valid_second_app_replaces_the_first("tcp").await;
}

/// (5) `--dapr-api-token` guards the HTTP and gRPC APIs (not healthz), and
/// works as a channel credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_guards_the_apis_and_opens_the_channel() {
    const TOKEN: &str = "e2e-api-token-3f9c";
    let with = [("dapr-api-token", TOKEN)];
    let sc = SidecarBuilder::callback("echo").args(["--dapr-api-token", TOKEN]).spawn().await;

    let r = http_call("GET", &format!("{}/v1.0/healthz", sc.http_base()), &[], "").await.unwrap();
    assert!((200..300).contains(&r.status), "healthz without the token answered {}: {}", r.status, r.text());

    // gRPC: without the token, and with a wrong one, ConnectAppCallback is UNAUTHENTICATED.
    for (what, token) in [("no API token", None), ("a wrong API token", Some("wrong"))] {
        match sdk_client(&sc, token).connect_app_callback().await {
            Err(dialback::Error::Api(status)) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "ConnectAppCallback with {what}: {status:?}")
            }
            Ok(_) => panic!("ConnectAppCallback with {what} succeeded"),
            Err(e) => panic!("ConnectAppCallback with {what}: expected UNAUTHENTICATED, got {e}"),
        }
    }
    sdk_client(&sc, Some(TOKEN)).connect_app_callback().await.expect("ConnectAppCallback with the API token");

    let mut app = AppBuilder::echo(sc.grpc).env("DAPR_API_TOKEN", TOKEN).spawn();
    let id = channel_id_of(&app.wait_line("echo: connected").await);
    wait_installed(&sc, &with, id).await;

    // HTTP invoke: 401 without the header or with a wrong one, 200 with it.
    let url = format!("{}/v1.0/invoke/echo/method/whoami", sc.http_base());
    for (what, headers) in [("no header", &[][..]), ("a wrong token", &[("dapr-api-token", "wrong")][..])] {
        let r = http_call("POST", &url, headers, "").await.unwrap();
        assert_eq!(r.status, 401, "invoke with {what}: {}", r.text());
        let body = r.json();
        assert!(body["errorCode"].as_str().is_some_and(|c| !c.is_empty()), "invoke with {what}: body {}", r.text());
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("dapr-api-token")),
            "invoke with {what}: body {}",
            r.text()
        );
    }
    let (status, body) = whoami(&sc, &with).await;
    assert_eq!(status, 200, "invoke with the token: {body}");
    assert!(body == "quic" || body == "tcp", "whoami answered {body:?}");

    // The API token as a channel credential: a wrong one is refused, the right one accepted.
    let config = dial_config(&sc, tls(&sc, None));
    for transport in BOTH {
        expect_refused(
            dial(transport, &config, &hello("echo", Some(Credential::ApiToken("wrong".into())))).await,
            RefusalReason::BadCredential,
            "API token",
            &format!("a wrong API token over {transport}"),
        );
        let ch = dial(transport, &config, &hello("echo", Some(Credential::ApiToken(TOKEN.into())))).await;
        expect_accepted(ch, &format!("the API token over {transport}"));
    }
}

/// (6) mTLS: a client certificate naming the app-id opens the channel; one
/// naming another app, none at all, or one from another CA does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_app() {
    let pki = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let ca_pem = pki.path().join("ca.pem");
    ca.save_pem(&ca_pem, &pki.path().join("ca-key.pem")).unwrap();
    let sc = SidecarBuilder::callback("echo")
        .args(["--callback-client-ca-file".to_string(), ca_pem.display().to_string()])
        .spawn()
        .await;

    let echo = ca.client_identity("echo").unwrap();
    let other = ca.client_identity("other").unwrap();
    let stranger = DevCa::generate().unwrap().client_identity("echo").unwrap();
    let by_cert = hello("echo", Some(Credential::ClientCertificate(true)));
    for transport in BOTH {
        let ch = dial(transport, &dial_config(&sc, tls(&sc, Some(&echo))), &by_cert).await;
        expect_accepted(ch, &format!("a client certificate for echo over {transport}"));

        expect_refused(
            dial(transport, &dial_config(&sc, tls(&sc, Some(&other))), &by_cert).await,
            RefusalReason::WrongAppId,
            "other",
            &format!("a client certificate for another app over {transport}"),
        );

        let what = format!("a client-certificate hello without a certificate over {transport}");
        match dial(transport, &dial_config(&sc, tls(&sc, None)), &by_cert).await {
            Err(DialError::Refused { reason, message }) => assert!(
                matches!(reason, RefusalReason::NoCredential | RefusalReason::BadCredential),
                "{what}: refused as {reason:?}: {message}"
            ),
            Ok(ch) => panic!("{what}: accepted as channel {}", ch.info.channel_id),
            Err(e) => panic!("{what}: expected a refusal, got: {e}"),
        }

        // A certificate the client CA did not sign fails TLS: never a channel.
        let r = dial(transport, &dial_config(&sc, tls(&sc, Some(&stranger))), &by_cert).await;
        if let Ok(ch) = r {
            panic!("a certificate from another CA over {transport}: accepted as channel {}", ch.info.channel_id);
        }
    }
}
