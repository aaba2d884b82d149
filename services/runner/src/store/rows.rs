//! How runs and their events are read: the columns of a run (its TES task's only when asked:
//! ListRuns answers none of them), the row read by position, and ListRuns' keyset query.

use chrono::{DateTime, Utc};
use pirus_db::{
    row::Columns,
    views::{self, RunFileKind},
};
use sea_orm::{DbErr, FromQueryResult};
use uuid::Uuid;

use super::stmt;
use crate::domain::{Page, Progress, Requested, Run, RunEvent, RunFilter, RunStatus};

/// The columns of a run, over `runs r`; its TES task fields only `with_tes` (ListRuns
/// answers none of them, and a task's can weigh up to 2 MiB).
pub(super) fn run_columns(with_tes: bool) -> String {
    columns(
        with_tes,
        &views::run_files_sql("r", RunFileKind::Output),
        &views::run_files_sql("r", RunFileKind::Log),
    )
}

/// [`run_columns`] with the output and log ids given as SQL.
pub(super) fn columns(with_tes: bool, outputs: &str, logs: &str) -> String {
    format!(
        "r.id, r.pipeline_id, r.pipeline_version, r.image_sha256, r.name, r.status, r.config,
         r.input_file_ids, r.progress_value, r.progress_label, r.node, r.attempt, r.exit_code,
         r.error_message, r.priority, r.max_attempts, r.cpu_limit, r.memory_limit,
         r.processes_limit, r.disk_limit, r.timeout_seconds, r.created_at, r.started_at,
         r.ended_at, r.owner, (SELECT p.name FROM principal_names p WHERE p.id = r.owner),
         r.node_selector,
         {}, {outputs} AS output_file_ids, {logs} AS log_file_ids",
        if with_tes {
            "r.tes"
        } else {
            "NULL::jsonb AS tes"
        },
    )
}

/// A row of [`run_columns`], read by position (see [`pirus_db::row`]): the fields in the
/// order the columns are selected.
pub(super) struct RunRow {
    pub(super) id: Uuid,
    pipeline_id: Uuid,
    pipeline_version: String,
    image_sha256: String,
    name: String,
    status: RunStatus,
    config: serde_json::Value,
    input_file_ids: Vec<Uuid>,
    progress_value: f64,
    progress_label: String,
    node: Option<String>,
    attempt: i32,
    exit_code: Option<i32>,
    error_message: String,
    priority: i32,
    max_attempts: i32,
    cpu_limit: Option<i32>,
    memory_limit: Option<i64>,
    processes_limit: Option<i32>,
    disk_limit: Option<i64>,
    timeout_seconds: Option<i64>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    owner: Option<Uuid>,
    owner_name: Option<String>,
    node_selector: serde_json::Value,
    tes: Option<serde_json::Value>,
    output_file_ids: Vec<Uuid>,
    log_file_ids: Vec<Uuid>,
}

impl FromQueryResult for RunRow {
    fn from_query_result(
        result: &sea_orm::QueryResult,
        _prefix: &str,
    ) -> std::result::Result<Self, DbErr> {
        pirus_db::row::read_one(result, Self::read)
    }
}

impl RunRow {
    /// The fields in the order the columns are selected.
    pub(super) fn read(c: &mut Columns<'_>) -> std::result::Result<Self, DbErr> {
        Ok(RunRow {
            id: c.take()?,
            pipeline_id: c.take()?,
            pipeline_version: c.take()?,
            image_sha256: c.take()?,
            name: c.take()?,
            // Parsed in place: no string of its own.
            status: RunStatus::parse(c.take::<&str>()?).unwrap_or(RunStatus::Error),
            config: c.take()?,
            input_file_ids: c.take()?,
            progress_value: c.take()?,
            progress_label: c.take()?,
            node: c.take()?,
            attempt: c.take()?,
            exit_code: c.take()?,
            error_message: c.take()?,
            priority: c.take()?,
            max_attempts: c.take()?,
            cpu_limit: c.take()?,
            memory_limit: c.take()?,
            processes_limit: c.take()?,
            disk_limit: c.take()?,
            timeout_seconds: c.take()?,
            created_at: c.take()?,
            started_at: c.take()?,
            ended_at: c.take()?,
            owner: c.take()?,
            owner_name: c.take()?,
            node_selector: c.take()?,
            tes: c.take()?,
            output_file_ids: c.take()?,
            log_file_ids: c.take()?,
        })
    }
}

