//! GA4GH Task Execution Service (TES) v1.1 on the runner's HTTP port (CONTRACT §8), under
//! `/ga4gh/tes/v1` and `/v1`: workflow engines (Nextflow, Snakemake, Cromwell, cwl-tes) submit
//! tasks here with no Pirus-specific code.
//!
//! TES is an edge over the runner's domain, beside gRPC: a task is a run ([`task`]) whose
//! plan ([`plan`]) the executor runs like any other, knowing nothing of TES. The same queue,
//! claims, limits, events, identity and control. The handlers here only parse HTTP and JSON and
//! write answers; they sit behind the same authorization layer as every other HTTP route (a TES
//! call carries the same Bearer token, and a task belongs to its caller). Types are the `tes`
//! crate's, which serialise only the fields that are set, so TES 1.0 clients (which reject keys
//! they do not know) read every task that uses no 1.1 feature.
//!
//! [`validate`] checks a created task, [`views`] answers runs as tasks, [`listing`] reads
//! ListTasks' query.

mod listing;
pub(crate) mod plan;
#[cfg(test)]
mod props;
mod task;
mod validate;
mod views;

use axum::{
    Extension, Router,
    extract::{DefaultBodyLimit, Path, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use pirus_auth::Caller;
use serde::Serialize;
use tes::v1::types::{
    requests::{self, View},
    responses::{CreatedTask, ListTasks},
};
use uuid::Uuid;

use crate::{domain::Error, lifecycle::Request, runs::Runs};

/// A task's JSON at most (inputs' `content` included). Every task is kept whole with its run
/// and read back with it (a page of BASIC tasks reads a page of them), so this stays small.
const MAX_BODY: usize = 2 << 20;

/// What a URL of a task's input or output is to this runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// The catalogue (`pirus://files/...`).
    Pirus,
    /// A host file beneath the node's `--tes-file-roots`.
    File,
    /// Anything else (`s3://`, `gs://`, `https://`...): accepted, and the task ends
    /// SYSTEM_ERROR naming it, since no runner fetches it.
    Other,
}

impl Scheme {
    pub(crate) fn of(url: &str) -> Self {
        if url.starts_with("pirus://") {
            Self::Pirus
        } else if url.starts_with("file://") {
            Self::File
        } else {
            Self::Other
        }
    }
}

#[derive(Clone)]
struct Tes {
    runs: Runs,
    /// The deployment's name for service-info.
    name: String,
    /// BASIC and FULL listings (pages of whole tasks) each caller makes at once, admitted like
    /// streams: [`HEAVY_LISTINGS`] for a user (4 times that for operators and admins).
    heavy: pirus_auth::admission::Admission,
}

/// BASIC and FULL listings a user makes at once.
const HEAVY_LISTINGS: usize = 2;
/// The bytes of tasks one listing answers at most: a page stops before the task that would
/// take it past this, with a token for the rest (one task is always answered).
const MAX_LISTING_BYTES: usize = 8 << 20;

/// The TES routes, under both prefixes.
pub(crate) fn router(runs: Runs, name: String) -> Router {
    let tes = Tes {
        runs,
        name,
        heavy: pirus_auth::admission::Admission::new(
            pirus_auth::admission::StreamBudget::from_user(HEAVY_LISTINGS),
        ),
    };
    let mut router = Router::new().route("/v1/tasks/service-info", get(service_info_1_0));
    for base in ["/ga4gh/tes/v1", "/v1"] {
        router = router
            .route(&format!("{base}/service-info"), get(service_info))
            .route(&format!("{base}/tasks"), get(list).post(create))
            .route(&format!("{base}/tasks/{{id}}"), get(get_task).post(cancel));
    }
    router
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(tes)
}

/// An error as TES servers answer them: a status and a JSON body saying why.
struct Failure(StatusCode, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument { .. } | Error::FailedPrecondition(_) | Error::OutOfRange(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) => StatusCode::CONFLICT,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // As a rate or quota refusal is answered over HTTP.
            Error::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                return Self(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                );
            }
        };
        Self(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.0.as_u16(), "message": self.1});
        respond(self.0, &body)
    }
}

/// `value` as a JSON body.
fn respond(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a TES answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn bad(field: &str, message: impl Into<String>) -> Failure {
    Failure::from(Error::invalid(field, message))
}

type Answer = Result<Response, Failure>;

fn json(value: &impl Serialize) -> Answer {
    Ok(respond(StatusCode::OK, value))
}

/// The caller the authorization layer put on the request (it lets none through without one).
fn caller(found: Option<Extension<Caller>>) -> Result<Caller, Failure> {
    found.map(|Extension(c)| c).ok_or_else(|| {
        Failure(
            StatusCode::UNAUTHORIZED,
            "no credentials were presented".to_owned(),
        )
    })
}

fn task_id(id: &str) -> Result<Uuid, Failure> {
    // Not a task id: answered as a task that does not exist.
    Uuid::try_parse(id).map_err(|_| Failure::from(Error::NotFound(format!("task {id}"))))
}

/// The query's pairs, in order (repeated keys kept).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn view(pairs: &[(String, String)]) -> Result<View, Failure> {
    match pairs.iter().rev().find(|(k, _)| k == "view") {
        None => Ok(View::Minimal),
        Some((_, v)) => match v.as_str() {
            "MINIMAL" => Ok(View::Minimal),
            "BASIC" => Ok(View::Basic),
            "FULL" => Ok(View::Full),
            other => Err(bad(
                "view",
                format!("'{other}' is not MINIMAL, BASIC or FULL"),
            )),
        },
    }
}

