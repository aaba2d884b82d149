//! Database access of the runner: runs and their events, the queue, nodes.
//!
//! Every status or progress change appends its event in the same transaction, numbered from the
//! run row's `last_seq` under the row lock (so `seq` has no gaps), and NOTIFYs
//! `pirus_run_events` with the run id. Changes to a claimed run are fenced by its node and
//! attempt: a runner that lost a run changes nothing.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, FromQueryResult,
    Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use crate::domain::{
    Error, Node, NodeStatus, Page, Progress, Requested, Result, Run, RunEvent, RunFilter, RunStatus,
};
use crate::limits::Limits;

pub const RUNS_CHANNEL: &str = "pirus_runs";
pub const EVENTS_CHANNEL: &str = "pirus_run_events";
/// A control request (pause, resume, cancel) for the owning runner; payload: the run id.
pub const CONTROL_CHANNEL: &str = "pirus_run_control";

/// What a client asked a run to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    Running,
    Pause,
    Canceled,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Pause => "pause",
            Self::Canceled => "canceled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Pause, Self::Canceled]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// Statuses that hold a node's slot.
const ACTIVE: &str = "('initializing', 'running', 'pause', 'finishing')";

fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const RUN_COLUMNS: &str = r#"
    r.id, r.pipeline_id, r.pipeline_version, r.image_sha256, r.name, r.status, r.config,
    r.input_file_ids, r.progress_value, r.progress_label, r.node, r.attempt, r.exit_code,
    r.error_message, r.priority, r.max_attempts, r.cpu_limit, r.memory_limit,
    r.processes_limit, r.disk_limit, r.timeout_seconds, r.created_at, r.started_at, r.ended_at,
    coalesce((SELECT array_agg(f.id ORDER BY f.name) FROM files f
              WHERE f.source_run_id = r.id AND f.kind = 'output'), '{}') AS output_file_ids,
    coalesce((SELECT array_agg(f.id ORDER BY f.name) FROM files f
              WHERE f.source_run_id = r.id AND f.kind = 'log'), '{}') AS log_file_ids"#;

#[derive(FromQueryResult)]
struct RunRow {
    id: Uuid,
    pipeline_id: Uuid,
    pipeline_version: String,
    image_sha256: String,
    name: String,
    status: String,
    config: serde_json::Value,
    input_file_ids: Vec<Uuid>,
    output_file_ids: Vec<Uuid>,
    log_file_ids: Vec<Uuid>,
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
}

impl From<RunRow> for Run {
    fn from(r: RunRow) -> Self {
        Run {
            id: r.id,
            pipeline_id: r.pipeline_id,
            pipeline_version: r.pipeline_version,
            image_sha256: r.image_sha256,
            name: r.name,
            status: RunStatus::parse(&r.status).unwrap_or(RunStatus::Error),
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

/// What a pipeline gives a run: checked at submission, read again at execution.
#[derive(Clone, Debug, FromQueryResult)]
pub struct PipelineInfo {
    pub id: Uuid,
    pub status: String,
    pub name: String,
    pub version: String,
    pub image_sha256: Option<String>,
    pub image_file_id: Option<Uuid>,
    pub manifest: Option<serde_json::Value>,
    pub form: Option<serde_json::Value>,
}

#[derive(Clone, Debug, FromQueryResult)]
pub struct InputFile {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub sha256: Option<String>,
}

/// A row to insert for a validated submission.
pub struct RunInsert {
    pub id: Uuid,
    pub pipeline: PipelineInfo,
    pub name: String,
    pub config: serde_json::Value,
    pub input_file_ids: Vec<Uuid>,
    pub priority: i32,
    pub request_id: Option<String>,
    pub requested: Requested,
    pub max_attempts: i32,
}

/// What a runner says of its node when it starts.
pub struct NodeRegistration<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub max_runs: u32,
    pub largest: &'a Limits,
    pub lease_seconds: u64,
    pub incarnation: Uuid,
    pub lxd_version: Option<String>,
}

/// A change of a claimed run, with the event that records it.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub status: Option<RunStatus>,
    pub progress: Option<Progress>,
    pub exit_code: Option<i32>,
    pub error_message: Option<String>,
    pub message: String,
    /// The control request this change fulfils is cleared with it.
    pub clear_desired: bool,
}

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn pipeline(&self, id: Uuid) -> Result<Option<PipelineInfo>> {
        Ok(PipelineInfo::find_by_statement(stmt(
            "SELECT id, status, name, version, image_sha256, image_file_id, manifest, form
             FROM pipelines WHERE id = $1",
            [id.into()],
        ))
        .one(&self.db)
        .await?)
    }

