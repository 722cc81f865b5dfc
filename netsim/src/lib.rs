//! `dialback-netsim`: a user-space relay on loopback that sits between an app and its sidecar and injects
//! network faults without root.
//!
//! The relay listens for UDP (QUIC) and TCP (TCP+TLS) on one port number and forwards both to the sidecar's
//! callback address; point the sidecar's `--callback-advertise-address` at [`Relay::addr`] so apps dial the
//! relay. Faults (NAT rebinding, blackholes, blocked UDP, delay, loss) are switched at run time.
//!
//! Entry point: [`Relay::start`] with a [`RelayConfig`]; the `netsim` binary wraps it with a line-based
//! control socket (see [`parse_command`]).

mod command;
mod control;
mod delay;
mod error;
mod relay;
mod stats;
mod tcp;
mod udp;

pub use command::{Command, parse_command};
pub use error::StartError;
pub use relay::{Relay, RelayConfig};
pub use stats::Stats;
