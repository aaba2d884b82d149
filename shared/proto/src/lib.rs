//! Generated protobuf and gRPC code for the Pirus services, plus the encoded descriptor set that
//! server reflection publishes. Only the gRPC edge of a service (handlers and `convert.rs`) may
//! depend on this crate; domain and store code never do.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-db, pirus-server, pirus-lxd,
//! pirus-catalogue, pirus-runner.

#![allow(clippy::all, missing_docs)]

pub mod catalogue {
    pub mod v1 {
        tonic::include_proto!("pirus.catalogue.v1");
    }
}

pub mod runner {
    pub mod v1 {
        tonic::include_proto!("pirus.runner.v1");
    }
}

/// Encoded `FileDescriptorSet` of the catalogue proto and its imports, for server reflection.
pub const CATALOGUE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/catalogue_descriptor.bin"));
/// Encoded `FileDescriptorSet` of the runner proto and its imports, for server reflection.
pub const RUNNER_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/runner_descriptor.bin"));

/// Fully qualified gRPC service names, as health checking and reflection report them.
pub const CATALOGUE_SERVICE: &str = "pirus.catalogue.v1.CatalogueService";
/// See [`CATALOGUE_SERVICE`]; also served by the catalogue.
pub const ACCESS_SERVICE: &str = "pirus.catalogue.v1.AccessService";
/// See [`CATALOGUE_SERVICE`].
pub const RUNNER_SERVICE: &str = "pirus.runner.v1.RunnerService";