    pub async fn input_files(&self, ids: &[Uuid]) -> Result<Vec<InputFile>> {
        Ok(InputFile::find_by_statement(stmt(
            "SELECT id, name, status, sha256 FROM files WHERE id = ANY($1)",
            [ids.to_vec().into()],
        ))
        .all(&self.db)
        .await?)
    }

    pub async fn run_by_request_id(&self, request_id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.request_id = $1");
        Ok(RunRow::find_by_statement(stmt(&sql, [request_id.into()]))
            .one(&self.db)
            .await?
            .map(Into::into))
    }

    /// Queues a run with its first event (WAITING), and wakes the schedulers.
    pub async fn insert_run(&self, run: RunInsert) -> Result<Run> {
        let txn = self.db.begin().await?;
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, image_sha256,
                                   name, status, config, input_file_ids, priority, request_id,
                                   cpu_limit, memory_limit, processes_limit, disk_limit,
                                   timeout_seconds, max_attempts, last_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, 'waiting', $7, $8, $9, $10, $11, $12, $13, $14,
                         $15, $16, 1)",
                [
                    run.id.into(),
                    run.pipeline.id.into(),
                    run.pipeline.name.clone().into(),
                    run.pipeline.version.clone().into(),
                    run.pipeline.image_sha256.clone().unwrap_or_default().into(),
                    run.name.into(),
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
                ],
            ))
            .await;
        if let Err(e) = inserted {
            if let (Some(request_id), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) =
                (&run.request_id, e.sql_err())
            {
                drop(txn);
                return self
                    .run_by_request_id(request_id)
                    .await?
                    .ok_or_else(|| Error::internal(e));
            }
            return Err(e.into());
        }
        txn.execute_raw(stmt(
            "INSERT INTO run_events (run_id, seq, attempt, status, message)
             VALUES ($1, 1, 0, 'waiting', 'queued')",
            [run.id.into()],
        ))
        .await?;
        notify(&txn, EVENTS_CHANNEL, &run.id.to_string()).await?;
        notify(&txn, RUNS_CHANNEL, &run.id.to_string()).await?;
        // Read back before committing: the answer is the run as queued, even if a runner
        // claims it the moment the transaction ends.
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1");
        let queued = RunRow::find_by_statement(stmt(&sql, [run.id.into()]))
            .one(&txn)
            .await?
            .ok_or_else(|| Error::internal("the run vanished in its own transaction"))?;
        txn.commit().await?;
        Ok(queued.into())
    }

    pub async fn get_run(&self, id: Uuid) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1");
        RunRow::find_by_statement(stmt(&sql, [id.into()]))
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or_else(|| Error::NotFound(format!("run {id}")))
    }

    pub async fn list_runs(&self, filter: &RunFilter, page: Page) -> Result<Vec<Run>> {
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
        let (filter_sql, values) = filter_sql.build();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r {filter_sql} ORDER BY r.id LIMIT {}",
            page.size
        );
        let rows = RunRow::find_by_statement(stmt(&sql, values))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn events_after(&self, run: Uuid, after_seq: i64) -> Result<Vec<RunEvent>> {
        let rows = EventRow::find_by_statement(stmt(
            "SELECT run_id, seq, attempt, status, progress_value, progress_label, message, at
             FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq",
            [run.into(), after_seq.into()],
        ))
        .all(&self.db)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Claims the next waiting run for `node` if it holds fewer than `max_runs`: by priority
    /// then age, skipping runs another runner is claiming and runs whose inputs are not all
    /// ready yet. The claim, its attempt row and its INITIALIZING event are one transaction.
    pub async fn claim(&self, node: &str, max_runs: u32, largest: &Limits) -> Result<Option<Run>> {
        let txn = self.db.begin().await?;
        // Serialises this node's claims, so two of its workers never both take the last slot,
        // and reads the drain flag under the same lock: a drain that lands between a check
        // and a claim cannot be missed.
        let node_row = txn
            .query_one_raw(stmt(
                "SELECT draining FROM nodes WHERE name = $1 FOR UPDATE",
                [node.into()],
            ))
            .await?;
        let draining: bool = node_row
            .map(|r| r.try_get("", "draining"))
            .transpose()?
            .unwrap_or(true);
        if draining {
            return Ok(None);
        }
        let active: i64 = txn
            .query_one_raw(stmt(
                &format!("SELECT count(*) AS n FROM runs WHERE node = $1 AND status IN {ACTIVE}"),
                [node.into()],
            ))
            .await?
            .map(|r| r.try_get("", "n"))
            .transpose()?
            .unwrap_or(0);
        if active >= i64::from(max_runs) {
            return Ok(None);
        }
        let claimed = txn
            .query_one_raw(stmt(
                "WITH next AS (
                    SELECT r.id FROM runs r
                    WHERE r.status = 'waiting'
                      AND (r.cpu_limit IS NULL OR r.cpu_limit <= $2)
                      AND (r.memory_limit IS NULL OR r.memory_limit <= $3)
                      AND (r.processes_limit IS NULL OR r.processes_limit <= $4)
                      AND (r.disk_limit IS NULL OR r.disk_limit <= $5)
                      AND (r.timeout_seconds IS NULL OR r.timeout_seconds <= $6)
                      AND NOT EXISTS (SELECT 1 FROM files f
                                      WHERE f.id = ANY (r.input_file_ids) AND f.status <> 'ready')
                    ORDER BY r.priority DESC, r.created_at, r.id
                    FOR UPDATE SKIP LOCKED
                    LIMIT 1)
                 UPDATE runs SET status = 'initializing', node = $1, attempt = runs.attempt + 1,
                                 started_at = coalesce(runs.started_at, now()),
                                 last_seq = runs.last_seq + 1, updated_at = now()
                 FROM next WHERE runs.id = next.id
                 RETURNING runs.id, runs.attempt, runs.last_seq",
                [
                    node.into(),
                    (largest.cpus as i32).into(),
                    (largest.memory_bytes as i64).into(),
                    (largest.processes as i32).into(),
                    (largest.disk_bytes as i64).into(),
                    (largest.time.as_secs() as i64).into(),
                ],
            ))
            .await?;
        let Some(row) = claimed else { return Ok(None) };
        let id: Uuid = row.try_get("", "id")?;
        let attempt: i32 = row.try_get("", "attempt")?;
        let seq: i64 = row.try_get("", "last_seq")?;
        txn.execute_raw(stmt(
            "INSERT INTO run_attempts (run_id, attempt, node, status) VALUES ($1, $2, $3, 'initializing')",
            [id.into(), attempt.into(), node.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            "INSERT INTO run_events (run_id, seq, attempt, status, message)
             VALUES ($1, $2, $3, 'initializing', $4)",
            [
                id.into(),
                seq.into(),
                attempt.into(),
                format!("claimed by node {node}").into(),
            ],
        ))
        .await?;
        notify(&txn, EVENTS_CHANNEL, &id.to_string()).await?;
        txn.commit().await?;
        self.get_run(id).await.map(Some)
    }

    /// Applies `change` to a run this node holds at `attempt`, with its event. Answers false
    /// (and changes nothing) when the node no longer holds it.
    pub async fn change(
        &self,
        run: Uuid,
        node: &str,
        attempt: i32,
        change: Change,
    ) -> Result<bool> {
        let txn = self.db.begin().await?;
        let status = change.status.map(RunStatus::as_str);
        let terminal = change.status.is_some_and(RunStatus::is_terminal);
        let progress = change.progress.clone();
        let row = txn
            .query_one_raw(stmt(
                "UPDATE runs SET status = coalesce($4, status),
                        progress_value = coalesce($5, progress_value),
                        progress_label = coalesce($6, progress_label),
                        exit_code = coalesce($7, exit_code),
                        error_message = coalesce($8, error_message),
                        ended_at = CASE WHEN $9 THEN now() ELSE ended_at END,
                        desired_state = CASE WHEN $10 OR $9 THEN NULL ELSE desired_state END,
                        last_seq = last_seq + 1, updated_at = now()
                 WHERE id = $1 AND node = $2 AND attempt = $3
                   AND status NOT IN ('done', 'error', 'canceled')
                 RETURNING last_seq, status, progress_value, progress_label",
                [
                    run.into(),
                    node.into(),
                    attempt.into(),
                    status.map(str::to_owned).into(),
                    progress.as_ref().map(|p| p.value).into(),
                    progress.as_ref().map(|p| p.label.clone()).into(),
                    change.exit_code.into(),
                    change.error_message.clone().into(),
                    terminal.into(),
                    change.clear_desired.into(),
                ],
            ))
            .await?;
        let Some(row) = row else { return Ok(false) };
        let seq: i64 = row.try_get("", "last_seq")?;
        let now_status: String = row.try_get("", "status")?;
        let value: f64 = row.try_get("", "progress_value")?;
        let label: String = row.try_get("", "progress_label")?;
        txn.execute_raw(stmt(
            "INSERT INTO run_events (run_id, seq, attempt, status, progress_value, progress_label, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                run.into(),
                seq.into(),
                attempt.into(),
                now_status.clone().into(),
                value.into(),
                label.into(),
                change.message.into(),
            ],
        ))
        .await?;
        if change.status.is_some() {
            txn.execute_raw(stmt(
                "UPDATE run_attempts SET status = $3, error_message = coalesce($4, error_message),
                        ended_at = CASE WHEN $5 THEN now() ELSE ended_at END
                 WHERE run_id = $1 AND attempt = $2",
                [
                    run.into(),
                    attempt.into(),
                    now_status.into(),
                    change.error_message.into(),
                    terminal.into(),
                ],
            ))
            .await?;
        }
        notify(&txn, EVENTS_CHANNEL, &run.to_string()).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Records a control request. A WAITING run is canceled at once (no runner holds it); a
    /// claimed run gets it as desired state for its owner, announced on [`CONTROL_CHANNEL`].
    /// Impossible transitions are FAILED_PRECONDITION.
    pub async fn request(&self, id: Uuid, desired: Desired) -> Result<Run> {
        let run = self.get_run(id).await?;
        let allowed: &[RunStatus] = match desired {
            Desired::Pause => &[RunStatus::Running, RunStatus::Pause],
            Desired::Running => &[RunStatus::Pause, RunStatus::Running],
            Desired::Canceled => &[
                RunStatus::Waiting,
                RunStatus::Initializing,
                RunStatus::Running,
                RunStatus::Pause,
            ],
        };
        if !allowed.contains(&run.status) {
            return Err(Error::FailedPrecondition(format!(
                "run {id} is {}: it cannot be {}",
                run.status.as_str(),
                match desired {
                    Desired::Pause => "paused",
                    Desired::Running => "resumed",
                    Desired::Canceled => "canceled",
                }
            )));
        }
        let txn = self.db.begin().await?;
        if desired == Desired::Canceled {
            let canceled = txn
                .query_one_raw(stmt(
                    "UPDATE runs SET status = 'canceled', ended_at = now(), desired_state = NULL,
                            last_seq = last_seq + 1, updated_at = now()
                     WHERE id = $1 AND status = 'waiting' RETURNING last_seq",
                    [id.into()],
                ))
                .await?;
            if let Some(row) = canceled {
                let seq: i64 = row.try_get("", "last_seq")?;
                txn.execute_raw(stmt(
                    "INSERT INTO run_events (run_id, seq, attempt, status, message)
                     SELECT id, $2, attempt, 'canceled', 'canceled before it started' FROM runs WHERE id = $1",
                    [id.into(), seq.into()],
                ))
                .await?;
                notify(&txn, EVENTS_CHANNEL, &id.to_string()).await?;
                txn.commit().await?;
                return self.get_run(id).await;
            }
        }
        let updated = txn
            .execute_raw(stmt(
                "UPDATE runs SET desired_state = $2, updated_at = now()
                 WHERE id = $1 AND status NOT IN ('done', 'error', 'canceled', 'waiting')",
                [id.into(), desired.as_str().into()],
            ))
            .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::FailedPrecondition(format!(
                "run {id} changed meanwhile; ask again"
            )));
        }
        notify(&txn, CONTROL_CHANNEL, &id.to_string()).await?;
        txn.commit().await?;
        self.get_run(id).await
    }

    /// Records nodes whose lease lapsed OFFLINE and settles their unfinished runs: queued again
    /// as a new attempt while `attempt < max_attempts`, else ended ERROR with the reason. Each
    /// lapsed node is handled by whichever runner locks its row first. Answers the nodes handled.
    pub async fn expire_nodes(&self) -> Result<Vec<String>> {
        let txn = self.db.begin().await?;
        let lapsed = txn
            .query_all_raw(stmt(
                "SELECT name, lease_seconds FROM nodes
                 WHERE status <> 'offline' AND heartbeat_at + make_interval(secs => lease_seconds) < now()
                 FOR UPDATE SKIP LOCKED",
                [],
            ))
            .await?;
        let mut handled = Vec::new();
        for row in lapsed {
            let node: String = row.try_get("", "name")?;
            let lease: i32 = row.try_get("", "lease_seconds")?;
            txn.execute_raw(stmt(
                "UPDATE nodes SET status = 'offline' WHERE name = $1",
                [node.clone().into()],
            ))
            .await?;
            let runs = txn
                .query_all_raw(stmt(
                    &format!(
                        "SELECT id, attempt, max_attempts FROM runs WHERE node = $1 AND status IN {ACTIVE}
                         FOR UPDATE"
                    ),
                    [node.clone().into()],
                ))
                .await?;
            for run in runs {
                let id: Uuid = run.try_get("", "id")?;
                let attempt: i32 = run.try_get("", "attempt")?;
                let max_attempts: i32 = run.try_get("", "max_attempts")?;
                let lost = format!("node {node} was lost: not heard from for {lease}s");
                let (status, message, error) = if attempt < max_attempts {
                    (
                        "waiting",
                        format!("{lost}; queued again for attempt {}", attempt + 1),
                        String::new(),
                    )
                } else {
                    ("error", lost.clone(), lost.clone())
                };
                let seq: i64 = txn
                    .query_one_raw(stmt(
                        "UPDATE runs SET status = $2, node = CASE WHEN $2 = 'waiting' THEN NULL ELSE node END,
                                error_message = $3, desired_state = NULL,
                                ended_at = CASE WHEN $2 = 'error' THEN now() ELSE ended_at END,
                                last_seq = last_seq + 1, updated_at = now()
                         WHERE id = $1 RETURNING last_seq",
                        [id.into(), status.into(), error.into()],
                    ))
                    .await?
                    .ok_or_else(|| Error::internal("a locked run vanished"))?
                    .try_get("", "last_seq")?;
                txn.execute_raw(stmt(
                    "INSERT INTO run_events (run_id, seq, attempt, status, message) VALUES ($1, $2, $3, $4, $5)",
                    [id.into(), seq.into(), attempt.into(), status.into(), message.into()],
                ))
                .await?;
                txn.execute_raw(stmt(
                    "UPDATE run_attempts SET status = 'error', error_message = $3, ended_at = now()
                     WHERE run_id = $1 AND attempt = $2",
                    [id.into(), attempt.into(), lost.into()],
                ))
                .await?;
                notify(&txn, EVENTS_CHANNEL, &id.to_string()).await?;
                if status == "waiting" {
                    notify(&txn, RUNS_CHANNEL, &id.to_string()).await?;
                }
            }
            handled.push(node);
        }
        txn.commit().await?;
        Ok(handled)
    }

    /// Whether `node` still holds `attempt` of `run` (the fencing check).
    pub async fn holds(&self, run: Uuid, node: &str, attempt: i32) -> Result<bool> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT 1 AS held FROM runs WHERE id = $1 AND node = $2 AND attempt = $3
                 AND status NOT IN ('done', 'error', 'canceled')",
                [run.into(), node.into(), attempt.into()],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// The control request pending for a run, if any.
    pub async fn desired(&self, id: Uuid) -> Result<Option<Desired>> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT desired_state FROM runs WHERE id = $1",
                [id.into()],
            ))
            .await?;
        let value: Option<String> = row
            .map(|r| r.try_get("", "desired_state"))
            .transpose()?
            .flatten();
        Ok(value.as_deref().and_then(Desired::parse))
    }

    /// Removes a finished run (its events and attempts go with it) and answers the ids of its
    /// output and log files, for the caller to delete in the catalogue.
    pub async fn delete_run(&self, id: Uuid) -> Result<(Run, Vec<Uuid>)> {
        let run = self.get_run(id).await?;
        if !run.status.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "run {id} is {}: cancel it or wait for it to end before deleting it",
                run.status.as_str()
            )));
        }
        let files = [run.output_file_ids.clone(), run.log_file_ids.clone()].concat();
        self.db
            .execute_raw(stmt(
                "DELETE FROM runs WHERE id = $1 AND status IN ('done', 'error', 'canceled')",
                [id.into()],
            ))
            .await?;
        Ok((run, files))
    }

    /// This node's unfinished runs, with the attempt each holds.
    pub async fn active_runs(&self, node: &str) -> Result<Vec<(Uuid, i32)>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!("SELECT id, attempt FROM runs WHERE node = $1 AND status IN {ACTIVE}"),
                [node.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "attempt")?)))
            .collect()
    }

    /// Registers (or takes over) this node; a new incarnation tells an older process it lost it.
    pub async fn register_node(&self, node: &NodeRegistration<'_>) -> Result<()> {
        let NodeRegistration {
            name,
            address,
            max_runs,
            largest,
            lease_seconds,
            incarnation,
            lxd_version,
        } = node;
        self.db
            .execute_raw(stmt(
                "INSERT INTO nodes (name, address, status, max_runs, lxd_version, lxd_available,
                                    lease_seconds, incarnation, started_at, heartbeat_at,
                                    max_cpus, max_memory, max_processes, max_disk, max_time_seconds)
                 VALUES ($1, $2, 'online', $3, $4, $5, $6, $7, now(), now(), $8, $9, $10, $11, $12)
                 ON CONFLICT (name) DO UPDATE SET
                    address = excluded.address,
                    status = CASE WHEN nodes.draining THEN 'draining' ELSE 'online' END,
                    max_runs = excluded.max_runs, lxd_version = excluded.lxd_version,
                    lxd_available = excluded.lxd_available, lease_seconds = excluded.lease_seconds,
                    incarnation = excluded.incarnation, started_at = now(), heartbeat_at = now(),
                    max_cpus = excluded.max_cpus, max_memory = excluded.max_memory,
                    max_processes = excluded.max_processes, max_disk = excluded.max_disk,
                    max_time_seconds = excluded.max_time_seconds",
                [
                    (*name).into(),
                    (*address).into(),
                    (*max_runs as i32).into(),
                    lxd_version.clone().into(),
                    lxd_version.is_some().into(),
                    (*lease_seconds as i32).into(),
                    (*incarnation).into(),
                    (largest.cpus as i32).into(),
                    (largest.memory_bytes as i64).into(),
                    (largest.processes as i32).into(),
                    (largest.disk_bytes as i64).into(),
                    (largest.time.as_secs() as i64).into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Renews this node's lease; false when another process took the node over.
    pub async fn heartbeat(
        &self,
        name: &str,
        incarnation: Uuid,
        lxd_version: Option<String>,
    ) -> Result<bool> {
        let result = self
            .db
            .execute_raw(stmt(
                "UPDATE nodes SET heartbeat_at = now(), lxd_version = coalesce($3, lxd_version),
                        lxd_available = $4,
                        status = CASE WHEN draining THEN 'draining' ELSE 'online' END
                 WHERE name = $1 AND incarnation = $2",
                [
                    name.into(),
                    incarnation.into(),
                    lxd_version.clone().into(),
                    lxd_version.is_some().into(),
                ],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The largest run of every node that says (runners older than run limits do not).
    pub async fn node_limits(&self) -> Result<Vec<Limits>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT max_cpus, max_memory, max_processes, max_disk, max_time_seconds
                 FROM nodes WHERE max_cpus IS NOT NULL AND max_memory IS NOT NULL
                   AND max_processes IS NOT NULL AND max_disk IS NOT NULL
                   AND max_time_seconds IS NOT NULL",
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Limits {
                    cpus: r.try_get::<i32>("", "max_cpus")? as u32,
                    memory_bytes: r.try_get::<i64>("", "max_memory")? as u64,
                    processes: r.try_get::<i32>("", "max_processes")? as u32,
                    disk_bytes: r.try_get::<i64>("", "max_disk")? as u64,
                    time: std::time::Duration::from_secs(
                        r.try_get::<i64>("", "max_time_seconds")? as u64
                    ),
                })
            })
            .collect()
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.nodes_where("", []).await
    }

    pub async fn node(&self, name: &str) -> Result<Node> {
        self.nodes_where("WHERE n.name = $1", [name.into()])
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("node '{name}'")))
    }

    async fn nodes_where(
        &self,
        filter: &str,
        values: impl IntoIterator<Item = Value>,
    ) -> Result<Vec<Node>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!(
                    "SELECT n.name, n.address, n.draining, n.max_runs, n.heartbeat_at, n.started_at,
                            n.lxd_version, n.lxd_available,
                            n.heartbeat_at + make_interval(secs => n.lease_seconds) < now() AS lapsed,
                            (SELECT count(*) FROM runs r WHERE r.node = n.name AND r.status IN {ACTIVE}) AS active
                     FROM nodes n {filter} ORDER BY n.name"
                ),
                values,
            ))
            .await?;
        rows.iter()
            .map(|r| {
                let lapsed: bool = r.try_get("", "lapsed")?;
                let draining: bool = r.try_get("", "draining")?;
                Ok(Node {
                    name: r.try_get("", "name")?,
                    address: r.try_get("", "address")?,
                    status: match (lapsed, draining) {
                        (true, _) => NodeStatus::Offline,
                        (false, true) => NodeStatus::Draining,
                        (false, false) => NodeStatus::Online,
                    },
                    max_runs: r.try_get("", "max_runs")?,
                    active_runs: r.try_get::<i64>("", "active")? as i32,
                    heartbeat_at: r.try_get("", "heartbeat_at")?,
                    started_at: r.try_get("", "started_at")?,
                    lxd_version: r.try_get("", "lxd_version")?,
                    lxd_available: r.try_get("", "lxd_available")?,
                })
            })
            .collect()
    }

    pub async fn set_draining(&self, name: &str, draining: bool) -> Result<Node> {
        let result = self
            .db
            .execute_raw(stmt(
                "UPDATE nodes SET draining = $2,
                        status = CASE WHEN status = 'offline' THEN status
                                      WHEN $2 THEN 'draining' ELSE 'online' END
                 WHERE name = $1",
                [name.into(), draining.into()],
            ))
            .await?;
        if result.rows_affected() == 0 {
            return Err(Error::NotFound(format!("node '{name}'")));
        }
        self.node(name).await
    }

    /// The output or log file of a run with this name.
    pub async fn run_file(&self, run: Uuid, kind: &str, name: &str) -> Result<Option<Uuid>> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT id FROM files WHERE source_run_id = $1 AND kind = $2 AND name = $3 AND status = 'ready'",
                [run.into(), kind.into(), name.into()],
            ))
            .await?;
        Ok(row.map(|r| r.try_get("", "id")).transpose()?)
    }

    pub async fn is_draining(&self, name: &str) -> Result<bool> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT draining FROM nodes WHERE name = $1",
                [name.into()],
            ))
            .await?;
        Ok(row
            .map(|r| r.try_get("", "draining"))
            .transpose()?
            .unwrap_or(false))
    }
}

async fn notify(txn: &DatabaseTransaction, channel: &str, payload: &str) -> Result<()> {
    txn.execute_raw(stmt(
        "SELECT pg_notify($1, $2)",
        [channel.into(), payload.into()],
    ))
    .await?;
    Ok(())
}
