//! Attacks on the release-style build, end to end with the real `dialbackd`
//! and echo app: each finding of the attack on commit 54204d3 (issue 8) as
//! a test that failed there and passes now. Every test keeps an app
//! connected and, where it matters, a caller invoking it steadily, and
//! checks that neither is disturbed by the attack.
//!
//! - `api`: the HTTP and gRPC API ports (token bypass, idle connections,
//!   slowloris, slow apps, body memory, message sizes, shutdown, CONNECT,
//!   method names).
//! - `channel`: the callback port and the channel (a dial that dies after
//!   its hello, a replaced app coming back, handshake floods, memory held
//!   for unproven QUIC peers, single-use tokens, protocol errors).
//! - `http3`: an app's own API calls as HTTP/3 on its channel (the API
//!   token check applies there too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod channel;
mod http3;
mod kit;
