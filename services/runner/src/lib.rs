//! `pirus-runner`: one per LXD host. It claims queued runs from the shared database, runs each
//! in its own unprivileged LXD container, streams logs and progress, and reports back.
//!
//! `main` only parses options and calls [`run`], which takes pre-bound listeners and a
//! cancellation token so that tests can run the service in-process.

mod config;
mod grpc;

use std::time::Duration;

use pirus_lxd as lxd;
use pirus_proto::runner::v1::runner_service_server::RunnerServiceServer;
use pirus_server::{Listeners, ServeOptions, Service, metrics::MetricsBuilder};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Connects to and migrates the database, then serves until `shutdown` is cancelled. LXD being
/// unreachable does not stop the runner from serving: it is watched and reported.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut db_config = pirus_db::DbConfig::new(&config.common.database_url);
    db_config.max_connections = config.common.database_max_connections;
    let db = pirus_db::connect(&db_config).await?;
    pirus_db::migrate(&db).await?;
    std::fs::create_dir_all(&config.work_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the work folder {}: {e}",
            config.work_dir.display()
        )
    })?;

    let lxd = lxd::Client::new(config.lxd_socket(), config.lxd_project.clone());
    tracing::info!(
        node = %config.node_name(),
        max_runs = config.max_runs(),
        lxd_socket = %lxd.socket().display(),
        work_dir = %config.work_dir.display(),
        "runner starting"
    );

    let lxd_up = Gauge::default();
    let mut metrics = MetricsBuilder::new("runner");
    metrics.register(
        "lxd_up",
        "1 while LXD answers on its socket",
        lxd_up.clone(),
    );
    let metrics = metrics.build();
    tokio::spawn(watch_lxd(lxd.clone(), lxd_up, shutdown.clone()));

    let service = Service {
        grpc: tonic::service::Routes::new(RunnerServiceServer::new(grpc::Runner::new())),
        http: axum::Router::new(),
    };
    let options = ServeOptions {
        services: vec![pirus_proto::RUNNER_SERVICE],
        addr_file: config.common.addr_file.clone(),
        shutdown_timeout: config.common.shutdown_timeout,
        request_timeout: None,
        reflection: vec![pirus_proto::RUNNER_DESCRIPTOR_SET],
    };
    pirus_server::serve(options, listeners, service, db, metrics, shutdown).await?;
    Ok(())
}

/// Probes LXD every few seconds and logs each change, so an operator sees when it goes away and
/// comes back.
async fn watch_lxd(client: lxd::Client, up: Gauge, shutdown: CancellationToken) {
    let mut last: Option<bool> = None;
    loop {
        let probe = tokio::time::timeout(Duration::from_secs(5), client.server_info()).await;
        let now_up = match probe {
            Ok(Ok(info)) => {
                if last != Some(true) {
                    tracing::info!(version = %info.server_version, "LXD reachable");
                }
                true
            }
            Ok(Err(e)) => {
                if last != Some(false) {
                    tracing::warn!(error = %e, "LXD unreachable; no runs are claimed until it answers");
                }
                false
            }
            Err(_) => {
                if last != Some(false) {
                    tracing::warn!(
                        "LXD did not answer within 5s; no runs are claimed until it does"
                    );
                }
                false
            }
        };
        up.set(i64::from(now_up));
        last = Some(now_up);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
