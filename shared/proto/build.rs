//! Compiles `proto/` with protox (a pure-Rust protoc), so a build needs nothing beyond cargo.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "pirus/catalogue/v1/catalogue.proto",
    "pirus/runner/v1/runner.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per service, so that reflection on the catalogue lists only what the
    // catalogue serves (and likewise for the runner).
    for (proto, name) in PROTOS.iter().zip(["catalogue", "runner"]) {
        let fds = protox::compile([proto], [&root])?;
        std::fs::write(
            out.join(format!("{name}_descriptor.bin")),
            fds.encode_to_vec(),
        )?;
    }
    // `bytes` fields as `bytes::Bytes`: upload and download chunks move without a copy.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(protox::compile(PROTOS, [&root])?)?;
    Ok(())
}
