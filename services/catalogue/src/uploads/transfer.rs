//! One transfer into an upload: the bytes of one tus PATCH or one WriteUpload stream.
//!
//! A pipeline whose stages run at once, so that both cores of a small host work:
//!
//! - the request task copies arriving bytes into a 4 MiB block, 4 KiB-aligned in memory and cut
//!   at 4 MiB boundaries of the file, so that whole blocks qualify for direct I/O;
//! - a full block goes at once to two blocking jobs, one writing it at its offset
//!   ([`PartialFile`]) and one hashing it (the whole upload's SHA-256, the chunk checksum),
//!   while the next block fills;
//! - every 64 MiB or 5 s a commit starts in the background: `fdatasync` of what is written, then
//!   the offset row, on the transfer's lock connection. Writing goes on meanwhile; a commit due
//!   while the previous one still runs waits for it, so at most two commit intervals are ever
//!   unacknowledged.
//!
//! An offset becomes durable, and so reportable, only when its commit has finished. A transfer
//! that carries a chunk checksum commits only at its end, once the checksum is verified, so a
//! bad chunk is discarded whole.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use md5::Md5;
use sea_orm::sqlx;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::task::{JoinHandle, spawn_blocking};
use uuid::Uuid;

use super::{Uploads, lock::UploadLock};
use crate::{
    domain::{Error, Result, UploadState},
    storage::{DIRECT_ALIGN, PartialFile},
};

const BLOCK: usize = 4 << 20;
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

/// A block being filled: up to [`BLOCK`] bytes, 4 KiB-aligned in memory for direct I/O.
struct Block {
    buf: Vec<u8>,
    /// Leading bytes skipped to reach the alignment.
    pad: usize,
}

impl Block {
    fn new() -> Self {
        let mut buf = Vec::<u8>::with_capacity(BLOCK + DIRECT_ALIGN);
        let pad = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        buf.resize(pad, 0);
        Self { buf, pad }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.pad..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.pad
    }

    /// Appends within the capacity, so the buffer never moves and stays aligned.
    fn extend(&mut self, data: &[u8]) {
        debug_assert!(self.len() + data.len() <= BLOCK);
        self.buf.extend_from_slice(data);
    }

    fn clear(&mut self) {
        self.buf.truncate(self.pad);
    }
}

/// The digests a transfer keeps.
#[derive(Default)]
struct Hashers {
    /// Of the whole upload, kept only when this transfer started at offset 0.
    whole: Option<Sha256>,
    chunk: Option<ChunkHasher>,
}

impl Hashers {
    fn is_empty(&self) -> bool {
        self.whole.is_none() && self.chunk.is_none()
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = self.whole.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.chunk.as_mut() {
            h.update(data);
        }
    }
}

/// A block being written and hashed.
struct InFlight {
    block: Arc<Block>,
    /// The file offset just past the block.
    end: u64,
    writing: JoinHandle<std::io::Result<()>>,
    hashing: Option<JoinHandle<Hashers>>,
}

type Committing = JoinHandle<(UploadLock, Result<u64>)>;

pub struct Transfer {
    uploads: Uploads,
    /// None while a background commit uses its connection.
    lock: Option<UploadLock>,
    /// The upload as of the last finished commit (`offset` is the durable offset).
    upload: UploadState,
    start: u64,
    /// Bytes accepted so far (in the block, in flight or written).
    position: u64,
    /// The end of the bytes written to the file, gap-free from the start.
    written: u64,
    /// The offset the latest commit covers, finished or not.
    commit_mark: u64,
    last_commit: Instant,
    block: Block,
    spare: Option<Block>,
    file: Arc<PartialFile>,
    /// None while a hashing job holds them.
    hashers: Option<Hashers>,
    in_flight: Option<InFlight>,
    committing: Option<Committing>,
    checksum: Option<Vec<u8>>,
    limit: u64,
}

impl Transfer {
    pub(super) fn new(
        uploads: Uploads,
        lock: UploadLock,
        upload: UploadState,
        file: PartialFile,
        checksum: Option<ChunkChecksum>,
    ) -> Self {
        let start = upload.offset;
        let limit = upload.size.unwrap_or(uploads.inner.max_size);
        let hashers = Hashers {
            whole: (start == 0).then(Sha256::new),
            chunk: checksum.as_ref().map(|c| ChunkHasher::new(c.algorithm)),
        };
        Self {
            uploads,
            lock: Some(lock),
            start,
            position: start,
            written: start,
            commit_mark: start,
            last_commit: Instant::now(),
            block: Block::new(),
            spare: None,
            file: Arc::new(file),
            hashers: Some(hashers),
            in_flight: None,
            committing: None,
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
        let mut rest = &data[..];
        while !rest.is_empty() {
            // A block ends at the next BLOCK boundary of the file.
            let room = BLOCK - (self.position % BLOCK as u64) as usize;
            let take = room.min(rest.len());
            self.block.extend(&rest[..take]);
            rest = &rest[take..];
            self.position += take as u64;
            if take == room {
                self.flush().await?;
                self.commit_if_due().await?;
            }
        }
        // A slow sender still gets its bytes committed every few seconds: all of them, the
        // partial block included (its write is waited for; this happens once per interval).
        if self.block.len() > 0 && self.commit_due_by_time() {
            self.flush().await?;
            self.wait_block().await?;
            self.commit_if_due().await?;
        }
        Ok(())
    }

    /// Hands the filled part of the block to a writing and a hashing job, once the previous
    /// block's jobs have finished.
    async fn flush(&mut self) -> Result<()> {
        if self.block.len() == 0 {
            return Ok(());
        }
        self.wait_block().await?;
        let offset = self.position - self.block.len() as u64;
        if offset != self.written {
            // An earlier block failed: writing this one would leave a hole.
            return Err(Error::internal(format!(
                "upload {}: the bytes before offset {offset} were not written",
                self.upload.id
            )));
        }
        let next = self.spare.take().unwrap_or_else(Block::new);
        let block = Arc::new(std::mem::replace(&mut self.block, next));
        let writing = {
            let (file, block) = (self.file.clone(), block.clone());
            spawn_blocking(move || file.write_at(block.bytes(), offset))
        };
        let hashing = match self.hashers.take() {
            Some(mut hashers) if !hashers.is_empty() => {
                let block = block.clone();
                Some(spawn_blocking(move || {
                    hashers.update(block.bytes());
                    hashers
                }))
            }
            idle => {
                self.hashers = idle;
                None
            }
        };
        self.in_flight = Some(InFlight {
            block,
            end: self.position,
            writing,
            hashing,
        });
        Ok(())
    }

    /// Waits for the block in flight, if any.
    async fn wait_block(&mut self) -> Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let written = in_flight.writing.await.map_err(Error::internal)?;
        if let Some(hashing) = in_flight.hashing {
            self.hashers = Some(hashing.await.map_err(Error::internal)?);
        }
        written?;
        self.written = in_flight.end;
        if let Ok(mut block) = Arc::try_unwrap(in_flight.block) {
            block.clear();
            self.spare = Some(block);
        }
        Ok(())
    }

