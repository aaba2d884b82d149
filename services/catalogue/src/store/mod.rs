//! Database access of the catalogue: files, uploads and blob reference counts. Each public
//! method is one use case's transaction; nothing here touches the file system except through
//! the callback [`Store::complete_upload`] runs under the blob's row lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pirus_db::entity::{files, uploads};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    FromQueryResult, Set, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

mod pipelines;
pub mod session;

pub use pipelines::{InstallRecord, NewPackage};

use crate::domain::{
    Endpoint, Error, File, FileFilter, FileKind, FileStatus, NewFile, Page, Result, UploadState,
};

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

const FILE_COLUMNS: &str = r#"
    f.id, f.name, f.kind, f.status, f.size, f.expected_sha256, f.sha256, f.tags,
    f.source_run_id, f.error_message, f.created_at,
    u.id AS upload_id, u.endpoint AS upload_endpoint, u."offset" AS upload_offset"#;

#[derive(FromQueryResult)]
struct FileRow {
    id: Uuid,
    name: String,
    kind: String,
    status: String,
    size: Option<i64>,
    expected_sha256: Option<String>,
    sha256: Option<String>,
    tags: Vec<String>,
    source_run_id: Option<Uuid>,
    error_message: String,
    created_at: DateTime<Utc>,
    upload_id: Option<Uuid>,
    upload_endpoint: Option<String>,
    upload_offset: Option<i64>,
}

impl FileRow {
    fn into_file(self) -> File {
        let status = FileStatus::parse(&self.status).unwrap_or(FileStatus::Error);
        let size = self.size.map(|s| s as u64);
        let upload_offset = match (status, self.upload_offset) {
            (FileStatus::Ready, _) => size.unwrap_or(0),
            (_, Some(offset)) => offset as u64,
            (_, None) => 0,
        };
        File {
            id: self.id,
            name: self.name,
            kind: FileKind::parse(&self.kind).unwrap_or(FileKind::Data),
            status,
            size,
            upload_offset,
            sha256: self.sha256.or(self.expected_sha256),
            source_run_id: self.source_run_id,
            tags: self.tags,
            error_message: self.error_message,
            created_at: self.created_at,
            upload_id: self.upload_id,
            upload_endpoint: self.upload_endpoint.as_deref().and_then(Endpoint::parse),
        }
    }
}

#[derive(FromQueryResult)]
struct UploadRow {
    id: Uuid,
    endpoint: String,
    file_id: Option<Uuid>,
    pipeline_id: Option<Uuid>,
    size: Option<i64>,
    offset: i64,
    metadata: String,
    is_partial: bool,
    parts: Option<Vec<Uuid>>,
    complete: bool,
    expires_at: DateTime<Utc>,
}

impl From<UploadRow> for UploadState {
    fn from(r: UploadRow) -> Self {
        UploadState {
            id: r.id,
            endpoint: Endpoint::parse(&r.endpoint).unwrap_or(Endpoint::Files),
            file_id: r.file_id,
            pipeline_id: r.pipeline_id,
            size: r.size.map(|s| s as u64),
            offset: r.offset as u64,
            metadata: r.metadata,
            is_partial: r.is_partial,
            parts: r.parts.unwrap_or_default(),
            complete: r.complete,
            expires_at: r.expires_at,
        }
    }
}

pub(crate) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

pub(crate) fn expiry_deadline(expiry: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::days(1))
}

