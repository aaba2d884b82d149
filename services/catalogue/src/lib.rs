//! `pirus-catalogue`: takes resumable uploads of pipeline packages and data files, installs
//! packages, and serves pipeline, file and document metadata and file contents.
//!
//! Depends on (within Pirus): pirus-proto, pirus-db, pirus-server, pirus-auth. Never on:
//! pirus-runner, pirus-lxd. The runner's data (runs) is read only through `pirus_db::views`.
//!
//! `main` only parses options and calls [`run`], which takes pre-bound listeners and a
//! cancellation token so that tests can run the service in-process.

mod access;
mod config;
mod content;
mod datadir;
mod domain;
mod files;
mod grpc;
mod install;
mod pipelines;
mod principals;
mod store;
pub mod token_cli;
mod tokens;
mod tus;
mod uploads;
pub mod usage_cli;

use pirus_proto::catalogue::v1::{
    access_service_server::AccessServiceServer, catalogue_service_server::CatalogueServiceServer,
};
use pirus_server::{AuthSetup, Listeners, ServeOptions, Service, metrics::MetricsBuilder};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The calls that change something, recorded in the audit trail (tus creations and
/// terminations are recorded by the HTTP side of the layer).
const CHANGES: &[&str] = &[
    "/pirus.catalogue.v1.CatalogueService/CreatePipeline",
    "/pirus.catalogue.v1.CatalogueService/InstallPipeline",
    "/pirus.catalogue.v1.CatalogueService/DeletePipeline",
    "/pirus.catalogue.v1.CatalogueService/CreateFile",
    "/pirus.catalogue.v1.CatalogueService/DeleteFile",
    "/pirus.catalogue.v1.AccessService/CreateToken",
    "/pirus.catalogue.v1.AccessService/RevokeToken",
    "/pirus.catalogue.v1.AccessService/CreatePrincipal",
    "/pirus.catalogue.v1.AccessService/UpdatePrincipal",
];

/// The long-lived calls, counted against each caller's stream budget.
const STREAMS: &[&str] = &[
    "/pirus.catalogue.v1.CatalogueService/WriteUpload",
    "/pirus.catalogue.v1.CatalogueService/ReadFile",
];

/// Connects to and migrates the database, then serves until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let db = pirus_server::process::database(&config.common).await?;
    let storage = datadir::DataDir::open(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot prepare the data folder {}: {e}",
            config.data_dir.display()
        )
    })?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{}://{}", listeners.scheme(), listeners.http_addr()));
    tracing::info!(data_dir = %config.data_dir.display(), %public_url, "catalogue starting");

    let locks =
        uploads::LockConnector::new(&config.common.database_url, config.max_transfers as usize)?;
    let store = store::Store::new(db.clone());
    let (installs, install_queue) = tokio::sync::mpsc::unbounded_channel();
    let installer = install::Installer::new(
        store.clone(),
        storage.clone(),
        locks.clone(),
        config.max_image_size,
    );
    let installer = tokio::spawn(installer.run(install_queue, shutdown.clone()));
    let content = content::Content::new(store.clone(), storage, config.max_file_readers as usize);
    let access = access::Access::new(store.clone());
    let uploads = uploads::Uploads::new(
        store.clone(),
        content.clone(),
        locks.clone(),
        access.clone(),
        upload_limits(&config),
        installs.clone(),
    );
    let files = files::Files::new(
        uploads.clone(),
        store.clone(),
        content.clone(),
        locks,
        access,
    );
    let pipelines =
        pipelines::Pipelines::new(uploads.clone(), store, files.clone(), content, installs);
    let sweeper = tokio::spawn(uploads::run_sweeper(
        uploads.clone(),
        config.upload_sweep_interval(),
        shutdown.clone(),
    ));

    let metrics = MetricsBuilder::new("catalogue").build();
    let auth = auth_setup(&config, &db);
    let tokens = tokens::Tokens::new(db.clone(), auth.audit.clone(), config.default_quota());
    let principals = principals::Principals::new(db.clone(), config.default_quota());
    let service = Service {
        grpc: tonic::service::Routes::new(
            CatalogueServiceServer::new(grpc::Catalogue {
                uploads: uploads.clone(),
                files: files.clone(),
                pipelines: pipelines.clone(),
                public_url: public_url.as_str().into(),
            })
            .max_decoding_message_size(16 << 20),
        )
        .add_service(AccessServiceServer::new(grpc::access::Access {
            tokens,
            principals,
        })),
        http: tus::router(uploads, files, pipelines, &public_url, &config.cors_origins),
    };
    let options = serve_options(&config, auth);
    pirus_server::serve(options, listeners, service, db, metrics, shutdown).await?;
    let _ = tokio::join!(sweeper, installer);
    Ok(())
}

/// The bounds of uploads, from the options.
fn upload_limits(config: &Config) -> uploads::Limits {
    uploads::Limits {
        max_size: config.max_upload_size,
        expiry: config.upload_expiry,
        pace: uploads::driver::Pace {
            min_rate: config.min_transfer_rate,
            window: config.transfer_rate_window,
        },
    }
}

/// The one authorization layer's setup: tokens checked against the database, changes audited,
/// streams counted per caller.
fn auth_setup(config: &Config, db: &sea_orm::DatabaseConnection) -> AuthSetup {
    AuthSetup {
        verifier: pirus_auth::Verifier::new(db.clone(), config.common.auth.mode()),
        audit: pirus_auth::audit::Audit::new(db.clone(), "catalogue"),
        changes: CHANGES,
        streams: STREAMS,
        budget: pirus_auth::admission::StreamBudget::from_user(
            config.common.max_streams_per_caller as usize,
        ),
        streams_per_connection: config.common.max_streams_per_connection,
    }
}

/// How both ports serve: the services health reports, reflection, limits, shutdown.
fn serve_options(config: &Config, auth: AuthSetup) -> ServeOptions {
    ServeOptions {
        services: vec![pirus_proto::CATALOGUE_SERVICE, pirus_proto::ACCESS_SERVICE],
        addr_file: config.common.addr_file.clone(),
        shutdown_timeout: config.common.shutdown_timeout,
        reflection: vec![pirus_proto::CATALOGUE_DESCRIPTOR_SET],
        auth,
        http: config.common.http_limits(),
        grpc: config.common.grpc_limits(),
        data_streams: &["/pirus.catalogue.v1.CatalogueService/WriteUpload"],
    }
}
