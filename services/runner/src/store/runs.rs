//! Runs and their events: submission, reads, the changes a runner records for the runs it
//! holds, client requests (pause, resume, cancel) and deletion.

use chrono::{DateTime, Utc};
use pirus_db::{
    batch::Coalesced,
    row::Columns,
    views::{self, PipelineView, RunFileKind},
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, FromQueryResult,
    TransactionTrait,
};
use uuid::Uuid;

use super::{CONTROL_CHANNEL, EVENTS_CHANNEL, RUNS_CHANNEL, Record, apply, notify, stmt};
use crate::{
    domain::{Error, Page, Progress, Requested, Result, Run, RunEvent, RunFilter, RunStatus},
    lifecycle::{self, Answer, Event, Request},
};

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
fn columns(with_tes: bool, outputs: &str, logs: &str) -> String {
    format!(
        "r.id, r.pipeline_id, r.pipeline_version, r.image_sha256, r.name, r.status, r.config,
         r.input_file_ids, r.progress_value, r.progress_label, r.node, r.attempt, r.exit_code,
         r.error_message, r.priority, r.max_attempts, r.cpu_limit, r.memory_limit,
         r.processes_limit, r.disk_limit, r.timeout_seconds, r.created_at, r.started_at,
         r.ended_at, r.owner, {}, {outputs} AS output_file_ids, {logs} AS log_file_ids",
        if with_tes {
            "r.tes"
        } else {
            "NULL::jsonb AS tes"
        },
    )
}

/// A row of [`run_columns`], read by position (see [`pirus_db::row`]): the fields in the
/// order the columns are selected.
struct RunRow {
    id: Uuid,
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
    fn read(c: &mut Columns<'_>) -> std::result::Result<Self, DbErr> {
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
            tes: r.tes,
        }
    }
}

