//! The dialback SDK: serve your gRPC services (e.g. Dapr's `AppCallback`)
//! to your sidecar over a channel your app dials out, over QUIC or TCP+TLS,
//! with no listening socket.
//!
//! Entry point: [`CallbackServer::builder`], in the spirit of the Dapr Go
//! SDK's `NewServiceFromCallbackChannel`: give it the sidecar's address
//! (or let it read Dapr's environment) and your services, and it keeps the
//! channel up for the life of the process.
//!
//! It runs on the app's tokio runtime. On a phone or an edge box, one
//! worker thread (measured with `TOKIO_WORKER_THREADS=1`; a current-thread
//! runtime is one thread too) sends a small call's answer in one packet
//! where two threads often split it, at less CPU per call (README, "One
//! thread is enough, and cheaper"); blocking or long work in a handler then
//! belongs in `spawn_blocking`.

mod api;
mod backoff;
mod error;
mod handlers;
mod health;
pub mod metrics;
mod netwatch;
mod options;
mod pace;
mod ping;
mod plan;
mod runner;
mod server;
mod sidecar;
mod state;

pub use api::{ApiChannel, BoxError, ViaChannel};
pub use backoff::Backoff;
pub use error::Error;
pub use handlers::InvokeHandlers;
pub use options::{ChannelOptions, CredentialChoice, TrustChoice};
pub use server::{CallbackServer, CallbackServerBuilder, Handle};
pub use sidecar::{SidecarClient, SidecarOptions};
pub use state::{CallContext, ChannelState, Connected};

pub use dialback_channel::{Congestion, KeepAlive, Liveness, MOBILE_BEAT, Timeouts, Transport, Transports};
/// The wire types (Dapr's messages and services, and dialback's own).
pub use dialback_proto as proto;
