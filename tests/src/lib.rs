//! Test kit for dialback's end-to-end tests and demo: builds and runs the
//! real `dialbackd` binary and the real echo app, reads their ready lines
//! under timeouts, and talks to the sidecar as a user would.
//!
//! Every process gets its own ports (0, read back) and temp dirs, and is
//! killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod dapr;
pub mod http;
pub mod load;
pub mod proc;
pub mod sdks;

pub use http::{HttpReply, http_call, metadata};
pub use load::{CallLoop, Summary};
pub use proc::{
    App, AppBuilder, Netsim, Sidecar, SidecarBuilder, binaries, open_fds, proc_status_kib, tcp_listening_sockets,
};

use std::future::Future;
use std::time::Duration;

/// A generous bound for anything in a test to become true on a loaded 2-core box.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it yields `Some`, failing with `what` after `limit`.
/// For conditions with no readiness signal of their own (e.g. metadata).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(what, limit, check, String::new).await
}

/// [`eventually`], with what `explain` says (logs, say) in the failure.
pub async fn eventually_or<T, F, Fut>(what: &str, limit: Duration, mut check: F, explain: impl FnOnce() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}\n{}", explain());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// An echo app in this process (the SDK over QUIC, method `echo` answering
/// with its data) for a sidecar whose gRPC API is `grpc_endpoint`, with
/// `token` as its API token, connected: for tests that need the SDK's
/// own handle (its metrics, its own API calls). Call from a tokio runtime.
pub async fn echo_in_process(grpc_endpoint: String, token: Option<&str>) -> dialback::Handle {
    let options =
        dialback::SidecarOptions { grpc_endpoint, api_token: token.map(str::to_string), ..Default::default() };
    let handle = dialback::CallbackServer::builder()
        .sidecar(options)
        .transports(dialback::Transports::QUIC)
        .invoke_handler("echo", |req| async move {
            Ok(dialback::proto::common::InvokeResponse { data: req.into_inner().data, content_type: String::new() })
        })
        .start()
        .expect("start the in-process app");
    handle.wait_connected(PATIENCE).await.expect("the in-process app connects");
    handle
}
