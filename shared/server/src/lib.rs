//! Process wiring shared by `pirus-catalogue` and `pirus-runner`: command-line options, logging,
//! metrics, the operations HTTP port (`/livez`, `/readyz`, `/metrics`), gRPC health and
//! reflection, the database watchdog that drives health, and graceful shutdown.
//!
//! It holds no business logic and does not depend on either service's domain or on LXD.
//!
//! Depends on (within Pirus): pirus-db, pirus-auth. Never on: pirus-lxd, pirus-catalogue,
//! pirus-runner.

mod connection_slots;
pub mod digest;
pub mod grpc_port;
pub mod health;
pub mod metrics;
pub mod ops;
pub mod options;
pub mod paging;
pub mod process;
pub mod request_bounds;
pub mod serve;
pub mod telemetry;
pub mod tls;

pub use serve::{
    AuthSetup, HttpLimits, Listeners, ServeError, ServeOptions, Service, serve, shutdown_signal,
};
