//! Resumable uploads, shared by both protocols (tus over HTTP and gRPC WriteUpload): creating
//! them, reporting their durable offset, transferring bytes under a per-upload lock, completing
//! them into content-addressed blobs, terminating and expiring them.

pub mod driver;
mod lock;
mod sweeper;
mod transfer;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use uuid::Uuid;

pub use lock::LockConnector;
pub use sweeper::run_sweeper;
pub use transfer::{ChecksumAlgorithm, ChunkChecksum, Transfer};

use crate::{
    domain::{Endpoint, Error, File, FileStatus, NewFile, Pipeline, Result, UploadState},
    storage::Storage,
    store::{NewPackage, Store},
};

/// SHA-256 of no bytes.
/// Parts of one tus final upload at most.
pub const MAX_PARTS: usize = 256;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    storage: Storage,
    locks: LockConnector,
    max_size: u64,
    expiry: Duration,
    /// Pipelines whose package just completed, for the installer.
    installs: mpsc::UnboundedSender<Uuid>,
    /// Memory for the blocks of every transfer.
    blocks: transfer::BlockBudget,
}

impl Uploads {
    pub fn new(
        store: Store,
        storage: Storage,
        locks: LockConnector,
        max_size: u64,
        expiry: Duration,
        installs: mpsc::UnboundedSender<Uuid>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                storage,
                locks,
                max_size,
                expiry,
                installs,
                blocks: transfer::BlockBudget::new(),
            }),
        }
    }

    pub fn max_size(&self) -> u64 {
        self.inner.max_size
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn check_size(&self, size: Option<u64>) -> Result<()> {
        match size {
            Some(size) if size > self.inner.max_size => Err(Error::TooLarge(format!(
                "size: {size} bytes is over the limit of {} bytes",
                self.inner.max_size
            ))),
            _ => Ok(()),
        }
    }

    /// Creates a file and its upload. An empty file is complete at once.
    pub async fn create_file(&self, new: NewFile) -> Result<File> {
        self.check_size(new.size)?;
        let file = self.inner.store.create_file(new, self.inner.expiry).await?;
        if file.size == Some(0) && file.status == FileStatus::Uploading {
            self.complete_empty(file.id).await?;
            return self.inner.store.get_file(file.id).await;
        }
        Ok(file)
    }

    /// Completes an upload of zero bytes, which no transfer will ever do.
    async fn complete_empty(&self, id: Uuid) -> Result<()> {
        let upload = self.state(id).await?;
        if upload.complete {
            return Ok(());
        }
        let storage = self.inner.storage.clone();
        tokio::task::spawn_blocking(move || storage.open_partial(id, 0).map(drop))
            .await
            .map_err(Error::internal)??;
        self.complete(&upload, Some(EMPTY_SHA256.to_owned())).await
    }

    /// A tus partial upload, to be concatenated into a final one.
    pub async fn create_partial(
        &self,
        endpoint: Endpoint,
        size: Option<u64>,
        metadata: String,
    ) -> Result<UploadState> {
        self.check_size(size)?;
        self.inner
            .store
            .create_partial_upload(endpoint, size, metadata, self.inner.expiry)
            .await
    }

    /// A final upload (tus concatenation): the parts, all complete partial uploads of the
    /// files endpoint, each named once, at most [`MAX_PARTS`], are copied in order into a new
    /// file, which is then completed like any upload. The copy holds a transfer slot (and the
    /// new upload's lock) like any transfer.
    pub async fn create_final(&self, new: NewFile, parts: Vec<Uuid>) -> Result<File> {
        if parts.is_empty() {
            return Err(Error::invalid(
                "Upload-Concat",
                "a final upload needs at least one part",
            ));
        }
        if parts.len() > MAX_PARTS {
            return Err(Error::invalid(
                "Upload-Concat",
                format!(
                    "{} parts; a final upload takes at most {MAX_PARTS}",
                    parts.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(repeated) = parts.iter().find(|p| !seen.insert(**p)) {
            return Err(Error::invalid(
                "Upload-Concat",
                format!("part {repeated} is listed more than once"),
            ));
        }
        let mut size = 0u64;
        for part in &parts {
            let state = self.inner.store.get_upload(*part).await.map_err(|_| {
                Error::invalid(
                    "Upload-Concat",
                    format!("part {part} is not a known upload"),
                )
            })?;
            if !state.is_partial {
                return Err(Error::invalid(
                    "Upload-Concat",
                    format!("{part} is not a partial upload"),
                ));
            }
            if state.endpoint != Endpoint::Files {
                return Err(Error::invalid(
                    "Upload-Concat",
                    format!(
                        "part {part} is an upload of /uploads/{}/, not of /uploads/files/",
                        state.endpoint
                    ),
                ));
            }
            if !state.complete {
                return Err(Error::invalid(
                    "Upload-Concat",
                    format!("part {part} is not complete"),
                ));
            }
            size += state.offset;
        }
        self.check_size(Some(size))?;
        // The copy is a transfer: its slot is taken before anything is recorded.
        let slot = self.inner.locks.slot()?;
        let file = self
            .inner
            .store
            .create_final_upload(new, &parts, size, self.inner.expiry)
            .await?;
        let lock = self.inner.locks.lock_in(slot, file.id).await?;
        let storage = self.inner.storage.clone();
        let (id, part_ids) = (file.id, parts.clone());
        let copied = tokio::task::spawn_blocking(move || storage.concatenate(id, &part_ids))
            .await
            .map_err(Error::internal);
        lock.release().await;
        let copied = copied??;
        debug_assert_eq!(copied, size);
        let upload = self.inner.store.get_upload(file.id).await?;
        self.complete(&upload, None).await?;
        self.inner.store.get_file(file.id).await
    }

    /// The durable state of an upload. An incomplete upload past its expiry is gone.
    pub async fn state(&self, id: Uuid) -> Result<UploadState> {
        let state = self.inner.store.get_upload(id).await?;
        if !state.complete && state.expires_at < Utc::now() {
            return Err(Error::Gone(format!("upload {id} expired")));
        }
        Ok(state)
    }

    /// The state of an upload addressed through a tus endpoint: a file upload is not reachable
    /// under /uploads/pipelines/ and the other way round.
    pub async fn state_at(&self, id: Uuid, endpoint: Endpoint) -> Result<UploadState> {
        let state = self.state(id).await?;
        if state.endpoint != endpoint {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        Ok(state)
    }

    /// Starts a transfer at `offset`, which must be the durable offset. `length` sets a deferred
    /// length (tus Upload-Length on PATCH).
    pub async fn begin(
        &self,
        id: Uuid,
        endpoint: Option<Endpoint>,
        offset: u64,
        length: Option<u64>,
        checksum: Option<ChunkChecksum>,
    ) -> Result<Transfer> {
        let state = match endpoint {
            Some(endpoint) => self.state_at(id, endpoint).await?,
            None => self.state(id).await?,
        };
        if state.complete || state.offset != offset {
            return Err(Error::OffsetMismatch {
                actual: state.offset,
            });
        }
        let mut lock = self.inner.locks.lock(id).await?;
        // Under the lock, the row is what the last transfer left.
        let mut state = self.inner.store.get_upload(id).await?;
        if state.complete || state.offset != offset {
            lock.release().await;
            return Err(Error::OffsetMismatch {
                actual: state.offset,
            });
        }
        if let Some(length) = length {
            match state.size {
                Some(size) if size == length => {}
                Some(_) => {
                    lock.release().await;
                    return Err(Error::invalid(
                        "Upload-Length",
                        "differs from the upload's length",
                    ));
                }
                None => {
                    if let Err(e) = self.check_size(Some(length)) {
                        lock.release().await;
                        return Err(e);
                    }
                    if let Err(e) = self.inner.store.set_upload_length(id, length).await {
                        lock.release().await;
                        return Err(e);
                    }
                    state.size = Some(length);
                }
            }
        }
        let storage = self.inner.storage.clone();
        let file = tokio::task::spawn_blocking(move || storage.open_transfer(id, offset)).await;
        let file = match file {
            Ok(Ok(file)) => {
                tracing::debug!(upload = %id, offset, direct_io = file.is_direct(), "transfer starts");
                file
            }
            Ok(Err(e)) => {
                lock.release().await;
                return Err(e.into());
            }
            Err(e) => {
                lock.release().await;
                return Err(Error::internal(e));
            }
        };
        // Bytes arrive again: the upload is no longer paused.
        if let Err(e) = crate::store::session::resumed(lock.connection(), &state).await {
            lock.release().await;
            return Err(e);
        }
        match Transfer::new(self.clone(), lock, state, file, checksum) {
            Ok(transfer) => Ok(transfer),
            Err((lock, e)) => {
                lock.release().await;
                Err(e)
            }
        }
    }

    /// Completes an upload whose every byte is durable: verifies the announced SHA-256 and
    /// stores the content under its digest. `digest` is the hash computed while receiving,
    /// when one transfer carried the whole upload; otherwise the bytes are read back.
    async fn complete(&self, upload: &UploadState, digest: Option<String>) -> Result<()> {
        let size = upload.offset;
        let digest = match digest {
            Some(d) => d,
            None => {
                let path = self.inner.storage.partial_path(upload.id);
                tokio::task::spawn_blocking(move || hash_file(&path))
                    .await
                    .map_err(Error::internal)??
            }
        };
        let expected = match upload.file_id {
            Some(file_id) => self.inner.store.get_file(file_id).await?.sha256,
            None => None,
        };
        if let Some(expected) = expected.filter(|e| *e != digest) {
            let reason = format!("sha256 mismatch: announced {expected}, received {digest}");
            tracing::warn!(upload = %upload.id, %reason, "upload failed verification");
            self.inner.store.fail_upload(upload, &reason).await?;
            let storage = self.inner.storage.clone();
            let id = upload.id;
            let _ = tokio::task::spawn_blocking(move || storage.remove_partial(id)).await;
            return Ok(());
        }
        let storage = self.inner.storage.clone();
        let (id, sha) = (upload.id, digest.clone());
        let promote = move || storage.promote(id, &sha);
        self.inner
            .store
            .complete_upload(upload, &digest, size, promote)
            .await?;
        tracing::info!(upload = %upload.id, sha256 = %digest, size, "upload complete");
        if let Some(pipeline) = upload.pipeline_id {
            // The scan finds it anyway should the installer be gone (shutdown).
            let _ = self.inner.installs.send(pipeline);
        }
        Ok(())
    }

    /// Announces a package upload: a pipeline UPLOADING, installed once its last byte arrives.
    pub async fn create_pipeline(&self, new: NewPackage) -> Result<Pipeline> {
        self.check_size(new.size)?;
        let pipeline = self
            .inner
            .store
            .create_pipeline(new, self.inner.expiry)
            .await?;
        if pipeline.size == Some(0) {
            self.complete_empty(pipeline.id).await?;
            return self.inner.store.get_pipeline(pipeline.id).await;
        }
        Ok(pipeline)
    }

    /// Installs a package uploaded earlier as a plain file.
    pub async fn install_file(&self, file: Uuid) -> Result<Pipeline> {
        let pipeline = self.inner.store.create_install(file).await?;
        let _ = self.inner.installs.send(pipeline.id);
        Ok(pipeline)
    }

    /// Uninstalls a pipeline: its row and documents, its image, its package upload.
    pub async fn delete_pipeline(&self, id: Uuid) -> Result<Pipeline> {
        let deleted = self.inner.store.delete_pipeline(id).await?;
        let pipeline = deleted.pipeline;
        if let Some(upload) = pipeline.upload_id
            && pipeline.status != crate::domain::PipelineStatus::Ready
        {
            self.remove_partial(upload).await;
        }
        for file in deleted.files {
            if let Err(e) = self.delete_file(file).await {
                tracing::warn!(%file, error = %e, "could not delete a file of a deleted pipeline");
            }
        }
        Ok(pipeline)
    }

    /// tus termination: removes an upload and its file, unless a transfer holds it.
    pub async fn terminate(&self, id: Uuid, endpoint: Endpoint) -> Result<()> {
        let state = self.inner.store.get_upload(id).await?;
        if state.endpoint != endpoint {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        if state.complete && !state.is_partial {
            return match state.file_id {
                Some(file) => self.delete_file(file).await.map(drop),
                None => Err(Error::FailedPrecondition(
                    "the upload is complete".to_owned(),
                )),
            };
        }
        let lock = self.inner.locks.lock(id).await?;
        let removed = self.inner.store.remove_upload(&state).await;
        lock.release().await;
        removed?;
        self.remove_partial(id).await;
        Ok(())
    }

    /// Deletes a file (FAILED_PRECONDITION while a pipeline or unfinished run uses it), its
    /// upload, and its blob once nothing else references it.
    pub async fn delete_file(&self, id: Uuid) -> Result<File> {
        let file = self.inner.store.get_file(id).await?;
        let lock = match file.upload_id {
            Some(upload) => Some(self.inner.locks.lock(upload).await?),
            None => None,
        };
        let deleted = self.inner.store.delete_file(id).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let deleted = deleted?;
        if let Some(upload) = deleted.partial {
            self.remove_partial(upload).await;
        }
        if let Some(sha256) = deleted.unreferenced_blob {
            self.collect_blob(&sha256).await;
        }
        Ok(deleted.file)
    }

    async fn remove_partial(&self, upload: Uuid) {
        let storage = self.inner.storage.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || storage.remove_partial(upload)).await
        {
            tracing::warn!(%upload, error = %e, "could not remove a partial upload file");
        }
    }

    /// Removes a blob nobody references any more (best effort: the sweeper retries).
    async fn collect_blob(&self, sha256: &str) {
        let storage = self.inner.storage.clone();
        let sha = sha256.to_owned();
        match self
            .inner
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
    pub async fn read(
        &self,
        id: Uuid,
        offset: u64,
        limit: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        let file = self.inner.store.get_file(id).await?;
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
        let path = self.inner.storage.blob_path(&sha256);
        let blob = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(Error::internal)??;
        Ok(stream_file(blob, offset, length)?)
    }
}

/// Chunks a read answers: 1 MiB, as WriteUpload clients send them.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the client.
const READ_AHEAD: usize = 4;

/// `length` bytes of `file` from `offset`, in chunks of at most [`READ_CHUNK`], read by a
/// thread of its own that stays [`READ_AHEAD`] chunks ahead, so the disk and the network are
/// both busy. The thread stops when the reader goes away. A file shorter than `length` ends
/// the stream with an error rather than short.
fn stream_file(
    file: std::fs::File,
    offset: u64,
    length: u64,
) -> std::io::Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
    use std::os::unix::fs::FileExt;
    let (chunks, rx) = mpsc::channel::<Result<(u64, Bytes)>>(READ_AHEAD);
    std::thread::Builder::new()
        .name("file-reader".to_owned())
        .spawn(move || {
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
