//! Nodes: registration (a new incarnation takes a node over), leases renewed by heartbeats,
//! draining, the largest run each accepts, and the settling of nodes whose lease lapsed.

use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait, Value};
use uuid::Uuid;

use super::{Record, active_sql, apply, stmt};
use crate::{
    domain::{Error, Node, NodeStatus, Result, RunStatus},
    lifecycle::{self, Event},
    limits::Limits,
    placement::{Capacity, Reserved},
};

/// What a runner says of its node when it starts.
pub(crate) struct NodeRegistration<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub max_runs: u32,
    pub largest: &'a Limits,
    pub placement: &'a crate::placement::Placement,
    pub lease_seconds: u64,
    pub incarnation: Uuid,
    pub lxd_version: Option<String>,
}

#[derive(Clone)]
pub(crate) struct NodeStore {
    db: DatabaseConnection,
}

impl NodeStore {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Registers (or takes over) this node; a new incarnation tells an older process it lost it.
    pub(crate) async fn register(&self, node: &NodeRegistration<'_>) -> Result<()> {
        let NodeRegistration {
            name,
            address,
            max_runs,
            largest,
            placement,
            lease_seconds,
            incarnation,
            lxd_version,
        } = node;
        let capacity = &placement.capacity;
        let labels = serde_json::to_value(&placement.labels).map_err(Error::internal)?;
        self.db
            .execute_raw(stmt(
                "INSERT INTO nodes (name, address, status, max_runs, lxd_version, lxd_available,
                                    lease_seconds, incarnation, started_at, heartbeat_at,
                                    max_cpus, max_memory, max_processes, max_disk, max_time_seconds,
                                    capacity_cpus, capacity_memory, capacity_disk, cpu_overcommit,
                                    labels)
                 VALUES ($1, $2, 'online', $3, $4, $5, $6, $7, now(), now(), $8, $9, $10, $11, $12,
                         $13, $14, $15, $16, $17)
                 ON CONFLICT (name) DO UPDATE SET
                    address = excluded.address,
                    status = CASE WHEN nodes.draining THEN 'draining' ELSE 'online' END,
                    max_runs = excluded.max_runs, lxd_version = excluded.lxd_version,
                    lxd_available = excluded.lxd_available, lease_seconds = excluded.lease_seconds,
                    incarnation = excluded.incarnation, started_at = now(), heartbeat_at = now(),
                    max_cpus = excluded.max_cpus, max_memory = excluded.max_memory,
                    max_processes = excluded.max_processes, max_disk = excluded.max_disk,
                    max_time_seconds = excluded.max_time_seconds,
                    capacity_cpus = excluded.capacity_cpus,
                    capacity_memory = excluded.capacity_memory,
                    capacity_disk = excluded.capacity_disk,
                    cpu_overcommit = excluded.cpu_overcommit, labels = excluded.labels",
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
                    (capacity.cpus as i32).into(),
                    (capacity.memory_bytes as i64).into(),
                    (capacity.disk_bytes as i64).into(),
                    capacity.cpu_overcommit.into(),
                    labels.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Renews this node's lease; false when another process took the node over.
    pub(crate) async fn heartbeat(
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

    /// Every registered node's capacity and labels (offline ones included: they may come
    /// back).
    pub(crate) async fn placements(&self) -> Result<Vec<crate::placement::Placement>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT capacity_cpus, capacity_memory, capacity_disk, cpu_overcommit, labels
                 FROM nodes",
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(crate::placement::Placement {
                    capacity: Capacity {
                        cpus: r.try_get::<i32>("", "capacity_cpus")?.max(0) as u32,
                        memory_bytes: r.try_get::<i64>("", "capacity_memory")?.max(0) as u64,
                        disk_bytes: r.try_get::<i64>("", "capacity_disk")?.max(0) as u64,
                        cpu_overcommit: r.try_get("", "cpu_overcommit")?,
                    },
                    labels: serde_json::from_value(r.try_get("", "labels")?)
                        .map_err(Error::internal)?,
                })
            })
            .collect()
    }

