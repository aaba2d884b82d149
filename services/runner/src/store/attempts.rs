//! What a run executes and what its attempts left: the plan stored with a run at submission,
//! and each attempt's record of its steps (for a staged plan: the steps' times, exit codes and
//! log tails, written by the runner that held the attempt before it records the attempt's end).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult};
use uuid::Uuid;

use super::{RunStore, stmt};
use crate::domain::Result;

/// One attempt of a run, with what its runner recorded of its steps.
#[derive(Clone, Debug, FromQueryResult)]
pub(crate) struct AttemptLog {
    pub run_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error_message: String,
    pub tes_log: Option<serde_json::Value>,
}

/// The attempts of the runs among $1, with their records.
pub(super) const ATTEMPT_LOGS_SQL: &str =
    "SELECT run_id, attempt, started_at, ended_at, error_message, tes_log
     FROM run_attempts WHERE run_id = ANY($1) ORDER BY run_id, attempt";

impl RunStore {
    /// The attempts of the runs among `runs` (a page of TES tasks: one query), by run and
    /// attempt, each with what its runner recorded of it.
    pub(crate) async fn attempt_logs(&self, runs: &[Uuid]) -> Result<Vec<AttemptLog>> {
        Ok(
            AttemptLog::find_by_statement(stmt(ATTEMPT_LOGS_SQL, [runs.to_vec().into()]))
                .all(&self.db)
                .await?,
        )
    }

    /// Records what an attempt `node` holds left of its steps (nothing if it no longer holds
    /// it).
    pub(crate) async fn set_attempt_log(
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

    /// The plan stored with a run, and (for a run queued before plans were stored) the form
    /// its edge stored instead (a TES task): `(plan, legacy)`.
    pub(crate) async fn plan(
        &self,
        run: Uuid,
    ) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT plan, CASE WHEN plan IS NULL THEN tes END AS legacy
                 FROM runs WHERE id = $1",
                [run.into()],
            ))
            .await?
            .ok_or_else(|| crate::domain::Error::NotFound(format!("run {run}")))?;
        Ok((row.try_get("", "plan")?, row.try_get("", "legacy")?))
    }
}
