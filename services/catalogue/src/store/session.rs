//! What a transfer writes on the connection of its own that holds its upload's lock (outside
//! the pool, see `uploads::lock`): the advisory lock itself, the upload's durable offset, and
//! whether the upload is paused or receiving again. Every statement the upload engine runs is
//! here or in the rest of the store; none lives in the engine.

use sea_orm::sqlx::{self, PgConnection};
use uuid::Uuid;

use crate::domain::{FileStatus, PipelineStatus, Result, UploadState};

/// Takes the session advisory lock `key`; false when another session holds it.
pub(crate) async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?)
}

/// Releases the session advisory lock `key`; false (or an error) when it was not held, in
/// which case the connection's state is uncertain and it must be closed.
pub(crate) async fn unlock(
    conn: &mut PgConnection,
    key: i64,
) -> std::result::Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// Moves the upload's file (and pipeline) from `from` to `to`, when it is in `from`.
async fn set_status(
    conn: &mut PgConnection,
    upload: &UploadState,
    from: FileStatus,
    to: FileStatus,
) -> Result<()> {
    sqlx::query("UPDATE files SET status = $3, updated_at = now() WHERE id = $1 AND status = $2")
        .bind(upload.file_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    if let Some(pipeline) = upload.pipeline_id {
        let pipeline_status = |s: FileStatus| match s {
            FileStatus::Pause => PipelineStatus::Pause,
            _ => PipelineStatus::Uploading,
        };
        sqlx::query(
            "UPDATE pipelines SET status = $3, updated_at = now() WHERE id = $1 AND status = $2",
        )
        .bind(pipeline)
        .bind(pipeline_status(from).as_str())
        .bind(pipeline_status(to).as_str())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Bytes arrive again: a paused upload is uploading.
pub(crate) async fn resumed(conn: &mut PgConnection, upload: &UploadState) -> Result<()> {
    set_status(conn, upload, FileStatus::Pause, FileStatus::Uploading).await
}

/// A transfer stopped short: an uploading upload is paused.
pub(crate) async fn paused(conn: &mut PgConnection, upload: &UploadState) -> Result<()> {
    set_status(conn, upload, FileStatus::Uploading, FileStatus::Pause).await
}

/// Sets the length of an upload of deferred length (and its file's size) to `size`; false
/// when the length is already set or below the durable offset.
pub(crate) async fn set_length(conn: &mut PgConnection, id: Uuid, size: u64) -> Result<bool> {
    use sqlx::Connection;
    // The upload first, then its file, one transaction: the upload stops counting its received
    // bytes against the owner's quota before the file counts its size.
    let mut txn = conn.begin().await?;
    let file: Option<Option<Uuid>> = sqlx::query_scalar(
        r#"UPDATE uploads SET size = $2
           WHERE id = $1 AND size IS NULL AND "offset" <= $2
           RETURNING file_id"#,
    )
    .bind(id)
    .bind(size as i64)
    .fetch_optional(&mut *txn)
    .await?;
    let Some(file) = file else {
        return Ok(false);
    };
    sqlx::query("UPDATE files SET size = $2 WHERE id = $1")
        .bind(file)
        .bind(size as i64)
        .execute(&mut *txn)
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Records `offset` as the upload's durable offset (every byte below it was synced) and moves
/// its expiry; false when the upload is gone or complete.
pub(crate) async fn commit_offset(
    conn: &mut PgConnection,
    id: Uuid,
    offset: u64,
    expiry_secs: f64,
) -> Result<bool> {
    let updated = sqlx::query(
        r#"UPDATE uploads SET "offset" = $2, updated_at = now(),
                  expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND NOT complete"#,
    )
    .bind(id)
    .bind(offset as i64)
    .bind(expiry_secs)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
