//! Database access of the runner, one store per aggregate: [`RunStore`] (runs and their
//! events, client requests), [`QueueStore`] (claims, a node's slots, fencing), [`NodeStore`]
//! (nodes and their leases). The catalogue's pipelines and files are read only through
//! [`pirus_db::views`], the typed boundary between the services.
//!
//! The stores persist what [`crate::lifecycle`] decides and decide no transition themselves:
//! a change reads the run's status under its row lock, asks the lifecycle, and writes the
//! decision with its event row (`seq` numbered from the run's `last_seq`, so it has no gaps)
//! in one transaction, then NOTIFYs `pirus_run_events`. Changes to a claimed run are fenced by
//! its node and attempt: a runner that lost a run changes nothing.
//!
//! One access style throughout: plain SQL through [`stmt`], rows read with sea-orm's
//! `FromQueryResult` or `try_get` (docs/architecture.md says why).

mod attempts;
mod claim;
mod nodes;
mod queue;
mod rows;
mod runs;

use pirus_db::stmt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use uuid::Uuid;

pub(crate) use attempts::AttemptLog;
pub(crate) use claim::ClaimBounds;
pub(crate) use nodes::{NodeRegistration, NodeStore};
pub(crate) use queue::QueueStore;
pub(crate) use runs::{Change, RunInsert, RunStore};

use crate::{
    domain::{Progress, Result, RunStatus},
    lifecycle::{ACTIVE, Decision},
};

/// A database error as the domain's: UNAVAILABLE while the database cannot be reached (the
/// caller retries), internal otherwise.
impl From<sea_orm::DbErr> for crate::domain::Error {
    fn from(e: sea_orm::DbErr) -> Self {
        if let Some(refusal) = pirus_db::quota_exceeded(&e) {
            crate::domain::Error::QuotaExceeded(refusal)
        } else if pirus_db::is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            crate::domain::Error::Unavailable("the database is unavailable; retry later".to_owned())
        } else {
            crate::domain::Error::Internal(e.to_string())
        }
    }
}

pub(crate) const RUNS_CHANNEL: &str = "pirus_runs";
pub(crate) const EVENTS_CHANNEL: &str = "pirus_run_events";
/// A control request (pause, resume, cancel) for the owning runner; payload: the run id.
pub(crate) const CONTROL_CHANNEL: &str = "pirus_run_control";

/// Every store, over one pool.
#[derive(Clone)]
pub(crate) struct Stores {
    pub runs: RunStore,
    pub queue: QueueStore,
    pub nodes: NodeStore,
    db: DatabaseConnection,
}

impl Stores {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            runs: RunStore::new(db.clone()),
            queue: QueueStore::new(db.clone()),
            nodes: NodeStore::new(db.clone()),
            db,
        }
    }

    /// The same stores, reading single runs in batches on `batches` and pages of runs on
    /// `pages` ([`RunStore::with_read_pools`]).
    pub(crate) fn with_read_pools(
        mut self,
        batches: DatabaseConnection,
        pages: DatabaseConnection,
    ) -> Self {
        self.runs = self.runs.with_read_pools(batches, pages);
        self
    }

    /// The pool, for the read model of the catalogue's data ([`pirus_db::views`]).
    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// `('initializing', 'running', ...)`: the statuses that hold a node's slot, for SQL.
fn active_sql() -> String {
    let names: Vec<String> = ACTIVE.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("({})", names.join(", "))
}

async fn notify(txn: &DatabaseTransaction, channel: &str, payload: &str) -> Result<()> {
    txn.execute_raw(stmt(
        "SELECT pg_notify($1, $2)",
        [channel.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// What a transition writes besides the lifecycle's decision.
#[derive(Clone, Copy, Debug, Default)]
struct Record<'a> {
    progress: Option<&'a Progress>,
    exit_code: Option<i32>,
    error_message: Option<&'a str>,
    /// Why the attempt ended, when the run goes on (its node was lost).
    attempt_error: Option<&'a str>,
    message: &'a str,
}

/// Writes `decision` for `attempt` of `run` (whose row the transaction has locked), with its
/// event and its attempt's status, and announces it.
async fn apply(
    txn: &DatabaseTransaction,
    run: Uuid,
    attempt: i32,
    decision: Decision,
    record: Record<'_>,
) -> Result<()> {
    let e = decision.effects;
    let row = txn
        .query_one_raw(stmt(
            "UPDATE runs SET status = $2,
                    progress_value = coalesce($3, progress_value),
                    progress_label = coalesce($4, progress_label),
                    exit_code = coalesce($5, exit_code),
                    error_message = coalesce($6, error_message),
                    ended_at = CASE WHEN $7 THEN now() ELSE ended_at END,
                    desired_state = CASE WHEN $7 OR $8 THEN NULL ELSE desired_state END,
                    node = CASE WHEN $9 THEN NULL ELSE node END,
                    last_seq = last_seq + 1, updated_at = now()
             WHERE id = $1
             RETURNING last_seq, progress_value, progress_label",
            [
                run.into(),
                decision.status.as_str().into(),
                record.progress.map(|p| p.value).into(),
                record.progress.map(|p| p.label.clone()).into(),
                record.exit_code.into(),
                record.error_message.map(str::to_owned).into(),
                e.ended.into(),
                e.clear_desired.into(),
                e.requeued.into(),
            ],
        ))
        .await?
        .ok_or_else(|| crate::domain::Error::internal("a locked run vanished"))?;
    let seq: i64 = row.try_get("", "last_seq")?;
    let value: f64 = row.try_get("", "progress_value")?;
    let label: String = row.try_get("", "progress_label")?;
    txn.execute_raw(stmt(
        "INSERT INTO run_events (run_id, seq, attempt, status, progress_value, progress_label, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            run.into(),
            seq.into(),
            attempt.into(),
            decision.status.as_str().into(),
            value.into(),
            label.into(),
            record.message.into(),
        ],
    ))
    .await?;
    record_attempt(txn, run, attempt, decision, &record).await?;
    notify(txn, EVENTS_CHANNEL, &run.to_string()).await?;
    if e.requeued {
        notify(txn, RUNS_CHANNEL, &run.to_string()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The attempt's row follows the run: its status (an attempt whose node was lost ends ERROR
/// while the run goes on as a new attempt), why it ended, and when.
async fn record_attempt(
    txn: &DatabaseTransaction,
    run: Uuid,
    attempt: i32,
    decision: Decision,
    record: &Record<'_>,
) -> Result<()> {
    let e = decision.effects;
    let status = if e.requeued {
        RunStatus::Error
    } else {
        decision.status
    };
    txn.execute_raw(stmt(
        "UPDATE run_attempts SET status = $3, error_message = coalesce($4, error_message),
                ended_at = CASE WHEN $5 THEN now() ELSE ended_at END
         WHERE run_id = $1 AND attempt = $2",
        [
            run.into(),
            attempt.into(),
            status.as_str().into(),
            record
                .attempt_error
                .or(record.error_message)
                .map(str::to_owned)
                .into(),
            (e.ended || e.requeued).into(),
        ],
    ))
    .await?;
    Ok(())
}
