//! Claims: a node takes the next waiting run it can hold. One short transaction under the
//! node's row lock: what the node's runs reserve is read, the principals with runs waiting are
//! ordered by weighted dominant share (fair share), and the first run that fits of the first
//! of them that has one is moved to the node with its request reserved.

use pirus_db::views;
use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryResult, TransactionTrait, Value};
use uuid::Uuid;

use super::{EVENTS_CHANNEL, QueueStore, active_sql, notify, stmt};
use crate::{
    domain::{Error, Result, RunStatus},
    lifecycle::{self, Event},
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

impl QueueStore {
    /// Claims the next waiting run for `node` if it holds fewer than its `max_runs`. Among the
    /// runs the node could take (inputs ready, within its largest run, its node selector
    /// matched by the node's labels, its request within the node's free capacity, its owner
    /// under its running and reserved limits), one of the principal with the lowest weighted
    /// dominant share, then by priority, then by age; runs another claimer is taking are
    /// skipped. The run reserves what it asked for, else the node's default: what its
    /// container is then given. The node's row is locked from the capacity's read to the
    /// claim's commit, so no two claimers of one node both take its last room. The claim, its
    /// attempt row and its event are one transaction. Answers the claimed run's id.
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
        let values = claim_values(node, &bounds, &reserved, claimed)?;
        let mut row = None;
        for owner in fair_order(&txn).await? {
            let mut with_owner = values.clone();
            with_owner.push(owner.into());
            row = try_claim(&txn, &OWNER_CLAIM, with_owner).await?;
            if row.is_some() {
                break;
            }
        }
        if row.is_none() {
            // Runs of owners past the first few, or of none: in queue order.
            row = try_claim(&txn, &ANY_CLAIM, values).await?;
        }
        let Some(row) = row else { return Ok(None) };
        let id: Uuid = row.try_get("", "id")?;
        record_claim(&txn, node, id, &row, claimed).await?;
        txn.commit().await?;
        Ok(Some(id))
    }
}

/// The claim's parameters $1..$16 (see [`claim_sql`]).
fn claim_values(
    node: &str,
    bounds: &ClaimBounds<'_>,
    reserved: &Reserved,
    claimed: RunStatus,
) -> Result<Vec<Value>> {
    let (largest, default) = (&bounds.limits.largest, &bounds.limits.default);
    let capacity = &bounds.placement.capacity;
    let free = |total: i64, used: i64| (total - used).max(0);
    let labels = serde_json::to_value(&bounds.placement.labels).map_err(Error::internal)?;
    Ok(vec![
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
    ])
}

/// One claim attempt; `None` when nothing fits. A claim that raced another claimer past its
/// owner's running or reserved limit (the usage trigger refused it) takes nothing this round.
async fn try_claim(
    txn: &DatabaseTransaction,
    sql: &str,
    values: Vec<Value>,
) -> Result<Option<QueryResult>> {
    // A savepoint: a refused attempt leaves the transaction usable for the next one.
    let attempt = txn.begin().await?;
    match attempt.query_one_raw(stmt(sql, values)).await {
        Ok(row) => {
            attempt.commit().await?;
            Ok(row)
        }
        Err(e) if pirus_db::quota_exceeded(&e).is_some() => {
            tracing::debug!(error = %e, "a claim passed its owner's limit; retrying later");
            attempt.rollback().await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The claimed run's attempt row and claim event, announced.
async fn record_claim(
    txn: &DatabaseTransaction,
    node: &str,
    id: Uuid,
    row: &QueryResult,
    claimed: RunStatus,
) -> Result<()> {
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
    notify(txn, EVENTS_CHANNEL, &id.to_string()).await
}

/// The principals with runs waiting, lowest weighted dominant share first: what their running
/// runs reserve over the capacity of the nodes taking runs (not draining, lease current), the
/// larger of CPUs and memory, divided by their weight; of equal shares (none running, say),
/// the one with fewer runs waiting first, so that one user's long queue does not put a
/// newcomer's single run behind it. Principals at their max_running_runs are
/// left out (their runs wait). At most 16 are tried before any waiting run is taken in queue
/// order.
pub(super) const FAIR_ORDER_SQL: &str = "
    SELECT q.owner FROM queue_owners q,
         (SELECT greatest(sum(capacity_cpus * cpu_overcommit), 1)::float8 AS cpus,
                 greatest(sum(capacity_memory), 1)::float8 AS memory
          FROM nodes
          WHERE NOT draining
            AND heartbeat_at + make_interval(secs => lease_seconds) >= now()) t
    WHERE q.max_running_runs = 0 OR q.running_runs < q.max_running_runs
    ORDER BY greatest(q.reserved_cpus / t.cpus, q.reserved_memory_bytes / t.memory) / q.weight,
             q.queued_runs, q.owner
    LIMIT 16";

async fn fair_order(txn: &DatabaseTransaction) -> Result<Vec<Uuid>> {
    let rows = txn.query_all_raw(stmt(FAIR_ORDER_SQL, [])).await?;
    rows.iter()
        .map(|r| r.try_get("", "owner").map_err(Into::into))
        .collect()
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

static OWNER_CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| claim_sql(true));
static ANY_CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| claim_sql(false));

/// The claim: the next waiting run this node can take (of owner $17 when `of_owner`), by
/// priority then age, skipping runs being claimed, runs whose inputs are not ready, runs
/// larger than the node ($2..$6), runs whose selector its labels ($12) do not match, runs that
/// do not fit its free CPUs, memory and (when $15) disk ($13, $14, $16; a run's request is its
/// own, else the node's default $9..$11), and runs whose owner is at its running or reserved
/// limits, moved to the claimed status ($8) on node $1 with its request reserved.
pub(super) fn claim_sql(of_owner: bool) -> String {
    format!(
        "WITH next AS (
            SELECT r.id FROM runs r
            WHERE r.status = $7 {}
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
            ORDER BY {}r.priority DESC, r.created_at, r.id
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
        if of_owner { "AND r.owner = $17" } else { "" },
        views::inputs_ready_sql("r.input_file_ids"),
        if of_owner { "r.owner, " } else { "" },
    )
}
