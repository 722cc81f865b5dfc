//! The smallest app on the SDK: one invoke handler that echoes, reached by
//! its sidecar over the callback channel, with no listening socket. The
//! footprint benchmark measures its size and idle memory against
//! `benches/examples/baseline.rs` (the same runtime without the SDK).
//!
//! ```text
//! DAPR_GRPC_PORT=50001 cargo run -p dialback --example minimal
//! ```

use dialback::proto::common::InvokeResponse;
use dialback::{CallbackServer, ChannelState};

#[tokio::main]
async fn main() -> Result<(), dialback::Error> {
    let handle = CallbackServer::builder()
        .invoke_handler("echo", |req| async move {
            let req = req.into_inner();
            Ok(InvokeResponse { data: req.data, content_type: req.content_type })
        })
        .start()?;
    let mut states = handle.watch();
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                if let ChannelState::Connected(c) = &*states.borrow() {
                    println!("minimal: connected transport={}", c.transport);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    handle.shutdown().await;
    Ok(())
}
