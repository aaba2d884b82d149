//! Files: creation with their upload (idempotent on request id and on run, kind and name),
//! reads, listing, deletion.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pirus_db::row::Columns;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Store, expiry_deadline, stmt};
use crate::domain::{
    Endpoint, Error, File, FileFilter, FileKind, FileStatus, NewFile, Page, Result,
};

const FILE_COLUMNS: &str = r#"
    f.id, f.name, f.kind, f.status, f.size, f.expected_sha256, f.sha256, f.tags,
    f.source_run_id, f.error_message, f.created_at, f.owner,
    u.id AS upload_id, u.endpoint AS upload_endpoint, u."offset" AS upload_offset"#;

/// A row of [`FILE_COLUMNS`], read by position (see [`pirus_db::row`]): the fields in the
/// order the columns are selected.
struct FileRow {
    id: Uuid,
    name: String,
    kind: FileKind,
    status: FileStatus,
    size: Option<i64>,
    expected_sha256: Option<String>,
    sha256: Option<String>,
    tags: Vec<String>,
    source_run_id: Option<Uuid>,
    error_message: String,
    created_at: DateTime<Utc>,
    owner: Option<Uuid>,
    upload_id: Option<Uuid>,
    upload_endpoint: Option<String>,
    upload_offset: Option<i64>,
}

impl FromQueryResult for FileRow {
    fn from_query_result(
        result: &sea_orm::QueryResult,
        _prefix: &str,
    ) -> std::result::Result<Self, DbErr> {
        pirus_db::row::read_one(result, Self::read)
    }
}

impl FileRow {
    /// The fields in the order the columns are selected.
    fn read(c: &mut Columns<'_>) -> std::result::Result<Self, DbErr> {
        Ok(FileRow {
            id: c.take()?,
            name: c.take()?,
            // Parsed in place: no strings of their own.
            kind: FileKind::parse(c.take::<&str>()?).unwrap_or(FileKind::Data),
            status: FileStatus::parse(c.take::<&str>()?).unwrap_or(FileStatus::Error),
            size: c.take()?,
            expected_sha256: c.take()?,
            sha256: c.take()?,
            tags: c.take()?,
            source_run_id: c.take()?,
            error_message: c.take()?,
            created_at: c.take()?,
            owner: c.take()?,
            upload_id: c.take()?,
            upload_endpoint: c.take()?,
            upload_offset: c.take()?,
        })
    }

    fn into_file(self) -> File {
        let status = self.status;
        let size = self.size.map(|s| s as u64);
        let upload_offset = match (status, self.upload_offset) {
            (FileStatus::Ready, _) => size.unwrap_or(0),
            (_, Some(offset)) => offset as u64,
            (_, None) => 0,
        };
        File {
            id: self.id,
            name: self.name,
            kind: self.kind,
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
            owner: self.owner,
            owner_name: None,
        }
    }
}

/// What [`Store::delete_file`] leaves for the caller to clean on disk.
#[derive(Debug)]
pub(crate) struct DeletedFile {
    pub file: File,
    /// A partial upload file to remove.
    pub partial: Option<Uuid>,
    /// A blob whose last reference went away.
    pub unreferenced_blob: Option<String>,
}

/// The file an earlier request with this `request_id` created, when this one asks for the same
/// file; a key reused for another file is ALREADY_EXISTS, naming the key and what differs.
fn same_request(request_id: &str, new: &NewFile, file: File) -> Result<File> {
    let mut differs = Vec::new();
    if new.name != file.name {
        differs.push("filename");
    }
    if new.size.is_some() && new.size != file.size {
        differs.push("size");
    }
    if new.sha256.is_some() && new.sha256 != file.sha256 {
        differs.push("sha256");
    }
    if new.kind.unwrap_or(FileKind::Data) != file.kind {
        differs.push("kind");
    }
    if new.source_run_id != file.source_run_id {
        differs.push("source_run_id");
    }
    if new.tags != file.tags {
        differs.push("tags");
    }
    match pirus_server::paging::reused_key(request_id, "file", file.id, &differs) {
        None => Ok(file),
        Some(message) => Err(Error::AlreadyExists(message)),
    }
}

