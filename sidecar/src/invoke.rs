//! The one invocation path both APIs share: find the app's connection
//! (classic or callback, waiting a bounded time for a down channel), call
//! `AppCallback/OnInvoke`, and classify what went wrong.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dialback_channel::h2::H2Client;
use dialback_proto::common::{InvokeRequest, InvokeResponse};
use dialback_proto::runtime::app_callback_client::AppCallbackClient;
use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use crate::error::InvokeError;
use crate::registry::{CallGuard, Registry};

/// How the sidecar reaches its app.
#[derive(Clone, Debug)]
pub enum AppChannel {
    /// No app configured.
    None,
    /// Classic mode: a lazily connected HTTP/2 channel to the app's server.
    Classic(tonic::transport::Channel),
    /// Callback mode: whatever channel the app has dialed.
    Callback(Arc<Registry>),
}

/// The transport under an `AppCallbackClient`: either kind of connection.
#[derive(Clone, Debug)]
pub enum AppConn {
    /// Classic mode.
    Classic(tonic::transport::Channel),
    /// A callback channel.
    Callback(H2Client),
}

impl tower::Service<http::Request<Body>> for AppConn {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            AppConn::Classic(c) => c.poll_ready(cx).map_err(Into::into),
            AppConn::Callback(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self {
            AppConn::Classic(c) => {
                let f = c.call(req);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            AppConn::Callback(c) => {
                let f = c.call(req);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
        }
    }
}

/// The largest message the sidecar passes either way.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

impl AppChannel {
    /// A client to the app, waiting up to `wait` for a callback channel.
    /// Fails when no app is configured or no channel came up in time.
    pub async fn client(&self, wait: Duration) -> Result<(AppCallbackClient<AppConn>, Option<CallGuard>), InvokeError> {
        let (conn, guard) = match self {
            AppChannel::None => return Err(InvokeError::NoApp),
            AppChannel::Classic(c) => (AppConn::Classic(c.clone()), None),
            AppChannel::Callback(reg) => match reg.wait(wait).await {
                Some(live) => (AppConn::Callback(live.client.clone()), Some(live.begin_call())),
                None => return Err(InvokeError::ChannelDown { waited: wait }),
            },
        };
        let client =
            AppCallbackClient::new(conn).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        Ok((client, guard))
    }
}

/// Invokes `req` on the app `target`. Fails when `target` is not this
/// sidecar's app, when the channel is down past the wait bound, when the
/// call breaks in flight, or with the app's own error status.
pub async fn invoke(
    app: &AppChannel,
    own_app_id: &str,
    target: &str,
    req: InvokeRequest,
    metadata: MetadataMap,
    wait: Duration,
) -> Result<InvokeResponse, InvokeError> {
    if target != own_app_id {
        return Err(InvokeError::UnknownApp(target.to_string()));
    }
    let (mut client, _guard) = app.client(wait).await?;
    let mut request = tonic::Request::new(req);
    *request.metadata_mut() = metadata;
    match client.on_invoke(request).await {
        Ok(resp) => Ok(resp.into_inner()),
        Err(status) => Err(InvokeError::from_status(status)),
    }
}
