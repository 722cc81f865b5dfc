//! The SDK's errors.

/// What can go wrong talking to the sidecar or keeping the channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sidecar endpoint is not a valid URI with a host.
    #[error("bad sidecar endpoint {0:?}")]
    Endpoint(String),
    /// A call to the sidecar's API failed.
    #[error("sidecar API call failed: {}", .0.message())]
    Api(#[from] tonic::Status),
    /// The sidecar's ConnectAppCallback answer cannot be used.
    #[error("unusable ConnectAppCallback answer: {0}")]
    BadAnswer(String),
    /// The channel could not be dialed.
    #[error(transparent)]
    Dial(#[from] dialback_channel::DialError),
    /// TLS could not be configured.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No channel came up within the wait.
    #[error("no channel within {0:?}")]
    Timeout(std::time::Duration),
    /// The channel was replaced by another instance of this app; this one stands by.
    #[error("the channel was replaced by another instance of this app")]
    Replaced,
    /// The call needs a live channel and none is up (e.g. a rebind while reconnecting).
    #[error("no channel is up")]
    NotConnected,
    /// The builder was given a combination that cannot work.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The server was shut down.
    #[error("the callback server has stopped")]
    Stopped,
}
