//! Invocation errors, and their mapping to gRPC status and to Dapr-style
//! HTTP errors, in one place.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Dapr's error code for failed service invocations.
pub const ERR_DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The target app-id is not the one this sidecar serves.
    #[error("app id {0:?} is not served by this sidecar")]
    UnknownApp(String),
    /// No app is configured (neither --app-port nor --enable-callback-channel).
    #[error("no app channel is configured: start dialbackd with --app-port or --enable-callback-channel")]
    NoApp,
    /// The callback channel stayed down for the whole wait.
    #[error("the app channel is down: no app connected within {waited:?}")]
    ChannelDown {
        /// The wait bound.
        waited: Duration,
    },
    /// The connection to the app failed during the call.
    #[error("the app channel failed during the call: {0}")]
    Broken(String),
    /// The app answered with an error status.
    #[error("the app returned an error: {}", .0.message())]
    App(tonic::Status),
    /// The message is larger than this sidecar or the app accepts; nothing was sent.
    #[error("the message is {size} bytes, over {whose} limit of {limit} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
        /// Whose limit: the sidecar's flag or the app's hello.
        whose: &'static str,
    },
    /// The app is at its concurrency limit and the waiting line is full.
    #[error("the app is at its concurrency limit and {waiting} calls are already waiting; try again later")]
    Busy {
        /// The waiting line's length.
        waiting: usize,
    },
    /// The call did not finish within its time bound.
    #[error("the call did not finish within {0:?}")]
    Timeout(Duration),
}

impl InvokeError {
    /// Sorts a client-side status into "the app said so" and "the connection broke".
    pub fn from_status(status: tonic::Status) -> InvokeError {
        // A status made from a transport error carries that error as its source;
        // one the app sent over the wire has none.
        if std::error::Error::source(&status).is_some() {
            InvokeError::Broken(status.message().to_string())
        } else {
            InvokeError::App(status)
        }
    }

    /// The gRPC status for the Dapr gRPC API.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            InvokeError::App(s) => s.clone(),
            InvokeError::TooLarge { .. } | InvokeError::Busy { .. } => {
                tonic::Status::resource_exhausted(self.to_string())
            }
            InvokeError::Timeout(_) => tonic::Status::deadline_exceeded(self.to_string()),
            other => tonic::Status::unavailable(other.to_string()),
        }
    }

    /// The HTTP status for the Dapr HTTP API.
    pub fn http_status(&self) -> StatusCode {
        match self {
            InvokeError::UnknownApp(_) | InvokeError::NoApp => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::ChannelDown { .. } | InvokeError::Broken(_) => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::App(s) => http_status_of(s.code()),
            InvokeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// Dapr's JSON error body.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "errorCode": code, "message": message }))).into_response()
}

impl IntoResponse for InvokeError {
    fn into_response(self) -> Response {
        let message = match &self {
            InvokeError::App(s) => s.message().to_string(),
            other => other.to_string(),
        };
        error_body(self.http_status(), ERR_DIRECT_INVOKE, &message)
    }
}

/// The HTTP status for a gRPC code, as grpc-gateway (and Dapr) map them.
pub fn http_status_of(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            InvokeError::ChannelDown { waited: Duration::from_secs(1) }.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(InvokeError::UnknownApp("x".into()).to_status().code(), tonic::Code::Unavailable);
        assert_eq!(InvokeError::App(tonic::Status::not_found("m")).http_status(), StatusCode::NOT_FOUND);
        assert_eq!(InvokeError::App(tonic::Status::not_found("m")).to_status().code(), tonic::Code::NotFound);
        assert!(matches!(InvokeError::from_status(tonic::Status::internal("x")), InvokeError::App(_)));
        let big = InvokeError::TooLarge { size: 9, limit: 4, whose: "x" };
        assert_eq!(
            (big.http_status(), big.to_status().code()),
            (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted)
        );
        let busy = InvokeError::Busy { waiting: 1 };
        assert_eq!(
            (busy.http_status(), busy.to_status().code()),
            (StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted)
        );
        let late = InvokeError::Timeout(Duration::from_secs(1));
        assert_eq!(
            (late.http_status(), late.to_status().code()),
            (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded)
        );
    }
}