async fn service_info(State(tes): State<Tes>) -> Answer {
    json(&serde_json::json!({
        "id": "org.pirus.tes",
        "name": tes.name,
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
        "description": "Pirus: TES tasks run as Pirus runs, each in its own unprivileged LXD \
                        container of the installed pipeline its executors name",
        "organization": {"name": "Pirus", "url": "https://pirus.invalid/"},
        "version": env!("CARGO_PKG_VERSION"),
        "storage": ["pirus://files/", "file://"],
        "tesResources_backend_parameters": validate::BACKEND_PARAMETERS,
    }))
}

/// Where TES 1.0 clients look (`GET /v1/tasks/service-info`), in TES 1.0's shape.
async fn service_info_1_0(State(tes): State<Tes>) -> Answer {
    json(&serde_json::json!({
        "name": tes.name,
        "doc": "Pirus: TES tasks run as Pirus runs",
        "storage": ["pirus://files/", "file://"],
    }))
}

async fn create(
    State(tes): State<Tes>,
    found: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Answer {
    let caller = caller(found)?;
    let task: requests::Task =
        serde_json::from_slice(&body).map_err(|e| bad("task", format!("not a TES task: {e}")))?;
    let id = task::create(&tes.runs, &caller, task).await?;
    json(&CreatedTask { id: id.to_string() })
}

async fn get_task(
    State(tes): State<Tes>,
    found: Option<Extension<Caller>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Answer {
    let caller = caller(found)?;
    let view = view(&query_pairs(query.as_deref()))?;
    let id = task_id(&id)?;
    let run = tes.runs.get(&caller, id).await?;
    if run.tes.is_none() {
        // A run submitted over gRPC is not a task.
        return Err(Error::NotFound(format!("task {id}")).into());
    }
    if view == View::Minimal {
        return json(&views::minimal(&run));
    }
    let detail = views::details(&tes.runs, std::slice::from_ref(&run)).await?;
    json(&views::task(&run, &detail[0], view))
}

async fn cancel(
    State(tes): State<Tes>,
    found: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Answer {
    let caller = caller(found)?;
    let Some(id) = id.strip_suffix(":cancel") else {
        return Err(Failure(StatusCode::NOT_FOUND, "no such route".to_owned()));
    };
    let id = task_id(id)?;
    let run = tes.runs.get(&caller, id).await?;
    if run.tes.is_none() {
        return Err(Error::NotFound(format!("task {id}")).into());
    }
    // A task that already ended stays as it ended; cancelling it again is no error.
    if !run.status.is_terminal() {
        match tes.runs.control(&caller, id, Request::Cancel).await {
            Ok(_) => {}
            Err(Error::FailedPrecondition(_))
                if tes.runs.get(&caller, id).await?.status.is_terminal() => {}
            Err(e) => return Err(e.into()),
        }
    }
    json(&serde_json::json!({}))
}

async fn list(
    State(tes): State<Tes>,
    found: Option<Extension<Caller>>,
    RawQuery(query): RawQuery,
) -> Answer {
    let caller = caller(found)?;
    let Some(listing) = listing::Listing::parse(&query_pairs(query.as_deref()))? else {
        // A state no Pirus task is ever in.
        return json(&ListTasks::<()> {
            tasks: vec![],
            next_page_token: None,
        });
    };
    let (view, page) = (listing.view, listing.page);
    // Pages of whole tasks are admitted like streams: one caller cannot hold many at once.
    let _admitted = match view {
        View::Minimal => None,
        _ => Some(tes.heavy.admit(&caller, None).map_err(|e| {
            Failure(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{e}; retry when one ends"),
            )
        })?),
    };
    let runs = tes.runs.list(&caller, listing.filter, page).await?;
    let (runs, token) = pirus_server::paging::paged(page, runs, |r| r.id);
    let next_page_token = (!token.is_empty()).then_some(token);
    if view == View::Minimal {
        let tasks = runs.iter().map(views::minimal).collect();
        return json(&ListTasks {
            tasks,
            next_page_token,
        });
    }
    let details = views::details(&tes.runs, &runs).await?;
    let mut tasks = Vec::new();
    let mut bytes = 0;
    for (run, detail) in runs.iter().zip(&details) {
        let task =
            serde_json::to_string(&views::task(run, detail, view)).map_err(Error::internal)?;
        bytes += task.len();
        if bytes > MAX_LISTING_BYTES && !tasks.is_empty() {
            // Cut by bytes: the rest from after the last task answered.
            let last = &runs[tasks.len() - 1];
            return Ok(task_page(&tasks, Some(last.id.simple().to_string())));
        }
        tasks.push(task);
    }
    Ok(task_page(&tasks, next_page_token))
}

/// A ListTasks answer of tasks already serialised (each once: a page may weigh megabytes).
fn task_page(tasks: &[String], next_page_token: Option<String>) -> Response {
    let mut body = String::with_capacity(tasks.iter().map(|t| t.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"tasks\":[");
    body.push_str(&tasks.join(","));
    body.push(']');
    if let Some(token) = next_page_token {
        body.push_str(",\"next_page_token\":\"");
        body.push_str(&token);
        body.push('"');
    }
    body.push('}');
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
