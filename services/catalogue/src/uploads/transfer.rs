//! One transfer into an upload: the bytes of one tus PATCH or one WriteUpload stream.
//!
//! Bytes are gathered into 4 MiB buffers and written on the blocking pool while the next buffer
//! fills (double buffering), hashed on the way. An offset becomes durable, and so reportable,
//! only by [`Transfer::commit`]: fsync of the data, then the offset row, every 64 MiB or 5 s and
//! at the end. A transfer that carries a chunk checksum commits only at its end, once the
//! checksum is verified, so a bad chunk is discarded whole.

use std::{
    fs::File as StdFile,
    io::Write,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use md5::Md5;
use sea_orm::sqlx;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::{Uploads, lock::UploadLock};
use crate::domain::{Error, Result, UploadState};

const BUFFER: usize = 4 << 20;
const COMMIT_BYTES: u64 = 64 << 20;
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// A tus `Upload-Checksum`: the algorithm and the expected digest of the whole chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub expected: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
    Md5,
}

impl ChecksumAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "md5" => Some(Self::Md5),
            _ => None,
        }
    }
}

enum ChunkHasher {
    Sha1(Sha1),
    Sha256(Sha256),
    Md5(Md5),
}

impl ChunkHasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            ChecksumAlgorithm::Md5 => Self::Md5(Md5::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Md5(h) => h.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Md5(h) => h.finalize().to_vec(),
        }
    }
}

/// What the blocking writer owns between buffers.
struct Sink {
    file: StdFile,
    /// Hash of the whole upload, kept only when this transfer started at offset 0.
    whole: Option<Sha256>,
    chunk: Option<ChunkHasher>,
}

pub struct Transfer {
    uploads: Uploads,
    lock: Option<UploadLock>,
    upload: UploadState,
    start: u64,
    /// Bytes accepted so far (buffered or written).
    position: u64,
    committed: u64,
    last_commit: Instant,
    buffer: BytesMut,
    sink: Option<Sink>,
    writing: Option<JoinHandle<std::io::Result<Sink>>>,
    checksum: Option<Vec<u8>>,
    limit: u64,
}

impl Transfer {
    pub(super) fn new(
        uploads: Uploads,
        lock: UploadLock,
        upload: UploadState,
        file: StdFile,
        checksum: Option<ChunkChecksum>,
    ) -> Self {
        let start = upload.offset;
        let limit = upload.size.unwrap_or(uploads.inner.max_size);
        let sink = Sink {
            file,
            whole: (start == 0).then(Sha256::new),
            chunk: checksum.as_ref().map(|c| ChunkHasher::new(c.algorithm)),
        };
        Self {
            uploads,
            lock: Some(lock),
            start,
            position: start,
            committed: start,
            last_commit: Instant::now(),
            buffer: BytesMut::with_capacity(BUFFER),
            sink: Some(sink),
            writing: None,
            checksum: checksum.map(|c| c.expected),
            limit,
            upload,
        }
    }

