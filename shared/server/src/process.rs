//! The process around a service's `run`: options parsed (one-line errors), logging started, a
//! runtime, the listeners bound, SIGTERM/SIGINT turned into cancellation, and any start-up
//! failure printed as one line with a non-zero exit.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use clap::Parser;
use pirus_db::sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{Listeners, options::CommonOptions};

/// What a service's options give the process wiring.
pub trait ServiceConfig: Parser {
    fn common(&self) -> &CommonOptions;
    fn addresses(&self) -> (SocketAddr, SocketAddr);
}

/// `main` of a Pirus binary: everything but the service itself.
pub fn main<C, F, Fut>(name: &str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Listeners, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = crate::options::parse();
    if let Err(line) = check_safe(&config) {
        eprintln!("{name}: {line}");
        return ExitCode::from(2);
    }
    let tls = match config.common().tls.load() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(config.common().log_format);
    raise_open_file_limit(config.common());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (grpc, http) = config.addresses();
        let listeners = Listeners::bind(grpc, http, tls).await?;
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            on_signal.cancel();
        });
        run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses unsafe combinations of options at start-up: `--auth none`, or plaintext without
/// `--insecure-plaintext`, on an address other machines can reach.
fn check_safe<C: ServiceConfig>(config: &C) -> Result<(), String> {
    let (grpc, http) = config.addresses();
    let common = config.common();
    let exposed = [grpc, http].into_iter().find(|a| !a.ip().is_loopback());
    let Some(exposed) = exposed else {
        return Ok(());
    };
    if common.auth == crate::options::Auth::None {
        return Err(format!(
            "--auth none is accepted only when every bound address is loopback (127.0.0.1 or ::1), not {exposed}"
        ));
    }
    if common.tls.tls_cert.is_none() && !common.tls.insecure_plaintext {
        return Err(format!(
            "refusing to serve plaintext on {exposed}: give --tls-cert and --tls-key, or --insecure-plaintext if a proxy terminates TLS"
        ));
    }
    Ok(())
}

/// A second pool on the same database, of `max_connections`, for work that must never wait
/// behind request traffic (a runner's lease, claims and runs).
pub async fn work_pool(
    common: &CommonOptions,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    let mut db_config = pirus_db::DbConfig::new(&common.database_url);
    db_config.max_connections = max_connections.max(2);
    Ok(pirus_db::connect(&db_config).await?)
}

/// A small pool of `connections` for reads that only spend the database's CPU (pages, or
/// coalesced reads by id, [`pirus_db::batch`]), its sessions planning each statement once.
pub async fn read_pool(
    common: &CommonOptions,
    connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    let mut db_config = pirus_db::DbConfig::new(&common.database_url);
    db_config.max_connections = connections;
    db_config.generic_plans = true;
    Ok(pirus_db::connect(&db_config).await?)
}

/// Connects to the database the options name and applies the migrations: the pool requests
/// are served from. Its sessions plan each statement once, for any parameters
/// ([`pirus_db::DbConfig::generic_plans`]): every request-side query is a lookup by key or a
/// page along an index chosen by the shape of its filter, not by the values in it, and
/// PostgreSQL re-planned ListRuns' page query on every call (a custom plan each time: planning
/// was a fifth of PostgreSQL's time under load). The hot ones are EXPLAINed, as generic plans,
/// on a seeded database by the runner's store tests.
pub async fn database(common: &CommonOptions) -> anyhow::Result<DatabaseConnection> {
    database_leaving(common, 0).await
}

/// [`database`], its pool `leave` connections short of `--database-max-connections` (at least
/// 2), for a process that opens another pool out of the same budget ([`read_pool`]).
pub async fn database_leaving(
    common: &CommonOptions,
    leave: u32,
) -> anyhow::Result<DatabaseConnection> {
    let mut db_config = pirus_db::DbConfig::new(&common.database_url);
    db_config.max_connections = common.database_max_connections.saturating_sub(leave).max(2);
    db_config.generic_plans = true;
    let db = pirus_db::connect(&db_config).await?;
    pirus_db::migrate(&db).await?;
    Ok(db)
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does): the default
/// soft limit of 1024 (systemd's too) is below what the connection caps allow
/// (`--max-grpc-connections` + `--max-http-connections`, 1024 each), so a flood of connections
/// would run the process out of descriptors, for its database connections and files too,
/// before either cap refused one. Warns when even the hard limit is below the caps.
fn raise_open_file_limit(common: &CommonOptions) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the limit on open files");
        }
    }
    let wanted = u64::from(common.max_grpc_connections)
        + u64::from(common.max_http_connections)
        + u64::from(common.database_max_connections)
        + 256;
    if let Some(soft) = getrlimit(Resource::Nofile).current
        && soft < wanted
    {
        tracing::warn!(
            limit = soft,
            wanted,
            "the limit on open files is below what the connection caps allow \
             (--max-grpc-connections + --max-http-connections + the database pool + 256); \
             raise it (LimitNOFILE=) or lower the caps"
        );
    }
}
