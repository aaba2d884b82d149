//! The typed boundary between the services. The catalogue owns pipelines and files, the runner
//! owns runs; each reads the other's data only through the views of migration 3
//! (`pipeline_for_runs`, `file_for_runs`, `unfinished_run_uses`) and the functions here, which
//! turn their text statuses into types. A status the schema does not know is an error here,
//! not a silent string mismatch in a service.

use crate::stmt;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};
use uuid::Uuid;

fn unknown(what: &str, value: &str) -> DbErr {
    DbErr::Custom(format!("unknown {what} status '{value}'"))
}

/// A status enum spelled as the schema stores it; an unknown spelling is an error.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Result<Self, DbErr> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| unknown($what, s))
            }
        }
    };
}

status_enum!(
    /// A pipeline's status, as the runner needs it.
    PipelineState, "pipeline" {
        Uploading = "uploading",
        Pause = "pause",
        Installing = "installing",
        Ready = "ready",
        Error = "error",
    }
);

status_enum!(
    /// A file's status.
    FileState, "file" {
        Uploading = "uploading",
        Pause = "pause",
        Ready = "ready",
        Error = "error",
    }
);

/// What a run's file is to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunFileKind {
    Output,
    Log,
}

impl RunFileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "output",
            Self::Log => "log",
        }
    }
}

/// A pipeline as a run sees it.
#[derive(Clone, Debug)]
pub struct PipelineView {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub state: PipelineState,
    pub image_sha256: Option<String>,
    pub image_file_id: Option<Uuid>,
    pub manifest: Option<serde_json::Value>,
    pub form: Option<serde_json::Value>,
}

#[derive(FromQueryResult)]
struct PipelineRow {
    id: Uuid,
    name: String,
    version: String,
    status: String,
    image_sha256: Option<String>,
    image_file_id: Option<Uuid>,
    manifest: Option<serde_json::Value>,
    form: Option<serde_json::Value>,
}

/// An input file as a run sees it.
#[derive(Clone, Debug)]
pub struct FileView {
    pub id: Uuid,
    pub name: String,
    pub state: FileState,
    pub sha256: Option<String>,
    /// The accessor that owns it.
    pub owner: Option<Uuid>,
}

#[derive(FromQueryResult)]
struct FileRow {
    id: Uuid,
    name: String,
    status: String,
    sha256: Option<String>,
    owner: Option<Uuid>,
}

impl TryFrom<PipelineRow> for PipelineView {
    type Error = DbErr;

    fn try_from(r: PipelineRow) -> Result<Self, DbErr> {
        Ok(PipelineView {
            state: PipelineState::parse(&r.status)?,
            id: r.id,
            name: r.name,
            version: r.version,
            image_sha256: r.image_sha256,
            image_file_id: r.image_file_id,
            manifest: r.manifest,
            form: r.form,
        })
    }
}

/// A pipeline, for a run of it.
pub async fn pipeline(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<PipelineView>, DbErr> {
    let row = PipelineRow::find_by_statement(stmt(
        "SELECT id, name, version, status, image_sha256, image_file_id, manifest, form
         FROM pipeline_for_runs WHERE id = $1",
        [id.into()],
    ))
    .one(db)
    .await?;
    row.map(PipelineView::try_from).transpose()
}

/// The READY pipelines named `name` (every version), for a TES executor's `image`.
pub async fn ready_pipelines_named(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Vec<PipelineView>, DbErr> {
    let rows = PipelineRow::find_by_statement(stmt(
        "SELECT id, name, version, status, image_sha256, image_file_id, manifest, form
         FROM pipeline_for_runs WHERE name = $1 AND status = $2",
        [name.into(), PipelineState::Ready.as_str().into()],
    ))
    .all(db)
    .await?;
    rows.into_iter().map(PipelineView::try_from).collect()
}

/// A READY output of a run: its run, id, name and size.
#[derive(Clone, Debug, FromQueryResult)]
pub struct RunOutput {
    pub source_run_id: Uuid,
    pub id: Uuid,
    pub name: String,
    pub size: Option<i64>,
}

/// The READY outputs of the runs among `runs`, by run and name (one query for a page).
pub async fn run_outputs(
    db: &impl ConnectionTrait,
    runs: &[Uuid],
) -> Result<Vec<RunOutput>, DbErr> {
    RunOutput::find_by_statement(stmt(
        "SELECT source_run_id, id, name, size FROM file_for_runs
         WHERE source_run_id = ANY($1) AND kind = $2 AND status = $3
         ORDER BY source_run_id, name",
        [
            runs.to_vec().into(),
            RunFileKind::Output.as_str().into(),
            FileState::Ready.as_str().into(),
        ],
    ))
    .all(db)
    .await
}

/// The files among `ids` that exist (in no particular order).
pub async fn files(db: &impl ConnectionTrait, ids: &[Uuid]) -> Result<Vec<FileView>, DbErr> {
    let rows = FileRow::find_by_statement(stmt(
        "SELECT id, name, status, sha256, owner FROM file_for_runs WHERE id = ANY($1)",
        [ids.to_vec().into()],
    ))
    .all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(FileView {
                state: FileState::parse(&r.status)?,
                id: r.id,
                name: r.name,
                sha256: r.sha256,
                owner: r.owner,
            })
        })
        .collect()
}