    /// The offset the next byte lands at.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Accepts bytes at the current position.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let end = self.position + data.len() as u64;
        if end > self.limit {
            return Err(Error::TooLarge(match self.upload.size {
                Some(size) => format!("the data goes past the upload's length of {size} bytes"),
                None => format!("the upload would exceed the limit of {} bytes", self.limit),
            }));
        }
        self.buffer.extend_from_slice(&data);
        self.position = end;
        if self.buffer.len() >= BUFFER {
            self.flush().await?;
            let due = self.position - self.committed >= COMMIT_BYTES
                || self.last_commit.elapsed() >= COMMIT_INTERVAL;
            if due && self.checksum.is_none() {
                self.commit().await?;
            }
        }
        Ok(())
    }

    /// Hands the buffer to the blocking writer, after the previous write finished.
    async fn flush(&mut self) -> Result<()> {
        let mut sink = self.wait_writer().await?;
        let data = self.buffer.split().freeze();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            if let Some(h) = sink.whole.as_mut() {
                h.update(&data);
            }
            if let Some(h) = sink.chunk.as_mut() {
                h.update(&data);
            }
            sink.file.write_all(&data)?;
            Ok(sink)
        }));
        Ok(())
    }

    async fn wait_writer(&mut self) -> Result<Sink> {
        if let Some(writing) = self.writing.take() {
            return Ok(writing.await.map_err(Error::internal)??);
        }
        self.sink
            .take()
            .ok_or_else(|| Error::internal("transfer sink lost"))
    }

    /// Makes everything accepted so far durable, then records the offset.
    async fn commit(&mut self) -> Result<()> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        let sink = self.wait_writer().await?;
        let sink = tokio::task::spawn_blocking(move || sink.file.sync_data().map(|()| sink))
            .await
            .map_err(Error::internal)??;
        self.sink = Some(sink);
        let lock = self
            .lock
            .as_mut()
            .ok_or_else(|| Error::internal("lock released"))?;
        let updated = sqlx::query(
            r#"UPDATE uploads SET "offset" = $2, updated_at = now(),
                      expires_at = now() + make_interval(secs => $3)
               WHERE id = $1 AND NOT complete"#,
        )
        .bind(self.upload.id)
        .bind(self.position as i64)
        .bind(self.uploads.inner.expiry.as_secs_f64())
        .execute(&mut lock.connection)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound(format!("upload {}", self.upload.id)));
        }
        self.committed = self.position;
        self.upload.offset = self.position;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// The transfer's bytes all arrived: verify the chunk checksum, commit, and complete the
    /// upload if that was its last byte. Answers the upload's state after it.
    pub async fn finish(mut self) -> Result<UploadState> {
        let result = self.finish_inner().await;
        self.end(result.is_ok()).await;
        result
    }

    async fn finish_inner(&mut self) -> Result<UploadState> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        let mut sink = self.wait_writer().await?;
        if let (Some(expected), Some(hasher)) = (self.checksum.take(), sink.chunk.take())
            && hasher.finalize() != expected
        {
            let start = self.start;
            tokio::task::spawn_blocking(move || sink.file.set_len(start))
                .await
                .map_err(Error::internal)??;
            self.position = start;
            return Err(Error::ChecksumMismatch);
        }
        let whole = sink.whole.take();
        self.sink = Some(sink);
        self.commit().await?;
        if self.upload.size == Some(self.position) {
            let digest = whole.map(|h| hex::encode(h.finalize()));
            self.uploads.complete(&self.upload, digest).await?;
            self.upload.complete = true;
        }
        Ok(self.upload.clone())
    }

    /// The transfer was cut off (a broken connection, a short body, a failed stream, 30 s of
    /// silence): keep what arrived, unless a chunk checksum can no longer be verified, and
    /// show the upload paused.
    pub async fn abort(mut self, why: &str) -> UploadState {
        tracing::info!(upload = %self.upload.id, offset = self.position, reason = why, "transfer cut off");
        let kept = if self.checksum.is_some() {
            // Unverifiable: discard the chunk.
            if let Ok(sink) = self.wait_writer().await {
                let start = self.start;
                let _ = tokio::task::spawn_blocking(move || sink.file.set_len(start)).await;
            }
            Ok(())
        } else {
            self.commit().await
        };
        if let Err(e) = kept {
            tracing::warn!(upload = %self.upload.id, error = %e, "could not keep the bytes of a cut-off transfer");
        }
        let state = self.upload.clone();
        self.end(false).await;
        state
    }

    /// Marks the file paused when the upload stopped short, and releases the lock.
    async fn end(&mut self, finished_cleanly: bool) {
        if let Some(mut lock) = self.lock.take() {
            if !finished_cleanly && !self.upload.complete {
                let paused = sqlx::query(
                    "UPDATE files SET status = 'pause', updated_at = now()
                     WHERE id = $1 AND status = 'uploading'",
                )
                .bind(self.upload.file_id)
                .execute(&mut lock.connection)
                .await;
                if let Err(e) = paused {
                    tracing::warn!(upload = %self.upload.id, error = %e, "could not mark the upload paused");
                }
                if let Some(pipeline) = self.upload.pipeline_id {
                    let _ = sqlx::query(
                        "UPDATE pipelines SET status = 'pause', updated_at = now()
                         WHERE id = $1 AND status = 'uploading'",
                    )
                    .bind(pipeline)
                    .execute(&mut lock.connection)
                    .await;
                }
            }
            lock.release().await;
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // A transfer is always ended with finish or abort; a lock still held here (a panic)
        // is released when its connection closes.
        if self.lock.is_some() {
            tracing::warn!(upload = %self.upload.id, "transfer dropped without ending");
        }
    }
}
