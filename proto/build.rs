//! Compiles `strata/v1/*.proto` with protox (pure Rust, no `protoc` needed) into
//! `OUT_DIR`, together with the encoded descriptor set used by gRPC reflection.
use prost::Message;

const PROTOS: &[&str] = &[
    "strata/v1/common.proto",
    "strata/v1/log.proto",
    "strata/v1/admin.proto",
    "strata/v1/groups.proto",
    "strata/v1/queue.proto",
    "strata/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("strata_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `bytes::Bytes`: batches move through without copies.
        .bytes(".")
        // Decode failures are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::StrataCodec")
        .compile_fds(fds)?;
    Ok(())
}
