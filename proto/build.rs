//! Generates the Rust types and tonic stubs from `proto/`, with a vendored `protoc` so no system
//! package is needed, and a file descriptor set for gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/samblik/v1/case.proto",
    "proto/samblik/v1/lookup.proto",
    "proto/samblik/v1/consent.proto",
    "proto/samblik/v1/access.proto",
    "proto/samblik/v1/policy.proto",
    "proto/samblik/v1/audit.proto",
    "proto/samblik/source/v1/source.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("samblik_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