impl Store {
    /// Creates a file and its upload in one transaction. With a `request_id` already used, the
    /// file created then is returned instead (idempotent retries).
    pub(crate) async fn create_file(&self, new: NewFile, expiry: Duration) -> Result<File> {
        if let Some(request_id) = &new.request_id
            && let Some(file) = self.file_by_request_id(request_id, new.owner).await?
        {
            return same_request(request_id, &new, file);
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
        let inserted = txn
            .execute_raw(stmt(
                "INSERT INTO files (id, name, kind, status, size, expected_sha256, tags,
                                    source_run_id, request_id, owner)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [
                    id.into(),
                    new.name.clone().into(),
                    kind.as_str().into(),
                    FileStatus::Uploading.as_str().into(),
                    new.size.map(|s| s as i64).into(),
                    new.sha256.clone().into(),
                    new.tags.clone().into(),
                    new.source_run_id.into(),
                    new.request_id.clone().into(),
                    new.owner.into(),
                ],
            ))
            .await;
        if let Err(e) = inserted {
            // A concurrent create with the same request_id won the race: answer with its file.
            if let (Some(request_id), true) = (&new.request_id, pirus_db::is_unique_violation(&e)) {
                drop(txn);
                let file = self
                    .file_by_request_id(request_id, new.owner)
                    .await?
                    .ok_or_else(|| Error::internal(e))?;
                return same_request(request_id, &new, file);
            }
            if let (Some((run, kind, name)), true) =
                (&run_output, pirus_db::is_unique_violation(&e))
            {
                drop(txn);
                return self
                    .run_file(*run, *kind, name)
                    .await?
                    .ok_or_else(|| Error::internal(e));
            }
            return Err(e.into());
        }
        txn.execute_raw(stmt(
            r#"INSERT INTO uploads (id, endpoint, file_id, size, "offset", metadata, is_partial,
                                    complete, expires_at, owner)
               VALUES ($1, $2, $1, $3, 0, $4, false, false, $5, $6)"#,
            [
                id.into(),
                Endpoint::Files.as_str().into(),
                new.size.map(|s| s as i64).into(),
                new.metadata.into(),
                expiry_deadline(expiry).into(),
                new.owner.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        self.get_file(id).await
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

    /// The file an owner created with this idempotency key (keys are per owner).
    async fn file_by_request_id(
        &self,
        request_id: &str,
        owner: Option<Uuid>,
    ) -> Result<Option<File>> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             WHERE f.request_id = $1 AND f.owner IS NOT DISTINCT FROM $2"
        );
        let row = FileRow::find_by_statement(stmt(&sql, [request_id.into(), owner.into()]))
            .one(&self.db)
            .await?;
        Ok(row.map(FileRow::into_file))
    }

    pub(crate) async fn get_file(&self, id: Uuid) -> Result<File> {
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
    pub(crate) async fn list_files(&self, filter: &FileFilter, page: Page) -> Result<Vec<File>> {
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
        if let Some(owner) = filter.owner {
            filter_sql.and("f.owner = ?", owner);
        }
        let (filter_sql, values) = filter_sql.build();
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files f LEFT JOIN uploads u ON u.file_id = f.id
             {filter_sql} ORDER BY f.id LIMIT {}",
            page.fetch()
        );
        let rows = self.db.query_all_raw(stmt(&sql, values)).await?;
        let rows = pirus_db::row::read_all(&rows, FileRow::read)?;
        Ok(rows.into_iter().map(FileRow::into_file).collect())
    }

    /// Deletes a file unless a pipeline or an unfinished run uses it. The caller holds the
    /// upload's lock (no transfer is writing it) and cleans the disk afterwards.
    pub(crate) async fn delete_file(&self, id: Uuid) -> Result<DeletedFile> {
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
}
