//! The operations HTTP port: `/livez` (the process answers), `/readyz` (it can serve: database
//! reachable, schema migrated, not shutting down) and `/metrics` (OpenMetrics text). A service
//! merges its own routes (the catalogue's tus endpoints) into the same router.

use std::sync::Arc;

use axum::{
    Router,
    extract::{ConnectInfo, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{health::Health, metrics::Metrics};

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: Arc<Metrics>,
    verifier: pirus_auth::Verifier,
}

/// `/livez` and `/readyz` are open; `/metrics` needs a token that may read metrics.
pub fn router(health: Health, metrics: Arc<Metrics>, verifier: pirus_auth::Verifier) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState {
            health,
            metrics,
            verifier,
        })
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

async fn metrics_text(
    State(state): State<OpsState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: http::HeaderMap,
) -> Response {
    let caller =
        pirus_auth::layer::authenticate_http(&state.verifier, &headers, Some(peer.ip())).await;
    let caller = match caller {
        Ok(caller) => caller,
        Err((status, e)) => return unauthorized(status, &e.to_string()),
    };
    if let Err(e) = pirus_auth::policy::check(&caller, pirus_auth::policy::Action::ReadMetrics) {
        return (StatusCode::FORBIDDEN, format!("{e}\n")).into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// A 401 (or 503) with `WWW-Authenticate: Bearer`, as HTTP clients expect.
pub fn unauthorized(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(http::header::WWW_AUTHENTICATE, "Bearer")],
        format!("{message}\n"),
    )
        .into_response()
}

/// A transfer's permit from the caller's budget, and its hold on the caller's token (its body
/// made to end on revocation); neither for other requests.
#[allow(clippy::result_large_err)]
fn admit_transfer(
    auth: &HttpAuth,
    caller: &pirus_auth::Caller,
    peer: std::net::SocketAddr,
    request: &mut axum::extract::Request,
) -> Result<
    (
        Option<pirus_auth::admission::Permit>,
        Option<pirus_auth::revocation::Hold>,
    ),
    Response,
> {
    if !is_transfer(request) {
        return Ok((None, None));
    }
    let permit = auth.admission.admit(caller, Some(peer.ip())).map_err(|e| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(http::header::RETRY_AFTER, "1")],
            format!("{e}\n"),
        )
            .into_response()
    })?;
    let hold = pirus_auth::revocation::hold(&auth.verifier, caller);
    if let Some(hold) = &hold {
        let cancel = hold.token();
        let body = std::mem::take(request.body_mut());
        *request.body_mut() =
            axum::body::Body::new(pirus_auth::revocation::Revocable::request(body, cancel));
    }
    Ok((Some(permit), hold))
}

/// The longest request path an audit event records (tus paths are far shorter).
const MAX_AUDITED_PATH: usize = 256;

/// What the HTTP side of the authorization layer needs.
#[derive(Debug, Clone)]
pub struct HttpAuth {
    pub verifier: pirus_auth::Verifier,
    pub audit: pirus_auth::audit::Audit,
    /// The same per-caller budget as the gRPC streams: a tus transfer (a PATCH, or a POST
    /// carrying bytes) holds one of the caller's streams while its body flows.
    pub admission: pirus_auth::admission::Admission,
}

/// Whether a request moves upload bytes (and so holds one of its caller's streams).
fn is_transfer(request: &axum::extract::Request) -> bool {
    match *request.method() {
        http::Method::PATCH => true,
        http::Method::POST => request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes() == b"application/offset+octet-stream"),
        _ => false,
    }
}

/// The authorization layer for a service's own HTTP routes (tus): every request but OPTIONS
/// (discovery and CORS preflight, which browsers send without credentials) is authenticated
/// once, its [`pirus_auth::Caller`] put in the request's extensions for the handlers; the
/// others are answered 401 with `WWW-Authenticate: Bearer`. Creations and terminations (POST,
/// DELETE) are recorded in the audit trail with their status.
pub async fn authenticate(
    State(auth): State<HttpAuth>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() == http::Method::OPTIONS {
        return next.run(request).await;
    }
    // Creations and terminations are audited (the path as sent, cut to a length an audit row
    // can hold); transfers, the hot path, compute nothing for it.
    let audited =
        matches!(*request.method(), http::Method::POST | http::Method::DELETE).then(|| {
            let path: String = request
                .uri()
                .path()
                .chars()
                .take(MAX_AUDITED_PATH)
                .collect();
            (
                format!("{} {path}", request.method()),
                peer.ip().to_string(),
            )
        });
    let caller =
        pirus_auth::layer::authenticate_http(&auth.verifier, request.headers(), Some(peer.ip()))
            .await;
    let caller = match caller {
        Ok(caller) => caller,
        Err((status, e)) => {
            if let Some((action, peer)) = &audited {
                auth.audit.record(None, action, "", status.as_str(), peer);
            }
            return unauthorized(status, &e.to_string());
        }
    };
    // One past the caller's budget of streams and transfers: 429 with a retry hint, before
    // any byte is read. A transfer lasts: its body ends where it is when its token stops
    // being valid (the upload keeps its durable bytes and pauses), and the answer is then 401.
    let (_permit, hold) = match admit_transfer(&auth, &caller, peer, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let who = audited.as_ref().map(|_| caller.clone());
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    if hold
        .as_ref()
        .is_some_and(pirus_auth::revocation::Hold::revoked)
    {
        return unauthorized(StatusCode::UNAUTHORIZED, pirus_auth::revocation::REVOKED);
    }
    if let Some((action, peer)) = &audited {
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let status = response.status();
        auth.audit
            .record(who.as_ref(), action, location, status.as_str(), peer);
    }
    response
}
