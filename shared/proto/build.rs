//! Compiles `proto/` with protox (a pure-Rust protoc), so a build needs nothing beyond cargo.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "pirus/catalogue/v1/catalogue.proto",
    "pirus/catalogue/v1/access.proto",
    "pirus/runner/v1/runner.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may be reused by another
    // sharing the target folder (CI's clone and a working copy), and env!() would keep the
    // first one's path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per service, so that reflection on the catalogue lists only what the
    // catalogue serves (and likewise for the runner).
    let services: [(&[&str], &str); 2] = [(&PROTOS[..2], "catalogue"), (&PROTOS[2..], "runner")];
    for (protos, name) in services {
        let mut fds = protox::compile(protos, [&root])?;
        // A file imported for its types only (AccessService's Usage names the runner's
        // Resources) keeps its messages but not its services: reflection lists what this
        // service serves.
        for file in &mut fds.file {
            if !protos.contains(&file.name()) {
                file.service.clear();
            }
        }
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
