//! The operations HTTP port: `/livez` (the process answers), `/readyz` (it can serve: database
//! reachable, schema migrated, not shutting down) and `/metrics` (OpenMetrics text). A service
//! merges its own routes (the catalogue's tus endpoints) into the same router.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{health::Health, metrics::Metrics};

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: Arc<Metrics>,
}

pub fn router(health: Health, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { health, metrics })
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
