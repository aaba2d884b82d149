//! Runs and their events: submission, reads, the changes a runner records for the runs it
//! holds, client requests (pause, resume, cancel) and deletion. How rows are read is in
//! [`super::rows`].

use pirus_db::{
    batch::Coalesced,
    views::{self, PipelineView, RunFileKind},
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, FromQueryResult, TransactionTrait,
};
use uuid::Uuid;

use super::{
    CONTROL_CHANNEL, EVENTS_CHANNEL, RUNS_CHANNEL, Record, apply, notify,
    rows::{EVENTS_AFTER_SQL, EventRow, RunRow, columns, list_statement, run_columns},
    stmt,
};
use crate::{
    domain::{Error, Page, Progress, Requested, Result, Run, RunEvent, RunFilter, RunStatus},
    lifecycle::{self, Answer, Event, Request},
};

/// A row to insert for a validated submission.
pub(crate) struct RunInsert {
    pub id: Uuid,
    pub pipeline: PipelineView,
    pub name: String,
    pub config: serde_json::Value,
    pub input_file_ids: Vec<Uuid>,
    pub priority: i32,
    pub request_id: Option<String>,
    pub requested: Requested,
    pub max_attempts: i32,
    /// The principal that submitted it.
    pub owner: Option<Uuid>,
    /// What it executes (stored as JSON).
    pub plan: crate::domain::Plan,
    /// A TES task's own fields, as the TES edge answers them.
    pub tes: Option<serde_json::Value>,
    /// The labels a node must have to take it.
    pub node_selector: crate::placement::Labels,
}

/// What a runner records of a run it holds: a lifecycle event, and what comes with it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub event: Event,
    pub progress: Option<Progress>,
    pub exit_code: Option<i32>,
    pub error_message: Option<String>,
    pub message: String,
}

impl Change {
    pub(crate) fn new(event: Event, message: impl Into<String>) -> Self {
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
pub(crate) struct RunStore {
    pub(super) db: DatabaseConnection,
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
    pub(crate) fn new(db: DatabaseConnection) -> Self {
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
    pub(crate) fn with_read_pools(
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
    pub(crate) async fn by_request_id(
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
    pub(crate) async fn insert(&self, run: RunInsert) -> Result<Run> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH r AS (
                   INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version,
                                     image_sha256, name, status, config, input_file_ids,
                                     priority, request_id, cpu_limit, memory_limit,
                                     processes_limit, disk_limit, timeout_seconds,
                                     max_attempts, owner, tes, plan, node_selector, last_seq)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17, $18, $19, $20, $21, 1)
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
        let plan = serde_json::to_value(&run.plan).map_err(Error::internal)?;
        let selector = serde_json::to_value(&run.node_selector).map_err(Error::internal)?;
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
                plan.into(),
                selector.into(),
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

    pub(crate) async fn get(&self, id: Uuid) -> Result<Run> {
        let run = match &self.by_id {
            Some(batched) => batched.get(id).await?,
            None => read_run(&self.db, id).await?,
        };
        run.ok_or_else(|| Error::NotFound(format!("run {id}")))
    }

    pub(crate) async fn list(&self, filter: &RunFilter, page: Page) -> Result<Vec<Run>> {
        let rows = self
            .pages
            .query_all_raw(list_statement(filter, page))
            .await?;
        let rows = pirus_db::row::read_all(&rows, RunRow::read)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn events_after(&self, run: Uuid, after_seq: i64) -> Result<Vec<RunEvent>> {
        let rows =
            EventRow::find_by_statement(stmt(EVENTS_AFTER_SQL, [run.into(), after_seq.into()]))
                .all(&self.db)
                .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Records `change` of a run that `node` holds at `attempt`, as the lifecycle decides it.
    /// Answers false (and changes nothing) when the node no longer holds the run.
    pub(crate) async fn change(
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
    pub(crate) async fn request(&self, id: Uuid, request: Request) -> Result<Run> {
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
    pub(crate) async fn delete(&self, id: Uuid) -> Result<(Run, Vec<Uuid>)> {
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
    pub(crate) async fn file(
        &self,
        run: Uuid,
        kind: RunFileKind,
        name: &str,
    ) -> Result<Option<(Uuid, u64)>> {
        Ok(views::run_file(&self.db, run, kind, name).await?)
    }
}