    /// The largest run of every node that says (runners older than run limits do not).
    pub(crate) async fn largest_runs(&self) -> Result<Vec<Limits>> {
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

    pub(crate) async fn list(&self) -> Result<Vec<Node>> {
        self.nodes_where("", []).await
    }

    pub(crate) async fn get(&self, name: &str) -> Result<Node> {
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
                            n.lxd_version, n.lxd_available, n.capacity_cpus, n.capacity_memory,
                            n.capacity_disk, n.cpu_overcommit, n.labels,
                            n.heartbeat_at + make_interval(secs => n.lease_seconds) < now() AS lapsed,
                            h.active, h.cpus, h.memory, h.disk
                     FROM nodes n CROSS JOIN LATERAL (
                         SELECT count(*) AS active,
                                coalesce(sum(r.reserved_cpus), 0)::bigint AS cpus,
                                coalesce(sum(r.reserved_memory_bytes), 0)::bigint AS memory,
                                coalesce(sum(r.reserved_disk_bytes), 0)::bigint AS disk
                         FROM runs r WHERE r.node = n.name AND r.status IN {active}) h
                     {filter} ORDER BY n.name",
                    active = active_sql()
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
                    capacity: Capacity {
                        cpus: r.try_get::<i32>("", "capacity_cpus")?.max(0) as u32,
                        memory_bytes: r.try_get::<i64>("", "capacity_memory")?.max(0) as u64,
                        disk_bytes: r.try_get::<i64>("", "capacity_disk")?.max(0) as u64,
                        cpu_overcommit: r.try_get("", "cpu_overcommit")?,
                    },
                    reserved: Reserved {
                        runs: r.try_get("", "active")?,
                        cpus: r.try_get("", "cpus")?,
                        memory_bytes: r.try_get("", "memory")?,
                        disk_bytes: r.try_get("", "disk")?,
                    },
                    labels: serde_json::from_value(r.try_get("", "labels")?)
                        .map_err(Error::internal)?,
                })
            })
            .collect()
    }

    pub(crate) async fn set_draining(&self, name: &str, draining: bool) -> Result<Node> {
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
        self.get(name).await
    }

    pub(crate) async fn is_draining(&self, name: &str) -> Result<bool> {
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

    /// Records nodes whose lease lapsed OFFLINE and settles their unfinished runs as the
    /// lifecycle decides: queued again as a new attempt while `attempt < max_attempts`, else
    /// ended ERROR with the reason. Each lapsed node is handled by whichever runner locks its
    /// row first. Answers the nodes handled.
    pub(crate) async fn expire(&self) -> Result<Vec<String>> {
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
                        "SELECT id, status, attempt, max_attempts FROM runs
                         WHERE node = $1 AND status IN {} FOR UPDATE",
                        active_sql()
                    ),
                    [node.clone().into()],
                ))
                .await?;
            for run in runs {
                let id: Uuid = run.try_get("", "id")?;
                let status: String = run.try_get("", "status")?;
                let status = RunStatus::parse(&status)
                    .ok_or_else(|| Error::internal(format!("run {id} has an unknown status")))?;
                let attempt: i32 = run.try_get("", "attempt")?;
                let max_attempts: i32 = run.try_get("", "max_attempts")?;
                let retry = attempt < max_attempts;
                let decision =
                    lifecycle::next(status, Event::NodeLost { retry }).map_err(Error::internal)?;
                let lost = format!("node {node} was lost: not heard from for {lease}s");
                let message = if retry {
                    format!("{lost}; queued again for attempt {}", attempt + 1)
                } else {
                    lost.clone()
                };
                let record = Record {
                    error_message: (!retry).then_some(lost.as_str()),
                    attempt_error: Some(&lost),
                    message: &message,
                    ..Record::default()
                };
                apply(&txn, id, attempt, decision, record).await?;
            }
            handled.push(node);
        }
        txn.commit().await?;
        Ok(handled)
    }
}
