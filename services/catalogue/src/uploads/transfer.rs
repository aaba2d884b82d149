//! One transfer into an upload: the bytes of one tus PATCH or one WriteUpload stream.
//!
//! A pipeline whose stages run at once, so that both cores of a small host work and the disk
//! always has a write to do:
//!
//! - the request task copies arriving bytes into 1 MiB blocks, 4 KiB-aligned in memory and cut
//!   at 1 MiB boundaries of the file, so that whole blocks qualify for direct I/O;
//! - a writer thread writes the blocks in order at their offsets ([`PartialFile`]) and
//!   publishes how far the file is written, gap-free;
//! - a hasher thread hashes the same blocks (the whole upload's SHA-256, the chunk checksum);
//! - every 64 MiB or 5 s a commit starts in the background: `fdatasync` of what is written,
//!   then the offset row, on the transfer's lock connection. Writing goes on meanwhile; a commit
//!   due while the previous one still runs waits for it, so at most two commit intervals are
//!   ever unacknowledged.
//!
//! Each thread's queue holds `stages::QUEUE` blocks and the request task waits when it is full, so a
//! transfer holds at most a few MiB however fast its client sends, and all transfers together
//! stay within one [`BlockBudget`] of the process. An offset becomes durable,
//! and so reportable, only when its commit has finished. A transfer that carries a chunk
//! checksum commits only at its end, once the checksum is verified, so a bad chunk is discarded
//! whole.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::{JoinHandle, spawn_blocking};
use uuid::Uuid;

use super::{
    Completion,
    blocks::{BLOCK, Block, BlockBudget},
    checksum::{ChunkChecksum, ChunkHasher},
    lock::UploadLock,
    stages::{Hasher, Hashers, Writer, spawn_hasher, spawn_writer},
};
use crate::{
    datadir::PartialFile,
    domain::{Error, Result, UploadState},
    store::session,
};

const COMMIT_BYTES: u64 = 64 << 20;
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// What a transfer needs of the engine, and no more: completing its upload, memory for its
/// blocks, and the engine's limits.
#[derive(Clone)]
pub(super) struct Context {
    pub completion: Completion,
    pub blocks: BlockBudget,
    pub max_size: u64,
    pub expiry: Duration,
    pub pace: super::driver::Pace,
    /// For an upload of deferred length whose owner has a max_stored_bytes quota: what the
    /// owner uses and its limit, as the transfer starts. The transfer is cut off at the limit
    /// (the bytes before it kept); the database refuses any commit that would still pass it.
    pub stored_bytes_quota: Option<(u64, u64)>,
}

type Committing = JoinHandle<(UploadLock, Result<u64>)>;

pub(crate) struct Transfer {
    context: Context,
    /// None while a background commit uses its connection.
    lock: Option<UploadLock>,
    /// The upload as of the last finished commit (`offset` is the durable offset).
    upload: UploadState,
    start: u64,
    /// Bytes accepted so far (in the block, queued or written).
    position: u64,
    /// The offset the latest commit covers, finished or not.
    commit_mark: u64,
    last_commit: Instant,
    /// The block being filled; none between a flush and the next byte.
    block: Option<Block>,
    file: Arc<PartialFile>,
    writer: Writer,
    /// None when the transfer keeps no digest (a resumed upload without a chunk checksum).
    hasher: Option<Hasher>,
    committing: Option<Committing>,
    checksum: Option<Vec<u8>>,
    limit: u64,
    /// Why `limit` is what it is when the owner's quota set it: the refusal's message.
    quota_refusal: Option<String>,
}

impl Transfer {
    /// Starts the transfer's threads. On failure (the host is out of threads) the lock is
    /// handed back for the caller to release.
    pub(super) fn new(
        context: Context,
        lock: UploadLock,
        upload: UploadState,
        file: PartialFile,
        checksum: Option<ChunkChecksum>,
    ) -> std::result::Result<Self, (UploadLock, Error)> {
        let start = upload.offset;
        let mut limit = upload.size.unwrap_or(context.max_size);
        let mut quota_refusal = None;
        if let (None, Some((used, max))) = (upload.size, context.stored_bytes_quota) {
            let room = start.saturating_add(max.saturating_sub(used));
            if room < limit {
                limit = room;
                quota_refusal = Some(format!(
                    "quota max_stored_bytes: {used} bytes used, the limit is {max}: the upload is \
                     cut off at offset {room} (the bytes before it are kept)"
                ));
            }
        }
        let hashers = Hashers {
            whole: (start == 0).then(Sha256::new),
            chunk: checksum.as_ref().map(|c| ChunkHasher::new(c.algorithm)),
        };
        let file = Arc::new(file);
        let budget = context.blocks.clone();
        let threads =
            spawn_writer(std::sync::Arc::clone(&file), start, budget.clone()).and_then(|writer| {
                let hasher = if hashers.is_empty() {
                    None
                } else {
                    Some(spawn_hasher(hashers, budget)?)
                };
                Ok((writer, hasher))
            });
        let (writer, hasher) = match threads {
            Ok(threads) => threads,
            Err(e) => {
                return Err((
                    lock,
                    Error::Unavailable(format!("cannot start the transfer: {e}")),
                ));
            }
        };
        Ok(Self {
            context,
            lock: Some(lock),
            start,
            position: start,
            commit_mark: start,
            last_commit: Instant::now(),
            block: None,
            file,
            writer,
            hasher,
            committing: None,
            checksum: checksum.map(|c| c.expected),
            limit,
            quota_refusal,
            upload,
        })
    }