    fn commit_due_by_time(&self) -> bool {
        self.checksum.is_none() && self.last_commit.elapsed() >= COMMIT_INTERVAL
    }

    /// Starts a commit of what is written when one is due, after the previous one finished.
    async fn commit_if_due(&mut self) -> Result<()> {
        let due = self.written - self.commit_mark >= COMMIT_BYTES || self.commit_due_by_time();
        if self.checksum.is_some() || !due {
            return Ok(());
        }
        self.join_commit().await?;
        self.start_commit()
    }

    /// Starts making everything written so far durable, then recording its offset, in the
    /// background on the lock's connection.
    fn start_commit(&mut self) -> Result<()> {
        let mut lock = self
            .lock
            .take()
            .ok_or_else(|| Error::internal("upload lock released"))?;
        let file = self.file.clone();
        let (id, offset) = (self.upload.id, self.written);
        let expiry = self.uploads.inner.expiry.as_secs_f64();
        self.commit_mark = offset;
        self.last_commit = Instant::now();
        self.committing = Some(tokio::spawn(async move {
            let result = commit(&mut lock, file, id, offset, expiry).await;
            (lock, result.map(|()| offset))
        }));
        Ok(())
    }

    /// Waits for the commit in flight, if any, and takes its offset as the durable one.
    async fn join_commit(&mut self) -> Result<()> {
        let Some(committing) = self.committing.take() else {
            return Ok(());
        };
        let (lock, result) = committing.await.map_err(Error::internal)?;
        self.lock = Some(lock);
        self.upload.offset = result?;
        Ok(())
    }

    /// Writes and commits everything accepted so far, and waits until it is durable.
    async fn commit_all(&mut self) -> Result<()> {
        self.flush().await?;
        self.wait_block().await?;
        self.join_commit().await?;
        self.start_commit()?;
        self.join_commit().await
    }

    /// Cuts the file back to where this transfer started (a discarded chunk).
    async fn discard(&mut self) -> Result<()> {
        let (file, start) = (self.file.clone(), self.start);
        spawn_blocking(move || file.set_len(start))
            .await
            .map_err(Error::internal)??;
        self.position = start;
        self.written = start;
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
        self.flush().await?;
        self.wait_block().await?;
        self.join_commit().await?;
        let mut hashers = self.hashers.take().unwrap_or_default();
        if let (Some(expected), Some(hasher)) = (self.checksum.take(), hashers.chunk.take())
            && hasher.finalize() != expected
        {
            self.discard().await?;
            return Err(Error::ChecksumMismatch);
        }
        self.commit_all().await?;
        if self.upload.size == Some(self.position) {
            let digest = hashers.whole.map(|h| hex::encode(h.finalize()));
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
            let _ = self.wait_block().await;
            self.discard().await
        } else {
            // Whatever was written before a failure still counts: written is gap-free.
            let _ = self.flush().await;
            let _ = self.wait_block().await;
            match self.join_commit().await {
                Ok(()) => self.commit_all().await,
                Err(e) => Err(e),
            }
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
        let _ = self.wait_block().await;
        if let Err(e) = self.join_commit().await {
            tracing::warn!(upload = %self.upload.id, error = %e, "a commit failed");
        }
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

/// `fdatasync` of the partial file, then its offset row: an offset is recorded only once every
/// byte below it is durable.
async fn commit(
    lock: &mut UploadLock,
    file: Arc<PartialFile>,
    id: Uuid,
    offset: u64,
    expiry_secs: f64,
) -> Result<()> {
    spawn_blocking(move || file.sync_data())
        .await
        .map_err(Error::internal)??;
    let updated = sqlx::query(
        r#"UPDATE uploads SET "offset" = $2, updated_at = now(),
                  expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND NOT complete"#,
    )
    .bind(id)
    .bind(offset as i64)
    .bind(expiry_secs)
    .execute(&mut lock.connection)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(Error::NotFound(format!("upload {id}")));
    }
    Ok(())
}
