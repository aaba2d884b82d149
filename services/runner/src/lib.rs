//! `pirus-runner`: one per LXD host. It claims queued runs from the shared database, runs each
//! in its own unprivileged LXD container, streams logs and progress, and reports back.
//!
//! Depends on (within Pirus): pirus-proto, pirus-db, pirus-server, pirus-lxd, pirus-auth,
//! pirus-form. Never on:
//! pirus-catalogue. The catalogue's data (pipelines, files) is read only through
//! `pirus_db::views`, and its content through the catalogue's gRPC API.
//!
//! `main` only parses options and calls [`run`], which takes pre-bound listeners and a
//! cancellation token so that tests can run the service in-process.

mod access;
mod catalogue;
mod config;
mod domain;
mod executor;
mod follow;
mod grpc;
mod inputs;
mod lease;
mod lifecycle;
mod limits;
mod peers;
mod pending;
mod placement;
mod runs;
mod scheduler;
mod store;
mod submit;
mod tes;

use pirus_auth::{Credential, client::OwnCredential};
use pirus_proto::runner::v1::runner_service_server::RunnerServiceServer;
use pirus_server::{AuthSetup, Listeners, ServeOptions, Service, metrics::MetricsBuilder};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The calls that change something, recorded in the audit trail.
const CHANGES: &[&str] = &[
    "/pirus.runner.v1.RunnerService/SubmitRun",
    "/pirus.runner.v1.RunnerService/PauseRun",
    "/pirus.runner.v1.RunnerService/ResumeRun",
    "/pirus.runner.v1.RunnerService/CancelRun",
    "/pirus.runner.v1.RunnerService/DeleteRun",
    "/pirus.runner.v1.RunnerService/DrainNode",
    "/pirus.runner.v1.RunnerService/UndrainNode",
];

/// The long-lived calls, counted against each caller's stream budget.
const STREAMS: &[&str] = &[
    "/pirus.runner.v1.RunnerService/WatchRun",
    "/pirus.runner.v1.RunnerService/StreamRunLogs",
];

/// The node's capacity (the run storage pool's size, asked of LXD for a few seconds, is the
/// default disk) and labels, logged with what the runner starts with.
async fn placement(
    config: &Config,
    lxd: &pirus_lxd::Client,
    work_dir: &std::path::Path,
) -> placement::Placement {
    tracing::info!(
        node = %config.node_name(),
        max_runs = config.max_runs(),
        lxd_socket = %lxd.socket().display(),
        work_dir = %work_dir.display(),
        "runner starting"
    );
    let pool = &config.lxd_storage_pool;
    let pool_size = if config.placement.capacity_disk.is_some() {
        None
    } else {
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            lxd.storage_pool_size(pool),
        )
        .await
        {
            Ok(Ok(size)) => Some(size),
            failed => {
                tracing::warn!(?failed, %pool, "cannot read the run storage pool's size; \
                               disk capacity not declared (give --capacity-disk)");
                None
            }
        }
    };
    let placement = placement::Placement {
        capacity: config.placement.capacity(pool_size),
        labels: config.placement.node_labels.iter().cloned().collect(),
    };
    tracing::info!(capacity = ?placement.capacity, labels = ?placement.labels, "node placement");
    placement
}

