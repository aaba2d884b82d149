//! Database access for pipelines: their creation with a package upload, reads, the install's
//! outcome, and deletion.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Store, expiry_deadline, stmt};
use crate::domain::{Error, FileStatus, Page, Pipeline, PipelineFilter, PipelineStatus, Result};

const PIPELINE_COLUMNS: &str = r#"
    p.id, p.status, p.name, p.version, p.description, p.license, p.developers, p.pirus_api,
    p.package_file_id, p.image_file_id, p.image_sha256, p.form, p.error_message, p.created_at,
    p.installed_at,
    f.size AS package_size, f.status AS package_status,
    coalesce(f.sha256, f.expected_sha256) AS package_sha256,
    u.id AS upload_id, u."offset" AS upload_offset"#;

const PIPELINE_FROM: &str = "pipelines p
    LEFT JOIN files f ON f.id = p.package_file_id
    LEFT JOIN uploads u ON u.file_id = f.id AND u.pipeline_id = p.id";

#[derive(FromQueryResult)]
struct PipelineRow {
    id: Uuid,
    status: String,
    name: String,
    version: String,
    description: String,
    license: String,
    developers: Vec<String>,
    pirus_api: String,
    package_file_id: Option<Uuid>,
    image_file_id: Option<Uuid>,
    image_sha256: Option<String>,
    form: Option<serde_json::Value>,
    error_message: String,
    created_at: DateTime<Utc>,
    installed_at: Option<DateTime<Utc>>,
    package_size: Option<i64>,
    package_status: Option<String>,
    package_sha256: Option<String>,
    upload_id: Option<Uuid>,
    upload_offset: Option<i64>,
}

impl From<PipelineRow> for Pipeline {
    fn from(r: PipelineRow) -> Self {
        let size = r.package_size.map(|s| s as u64);
        let package_ready = r.package_status.as_deref() == Some(FileStatus::Ready.as_str());
        Pipeline {
            id: r.id,
            status: PipelineStatus::parse(&r.status).unwrap_or(PipelineStatus::Error),
            name: r.name,
            version: r.version,
            description: r.description,
            license: r.license,
            developers: r.developers,
            pirus_api: r.pirus_api,
            size,
            upload_offset: if package_ready {
                size.unwrap_or(0)
            } else {
                r.upload_offset.unwrap_or(0) as u64
            },
            upload_id: r.upload_id,
            sha256: r.package_sha256,
            package_file_id: r.package_file_id,
            image_file_id: r.image_file_id,
            image_sha256: r.image_sha256,
            form: r.form,
            error_message: r.error_message,
            created_at: r.created_at,
            installed_at: r.installed_at,
        }
    }
}

/// A package upload to announce (CreatePipeline, tus POST on /uploads/pipelines/).
pub(crate) struct NewPackage {
    pub filename: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub request_id: Option<String>,
    pub metadata: String,
    /// Who uploads it (the package file and its upload are theirs; the pipeline is no one's).
    pub owner: Option<Uuid>,
}

/// What an install found, to record.
pub(crate) struct InstallRecord {
    pub name: String,
    pub version: String,
    pub description: String,
    pub license: String,
    pub developers: Vec<String>,
    pub pirus_api: String,
    pub manifest: serde_json::Value,
    pub form: serde_json::Value,
    pub documents: Vec<(String, String, Vec<u8>)>,
    pub image_sha256: String,
    pub image_size: u64,
}

/// What deleting a pipeline leaves for the caller to delete: files only it used.
pub(crate) struct DeletedPipeline {
    pub pipeline: Pipeline,
    pub files: Vec<Uuid>,
}

