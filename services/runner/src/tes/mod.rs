//! GA4GH Task Execution Service (TES) v1.1 on the runner's HTTP port (CONTRACT §8), under
//! `/ga4gh/tes/v1` and `/v1`: workflow engines (Nextflow, Snakemake, Cromwell, cwl-tes) submit
//! tasks here with no Pirus-specific code.
//!
//! A task is a run ([`task`]): the same queue, claims, limits, events, identity and control.
//! The handlers here only parse HTTP and JSON and write answers; they sit behind the same
//! authorization layer as every other HTTP route (a TES call carries the same Bearer token, and
//! a task belongs to its caller). Types are the `tes` crate's, which serialise only the fields
//! that are set, so TES 1.0 clients (which reject keys they do not know) read every task that
//! uses no 1.1 feature.
//!
//! Executing a task is the executor's (`executor/task.rs`: inputs in, `file://` outputs out),
//! with [`script`], what runs in the container.

pub mod script;
pub mod task;

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
    task::State as TesState,
};
use uuid::Uuid;

use crate::{
    domain::{Error, Page, RunFilter, TaskFilter},
    lifecycle::Request,
    runs::Runs,
};

/// A task's JSON at most (inputs' `content` included). Every task is kept whole with its run
/// and read back with it (a page of BASIC tasks reads a page of them), so this stays small.
const MAX_BODY: usize = 2 << 20;
/// ListTasks' page size when none is asked, and the largest (the TES schema's).
const DEFAULT_PAGE_SIZE: u64 = 256;
const MAX_PAGE_SIZE: u64 = 2048;
/// Tasks in a FULL page at most, and in a BASIC one (TES lets a server answer fewer than
/// asked, with a token for the rest).
const FULL_PAGE_SIZE: u64 = 32;
const BASIC_PAGE_SIZE: u64 = 256;

/// What a URL of a task's input or output is to this runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The catalogue (`pirus://files/...`).
    Pirus,
    /// A host file beneath the node's `--tes-file-roots`.
    File,
    /// Anything else (`s3://`, `gs://`, `https://`...): accepted, and the task ends
    /// SYSTEM_ERROR naming it, since no runner fetches it.
    Other,
}

impl Scheme {
    pub fn of(url: &str) -> Self {
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
}

/// The TES routes, under both prefixes.
pub fn router(runs: Runs, name: String) -> Router {
    let tes = Tes { runs, name };
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
            Error::InvalidArgument { .. } | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) => StatusCode::CONFLICT,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
        "tesResources_backend_parameters": task::BACKEND_PARAMETERS,
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
        return json(&task::minimal(&run));
    }
    let detail = tes.runs.task_details(std::slice::from_ref(&run)).await?;
    json(&task::task(&run, &detail[0], view))
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
    let pairs = query_pairs(query.as_deref());
    let view = view(&pairs)?;
    let values = |key: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let last = |key: &str| values(key).last().map(|v| v.to_string());
    let size = match last("page_size").as_deref() {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(v) => match v.parse::<u64>() {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) if n < MAX_PAGE_SIZE => n,
            _ => {
                return Err(bad(
                    "page_size",
                    format!("must be a whole number from 1 to {}", MAX_PAGE_SIZE - 1),
                ));
            }
        },
    };
    let after = match last("page_token").as_deref() {
        None | Some("") => None,
        Some(token) => Some(
            Uuid::try_parse(token)
                .map_err(|_| bad("page_token", "is not a token this service issued"))?,
        ),
    };
    let mut filter = TaskFilter {
        name_prefix: last("name_prefix").filter(|p| !p.is_empty()),
        ..Default::default()
    };
    if let Some(state) = last("state").filter(|s| !s.is_empty()) {
        let parsed: TesState = serde_json::from_value(serde_json::Value::String(state.clone()))
            .map_err(|_| bad("state", format!("'{state}' is not a TES state")))?;
        match task::statuses(parsed) {
            Some((statuses, command_failed)) => {
                filter.statuses = statuses;
                filter.command_failed = command_failed;
            }
            // A state no Pirus task is ever in.
            None => {
                return json(&ListTasks::<()> {
                    tasks: vec![],
                    next_page_token: None,
                });
            }
        }
    }
    let (keys, tag_values) = (values("tag_key"), values("tag_value"));
    if tag_values.len() > keys.len() {
        return Err(bad("tag_value", "has more values than there are tag_key"));
    }
    filter.tags = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let value = tag_values.get(i).filter(|v| !v.is_empty());
            (k.to_string(), value.map(|v| v.to_string()))
        })
        .collect();
    // A FULL task carries its executors' output (up to 2 x 256 KiB an attempt) and a BASIC
    // one its whole request: their pages hold at most FULL_PAGE_SIZE and BASIC_PAGE_SIZE
    // tasks, with a token for the rest, so that one request cannot make the runner build a
    // response of gigabytes.
    let size = match view {
        View::Full => size.min(FULL_PAGE_SIZE),
        View::Basic => size.min(BASIC_PAGE_SIZE),
        View::Minimal => size,
    };
    let page = Page { size, after };
    let runs = tes
        .runs
        .list(
            &caller,
            RunFilter {
                tasks: Some(filter),
                ..Default::default()
            },
            page,
        )
        .await?;
    let (runs, token) = pirus_server::paging::paged(page, runs, |r| r.id);
    let next_page_token = (!token.is_empty()).then_some(token);
    if view == View::Minimal {
        let tasks = runs.iter().map(task::minimal).collect();
        return json(&ListTasks {
            tasks,
            next_page_token,
        });
    }
    let details = tes.runs.task_details(&runs).await?;
    let tasks = runs
        .iter()
        .zip(&details)
        .map(|(run, detail)| task::task(run, detail, view))
        .collect();
    json(&ListTasks {
        tasks,
        next_page_token,
    })
}
