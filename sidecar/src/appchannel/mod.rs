//! The app channel on the sidecar's side: the accept loop (`accept.rs`),
//! one driver per channel (`driver.rs`), the registry of the live channel
//! and its handle `Live` (`registry.rs`), the Ping probe that proves a new
//! channel before it displaces a live one (`probe.rs`), why a channel ends
//! (`ChannelEnd`, `end.rs`) and how a retirement goes (`retire.rs`).

mod accept;
mod driver;
mod end;
mod probe;
mod registry;
mod retire;

pub use accept::accept_loop;
pub use driver::CallbackPolicy;
pub use end::ChannelEnd;
pub use registry::{CallGuard, Live, Registry};