/// The READY output or log of a run with this name: its id and size.
pub async fn run_file(
    db: &impl ConnectionTrait,
    run: Uuid,
    kind: RunFileKind,
    name: &str,
) -> Result<Option<(Uuid, u64)>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT id, coalesce(size, 0) AS size FROM file_for_runs
             WHERE source_run_id = $1 AND kind = $2 AND name = $3 AND status = $4",
            [
                run.into(),
                kind.as_str().into(),
                name.into(),
                FileState::Ready.as_str().into(),
            ],
        ))
        .await?;
    row.map(|r| {
        let size: i64 = r.try_get("", "size")?;
        Ok((r.try_get("", "id")?, size.max(0) as u64))
    })
    .transpose()
}

/// SQL of a run's output or log file ids (`kind`), in name order, where `run` is the `runs`
/// row's alias: the list sealed on the row when the run ended, else (a run that has not ended,
/// or whose list changed since) computed from `files` by the same function that seals it
/// (migration 8, which says why).
pub fn run_files_sql(run: &str, kind: RunFileKind) -> String {
    let column = match kind {
        RunFileKind::Output => "output_file_ids",
        RunFileKind::Log => "log_file_ids",
    };
    format!(
        "coalesce({run}.{column}, pirus_run_files({run}.id, '{}'))",
        kind.as_str()
    )
}

/// SQL that is true when every input of the run whose input ids are `inputs` is READY, to
/// embed in a query. A run without inputs is said so first: PostgreSQL estimates the probe of
/// an empty array to find rows, and so judged that almost no waiting run was ready; a claim
/// of one principal's runs then read and sorted all of them (15 ms for 1,000 waiting) rather
/// than walk `runs_queue_by_owner` to the first (0.13 ms).
pub fn inputs_ready_sql(inputs: &str) -> String {
    format!(
        "({inputs} = '{{}}' OR NOT EXISTS (SELECT 1 FROM file_for_runs f \
         WHERE f.id = ANY ({inputs}) AND f.status <> '{}'))",
        FileState::Ready.as_str()
    )
}

/// An unfinished run that uses a pipeline, if any.
pub async fn unfinished_run_of_pipeline(
    db: &impl ConnectionTrait,
    pipeline: Uuid,
) -> Result<Option<Uuid>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT id FROM unfinished_run_uses WHERE pipeline_id = $1 LIMIT 1",
            [pipeline.into()],
        ))
        .await?;
    row.map(|r| r.try_get("", "id")).transpose()
}

/// An unfinished run that has a file among its inputs, if any.
pub async fn unfinished_run_with_input(
    db: &impl ConnectionTrait,
    file: Uuid,
) -> Result<Option<Uuid>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT id FROM unfinished_run_uses WHERE $1 = ANY (input_file_ids) LIMIT 1",
            [file.into()],
        ))
        .await?;
    row.map(|r| r.try_get("", "id")).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_errors() {
        for s in PipelineState::ALL {
            assert_eq!(PipelineState::parse(s.as_str()).unwrap(), *s);
        }
        for s in FileState::ALL {
            assert_eq!(FileState::parse(s.as_str()).unwrap(), *s);
        }
        assert!(PipelineState::parse("READY").is_err());
        assert!(FileState::parse("installing").is_err());
    }
}
