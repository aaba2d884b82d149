//! The bytes behind files: partial uploads and content-addressed blobs in the data folder, with
//! their reference counts in the database. Completing an upload (verifying and storing its
//! content), reading a file's content, and removing what nothing needs any more all go through
//! [`Content`], which the upload engine, the file use cases and the sweeper share.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use uuid::Uuid;

use crate::{
    datadir::DataDir,
    domain::{Error, FileStatus, Result, UploadState},
    store::Store,
};

/// How a completion ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// Stored under its digest; the file is READY.
    Stored,
    /// Refused (the announced SHA-256 differs): the file is ERROR, with this reason.
    Refused(String),
}

#[derive(Clone)]
pub(crate) struct Content {
    store: Store,
    data: DataDir,
    /// Reader threads of file contents ([`stream_file`]) running at once, across callers: each
    /// holds up to [`READ_AHEAD`] + 1 chunks of [`READ_CHUNK`] (5 MiB).
    readers: Arc<Semaphore>,
    max_readers: usize,
}

impl Content {
    /// `max_readers`: file contents read at once (`--max-file-readers`); one more read is
    /// answered RESOURCE_EXHAUSTED with a retry hint.
    pub(crate) fn new(store: Store, data: DataDir, max_readers: usize) -> Self {
        Self {
            store,
            data,
            readers: Arc::new(Semaphore::new(max_readers)),
            max_readers,
        }
    }

    pub(crate) fn data(&self) -> &DataDir {
        &self.data
    }

    /// Completes an upload whose every byte is durable: verifies the announced SHA-256 and
    /// stores the content under its digest (or, on a mismatch, marks the file ERROR and drops
    /// the bytes). `digest` is the hash computed while receiving,
    /// when one transfer carried the whole upload; otherwise the bytes are read back.
    pub(crate) async fn complete(
        &self,
        upload: &UploadState,
        digest: Option<String>,
    ) -> Result<Completed> {
        let size = upload.offset;
        let digest = match digest {
            Some(d) => d,
            None => {
                let path = self.data.partial_path(upload.id);
                tokio::task::spawn_blocking(move || hash_file(&path))
                    .await
                    .map_err(Error::internal)??
            }
        };
        let expected = match upload.file_id {
            Some(file_id) => self.store.get_file(file_id).await?.sha256,
            None => None,
        };
        if let Some(expected) = expected.filter(|e| *e != digest) {
            let reason = format!("sha256 mismatch: announced {expected}, received {digest}");
            tracing::warn!(upload = %upload.id, %reason, "upload failed verification");
            self.store.fail_upload(upload, &reason).await?;
            let storage = self.data.clone();
            let id = upload.id;
            let _ = tokio::task::spawn_blocking(move || storage.remove_partial(id)).await;
            return Ok(Completed::Refused(reason));
        }
        let storage = self.data.clone();
        let (id, sha) = (upload.id, digest.clone());
        let promote = move || storage.promote(id, &sha);
        self.store
            .complete_upload(upload, &digest, size, promote)
            .await?;
        tracing::info!(upload = %upload.id, sha256 = %digest, size, "upload complete");
        Ok(Completed::Stored)
    }

    pub(crate) async fn remove_partial(&self, upload: Uuid) {
        let storage = self.data.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || storage.remove_partial(upload)).await
        {
            tracing::warn!(%upload, error = %e, "could not remove a partial upload file");
        }
    }

    /// Removes a blob nobody references any more (best effort: the sweeper retries).
    pub(crate) async fn collect_blob(&self, sha256: &str) {
        let storage = self.data.clone();
        let sha = sha256.to_owned();
        match self
            .store
            .collect_blob(sha256, move || storage.remove_blob(&sha))
            .await
        {
            Ok(true) => tracing::info!(%sha256, "blob removed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%sha256, error = %e, "blob collection failed; retried later"),
        }
    }

    /// A ranged read of a ready file's content, in chunks of at most 1 MiB.
    pub(crate) async fn read(
        &self,
        id: Uuid,
        offset: u64,
        limit: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        let file = self.store.get_file(id).await?;
        if file.status != FileStatus::Ready {
            return Err(Error::FailedPrecondition(format!(
                "file {id} is not ready (it is {})",
                file.status
            )));
        }
        let size = file.size.unwrap_or(0);
        if offset > size {
            return Err(Error::invalid(
                "offset",
                format!("is past the end of the file ({size} bytes)"),
            ));
        }
        let sha256 = file
            .sha256
            .ok_or_else(|| Error::internal("ready file without digest"))?;
        let length = if limit == 0 {
            size - offset
        } else {
            limit.min(size - offset)
        };
        let reader = std::sync::Arc::clone(&self.readers).try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "this catalogue is reading {} files already, its bound (--max-file-readers); retry in a moment",
                self.max_readers
            ))
        })?;
        let path = self.data.blob_path(&sha256);
        let blob = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(Error::internal)??;
        Ok(stream_file(blob, offset, length, reader)?)
    }
}

/// Chunks a read answers: 1 MiB, as WriteUpload clients send them.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the client.
const READ_AHEAD: usize = 4;

/// `length` bytes of `file` from `offset`, in chunks of at most [`READ_CHUNK`], read by a
/// thread of its own (holding `slot` of [`Content`]'s readers) that stays [`READ_AHEAD`] chunks ahead, so the disk and the network are
/// both busy. The thread stops when the reader goes away. A file shorter than `length` ends
/// the stream with an error rather than short.
fn stream_file(
    file: std::fs::File,
    offset: u64,
    length: u64,
    slot: OwnedSemaphorePermit,
) -> std::io::Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
    use std::os::unix::fs::FileExt;
    let (chunks, rx) = mpsc::channel::<Result<(u64, Bytes)>>(READ_AHEAD);
    std::thread::Builder::new()
        .name("file-reader".to_owned())
        .spawn(move || {
            // The reader's slot, given back when the thread ends.
            let _slot = slot;
            let end = offset + length;
            let mut position = offset;
            while position < end {
                let want = (end - position).min(READ_CHUNK as u64) as usize;
                let mut data = bytes::BytesMut::zeroed(want);
                let chunk = file
                    .read_exact_at(&mut data, position)
                    .map(|()| (position, data.freeze()))
                    .map_err(Error::from);
                let failed = chunk.is_err();
                if chunks.blocking_send(chunk).is_err() || failed {
                    return;
                }
                position += want as u64;
            }
        })?;
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// SHA-256 of a file.
fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    Ok(pirus_server::digest::sha256(&mut file)?.0)
}
