//! Uploads: partial and final (tus concatenation) uploads, completion into a blob, lengths,
//! and what the sweeper needs (idle, expired, stalled uploads).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use super::{Store, expiry_deadline, stmt};
use crate::domain::{Endpoint, Error, File, NewFile, Result, UploadState};

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
    owner: Option<Uuid>,
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
            owner: r.owner,
        }
    }
}

impl Store {
    /// A tus partial upload (concatenation): bytes with no file of their own.
    pub(crate) async fn create_partial_upload(
        &self,
        endpoint: Endpoint,
        size: Option<u64>,
        metadata: String,
        owner: Option<Uuid>,
        expiry: Duration,
    ) -> Result<UploadState> {
        let id = Uuid::now_v7();
        self.db
            .execute_raw(stmt(
                r#"INSERT INTO uploads (id, endpoint, size, "offset", metadata, is_partial,
                                        complete, expires_at, owner)
                   VALUES ($1, $2, $3, 0, $4, true, false, $5, $6)"#,
                [
                    id.into(),
                    endpoint.as_str().into(),
                    size.map(|s| s as i64).into(),
                    metadata.into(),
                    expiry_deadline(expiry).into(),
                    owner.into(),
                ],
            ))
            .await?;
        self.get_upload(id).await
    }

    pub(crate) async fn get_upload(&self, id: Uuid) -> Result<UploadState> {
        UploadRow::find_by_statement(stmt(
            r#"SELECT id, endpoint, file_id, pipeline_id, size, "offset", metadata, is_partial,
                      parts, complete, expires_at, owner
               FROM uploads WHERE id = $1"#,
            [id.into()],
        ))
        .one(&self.db)
        .await?
        .map(Into::into)
        .ok_or_else(|| Error::NotFound(format!("upload {id}")))
    }

    /// Finishes an upload whose bytes are all durable: counts a reference to the blob (locking
    /// its row), lets `promote` move the bytes into the blob store under that lock, and marks
    /// the upload complete and its file ready, all in one transaction.
    pub(crate) async fn complete_upload<F>(
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
        // The upload first: an upload of deferred length stops counting its received bytes
        // before its file counts its size, so the owner's usage never counts them twice.
        mark_complete(&txn, upload.id, size).await?;
        txn.execute_raw(stmt(
            "UPDATE files SET status = 'ready', sha256 = $2, size = $3, ready_at = now(),
                              updated_at = now()
             WHERE id = $1",
            [file_id.into(), sha256.into(), (size as i64).into()],
        ))
        .await?;
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
    pub(crate) async fn fail_upload(&self, upload: &UploadState, reason: &str) -> Result<()> {
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
    pub(crate) async fn set_upload_length(&self, id: Uuid, size: u64) -> Result<()> {
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
    pub(crate) async fn create_final_upload(
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
    pub(crate) async fn stalled_complete_uploads(&self) -> Result<Vec<Uuid>> {
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
    pub(crate) async fn existing_uploads(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
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
    pub(crate) async fn pause_idle_uploads(&self, idle: Duration) -> Result<u64> {
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
    pub(crate) async fn expired_uploads(&self, limit: u64) -> Result<Vec<UploadState>> {
        let rows = UploadRow::find_by_statement(stmt(
            &format!(
                r#"SELECT id, endpoint, file_id, pipeline_id, size, "offset", metadata, is_partial,
                          parts, complete, expires_at, owner
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
    pub(crate) async fn remove_upload(&self, upload: &UploadState) -> Result<()> {
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
