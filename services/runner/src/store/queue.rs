//! The queue: claims of waiting runs by a node (within its slots and its limits), and what a
//! node reads of the runs it holds (fencing, control requests).

use pirus_db::views;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use uuid::Uuid;

use super::{EVENTS_CHANNEL, active_sql, notify, stmt};
use crate::{
    domain::{Error, Result, RunStatus},
    lifecycle::{self, Desired, Event},
    limits::Limits,
};

#[derive(Clone)]
pub(crate) struct QueueStore {
    db: DatabaseConnection,
}

impl QueueStore {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Claims the next waiting run for `node` if it holds fewer than `max_runs`: by priority
    /// then age, skipping runs another runner is claiming, runs whose inputs are not all ready
    /// yet, runs larger than `largest`, and runs whose owner is at its max_running_runs or
    /// would pass its reserved CPUs or memory. The run reserves what it asked for, else the
    /// node's `default`. The claim, its attempt row and its event are one transaction.
    /// Answers the claimed run's id.
    pub(crate) async fn claim(
        &self,
        node: &str,
        max_runs: u32,
        largest: &Limits,
        default: &Limits,
    ) -> Result<Option<Uuid>> {
        let claimed = lifecycle::next(RunStatus::Waiting, Event::Claimed)
            .map_err(Error::internal)?
            .status;
        let txn = self.db.begin().await?;
        if !free_slot(&txn, node, max_runs).await? {
            return Ok(None);
        }
        let sql = claim_sql();
        let row = txn
            .query_one_raw(stmt(
                &sql,
                [
                    node.into(),
                    (largest.cpus as i32).into(),
                    (largest.memory_bytes as i64).into(),
                    (largest.processes as i32).into(),
                    (largest.disk_bytes as i64).into(),
                    (largest.time.as_secs() as i64).into(),
                    RunStatus::Waiting.as_str().into(),
                    claimed.as_str().into(),
                    (default.cpus as i32).into(),
                    (default.memory_bytes as i64).into(),
                ],
            ))
            .await;
        let row = match row {
            // Another claimer took the owner's last running or reserved room between this
            // claim's read of the owner's usage and its write (the usage trigger refused it):
            // the run waits for the next claim.
            Err(e) if pirus_db::quota_exceeded(&e).is_some() => {
                tracing::debug!(error = %e, "a claim passed its owner's limit; retrying later");
                return Ok(None);
            }
            row => row?,
        };
        let Some(row) = row else { return Ok(None) };
        let id: Uuid = row.try_get("", "id")?;
        let attempt: i32 = row.try_get("", "attempt")?;
        let seq: i64 = row.try_get("", "last_seq")?;
        txn.execute_raw(stmt(
            "INSERT INTO run_attempts (run_id, attempt, node, status) VALUES ($1, $2, $3, $4)",
            [
                id.into(),
                attempt.into(),
                node.into(),
                claimed.as_str().into(),
            ],
        ))
        .await?;
        txn.execute_raw(stmt(
            "INSERT INTO run_events (run_id, seq, attempt, status, message)
             VALUES ($1, $2, $3, $4, $5)",
            [
                id.into(),
                seq.into(),
                attempt.into(),
                claimed.as_str().into(),
                format!("claimed by node {node}").into(),
            ],
        ))
        .await?;
        notify(&txn, EVENTS_CHANNEL, &id.to_string()).await?;
        txn.commit().await?;
        Ok(Some(id))
    }

    /// Whether `node` still holds `attempt` of `run` (the fencing check).
    pub(crate) async fn holds(&self, run: Uuid, node: &str, attempt: i32) -> Result<bool> {
        let row = self
            .db
            .query_one_raw(stmt(
                &format!(
                    "SELECT 1 AS held FROM runs WHERE id = $1 AND node = $2 AND attempt = $3
                     AND status IN {}",
                    active_sql()
                ),
                [run.into(), node.into(), attempt.into()],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// The control request pending for a run, if any.
    pub(crate) async fn desired(&self, id: Uuid) -> Result<Option<Desired>> {
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

    /// This node's unfinished runs, with the attempt each holds.
    pub(crate) async fn held_by(&self, node: &str) -> Result<Vec<(Uuid, i32)>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!(
                    "SELECT id, attempt FROM runs WHERE node = $1 AND status IN {}",
                    active_sql()
                ),
                [node.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "attempt")?)))
            .collect()
    }
}

/// Whether `node` may claim now: it is not draining and holds fewer than `max_runs` runs. The
/// node's row is locked for the rest of the transaction, which serialises its claims (two of
/// its workers never both take the last slot) and reads the drain flag under the same lock (a
/// drain that lands between a check and a claim cannot be missed).
async fn free_slot(txn: &DatabaseTransaction, node: &str, max_runs: u32) -> Result<bool> {
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
        return Ok(false);
    }
    let active: i64 = txn
        .query_one_raw(stmt(
            &format!(
                "SELECT count(*) AS n FROM runs WHERE node = $1 AND status IN {}",
                active_sql()
            ),
            [node.into()],
        ))
        .await?
        .map(|r| r.try_get("", "n"))
        .transpose()?
        .unwrap_or(0);
    Ok(active < i64::from(max_runs))
}

/// The claim: the next waiting run this node can take, by priority then age, skipping runs
/// being claimed, runs whose inputs are not ready and runs larger than the node ($2..$6),
/// moved to the claimed status ($8) on node $1.
pub(super) fn claim_sql() -> String {
    format!(
        "WITH next AS (
            SELECT r.id FROM runs r
            WHERE r.status = $7
              AND (r.cpu_limit IS NULL OR r.cpu_limit <= $2)
              AND (r.memory_limit IS NULL OR r.memory_limit <= $3)
              AND (r.processes_limit IS NULL OR r.processes_limit <= $4)
              AND (r.disk_limit IS NULL OR r.disk_limit <= $5)
              AND (r.timeout_seconds IS NULL OR r.timeout_seconds <= $6)
              AND {}
              -- The owner's running and reserved limits (quotas) hold the run back.
              AND NOT EXISTS (
                  SELECT FROM principal_for_runs p
                  WHERE p.id = r.owner
                    AND ((p.max_running_runs > 0 AND p.running_runs >= p.max_running_runs)
                      OR (p.max_reserved_cpus > 0
                          AND p.reserved_cpus + coalesce(r.cpu_limit, $9) > p.max_reserved_cpus)
                      OR (p.max_reserved_memory_bytes > 0
                          AND p.reserved_memory_bytes + coalesce(r.memory_limit, $10)
                              > p.max_reserved_memory_bytes)))
            ORDER BY r.priority DESC, r.created_at, r.id
            FOR UPDATE SKIP LOCKED
            LIMIT 1)
         UPDATE runs SET status = $8, node = $1, attempt = runs.attempt + 1,
                         reserved_cpus = coalesce(runs.cpu_limit, $9),
                         reserved_memory_bytes = coalesce(runs.memory_limit, $10),
                         started_at = coalesce(runs.started_at, now()),
                         last_seq = runs.last_seq + 1, updated_at = now()
         FROM next WHERE runs.id = next.id
         RETURNING runs.id, runs.attempt, runs.last_seq",
        views::inputs_ready_sql("r.input_file_ids")
    )
}