/// Connects to and migrates the database, registers the node, then serves and runs until
/// `shutdown` is cancelled. LXD being unreachable does not stop the runner from serving: it is
/// reported with the node, and no run is claimed until LXD answers.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The read pools (below) come out of --database-max-connections.
    let batches = pirus_db::batch::IN_FLIGHT as u32;
    let pages = config.database_read_connections;
    let db = pirus_server::process::database_leaving(&config.common, batches + pages).await?;
    let work_dir = work_dir(&config)?;
    let node_name = config.node_name();
    let max_runs = config.max_runs();
    let node_limits = config.run_limits.node_limits();
    let lxd = pirus_lxd::Client::new(config.lxd_socket(), config.lxd_project.clone());
    let placement = placement(&config, &lxd, &work_dir).await;

    let (metrics, lxd_up) = metrics();
    let (stores, work) = open_stores(&config, &db, batches, pages, max_runs).await?;
    let notices = listen(&config, &shutdown);
    let node = lease::Node {
        nodes: work.nodes.clone(),
        lxd: lxd.clone(),
        name: node_name.clone(),
        address: advertised(&config, &listeners),
        max_runs,
        largest: node_limits.largest,
        placement: placement.clone(),
        lease: config.node_lease,
        lxd_gauge: lxd_up,
        database_url: config.common.database_url.clone(),
    };
    let node_state = register(node, &shutdown).await?;

    let credential = own_credential(&config, &db, &node_name).await?;
    let client_tls = config.client_tls.load()?;
    let catalogue = catalogue::Catalogue::connect_lazy(
        &client_tls,
        &config.catalogue_addr,
        credential.clone(),
    )?;
    let executor = executor::Executor::new(
        work.clone(),
        lxd.clone(),
        catalogue.clone(),
        executor_settings(&config, &node_name, work_dir, node_limits),
        notices.clone(),
    )?;
    let scheduler = scheduler::Scheduler {
        stores: work,
        executor: executor.clone(),
        node: node_name.clone(),
        max_runs,
        limits: node_limits,
        placement,
        state: node_state,
    };
    tokio::spawn(scheduler.run(notices.subscribe(), shutdown.clone()));

    let peers = peers::Peers::new(
        stores.nodes.clone(),
        node_name.clone(),
        credential,
        client_tls,
    );
    let runs = runs::Runs {
        peers,
        feeds: follow::events::Feeds::new(stores.runs.clone(), notices),
        tails: follow::logs::Tails::new(stores.runs.clone(), executor.clone(), node_name.clone()),
        stores,
        node: node_name,
        executor,
        catalogue,
        lxd,
        databases_dir: config.databases_dir.clone(),
    };
    serve(&config, listeners, runs, db, metrics, shutdown).await
}

/// The request stores and the work stores. Two pools: `stores` serves requests (gRPC
/// handlers, followers, forwarded reads), `work` the node's own work and its runs (expiry,
/// claims, every run's events and results), so no amount of request traffic can stall its
/// runs. The lease is renewed over a connection of its own, from a thread of its own
/// (lease.rs). The work pool holds a connection per run slot and a few for the node. Request
/// traffic reads single runs in batches (GetRun, access checks) and pages of runs on small
/// pools of their own (see RunStore::with_read_pools).
async fn open_stores(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
    batches: u32,
    pages: u32,
    max_runs: u32,
) -> anyhow::Result<(store::Stores, store::Stores)> {
    let stores = store::Stores::new(db.clone()).with_read_pools(
        pirus_server::process::read_pool(&config.common, batches).await?,
        pirus_server::process::read_pool(&config.common, pages).await?,
    );
    let work = store::Stores::new(
        pirus_server::process::work_pool(&config.common, work_connections(max_runs)).await?,
    );
    Ok((stores, work))
}

/// Where other runners reach this one: `--advertise-addr`, else the bound gRPC address.
fn advertised(config: &Config, listeners: &Listeners) -> String {
    config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| match listeners.tls {
            Some(_) => format!("https://{}", listeners.grpc_addr()),
            None => listeners.grpc_addr().to_string(),
        })
}

/// How this node executes runs, from its options.
fn executor_settings(
    config: &Config,
    node_name: &str,
    work_dir: std::path::PathBuf,
    limits: limits::NodeLimits,
) -> executor::Settings {
    executor::Settings {
        node: node_name.to_owned(),
        work_dir,
        databases_dir: config.databases_dir.clone(),
        storage_pool: config.lxd_storage_pool.clone(),
        isolated_idmap: config.lxd_isolated_idmap,
        limits,
        tes_file_roots: config.tes_file_roots.clone(),
        input_cache_size: config.input_cache_size,
        // Tasks queued before plans were stored: the TES edge reads its own stored form.
        legacy_plan: tes::plan::of_stored,
    }
}

/// Connections of the work pool: one per run slot (each run's events and results), and three
/// for the node (expiry, claims, sweeps); at most 64. The lease has a connection of its own.
fn work_connections(max_runs: u32) -> u32 {
    (max_runs + 3).min(64)
}

