//! The app channel's transport, and the only crate that knows QUIC from
//! TCP+TLS.
//!
//! The sidecar binds a [`Listener`]; the app calls [`Dialer::dial`]. Both end
//! with a [`Channel`]: an authenticated duplex byte stream ([`Io`]) that the
//! layers above run HTTP/2 over, the peer's identity, and a [`Connection`]
//! handle that says when the connection is gone and can close it with a
//! [`CloseCode`]. The versioned hello/verdict exchange that authenticates the
//! app lives in [`handshake`].

mod accept;
mod auth;
mod callpool;
mod coalesce;
mod config;
mod congestion;
mod dial;
mod early;
mod error;
pub mod events;
pub mod h2;
pub mod handshake;
pub mod http3;
mod io;
mod listener;
pub mod lograte;
pub mod notice;
mod onetask;
pub mod reset;
mod transport;

pub use auth::{Authenticator, ClientCredential, Grant, HelloContext, Refusal};
pub use config::{DialConfig, KeepAlive, ListenerConfig, Liveness, MAX_IDLE_TIMEOUT, MOBILE_BEAT, Timeouts};
pub use congestion::Congestion;
pub use dial::{Dialer, NetworkChange, Pending};
pub use early::EarlyChannel;
pub use error::{AcceptError, BindError, DialError};
pub use events::{ListenerEvents, NoEvents, Refused};
pub use io::{CallStream, Channel, ChannelInfo, CloseCode, Connection, Io, PathCounts};
pub use listener::Listener;
pub use notice::{CloseNotice, CredentialKind};
pub use transport::tcp::accept_with_backoff;
pub use transport::{Transport, Transports};

pub use dialback_proto::handshake::{Hello, RefusalReason, Verdict, hello::Credential};