#[derive(FromQueryResult)]
struct EventRow {
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

/// The attempts of the runs among $1, for their TES task logs.
pub(super) const ATTEMPT_LOGS_SQL: &str =
    "SELECT run_id, attempt, started_at, ended_at, error_message, tes_log
     FROM run_attempts WHERE run_id = ANY($1) ORDER BY run_id, attempt";

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

/// One attempt of a run, as a TES task log is made from it.
#[derive(Clone, Debug, FromQueryResult)]
pub struct AttemptLog {
    pub run_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error_message: String,
    pub tes_log: Option<serde_json::Value>,
}

/// A row to insert for a validated submission.
pub struct RunInsert {
    pub id: Uuid,
    pub pipeline: PipelineView,
    pub name: String,
    pub config: serde_json::Value,
    pub input_file_ids: Vec<Uuid>,
    pub priority: i32,
    pub request_id: Option<String>,
    pub requested: Requested,
    pub max_attempts: i32,
    /// The accessor that submitted it.
    pub owner: Option<Uuid>,
    /// A TES task's own fields.
    pub tes: Option<serde_json::Value>,
}

/// What a runner records of a run it holds: a lifecycle event, and what comes with it.
#[derive(Clone, Debug)]
pub struct Change {
    pub event: Event,
    pub progress: Option<Progress>,
    pub exit_code: Option<i32>,
    pub error_message: Option<String>,
    pub message: String,
}

impl Change {
    pub fn new(event: Event, message: impl Into<String>) -> Self {
        Self {
            event,
            progress: None,
            exit_code: None,
            error_message: None,
            message: message.into(),
        }
    }
}

#[derive(Clone)]
pub struct RunStore {
    db: DatabaseConnection,
    /// Where pages of runs are read: the request pool, or a small pool of their own
    /// ([`Self::with_read_pools`]).
    pages: DatabaseConnection,
    /// When set, GetRun and every other read of one run by id: concurrent reads go to the
    /// database together (see [`pirus_db::batch`]).
    by_id: Option<Coalesced<Uuid, Run>>,
}

/// The runs of some ids (`$1`, an array), each with its files.
pub(super) fn runs_by_ids_sql() -> String {
    format!(
        "SELECT {} FROM runs r WHERE r.id = ANY($1)",
        run_columns(true)
    )
}

async fn read_run(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<Run>> {
    let sql = format!("SELECT {} FROM runs r WHERE r.id = $1", run_columns(true));
    Ok(RunRow::find_by_statement(stmt(&sql, [id.into()]))
        .one(db)
        .await?
        .map(Into::into))
}

/// Locks a run's row; answers its status and attempt.
async fn lock(txn: &DatabaseTransaction, id: Uuid) -> Result<(RunStatus, i32)> {
    let row = txn
        .query_one_raw(stmt(
            "SELECT status, attempt FROM runs WHERE id = $1 FOR UPDATE",
            [id.into()],
        ))
        .await?
        .ok_or_else(|| Error::NotFound(format!("run {id}")))?;
    let status: String = row.try_get("", "status")?;
    let status = RunStatus::parse(&status)
        .ok_or_else(|| Error::internal(format!("run {id} has an unknown status")))?;
    Ok((status, row.try_get("", "attempt")?))
}

impl RunStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            pages: db.clone(),
            db,
            by_id: None,
        }
    }

    /// Reads for the stores that serve requests, on two small pools planning generically:
    /// reads of one run by id ([`Self::get`]: GetRun, and every access check of a run)
    /// coalesced on `batches` (at most [`pirus_db::batch::IN_FLIGHT`] batches at once), and
    /// pages of runs ([`Self::list`]: ListRuns, TES task lists) on `pages`. On a tokio runtime
    /// (starts the batching task).
    ///
    /// Pages only spend the database's CPU, so more of them at once than it has cores only
    /// makes each slower: with 32 callers listing pages on the 2-core benchmark host, the
    /// request pool's 14 sessions at once answered about as many pages as 4, at a higher p99
    /// and more of PostgreSQL's CPU per page (docs/benchmarks.md, "a pool for reads"). Writes
    /// stay on the request pool, where sessions wait on commits rather than on a core; and
    /// the pools are apart so that a caller listing without pause delays neither the writes
    /// nor anyone's access checks, only other pages.
    pub fn with_read_pools(
        mut self,
        batches: DatabaseConnection,
        pages: DatabaseConnection,
    ) -> Self {
        self.pages = pages;
        let reads = batches;
        self.by_id = Some(Coalesced::new(move |ids: Vec<Uuid>| {
            let db = reads.clone();
            async move {
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(runs_by_ids_sql);
                let rows = db.query_all_raw(stmt(&SQL, [ids.into()])).await?;
                let rows = pirus_db::row::read_all(&rows, RunRow::read)?;
                Ok(rows.into_iter().map(|r| (r.id, r.into())).collect())
            }
        }));
        self
    }

    /// The run an owner submitted with this idempotency key (keys are per owner).
    pub async fn by_request_id(
        &self,
        request_id: &str,
        owner: Option<Uuid>,
    ) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {} FROM runs r WHERE r.request_id = $1 AND r.owner IS NOT DISTINCT FROM $2",
            run_columns(true)
        );
        Ok(
            RunRow::find_by_statement(stmt(&sql, [request_id.into(), owner.into()]))
                .one(&self.db)
                .await?
                .map(Into::into),
        )
    }

    /// Queues a run with its first event, and wakes the schedulers. The answer is the run as
    /// queued, even if a runner claims it at once. One statement (its own transaction): the
    /// run, its first event, both notifications and the run read back, in one round trip
    /// instead of seven (SubmitRun is bound by the database's per-statement work).
    pub async fn insert(&self, run: RunInsert) -> Result<Run> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH r AS (
                   INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version,
                                     image_sha256, name, status, config, input_file_ids,
                                     priority, request_id, cpu_limit, memory_limit,
                                     processes_limit, disk_limit, timeout_seconds,
                                     max_attempts, owner, tes, last_seq)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17, $18, $19, 1)
                   RETURNING *
                 ), first_event AS (
                   INSERT INTO run_events (run_id, seq, attempt, status, message)
                   SELECT id, 1, 0, status, 'queued' FROM r
                 ), woken AS (
                   SELECT pg_notify('{EVENTS_CHANNEL}', id::text),
                          pg_notify('{RUNS_CHANNEL}', id::text)
                   FROM r
                 )
                 SELECT {} FROM r WHERE EXISTS (SELECT FROM woken)",
                // A run just queued has no outputs or logs yet.
                columns(true, "'{}'::uuid[]", "'{}'::uuid[]")
            )
        });
        let first = lifecycle::submitted();
        let inserted = RunRow::find_by_statement(stmt(
            &SQL,
            [
                run.id.into(),
                run.pipeline.id.into(),
                run.pipeline.name.clone().into(),
                run.pipeline.version.clone().into(),
                run.pipeline.image_sha256.clone().unwrap_or_default().into(),
                run.name.into(),
                first.status.as_str().into(),
                run.config.into(),
                run.input_file_ids.into(),
                run.priority.into(),
                run.request_id.clone().into(),
                run.requested.cpus.map(|n| n as i32).into(),
                run.requested.memory_bytes.map(|n| n as i64).into(),
                run.requested.processes.map(|n| n as i32).into(),
                run.requested.disk_bytes.map(|n| n as i64).into(),
                run.requested.time.map(|t| t.as_secs() as i64).into(),
                run.max_attempts.into(),
                run.owner.into(),
                run.tes.into(),
            ],
        ))
        .one(&self.db)
        .await;
        match inserted {
            Ok(Some(queued)) => Ok(queued.into()),
            Ok(None) => Err(Error::internal("queuing a run answered no row")),
            Err(e) => match (&run.request_id, pirus_db::is_unique_violation(&e)) {
                // A concurrent submission with the same key won the insert.
                (Some(request_id), true) => self
                    .by_request_id(request_id, run.owner)
                    .await?
                    .ok_or_else(|| Error::internal(e)),
                _ => Err(e.into()),
            },
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Run> {
        let run = match &self.by_id {
            Some(batched) => batched.get(id).await?,
            None => read_run(&self.db, id).await?,
        };
        run.ok_or_else(|| Error::NotFound(format!("run {id}")))
    }

    pub async fn list(&self, filter: &RunFilter, page: Page) -> Result<Vec<Run>> {
        let rows = self
            .pages
            .query_all_raw(list_statement(filter, page))
            .await?;
        let rows = pirus_db::row::read_all(&rows, RunRow::read)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn events_after(&self, run: Uuid, after_seq: i64) -> Result<Vec<RunEvent>> {
        let rows =
            EventRow::find_by_statement(stmt(EVENTS_AFTER_SQL, [run.into(), after_seq.into()]))
                .all(&self.db)
                .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The attempts of the runs among `runs` (a page of TES tasks: one query), by run and
    /// attempt, each with what its runner recorded of it.
    pub async fn attempt_logs(&self, runs: &[Uuid]) -> Result<Vec<AttemptLog>> {
        Ok(
            AttemptLog::find_by_statement(stmt(ATTEMPT_LOGS_SQL, [runs.to_vec().into()]))
                .all(&self.db)
                .await?,
        )
    }

    /// Records the task log of an attempt `node` holds (nothing if it no longer does).
    pub async fn set_attempt_log(
        &self,
        run: Uuid,
        node: &str,
        attempt: i32,
        log: serde_json::Value,
    ) -> Result<()> {
        self.db
            .execute_raw(stmt(
                "UPDATE run_attempts a SET tes_log = $4
                 FROM runs r
                 WHERE a.run_id = $1 AND a.attempt = $3 AND r.id = a.run_id
                   AND r.node = $2 AND r.attempt = $3",
                [run.into(), node.into(), attempt.into(), log.into()],
            ))
            .await?;
        Ok(())
    }

    /// Records `change` of a run that `node` holds at `attempt`, as the lifecycle decides it.
    /// Answers false (and changes nothing) when the node no longer holds the run.
    pub async fn change(
        &self,
        run: Uuid,
        node: &str,
        attempt: i32,
        change: Change,
    ) -> Result<bool> {
        let txn = self.db.begin().await?;
        let held = txn
            .query_one_raw(stmt(
                "SELECT status FROM runs WHERE id = $1 AND node = $2 AND attempt = $3 FOR UPDATE",
                [run.into(), node.into(), attempt.into()],
            ))
            .await?;
        let Some(row) = held else { return Ok(false) };
        let status: String = row.try_get("", "status")?;
        let Some(status) = RunStatus::parse(&status).filter(|s| !s.is_terminal()) else {
            return Ok(false);
        };
        let decision = lifecycle::next(status, change.event)
            .map_err(|e| Error::FailedPrecondition(format!("run {run}: {e}")))?;
        let record = Record {
            progress: change.progress.as_ref(),
            exit_code: change.exit_code,
            error_message: change.error_message.as_deref(),
            attempt_error: None,
            message: &change.message,
        };
        apply(&txn, run, attempt, decision, record).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// A client's request, as the lifecycle answers it for the run's status under its row
    /// lock: a WAITING run is canceled at once (no runner holds it); a claimed run gets the
    /// request as desired state for its owner, announced on [`CONTROL_CHANNEL`]. Impossible
    /// requests are FAILED_PRECONDITION.
    pub async fn request(&self, id: Uuid, request: Request) -> Result<Run> {
        let txn = self.db.begin().await?;
        let (status, attempt) = lock(&txn, id).await?;
        let answer = lifecycle::request(status, request)
            .map_err(|e| Error::FailedPrecondition(format!("run {id}: {e}")))?;
        match answer {
            Answer::Now(event) => {
                let decision = lifecycle::next(status, event)
                    .map_err(|e| Error::FailedPrecondition(format!("run {id}: {e}")))?;
                let record = Record {
                    message: "canceled before it started",
                    ..Record::default()
                };
                apply(&txn, id, attempt, decision, record).await?;
            }
            Answer::Owner(desired) => {
                txn.execute_raw(stmt(
                    "UPDATE runs SET desired_state = $2, updated_at = now() WHERE id = $1",
                    [id.into(), desired.as_str().into()],
                ))
                .await?;
                notify(&txn, CONTROL_CHANNEL, &id.to_string()).await?;
            }
            Answer::Delete => return Err(Error::internal("deletion is not a control request")),
        }
        txn.commit().await?;
        self.get(id).await
    }

    /// Removes a run that ended (its events and attempts go with it) and answers the ids of
    /// its output and log files, for the caller to delete in the catalogue.
    pub async fn delete(&self, id: Uuid) -> Result<(Run, Vec<Uuid>)> {
        let txn = self.db.begin().await?;
        let (status, _) = lock(&txn, id).await?;
        match lifecycle::request(status, Request::Delete) {
            Ok(Answer::Delete) => {}
            Ok(_) => return Err(Error::internal("deletion answered otherwise")),
            Err(e) => return Err(Error::FailedPrecondition(format!("run {id}: {e}"))),
        }
        let run = read_run(&txn, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("run {id}")))?;
        let files = [run.output_file_ids.clone(), run.log_file_ids.clone()].concat();
        txn.execute_raw(stmt("DELETE FROM runs WHERE id = $1", [id.into()]))
            .await?;
        txn.commit().await?;
        Ok((run, files))
    }

    /// The READY output or log of a run with this name.
    /// A run's READY output or log named `name`: its id and size.
    pub async fn file(
        &self,
        run: Uuid,
        kind: RunFileKind,
        name: &str,
    ) -> Result<Option<(Uuid, u64)>> {
        Ok(views::run_file(&self.db, run, kind, name).await?)
    }
}
