//! Compiles the `.proto` files with a vendored `protoc`, so no system protobuf is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Ordered maps encode deterministically, so equal entries hash equally on both ends of the WAN.
    config.btree_map(["."]);
    // A follower keeps its forwarded commands to send them one by one if the leader refuses the
    // batch (an older version): shared bytes, not a copy.
    config.bytes([".meridian.catalog.v1.ForwardBatchRequest.commands"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/catalog.proto", "proto/federation.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