/// What [`Store::delete_file`] leaves for the caller to clean on disk.
pub struct DeletedFile {
    pub file: File,
    /// A partial upload file to remove.
    pub partial: Option<Uuid>,
    /// A blob whose last reference went away.
    pub unreferenced_blob: Option<String>,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates a file and its upload in one transaction. With a `request_id` already used, the
    /// file created then is returned instead (idempotent retries).
    pub async fn create_file(&self, new: NewFile, expiry: Duration) -> Result<File> {
        if let Some(request_id) = &new.request_id
            && let Some(file) = self.file_by_request_id(request_id).await?
        {
            return Ok(file);
        }
        let kind = new.kind.unwrap_or(FileKind::Data);
        let run_output = match (new.source_run_id, kind) {
            (Some(run), FileKind::Output | FileKind::Log) => Some((run, kind, new.name.clone())),
            _ => None,
        };
        if let Some((run, kind, name)) = &run_output
            && let Some(file) = self.run_file(*run, *kind, name).await?
        {
            // Registering a run's outputs is idempotent: a runner finishing again gets the
            // file it registered before.
            return Ok(file);
        }
        let id = Uuid::now_v7();
        let txn = self.db.begin().await?;
        let file = files::ActiveModel {
            id: Set(id),
            name: Set(new.name),
            kind: Set(kind.as_str().to_owned()),
            status: Set(FileStatus::Uploading.as_str().to_owned()),
            size: Set(new.size.map(|s| s as i64)),
            expected_sha256: Set(new.sha256),
            sha256: Set(None),
            tags: Set(new.tags),
            source_run_id: Set(new.source_run_id),
            error_message: Set(String::new()),
            request_id: Set(new.request_id.clone()),
            ..Default::default()
        };
        if let Err(e) = file.insert(&txn).await {
            // A concurrent create with the same request_id won the race: answer with its file.
            if let (Some(request_id), true) = (&new.request_id, is_unique_violation(&e)) {
                drop(txn);
                return self
                    .file_by_request_id(request_id)
                    .await?
                    .ok_or_else(|| Error::internal(e));
            }
            if let (Some((run, kind, name)), true) = (&run_output, is_unique_violation(&e)) {
                drop(txn);
                return self
                    .run_file(*run, *kind, name)
                    .await?
                    .ok_or_else(|| Error::internal(e));
            }
            return Err(e.into());
        }
        uploads::ActiveModel {
            id: Set(id),
            endpoint: Set(Endpoint::Files.as_str().to_owned()),
            file_id: Set(Some(id)),
            pipeline_id: Set(None),
            size: Set(new.size.map(|s| s as i64)),
            offset: Set(0),
            metadata: Set(new.metadata),
            is_partial: Set(false),
            parts: Set(None),
            complete: Set(false),
            expires_at: Set(expiry_deadline(expiry).into()),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        self.get_file(id).await
    }

    /// A tus partial upload (concatenation): bytes with no file of their own.
    pub async fn create_partial_upload(
        &self,
        endpoint: Endpoint,
        size: Option<u64>,
        metadata: String,
        expiry: Duration,
    ) -> Result<UploadState> {
        let id = Uuid::now_v7();
        uploads::ActiveModel {
            id: Set(id),
            endpoint: Set(endpoint.as_str().to_owned()),
            file_id: Set(None),
            pipeline_id: Set(None),
            size: Set(size.map(|s| s as i64)),
            offset: Set(0),
            metadata: Set(metadata),
            is_partial: Set(true),
            parts: Set(None),
            complete: Set(false),
            expires_at: Set(expiry_deadline(expiry).into()),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        self.get_upload(id).await
    }

    async fn run_file(&self, run: Uuid, kind: FileKind, name: &str) -> Result<Option<File>> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             WHERE f.source_run_id = $1 AND f.kind = $2 AND f.name = $3"
        );
        let values = [run.into(), kind.as_str().into(), name.into()];
        let row = FileRow::find_by_statement(stmt(&sql, values))
            .one(&self.db)
            .await?;
        Ok(row.map(FileRow::into_file))
    }

