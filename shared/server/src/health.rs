//! Readiness: gRPC health (`grpc.health.v1`) and `/readyz` tell the same story. A process is
//! ready while its database answers and its schema is migrated, and not while it shuts down.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use pirus_db::sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::metrics::Metrics;

/// Shared readiness of one process, reported to gRPC health and `/readyz`.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
    reason: Arc<Mutex<Option<String>>>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// Starts not ready ("starting"); `services` are the gRPC service names to report, besides
    /// the server-wide "" entry.
    pub async fn new(
        reporter: HealthReporter,
        services: &[&'static str],
        metrics: Arc<Metrics>,
    ) -> Self {
        let health = Self {
            reporter,
            services: services.into(),
            reason: Arc::new(Mutex::new(None)),
            metrics,
        };
        health.set_not_ready("starting").await;
        health
    }

    pub async fn set_ready(&self) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.ready.set(1);
        self.report(ServingStatus::Serving).await;
    }

    pub async fn set_not_ready(&self, reason: impl Into<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
        self.metrics.ready.set(0);
        self.report(ServingStatus::NotServing).await;
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.reason.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    async fn report(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in self.services.iter() {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}

/// Pings the database until `shutdown`, flipping health as it is lost and found again. While
/// the database is down the probe backs off (250 ms doubling to 4 s); the pool reconnects by
/// itself on the next successful probe.
pub async fn watch_database(db: DatabaseConnection, health: Health, shutdown: CancellationToken) {
    const HEALTHY_INTERVAL: Duration = Duration::from_secs(1);
    const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
    const MAX_BACKOFF: Duration = Duration::from_secs(4);
    let mut up = true;
    let mut backoff = Duration::from_millis(250);
    loop {
        let result = pirus_db::ping(&db, PROBE_TIMEOUT).await;
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => {
                if !up {
                    tracing::info!("database reachable again");
                    health.set_ready().await;
                }
                health.metrics.db_up.set(1);
                up = true;
                backoff = Duration::from_millis(250);
            }
            Err(e) => {
                if up {
                    tracing::warn!(error = %e, "database unreachable; retrying with back-off");
                    health.set_not_ready("database unreachable").await;
                }
                health.metrics.db_up.set(0);
                up = false;
            }
        }
        let pause = if up { HEALTHY_INTERVAL } else { backoff };
        if !up {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