impl Store {
    /// A pipeline waiting for its package: the pipeline, its PACKAGE file and the upload (whose
    /// id is the pipeline's), in one transaction. Idempotent on `request_id`.
    pub(crate) async fn create_pipeline(
        &self,
        new: NewPackage,
        expiry: Duration,
    ) -> Result<Pipeline> {
        if let Some(request_id) = &new.request_id
            && let Some(existing) = self.pipeline_by_request_id(request_id).await?
        {
            return Ok(existing);
        }
        let id = Uuid::now_v7();
        let file_id = Uuid::now_v7();
        let size: Option<i64> = new.size.map(|s| s as i64);
        let txn = self.db.begin().await?;
        txn.execute_raw(stmt(
            "INSERT INTO files (id, name, kind, status, size, expected_sha256, owner)
             VALUES ($1, $2, 'package', 'uploading', $3, $4, $5)",
            [
                file_id.into(),
                new.filename.into(),
                size.into(),
                new.sha256.into(),
                new.owner.into(),
            ],
        ))
        .await?;
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO pipelines (id, status, package_file_id, request_id)
                 VALUES ($1, 'uploading', $2, $3)",
                [id.into(), file_id.into(), new.request_id.clone().into()],
            ))
            .await;
        if let Err(e) = inserted {
            if let (Some(request_id), true) = (&new.request_id, pirus_db::is_unique_violation(&e)) {
                drop(txn);
                return self
                    .pipeline_by_request_id(request_id)
                    .await?
                    .ok_or_else(|| Error::internal(e));
            }
            return Err(e.into());
        }
        txn.execute_raw(stmt(
            "INSERT INTO uploads (id, endpoint, file_id, pipeline_id, size, metadata, expires_at,
                                  owner)
             VALUES ($1, 'pipelines', $2, $1, $3, $4, $5, $6)",
            [
                id.into(),
                file_id.into(),
                size.into(),
                new.metadata.into(),
                expiry_deadline(expiry).into(),
                new.owner.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        self.get_pipeline(id).await
    }

    /// A pipeline installed from a file uploaded earlier: INSTALLING at once.
    pub(crate) async fn create_install(&self, file_id: Uuid) -> Result<Pipeline> {
        let file = self.get_file(file_id).await?;
        if file.status != FileStatus::Ready {
            return Err(Error::FailedPrecondition(format!(
                "file {file_id} is not ready (it is {}): finish its upload first",
                file.status
            )));
        }
        let id = Uuid::now_v7();
        self.db
            .execute_raw(stmt(
                "INSERT INTO pipelines (id, status, package_file_id) VALUES ($1, 'installing', $2)",
                [id.into(), file_id.into()],
            ))
            .await?;
        self.get_pipeline(id).await
    }

    async fn pipeline_by_request_id(&self, request_id: &str) -> Result<Option<Pipeline>> {
        let sql = format!("SELECT {PIPELINE_COLUMNS} FROM {PIPELINE_FROM} WHERE p.request_id = $1");
        let row = PipelineRow::find_by_statement(stmt(&sql, [request_id.into()]))
            .one(&self.db)
            .await?;
        Ok(row.map(Into::into))
    }

    pub(crate) async fn get_pipeline(&self, id: Uuid) -> Result<Pipeline> {
        let sql = format!("SELECT {PIPELINE_COLUMNS} FROM {PIPELINE_FROM} WHERE p.id = $1");
        PipelineRow::find_by_statement(stmt(&sql, [id.into()]))
            .one(&self.db)
            .await?
            .map(Into::into)
            .ok_or_else(|| Error::NotFound(format!("pipeline {id}")))
    }

    pub(crate) async fn list_pipelines(
        &self,
        filter: &PipelineFilter,
        page: Page,
    ) -> Result<Vec<Pipeline>> {
        let mut filter_sql = pirus_db::filter::Where::default();
        if let Some(after) = page.after {
            filter_sql.and("p.id > ?", after);
        }
        if let Some(status) = filter.status {
            filter_sql.and("p.status = ?", status.as_str());
        }
        if let Some(name) = &filter.name {
            filter_sql.and("p.name = ?", name.clone());
        }
        let (filter_sql, values) = filter_sql.build();
        let sql = format!(
            "SELECT {PIPELINE_COLUMNS} FROM {PIPELINE_FROM} {filter_sql} ORDER BY p.id LIMIT {}",
            page.fetch()
        );
        let rows = PipelineRow::find_by_statement(stmt(&sql, values))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Pipelines waiting for (or in) an install.
    pub(crate) async fn installing_pipelines(&self) -> Result<Vec<Uuid>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT id FROM pipelines WHERE status = 'installing' ORDER BY id",
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get("", "id").map_err(Into::into))
            .collect()
    }

    /// Records a successful install: the image as a READY file on its blob (counting a
    /// reference under the blob's row lock, while `promote` moves the bytes into place), the
    /// documents, and the pipeline READY. A name and version already installed ends the
    /// pipeline in ERROR instead, saying so.
    pub(crate) async fn finish_install<F>(
        &self,
        id: Uuid,
        record: InstallRecord,
        promote: F,
    ) -> Result<bool>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let txn = self.db.begin().await?;
        match installable(&txn, id, &record).await? {
            Installable::Yes => {}
            Installable::NotInstalling => return Ok(false),
            Installable::Exists(other) => {
                drop(txn);
                self.fail_install(id, &already_exists(&record, other))
                    .await?;
                return Ok(false);
            }
        }
        txn.execute_raw(stmt(
            "INSERT INTO blobs (sha256, size, ref_count) VALUES ($1, $2, 1)
             ON CONFLICT (sha256) DO UPDATE SET ref_count = blobs.ref_count + 1",
            [
                record.image_sha256.clone().into(),
                (record.image_size as i64).into(),
            ],
        ))
        .await?;
        tokio::task::spawn_blocking(promote)
            .await
            .map_err(Error::internal)??;
        let image_file = insert_image_and_documents(&txn, id, &record).await?;
        let updated = txn
            .execute_raw(stmt(
                "UPDATE pipelines SET status = 'ready', name = $2, version = $3, description = $4,
                        license = $5, developers = $6, pirus_api = $7, manifest = $8, form = $9,
                        image_file_id = $10, image_sha256 = $11, error_message = '',
                        installed_at = now(), updated_at = now()
                 WHERE id = $1",
                [
                    id.into(),
                    record.name.clone().into(),
                    record.version.clone().into(),
                    record.description.into(),
                    record.license.into(),
                    record.developers.into(),
                    record.pirus_api.into(),
                    record.manifest.into(),
                    record.form.into(),
                    image_file.into(),
                    record.image_sha256.into(),
                ],
            ))
            .await;
        match updated {
            Ok(_) => {
                txn.commit().await?;
                Ok(true)
            }
            // Another install of the same name and version won the race.
            Err(e) if pirus_db::is_unique_violation(&e) => {
                drop(txn);
                let message = format!(
                    "pipeline {} {} already exists: it was installed while this one was",
                    record.name, record.version
                );
                self.fail_install(id, &message).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends an install in ERROR with every problem found.
    pub(crate) async fn fail_install(&self, id: Uuid, message: &str) -> Result<()> {
        self.db
            .execute_raw(stmt(
                "UPDATE pipelines SET status = 'error', error_message = $2, updated_at = now()
                 WHERE id = $1 AND status IN ('installing', 'uploading', 'pause')",
                [id.into(), message.into()],
            ))
            .await?;
        Ok(())
    }

    pub(crate) async fn pipeline_document(
        &self,
        id: Uuid,
        name: &str,
    ) -> Result<(String, Vec<u8>)> {
        self.get_pipeline(id).await?;
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT content_type, content FROM pipeline_documents
                 WHERE pipeline_id = $1 AND name = $2",
                [id.into(), name.into()],
            ))
            .await?
            .ok_or_else(|| Error::NotFound(format!("document '{name}' of pipeline {id}")))?;
        Ok((
            row.try_get("", "content_type")?,
            row.try_get("", "content")?,
        ))
    }

    /// Removes a pipeline (not while it installs, nor while runs of it are unfinished) and
    /// answers the files that were only its own: its image, and its package when it was
    /// uploaded as one (a data file installed with InstallPipeline stays the user's).
    pub(crate) async fn delete_pipeline(&self, id: Uuid) -> Result<DeletedPipeline> {
        let pipeline = self.get_pipeline(id).await?;
        if pipeline.status == PipelineStatus::Installing {
            return Err(Error::FailedPrecondition(format!(
                "pipeline {id} is being installed; delete it once the install has ended"
            )));
        }
        let txn = self.db.begin().await?;
        let busy = pirus_db::views::unfinished_run_of_pipeline(&txn, id).await?;
        if let Some(run) = busy {
            return Err(Error::FailedPrecondition(format!(
                "pipeline {id} has unfinished runs (run {run}); cancel them or wait for them to end"
            )));
        }
        let files = txn
            .query_all_raw(stmt(
                "SELECT f.id FROM files f JOIN pipelines p ON f.id IN (p.package_file_id, p.image_file_id)
                 WHERE p.id = $1 AND f.kind IN ('package', 'image')",
                [id.into()],
            ))
            .await?
            .iter()
            .map(|r| r.try_get("", "id"))
            .collect::<Result<Vec<Uuid>, _>>()?;
        txn.execute_raw(stmt("DELETE FROM pipelines WHERE id = $1", [id.into()]))
            .await?;
        txn.commit().await?;
        Ok(DeletedPipeline { pipeline, files })
    }
}

