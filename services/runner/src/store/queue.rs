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
