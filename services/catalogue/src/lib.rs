//! `pirus-catalogue`: takes resumable uploads of pipeline packages and data files, installs
//! packages, and serves pipeline, file and document metadata and file contents.
//!
//! `main` only parses options and calls [`run`], which takes pre-bound listeners and a
//! cancellation token so that tests can run the service in-process.

mod config;
mod grpc;

use pirus_proto::catalogue::v1::catalogue_service_server::CatalogueServiceServer;
use pirus_server::{Listeners, ServeOptions, Service, metrics::MetricsBuilder};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Connects to and migrates the database, then serves until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut db_config = pirus_db::DbConfig::new(&config.common.database_url);
    db_config.max_connections = config.common.database_max_connections;
    let db = pirus_db::connect(&db_config).await?;
    pirus_db::migrate(&db).await?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data folder {}: {e}",
            config.data_dir.display()
        )
    })?;
    tracing::info!(data_dir = %config.data_dir.display(), "catalogue starting");

    let metrics = MetricsBuilder::new("catalogue").build();
    let service = Service {
        grpc: tonic::service::Routes::new(CatalogueServiceServer::new(grpc::Catalogue::new())),
        http: axum::Router::new(),
    };
    let options = ServeOptions {
        services: vec![pirus_proto::CATALOGUE_SERVICE],
        addr_file: config.common.addr_file.clone(),
        shutdown_timeout: config.common.shutdown_timeout,
        request_timeout: None,
        reflection: vec![pirus_proto::CATALOGUE_DESCRIPTOR_SET],
    };
    pirus_server::serve(options, listeners, service, db, metrics, shutdown).await?;
    Ok(())
}
