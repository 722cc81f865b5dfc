//! Small waits the runner's select loops share.

use tokio::sync::watch;

/// Resolves with the future's output once there is one to wait for.
pub(super) async fn until_some<T>(f: &mut Option<futures_util::future::BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Resolves once `rx` holds true (never, if its sender goes away first).
pub(super) async fn until_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