fn already_exists(record: &InstallRecord, other: Uuid) -> String {
    format!(
        "pipeline {} {} already exists (pipeline {other}); delete it first or change the version",
        record.name, record.version
    )
}

/// The image as a READY file of kind IMAGE, and the pipeline's documents; answers the image
/// file's id.
async fn insert_image_and_documents(
    txn: &DatabaseTransaction,
    id: Uuid,
    record: &InstallRecord,
) -> Result<Uuid> {
    let image_file = Uuid::now_v7();
    txn.execute_raw(stmt(
        "INSERT INTO files (id, name, kind, status, size, sha256, expected_sha256, ready_at)
         VALUES ($1, $2, 'image', 'ready', $3, $4, $4, now())",
        [
            image_file.into(),
            format!("{}-{}.image", record.name, record.version).into(),
            (record.image_size as i64).into(),
            record.image_sha256.clone().into(),
        ],
    ))
    .await?;
    for (name, content_type, content) in &record.documents {
        txn.execute_raw(stmt(
            "INSERT INTO pipeline_documents (pipeline_id, name, content_type, content)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (pipeline_id, name) DO UPDATE
             SET content_type = excluded.content_type, content = excluded.content",
            [
                id.into(),
                name.clone().into(),
                content_type.clone().into(),
                content.clone().into(),
            ],
        ))
        .await?;
    }
    Ok(image_file)
}