/// The runner's own token (`--token-file`), checked at start-up: it must be a valid runner
/// token for this node. Followed for rotation afterwards.
async fn own_credential(
    config: &Config,
    db: &pirus_db::sea_orm::DatabaseConnection,
    node: &str,
) -> anyhow::Result<OwnCredential> {
    let Some(path) = &config.token_file else {
        if config.common.auth == pirus_server::options::Auth::Token {
            tracing::warn!(
                "no --token-file: calls to the catalogue and other runners carry no token and \
                 will be refused; give this runner a runner token for node '{node}'"
            );
        }
        return Ok(OwnCredential::default());
    };
    let credential = Credential::read_file(path).map_err(anyhow::Error::msg)?;
    let verifier = pirus_auth::Verifier::new(db.clone(), pirus_auth::AuthMode::Token);
    let header = format!("Bearer {}", credential.token().unwrap_or_default());
    let caller = verifier
        .verify(Some(&header), None)
        .await
        .map_err(|e| anyhow::anyhow!("the token in {}: {e}", path.display()))?;
    if caller.role != pirus_auth::Role::Runner || caller.node.as_deref() != Some(node) {
        anyhow::bail!(
            "the token in {} is a {} token{}; this runner needs a runner token for node '{node}'",
            path.display(),
            caller.role.as_str(),
            caller
                .node
                .map(|n| format!(" for node '{n}'"))
                .unwrap_or_default()
        );
    }
    let own = OwnCredential::new(credential);
    tokio::spawn(own.clone().follow_file(path.clone()));
    Ok(own)
}

/// The runner's metrics, with the gauge of LXD's availability.
fn metrics() -> (std::sync::Arc<pirus_server::metrics::Metrics>, Gauge) {
    let lxd_up = Gauge::default();
    let mut metrics = MetricsBuilder::new("runner");
    metrics.register(
        "lxd_up",
        "1 while LXD answers on its socket",
        lxd_up.clone(),
    );
    (metrics.build(), lxd_up)
}

/// The process's one LISTEN connection, on the runner's channels.
fn listen(
    config: &Config,
    shutdown: &CancellationToken,
) -> tokio::sync::broadcast::Sender<pirus_db::listen::Notice> {
    pirus_db::listen::spawn_listener(
        config.common.database_url.clone(),
        vec![
            store::RUNS_CHANNEL,
            store::EVENTS_CHANNEL,
            store::CONTROL_CHANNEL,
        ],
        shutdown.clone(),
    )
}

/// The work folder, made if missing, as an absolute path (LXD resolves disk device sources
/// itself).
fn work_dir(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(&config.work_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the work folder {}: {e}",
            config.work_dir.display()
        )
    })?;
    Ok(std::fs::canonicalize(&config.work_dir)?)
}

/// Registers the node and keeps its lease renewed; answers once it is registered.
async fn register(
    node: lease::Node,
    shutdown: &CancellationToken,
) -> anyhow::Result<lease::NodeState> {
    let state = lease::NodeState::default();
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(node.run(state.clone(), registered_tx, shutdown.clone()));
    if registered.await.is_err() {
        match task.await {
            Ok(Err(e)) => anyhow::bail!("cannot register the node: {e}"),
            other => anyhow::bail!("cannot register the node: {other:?}"),
        }
    }
    Ok(state)
}

async fn serve(
    config: &Config,
    listeners: Listeners,
    runs: runs::Runs,
    db: pirus_db::sea_orm::DatabaseConnection,
    metrics: std::sync::Arc<pirus_server::metrics::Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tes = tes::router(runs.clone(), format!("Pirus runner {}", runs.node));
    let service = Service {
        grpc: tonic::service::Routes::new(RunnerServiceServer::new(grpc::Runner { runs })),
        http: tes,
    };
    let options = ServeOptions {
        services: vec![pirus_proto::RUNNER_SERVICE],
        addr_file: config.common.addr_file.clone(),
        shutdown_timeout: config.common.shutdown_timeout,
        reflection: vec![pirus_proto::RUNNER_DESCRIPTOR_SET],
        auth: AuthSetup {
            verifier: pirus_auth::Verifier::new(db.clone(), config.common.auth.mode()),
            audit: pirus_auth::audit::Audit::new(db.clone(), "runner"),
            changes: CHANGES,
            streams: STREAMS,
            budget: pirus_auth::admission::StreamBudget::from_user(
                config.common.max_streams_per_caller as usize,
            ),
            streams_per_connection: config.common.max_streams_per_connection,
        },
        http: config.common.http_limits(),
        grpc: config.common.grpc_limits(),
        // No request of the runner's carries data.
        data_streams: &[],
    };
    pirus_server::serve(options, listeners, service, db, metrics, shutdown).await?;
    Ok(())
}
