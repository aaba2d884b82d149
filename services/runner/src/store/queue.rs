//! The queue: what a node reads of the runs it holds (fencing, control requests). Claims are
//! `store::claim`'s.

use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;

use super::{active_sql, stmt};
use crate::{domain::Result, lifecycle::Desired};

#[derive(Clone)]
pub(crate) struct QueueStore {
    pub(super) db: DatabaseConnection,
}

impl QueueStore {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Of `runs`, those whose inputs are not all READY; and the running room of `owners`:
    /// what a waiting run's reason is worked out from.
    pub(crate) async fn waiting_facts(
        &self,
        runs: &[Uuid],
        owners: &[Uuid],
    ) -> Result<(
        std::collections::HashSet<Uuid>,
        std::collections::HashMap<Uuid, crate::pending::OwnerRoom>,
    )> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!(
                    "SELECT r.id FROM runs r WHERE r.id = ANY($1) AND NOT {}",
                    pirus_db::views::inputs_ready_sql("r.input_file_ids")
                ),
                [runs.to_vec().into()],
            ))
            .await?;
        let not_ready = rows
            .iter()
            .map(|r| r.try_get("", "id"))
            .collect::<std::result::Result<_, _>>()?;
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT id, running_runs, max_running_runs, reserved_cpus, max_reserved_cpus,
                        reserved_memory_bytes, max_reserved_memory_bytes
                 FROM principal_for_runs WHERE id = ANY($1)",
                [owners.to_vec().into()],
            ))
            .await?;
        let mut rooms = std::collections::HashMap::new();
        for r in &rows {
            rooms.insert(
                r.try_get("", "id")?,
                crate::pending::OwnerRoom {
                    running_runs: r.try_get("", "running_runs")?,
                    max_running_runs: r.try_get("", "max_running_runs")?,
                    reserved_cpus: r.try_get("", "reserved_cpus")?,
                    max_reserved_cpus: r.try_get("", "max_reserved_cpus")?,
                    reserved_memory_bytes: r.try_get("", "reserved_memory_bytes")?,
                    max_reserved_memory_bytes: r.try_get("", "max_reserved_memory_bytes")?,
                },
            );
        }
        Ok((not_ready, rooms))
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
