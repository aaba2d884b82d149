//! The queue: claims of waiting runs by a node (within its slots and its limits), and what a
//! node reads of the runs it holds (fencing, control requests).

use pirus_db::views;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use uuid::Uuid;

use super::{EVENTS_CHANNEL, active_sql, notify, stmt};
use crate::{
    domain::{Error, Result, RunStatus},
    lifecycle::{self, Desired, Event},
    limits::NodeLimits,
    placement::{Placement, Reserved},
};

/// What bounds a node's claims: its slots, the largest run it takes and what a run that asks
/// for nothing gets, its capacity and its labels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimBounds<'a> {
    pub max_runs: u32,
    pub limits: &'a NodeLimits,
    pub placement: &'a Placement,
}

#[derive(Clone)]
pub(crate) struct QueueStore {
    db: DatabaseConnection,
}

impl QueueStore {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Claims the next waiting run for `node` if it holds fewer than its `max_runs`: by
    /// priority then age, skipping runs another runner is claiming, runs whose inputs are not
    /// all ready yet, runs larger than the node's largest, runs whose node selector the node's
    /// labels do not match, runs whose request does not fit in the node's free capacity, and
    /// runs whose owner is at its max_running_runs or would pass its reserved CPUs or memory.
    /// The run reserves what it asked for, else the node's default: what its container is
    /// then given. The node's row is locked from the capacity's read to the claim's commit, so
    /// no two claimers of one node both take its last room. The claim, its attempt row and its
    /// event are one transaction. Answers the claimed run's id.
    pub(crate) async fn claim(&self, node: &str, bounds: ClaimBounds<'_>) -> Result<Option<Uuid>> {
        let claimed = lifecycle::next(RunStatus::Waiting, Event::Claimed)
            .map_err(Error::internal)?
            .status;
        let txn = self.db.begin().await?;
        let Some(reserved) = lock_node(&txn, node).await? else {
            return Ok(None);
        };
        if reserved.runs >= i64::from(bounds.max_runs) {
            return Ok(None);
        }
        let (largest, default) = (&bounds.limits.largest, &bounds.limits.default);
        let capacity = &bounds.placement.capacity;
        let free = |total: i64, used: i64| (total - used).max(0);
        let labels = serde_json::to_value(&bounds.placement.labels).map_err(Error::internal)?;
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
                    (default.disk_bytes as i64).into(),
                    labels.into(),
                    free(capacity.promised_cpus().into(), reserved.cpus).into(),
                    free(capacity.memory_bytes as i64, reserved.memory_bytes).into(),
                    // 0: the disk is not declared, and not reserved against.
                    (capacity.disk_bytes > 0).into(),
                    free(capacity.disk_bytes as i64, reserved.disk_bytes).into(),
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

/// Locks `node`'s row for the rest of the transaction and reads what its held runs reserve;
/// `None` when it is draining (or unknown). The lock serialises the node's claims (two of its
/// workers never both take its last slot or capacity) and reads the drain flag under it (a
/// drain that lands between a check and a claim cannot be missed).
async fn lock_node(txn: &DatabaseTransaction, node: &str) -> Result<Option<Reserved>> {
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
    Ok(Some(reserved(txn, node).await?))
}

/// What `node`'s held runs reserve now (its unfinished runs, by `runs_active_by_node`).
pub(super) async fn reserved(db: &impl ConnectionTrait, node: &str) -> Result<Reserved> {
    let row = db
        .query_one_raw(stmt(
            &format!(
                "SELECT count(*) AS runs, coalesce(sum(reserved_cpus), 0)::bigint AS cpus,
                        coalesce(sum(reserved_memory_bytes), 0)::bigint AS memory,
                        coalesce(sum(reserved_disk_bytes), 0)::bigint AS disk
                 FROM runs WHERE node = $1 AND status IN {}",
                active_sql()
            ),
            [node.into()],
        ))
        .await?;
    let Some(r) = row else {
        return Ok(Reserved::default());
    };
    Ok(Reserved {
        runs: r.try_get("", "runs")?,
        cpus: r.try_get("", "cpus")?,
        memory_bytes: r.try_get("", "memory")?,
        disk_bytes: r.try_get("", "disk")?,
    })
}

/// The claim: the next waiting run this node can take, by priority then age, skipping runs
/// being claimed, runs whose inputs are not ready, runs larger than the node ($2..$6), runs
/// whose selector its labels ($12) do not match and runs that do not fit its free CPUs,
/// memory and (when $15) disk ($13, $14, $16; a run's request is its own, else the node's
/// default $9..$11), moved to the claimed status ($8) on node $1 with its request reserved.
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
              AND r.node_selector <@ $12::jsonb
              AND coalesce(r.cpu_limit, $9) <= $13
              AND coalesce(r.memory_limit, $10) <= $14
              AND (NOT $15 OR coalesce(r.disk_limit, $11) <= $16)
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
                         reserved_disk_bytes = coalesce(runs.disk_limit, $11),
                         started_at = coalesce(runs.started_at, now()),
                         last_seq = runs.last_seq + 1, updated_at = now()
         FROM next WHERE runs.id = next.id
         RETURNING runs.id, runs.attempt, runs.last_seq",
        views::inputs_ready_sql("r.input_file_ids")
    )
}
