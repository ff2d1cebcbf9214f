//! Compiles `proto/*.proto` with `protox` (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/publish.proto", "proto/block.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The gRPC client and server only with the `grpc` feature: the messages
    // alone need nothing but prost (the fuzz targets decode them).
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure().bytes(".").build_client(grpc).build_server(grpc).compile_fds(descriptors)?;
    Ok(())
}