    /// The slowest this transfer may go.
    pub(crate) fn pace(&self) -> super::driver::Pace {
        self.context.pace
    }

    /// The offset the next byte lands at.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Accepts bytes at the current position.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<()> {
        let end = self.position + data.len() as u64;
        if end > self.limit {
            if let Some(refusal) = self.quota_refusal.clone() {
                // Cut off at the owner's limit: the bytes up to it are taken (and kept, as
                // what was written before any failure is), the rest refused.
                let room = (self.limit - self.position) as usize;
                self.take(&data[..room]).await?;
                return Err(Error::QuotaExceeded(refusal));
            }
            return Err(Error::TooLarge(match self.upload.size {
                Some(size) => format!("the data goes past the upload's length of {size} bytes"),
                None => format!("the upload would exceed the limit of {} bytes", self.limit),
            }));
        }
        self.take(&data).await
    }

    /// Takes bytes within the limit at the current position.
    async fn take(&mut self, data: &[u8]) -> Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let block = match &mut self.block {
                Some(block) => block,
                None => self.block.insert(self.context.blocks.block().await?),
            };
            // A block ends at the next BLOCK boundary of the file.
            let room = BLOCK - (self.position % BLOCK as u64) as usize;
            let take = room.min(rest.len());
            block.extend(&rest[..take]);
            rest = &rest[take..];
            self.position += take as u64;
            if take == room {
                self.flush().await?;
                self.commit_if_due().await?;
            }
        }
        // A slow sender still gets its bytes committed every few seconds: all of them, the
        // partial block included (its write is waited for; this happens once per interval).
        if self.filling() > 0 && self.commit_due_by_time() {
            self.flush().await?;
            self.wait_written().await?;
            self.commit_if_due().await?;
        }
        Ok(())
    }

    /// Bytes in the block being filled.
    fn filling(&self) -> usize {
        self.block.as_ref().map_or(0, Block::len)
    }

    /// Queues the filled part of the block for the writer and the hasher; waits while their
    /// queues are full.
    async fn flush(&mut self) -> Result<()> {
        let Some(block) = self.block.take_if(|b| b.len() > 0) else {
            return Ok(());
        };
        let offset = self.position - block.len() as u64;
        let block = Arc::new(block);
        if let Some(queue) = self.hasher.as_ref().and_then(|h| h.queue.as_ref())
            && queue.send(std::sync::Arc::clone(&block)).await.is_err()
        {
            return Err(Error::internal("the upload's hashing thread stopped"));
        }
        let Some(queue) = self.writer.queue.as_ref() else {
            return Err(Error::internal("the upload's writer was closed"));
        };
        if queue.send((offset, block)).await.is_err() {
            return Err(self.writer_failure().await);
        }
        Ok(())
    }

    /// How far the file is written, gap-free.
    fn written(&self) -> u64 {
        *self.writer.written.borrow()
    }

    /// Waits until every queued block is written.
    async fn wait_written(&mut self) -> Result<()> {
        let target = self.position - self.filling() as u64;
        if self.writer.written.wait_for(|w| *w >= target).await.is_ok() {
            return Ok(());
        }
        // The writer stopped short of it.
        Err(self.writer_failure().await)
    }

    /// Why the writer thread stopped.
    async fn writer_failure(&mut self) -> Error {
        match self.writer.done.take() {
            Some(done) => match done.await {
                Ok(e) => e.into(),
                Err(_) => Error::internal("the upload's writer stopped"),
            },
            None => Error::internal("the upload's writer stopped"),
        }
    }

    /// The digests, once the hasher has seen every block queued so far.
    async fn finish_hashing(&mut self) -> Result<Hashers> {
        let Some(mut hasher) = self.hasher.take() else {
            return Ok(Hashers::default());
        };
        hasher.queue = None;
        match hasher.done.take() {
            Some(done) => done
                .await
                .map_err(|_| Error::internal("the upload's hashing thread stopped")),
            None => Ok(Hashers::default()),
        }
    }

    fn commit_due_by_time(&self) -> bool {
        self.checksum.is_none() && self.last_commit.elapsed() >= COMMIT_INTERVAL
    }

    /// Starts a commit of what is written when one is due, after the previous one finished.
    async fn commit_if_due(&mut self) -> Result<()> {
        let due = self.written() - self.commit_mark >= COMMIT_BYTES || self.commit_due_by_time();
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
        let file = std::sync::Arc::clone(&self.file);
        let (id, offset) = (self.upload.id, self.written());
        let expiry = self.context.expiry.as_secs_f64();
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

    /// Commits everything written, and waits until it is durable.
    async fn commit_written(&mut self) -> Result<()> {
        self.join_commit().await?;
        self.start_commit()?;
        self.join_commit().await
    }

    /// Cuts the file back to where this transfer started (a discarded chunk). Called once
    /// the writer is idle.
    async fn discard(&mut self) -> Result<()> {
        let (file, start) = (std::sync::Arc::clone(&self.file), self.start);
        spawn_blocking(move || file.set_len(start))
            .await
            .map_err(Error::internal)??;
        self.position = start;
        Ok(())
    }

    /// The upload ends at the current position: an upload of deferred length takes it as its
    /// length (recorded at once, so a retry sees it); one of known length must end here.
    pub(crate) async fn ends_here(&mut self) -> Result<()> {
        let end = self.position;
        match self.upload.size {
            Some(size) if size == end => Ok(()),
            Some(size) => Err(Error::invalid(
                "finish_write",
                format!("the upload's length is {size} bytes, and this message ends at {end}"),
            )),
            None => {
                let lock = self.lock.as_mut().ok_or_else(|| {
                    Error::internal("a transfer holds its upload's lock until it ends")
                })?;
                if !session::set_length(lock.connection(), self.upload.id, end).await? {
                    return Err(Error::invalid(
                        "finish_write",
                        "the upload's length is already set",
                    ));
                }
                self.upload.size = Some(end);
                self.limit = end;
                Ok(())
            }
        }
    }

    /// The transfer's bytes all arrived: verify the chunk checksum, commit, and complete the
    /// upload if that was its last byte. Answers the upload's state after it.
    pub(crate) async fn finish(mut self) -> Result<UploadState> {
        let result = self.finish_inner().await;
        self.end(result.is_ok()).await;
        result
    }

    async fn finish_inner(&mut self) -> Result<UploadState> {
        self.flush().await?;
        self.wait_written().await?;
        let mut hashers = self.finish_hashing().await?;
        if let (Some(expected), Some(hasher)) = (self.checksum.take(), hashers.chunk.take())
            && hasher.finalize() != expected
        {
            self.discard().await?;
            return Err(Error::ChecksumMismatch);
        }
        self.commit_written().await?;
        if self.upload.size == Some(self.position) {
            let digest = hashers.whole.map(|h| hex::encode(h.finalize()));
            let completed = self
                .context
                .completion
                .complete(&self.upload, digest)
                .await?;
            // The client learns from the call that completed the upload that its bytes do not
            // match the digest it announced (the file is ERROR, its bytes dropped).
            if let crate::content::Completed::Refused(reason) = completed {
                return Err(Error::invalid("sha256", reason));
            }
            self.upload.complete = true;
        }
        Ok(self.upload.clone())
    }

    /// The transfer was cut off (a broken connection, a short body, a failed stream, 30 s of
    /// silence): keep what arrived, unless a chunk checksum can no longer be verified, and
    /// show the upload paused.
    pub(crate) async fn abort(mut self, why: &str) -> UploadState {
        tracing::info!(upload = %self.upload.id, offset = self.position, reason = why, "transfer cut off");
        // What was written before a failure still counts: the written offset is gap-free.
        let _ = self.flush().await;
        let _ = self.wait_written().await;
        let kept = if self.checksum.is_some() {
            // Unverifiable: discard the chunk.
            self.discard().await
        } else {
            self.commit_written().await
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
        // Closing the queues ends the threads once they are idle.
        self.writer.queue = None;
        self.hasher = None;
        if let Err(e) = self.join_commit().await {
            tracing::warn!(upload = %self.upload.id, error = %e, "a commit failed");
        }
        if let Some(mut lock) = self.lock.take() {
            if !finished_cleanly
                && !self.upload.complete
                && let Err(e) = session::paused(lock.connection(), &self.upload).await
            {
                tracing::warn!(upload = %self.upload.id, error = %e, "could not mark the upload paused");
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
    if !session::commit_offset(lock.connection(), id, offset, expiry_secs).await? {
        return Err(Error::NotFound(format!("upload {id}")));
    }
    Ok(())
}
