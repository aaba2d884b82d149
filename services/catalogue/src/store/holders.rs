//! What the catalogue reads of runs for identity, through the `run_for_files` view (never the
//! runner's tables): who owns a run, which node holds it, and which files an unfinished run
//! reads (its inputs and its pipeline's image).

use sea_orm::{ConnectionTrait, FromQueryResult};
use uuid::Uuid;

use super::{Store, stmt};
use crate::domain::Result;

/// A run as identity needs it.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub(crate) struct RunHolder {
    pub owner: Option<Uuid>,
    pub node: Option<String>,
    pub unfinished: bool,
}

impl Store {
    pub(crate) async fn run_holder(&self, run: Uuid) -> Result<Option<RunHolder>> {
        Ok(RunHolder::find_by_statement(stmt(
            "SELECT owner, node, unfinished FROM run_for_files WHERE id = $1",
            [run.into()],
        ))
        .one(&self.db)
        .await?)
    }

    /// Whether an unfinished run held by `node` reads `file` (an input, or its pipeline's
    /// image).
    pub(crate) async fn node_reads(&self, node: &str, file: Uuid) -> Result<bool> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT EXISTS (
                     SELECT 1 FROM run_for_files r
                     WHERE r.node = $1 AND r.unfinished
                       AND ($2 = ANY (r.input_file_ids)
                            OR r.pipeline_id IN (SELECT id FROM pipelines WHERE image_file_id = $2))
                 ) AS reads",
                [node.into(), file.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get("", "reads")?,
            None => false,
        })
    }
}