    async fn file_by_request_id(&self, request_id: &str) -> Result<Option<File>> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             WHERE f.request_id = $1"
        );
        let row = FileRow::find_by_statement(stmt(&sql, [request_id.into()]))
            .one(&self.db)
            .await?;
        Ok(row.map(FileRow::into_file))
    }

    pub async fn get_file(&self, id: Uuid) -> Result<File> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             WHERE f.id = $1"
        );
        FileRow::find_by_statement(stmt(&sql, [id.into()]))
            .one(&self.db)
            .await?
            .map(FileRow::into_file)
            .ok_or_else(|| Error::NotFound(format!("file {id}")))
    }

    /// One page of files in id (creation) order.
    pub async fn list_files(&self, filter: &FileFilter, page: Page) -> Result<Vec<File>> {
        let mut filter_sql = pirus_db::filter::Where::default();
        if let Some(after) = page.after {
            filter_sql.and("f.id > ?", after);
        }
        if let Some(status) = filter.status {
            filter_sql.and("f.status = ?", status.as_str());
        }
        if let Some(kind) = filter.kind {
            filter_sql.and("f.kind = ?", kind.as_str());
        }
        if let Some(run) = filter.source_run_id {
            filter_sql.and("f.source_run_id = ?", run);
        }
        let (filter_sql, values) = filter_sql.build();
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             {filter_sql} ORDER BY f.id LIMIT {}",
            page.size
        );
        let rows = FileRow::find_by_statement(stmt(&sql, values))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(FileRow::into_file).collect())
    }

    pub async fn get_upload(&self, id: Uuid) -> Result<UploadState> {
        UploadRow::find_by_statement(stmt(
            r#"SELECT id, endpoint, file_id, pipeline_id, size, "offset", metadata, is_partial,
                      parts, complete, expires_at
               FROM uploads WHERE id = $1"#,
            [id.into()],
        ))
        .one(&self.db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::NotFound(format!("upload {id}")))
    }

    /// Deletes a file unless a pipeline or an unfinished run uses it. The caller holds the
    /// upload's lock (no transfer is writing it) and cleans the disk afterwards.
    pub async fn delete_file(&self, id: Uuid) -> Result<DeletedFile> {
        let file = self.get_file(id).await?;
        let txn = self.db.begin().await?;
        let used_by_pipeline = txn
            .query_one_raw(stmt(
                "SELECT id::text AS id FROM pipelines
                 WHERE package_file_id = $1 OR image_file_id = $1 LIMIT 1",
                [id.into()],
            ))
            .await?;
        if let Some(row) = used_by_pipeline {
            let pipeline: String = row.try_get("", "id")?;
            return Err(Error::FailedPrecondition(format!(
                "file {id} is used by pipeline {pipeline}; delete the pipeline first"
            )));
        }
        let used_by_run = pirus_db::views::unfinished_run_with_input(&txn, id).await?;
        if let Some(run) = used_by_run {
            return Err(Error::FailedPrecondition(format!(
                "file {id} is an input of run {run}, which has not finished"
            )));
        }
        let deleted = txn
            .query_one_raw(stmt(
                r#"DELETE FROM files WHERE id = $1 RETURNING sha256"#,
                [id.into()],
            ))
            .await?
            .ok_or_else(|| Error::NotFound(format!("file {id}")))?;
        let sha256: Option<String> = deleted.try_get("", "sha256")?;
        let mut unreferenced_blob = None;
        if let Some(sha256) = sha256 {
            let row = txn
                .query_one_raw(stmt(
                    "UPDATE blobs SET ref_count = ref_count - 1 WHERE sha256 = $1
                     RETURNING ref_count",
                    [sha256.clone().into()],
                ))
                .await?;
            let remaining: i64 = match row {
                Some(row) => row.try_get("", "ref_count")?,
                None => 0,
            };
            if remaining == 0 {
                unreferenced_blob = Some(sha256);
            }
        }
        txn.commit().await?;
        let partial = (file.status != FileStatus::Ready)
            .then_some(file.upload_id)
            .flatten();
        Ok(DeletedFile {
            file,
            partial,
            unreferenced_blob,
        })
    }

    /// Removes an unreferenced blob: the file goes while its row is locked, so a concurrent
    /// upload of the same content (which increments the same row) waits and then stores it
    /// anew. A crash between the two leaves a row at zero, collected again later.
    pub async fn collect_blob<F>(&self, sha256: &str, remove_file: F) -> Result<bool>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let txn = self.db.begin().await?;
        let row = txn
            .query_one_raw(stmt(
                "SELECT ref_count FROM blobs WHERE sha256 = $1 FOR UPDATE",
                [sha256.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(false) };
        let count: i64 = row.try_get("", "ref_count")?;
        if count > 0 {
            return Ok(false);
        }
        tokio::task::spawn_blocking(remove_file)
            .await
            .map_err(Error::internal)??;
        txn.execute_raw(stmt("DELETE FROM blobs WHERE sha256 = $1", [sha256.into()]))
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Blobs nobody references, oldest first.
    pub async fn unreferenced_blobs(&self, limit: u64) -> Result<Vec<String>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!(
                    "SELECT sha256 FROM blobs WHERE ref_count = 0 ORDER BY created_at LIMIT {limit}"
                ),
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get("", "sha256").map_err(Into::into))
            .collect()
    }

    /// Finishes an upload whose bytes are all durable: counts a reference to the blob (locking
    /// its row), lets `promote` move the bytes into the blob store under that lock, and marks
    /// the upload complete and its file ready, all in one transaction.
    pub async fn complete_upload<F>(
        &self,
        upload: &UploadState,
        sha256: &str,
        size: u64,
        promote: F,
    ) -> Result<()>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let txn = self.db.begin().await?;
        let Some(file_id) = upload.file_id else {
            // A partial upload: its bytes stay where they are until a final upload takes them.
            mark_complete(&txn, upload.id, size).await?;
            txn.commit().await?;
            return Ok(());
        };
        txn.execute_raw(stmt(
            "INSERT INTO blobs (sha256, size, ref_count) VALUES ($1, $2, 1)
             ON CONFLICT (sha256) DO UPDATE SET ref_count = blobs.ref_count + 1",
            [sha256.into(), (size as i64).into()],
        ))
        .await?;
        tokio::task::spawn_blocking(promote)
            .await
            .map_err(Error::internal)??;
        txn.execute_raw(stmt(
            "UPDATE files SET status = 'ready', sha256 = $2, size = $3, ready_at = now(),
                              updated_at = now()
             WHERE id = $1",
            [file_id.into(), sha256.into(), (size as i64).into()],
        ))
        .await?;
        mark_complete(&txn, upload.id, size).await?;
        if let Some(pipeline) = upload.pipeline_id {
            // The package is whole: its install is due, in the same transaction, so a crash
            // right after leaves it INSTALLING for the installer to pick up.
            txn.execute_raw(stmt(
                "UPDATE pipelines SET status = 'installing', updated_at = now()
                 WHERE id = $1 AND status IN ('uploading', 'pause')",
                [pipeline.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Ends an upload whose content failed verification: no more bytes are taken, and the file
    /// says why it is in error.
    pub async fn fail_upload(&self, upload: &UploadState, reason: &str) -> Result<()> {
        let txn = self.db.begin().await?;
        if let Some(file_id) = upload.file_id {
            txn.execute_raw(stmt(
                "UPDATE files SET status = 'error', error_message = $2, updated_at = now()
                 WHERE id = $1",
                [file_id.into(), reason.into()],
            ))
            .await?;
        }
        if let Some(pipeline) = upload.pipeline_id {
            txn.execute_raw(stmt(
                "UPDATE pipelines SET status = 'error', error_message = $2, updated_at = now()
                 WHERE id = $1",
                [
                    pipeline.into(),
                    format!("the package upload failed: {reason}").into(),
                ],
            ))
            .await?;
        }
        mark_complete(&txn, upload.id, upload.offset).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Sets the length of a deferred-length upload (once).
    pub async fn set_upload_length(&self, id: Uuid, size: u64) -> Result<()> {
        let txn = self.db.begin().await?;
        let changed = txn
            .execute_raw(stmt(
                r#"UPDATE uploads SET size = $2 WHERE id = $1 AND size IS NULL AND "offset" <= $2"#,
                [id.into(), (size as i64).into()],
            ))
            .await?;
        if changed.rows_affected() == 0 {
            return Err(Error::invalid(
                "Upload-Length",
                "the length is already set, or below the offset",
            ));
        }
        txn.execute_raw(stmt(
            "UPDATE files SET size = $2 FROM uploads u WHERE u.id = $1 AND files.id = u.file_id",
            [id.into(), (size as i64).into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// A final upload made of finished partial ones (tus concatenation): created complete in
    /// size and offset; the caller concatenates the bytes and then completes it.
    pub async fn create_final_upload(
        &self,
        new: NewFile,
        parts: &[Uuid],
        size: u64,
        expiry: Duration,
    ) -> Result<File> {
        let file = self
            .create_file(
                NewFile {
                    size: Some(size),
                    ..new
                },
                expiry,
            )
            .await?;
        self.db
            .execute_raw(stmt(
                r#"UPDATE uploads SET parts = $2, "offset" = $3 WHERE id = $1"#,
                [file.id.into(), parts.to_vec().into(), (size as i64).into()],
            ))
            .await?;
        Ok(file)
    }

    /// Uploads with every byte durable but not yet completed (a crash in between).
    pub async fn stalled_complete_uploads(&self) -> Result<Vec<Uuid>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                r#"SELECT id FROM uploads WHERE NOT complete AND size IS NOT NULL
                   AND "offset" = size AND updated_at < now() - interval '10 seconds'"#,
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get("", "id").map_err(Into::into))
            .collect()
    }

    /// Which of `ids` are uploads.
    pub async fn existing_uploads(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT id FROM uploads WHERE id = ANY($1)",
                [ids.to_vec().into()],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get("", "id").map_err(Into::into))
            .collect()
    }

    /// Marks uploads nobody wrote for `idle` as paused.
    pub async fn pause_idle_uploads(&self, idle: Duration) -> Result<u64> {
        let result = self
            .db
            .execute_raw(stmt(
                "UPDATE files SET status = 'pause', updated_at = now() FROM uploads u
                 WHERE u.file_id = files.id AND files.status = 'uploading' AND NOT u.complete
                   AND u.updated_at < now() - make_interval(secs => $1)",
                [idle.as_secs_f64().into()],
            ))
            .await?;
        Ok(result.rows_affected())
    }

    /// Uploads past their expiry: incomplete ones, and partial ones (their bytes only serve a
    /// concatenation).
    pub async fn expired_uploads(&self, limit: u64) -> Result<Vec<UploadState>> {
        let rows = UploadRow::find_by_statement(stmt(
            &format!(
                r#"SELECT id, endpoint, file_id, pipeline_id, size, "offset", metadata, is_partial,
                          parts, complete, expires_at
                   FROM uploads WHERE (NOT complete OR is_partial) AND expires_at < now()
                   ORDER BY expires_at LIMIT {limit}"#
            ),
            [],
        ))
        .all(&self.db)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Removes an upload and the file (and pipeline) it was filling. The caller holds its lock.
    pub async fn remove_upload(&self, upload: &UploadState) -> Result<()> {
        let txn = self.db.begin().await?;
        txn.execute_raw(stmt(
            "DELETE FROM uploads WHERE id = $1",
            [upload.id.into()],
        ))
        .await?;
        if let Some(pipeline) = upload.pipeline_id {
            txn.execute_raw(stmt(
                "DELETE FROM pipelines WHERE id = $1",
                [pipeline.into()],
            ))
            .await?;
        }
        if let Some(file) = upload.file_id {
            txn.execute_raw(stmt(
                "DELETE FROM files WHERE id = $1 AND status <> 'ready'",
                [file.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

async fn mark_complete(txn: &DatabaseTransaction, upload: Uuid, size: u64) -> Result<()> {
    txn.execute_raw(stmt(
        r#"UPDATE uploads SET complete = true, "offset" = $2, size = $2, updated_at = now()
           WHERE id = $1"#,
        [upload.into(), (size as i64).into()],
    ))
    .await?;
    Ok(())
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