/// Whether a pipeline may be installed now.
enum Installable {
    Yes,
    /// It is not INSTALLING (any more): nothing to do.
    NotInstalling,
    /// A READY pipeline of the same name and version exists.
    Exists(Uuid),
}

/// Locks the pipeline's row and checks it may be installed.
async fn installable(
    txn: &DatabaseTransaction,
    id: Uuid,
    record: &InstallRecord,
) -> Result<Installable> {
    let current = txn
        .query_one_raw(stmt(
            "SELECT status FROM pipelines WHERE id = $1 FOR UPDATE",
            [id.into()],
        ))
        .await?;
    let Some(current) = current else {
        return Ok(Installable::NotInstalling);
    };
    if current.try_get::<String>("", "status")? != PipelineStatus::Installing.as_str() {
        return Ok(Installable::NotInstalling);
    }
    let existing = txn
        .query_one_raw(stmt(
            "SELECT id FROM pipelines WHERE name = $1 AND version = $2 AND status = $3",
            [
                record.name.clone().into(),
                record.version.clone().into(),
                PipelineStatus::Ready.as_str().into(),
            ],
        ))
        .await?;
    Ok(match existing {
        Some(row) => Installable::Exists(row.try_get("", "id")?),
        None => Installable::Yes,
    })
}