impl From<RunRow> for Run {
    fn from(r: RunRow) -> Self {
        Run {
            id: r.id,
            pipeline_id: r.pipeline_id,
            pipeline_version: r.pipeline_version,
            image_sha256: r.image_sha256,
            name: r.name,
            status: r.status,
            config: r.config,
            input_file_ids: r.input_file_ids,
            output_file_ids: r.output_file_ids,
            log_file_ids: r.log_file_ids,
            progress: Progress {
                value: r.progress_value,
                label: r.progress_label,
            },
            node: r.node,
            attempt: r.attempt,
            exit_code: r.exit_code,
            error_message: r.error_message,
            priority: r.priority,
            max_attempts: r.max_attempts,
            requested: Requested {
                cpus: r.cpu_limit.map(|n| n as u32),
                memory_bytes: r.memory_limit.map(|n| n as u64),
                processes: r.processes_limit.map(|n| n as u32),
                disk_bytes: r.disk_limit.map(|n| n as u64),
                time: r
                    .timeout_seconds
                    .map(|s| std::time::Duration::from_secs(s as u64)),
            },
            created_at: r.created_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            owner: r.owner,
            owner_name: r.owner_name,
            node_selector: serde_json::from_value(r.node_selector).unwrap_or_default(),
            pending: None,
            tes: r.tes,
        }
    }
}

#[derive(FromQueryResult)]
pub(super) struct EventRow {
    run_id: Uuid,
    seq: i64,
    attempt: i32,
    status: String,
    progress_value: f64,
    progress_label: String,
    message: String,
    at: DateTime<Utc>,
}

impl From<EventRow> for RunEvent {
    fn from(e: EventRow) -> Self {
        RunEvent {
            run_id: e.run_id,
            seq: e.seq,
            attempt: e.attempt,
            status: RunStatus::parse(&e.status).unwrap_or(RunStatus::Error),
            progress: Progress {
                value: e.progress_value,
                label: e.progress_label,
            },
            message: e.message,
            at: e.at,
        }
    }
}

/// A run's events after a seq, in order (WatchRun's reads).
pub(super) const EVENTS_AFTER_SQL: &str =
    "SELECT run_id, seq, attempt, status, progress_value, progress_label, message, at
     FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq";

/// ListRuns' (and ListTasks') query: a keyset page of runs by id, filtered.
pub(super) fn list_statement(filter: &RunFilter, page: Page) -> sea_orm::Statement {
    let mut filter_sql = pirus_db::filter::Where::default();
    if let Some(after) = page.after {
        filter_sql.and("r.id > ?", after);
    }
    if let Some(status) = filter.status {
        filter_sql.and("r.status = ?", status.as_str());
    }
    if let Some(pipeline) = filter.pipeline_id {
        filter_sql.and("r.pipeline_id = ?", pipeline);
    }
    if let Some(node) = &filter.node {
        filter_sql.and("r.node = ?", node.clone());
    }
    if let Some(owner) = filter.owner {
        filter_sql.and("r.owner = ?", owner);
    }
    if let Some(tasks) = &filter.tasks {
        task_conditions(&mut filter_sql, tasks);
    }
    let (filter_sql, values) = filter_sql.build();
    let sql = format!(
        "SELECT {} FROM runs r {filter_sql} ORDER BY r.id LIMIT {}",
        run_columns(filter.tasks.is_some()),
        page.fetch()
    );
    stmt(&sql, values)
}

/// ListTasks' filters as SQL over `runs r`.
fn task_conditions(filter_sql: &mut pirus_db::filter::Where, tasks: &crate::domain::TaskFilter) {
    filter_sql.and_only("r.tes IS NOT NULL");
    if let Some(prefix) = &tasks.name_prefix {
        let escaped = prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        filter_sql.and("(r.tes ->> 'name') LIKE ?", format!("{escaped}%"));
    }
    for (key, value) in &tasks.tags {
        match value {
            // Containment, which the GIN index on the tags answers.
            Some(value) => {
                filter_sql.and("(r.tes -> 'tags') @> ?", serde_json::json!({ key: value }))
            }
            None => filter_sql.and("jsonb_exists(r.tes -> 'tags', ?)", key.clone()),
        };
    }
    if !tasks.statuses.is_empty() {
        let statuses: Vec<String> = tasks
            .statuses
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        filter_sql.and("r.status = ANY(?)", statuses);
    }
    match tasks.command_failed {
        Some(true) => filter_sql.and_only("coalesce(r.exit_code, 0) <> 0"),
        Some(false) => filter_sql.and_only("coalesce(r.exit_code, 0) = 0"),
        None => filter_sql,
    };
}
