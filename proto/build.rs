//! Compiles the .proto files with protox (pure Rust, so no protoc is needed)
//! and generates prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dapr/proto/common/v1/common.proto",
        "proto/dapr/proto/runtime/v1/appcallback.proto",
        "proto/dapr/proto/runtime/v1/dapr.proto",
        "proto/dapr/proto/runtime/v1/appchannel.proto",
        "proto/dialback/v1/handshake.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
