//! The upload engine, shared by both protocols (tus over HTTP and gRPC WriteUpload): opening
//! uploads (for files, packages, tus partial and final uploads), reporting their durable
//! offset, transferring bytes under a per-upload lock, completing them (through
//! [`Content`]), terminating and expiring them. What files and pipelines are beyond their
//! upload is the business of `files.rs` and `pipelines.rs`.

mod blocks;
mod checksum;
pub(crate) mod driver;
mod lock;
mod stages;
mod sweeper;
mod transfer;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use pirus_auth::{Caller, policy::Action};
use tokio::sync::mpsc;
use uuid::Uuid;

pub(crate) use checksum::{ChecksumAlgorithm, ChunkChecksum};
pub(crate) use lock::LockConnector;
pub(crate) use sweeper::run_sweeper;
pub(crate) use transfer::Transfer;

use crate::{
    access::{self, Access},
    content::{Completed, Content},
    domain::{Endpoint, Error, File, FileStatus, NewFile, Pipeline, Result, UploadState},
    store::{NewPackage, Store},
};

/// Parts of one tus final upload at most.
pub(crate) const MAX_PARTS: usize = 256;

/// SHA-256 of no bytes.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone)]
pub(crate) struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    content: Content,
    locks: LockConnector,
    access: Access,
    max_size: u64,
    expiry: Duration,
    pace: driver::Pace,
    completion: Completion,
    /// Memory for the blocks of every transfer.
    blocks: blocks::BlockBudget,
}

/// The one thing a transfer (or the sweeper) may ask of the engine: to complete an upload whose
/// bytes are all durable. A completed package is announced to the installer.
#[derive(Clone)]
pub(crate) struct Completion {
    content: Content,
    /// Pipelines whose package just completed, for the installer.
    installs: mpsc::UnboundedSender<Uuid>,
}

impl Completion {
    /// Completes `upload`. Bytes that do not match the announced SHA-256 are not an error here:
    /// the file is ERROR with the reason, and the answer says so (a transfer tells its client).
    pub(crate) async fn complete(
        &self,
        upload: &UploadState,
        digest: Option<String>,
    ) -> Result<Completed> {
        let completed = self.content.complete(upload, digest).await?;
        if completed == Completed::Stored
            && let Some(pipeline) = upload.pipeline_id
        {
            // The scan finds it anyway should the installer be gone (shutdown).
            let _ = self.installs.send(pipeline);
        }
        Ok(completed)
    }
}

/// What a tus termination did.
pub(crate) enum Terminated {
    /// The upload and its bytes are gone.
    Removed,
    /// The upload was complete: its file is to be deleted like any file.
    Complete(Uuid),
}

/// What an upload may be: its largest size, how long it may sit unfinished, and the slowest
/// a transfer of it may go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_size: u64,
    pub expiry: Duration,
    pub pace: driver::Pace,
}

impl Uploads {
    pub(crate) fn new(
        store: Store,
        content: Content,
        locks: LockConnector,
        access: Access,
        limits: Limits,
        installs: mpsc::UnboundedSender<Uuid>,
    ) -> Self {
        let Limits {
            max_size,
            expiry,
            pace,
        } = limits;
        Self {
            inner: Arc::new(Inner {
                completion: Completion {
                    content: content.clone(),
                    installs,
                },
                store,
                content,
                locks,
                access,
                max_size,
                expiry,
                pace,
                blocks: blocks::BlockBudget::new(),
            }),
        }
    }

    pub(crate) fn completion(&self) -> &Completion {
        &self.inner.completion
    }

    pub(crate) fn max_size(&self) -> u64 {
        self.inner.max_size
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

    /// Opens the upload of a new file (creating the file). An empty file is complete at once.
    pub(crate) async fn open_file(&self, new: NewFile) -> Result<File> {
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
        let data = self.inner.content.data().clone();
        tokio::task::spawn_blocking(move || data.open_partial(id, 0).map(drop))
            .await
            .map_err(Error::internal)??;
        self.inner
            .completion
            .complete(&upload, Some(EMPTY_SHA256.to_owned()))
            .await
            .map(|_| ())
    }

    /// A tus partial upload, to be concatenated into a final one; the caller's.
    pub(crate) async fn create_partial(
        &self,
        caller: &Caller,
        endpoint: Endpoint,
        size: Option<u64>,
        metadata: String,
    ) -> Result<UploadState> {
        access::require(caller, Action::CreateFiles)?;
        self.check_size(size)?;
        self.inner
            .store
            .create_partial_upload(
                endpoint,
                size,
                metadata,
                Some(caller.principal),
                self.inner.expiry,
            )
            .await
    }

    /// A final upload (tus concatenation): the parts, all complete partial uploads of the
    /// files endpoint, each named once, at most [`MAX_PARTS`], are copied in order into a new
    /// file, which is then completed like any upload. The copy holds a transfer slot (and the
    /// new upload's lock) like any transfer. Parts are the caller's own; the file is too.
    pub(crate) async fn create_final(
        &self,
        caller: &Caller,
        mut new: NewFile,
        parts: Vec<Uuid>,
    ) -> Result<File> {
        access::require(caller, Action::CreateFiles)?;
        new.owner = Some(caller.principal);
        let size = self.parts_size(caller, &parts).await?;
        self.check_size(Some(size))?;
        // The copy is a transfer: its slot is taken before anything is recorded.
        let slot = self.inner.locks.slot()?;
        let file = self
            .inner
            .store
            .create_final_upload(new, &parts, size, self.inner.expiry)
            .await?;
        let lock = self.inner.locks.lock_in(slot, file.id).await?;
        let storage = self.inner.content.data().clone();
        let (id, part_ids) = (file.id, parts.clone());
        let copied = tokio::task::spawn_blocking(move || storage.concatenate(id, &part_ids))
            .await
            .map_err(Error::internal);
        lock.release().await;
        let copied = copied??;
        debug_assert_eq!(copied, size);
        let upload = self.inner.store.get_upload(file.id).await?;
        self.inner.completion.complete(&upload, None).await?;
        self.inner.store.get_file(file.id).await
    }

    /// The total size of a final upload's parts, each checked: listed once, at most
    /// [`MAX_PARTS`], a complete partial upload of the files endpoint that the caller may
    /// write (any other is "not a known upload", as a missing one is).
    async fn parts_size(&self, caller: &Caller, parts: &[Uuid]) -> Result<u64> {
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
        for part in parts {
            let unknown = || {
                Error::invalid(
                    "Upload-Concat",
                    format!("part {part} is not a known upload"),
                )
            };
            let state = self
                .inner
                .store
                .get_upload(*part)
                .await
                .map_err(|_| unknown())?;
            let state = self
                .inner
                .access
                .writable_upload(caller, state)
                .await
                .map_err(|_| unknown())?;
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
        Ok(size)
    }

    /// The durable state of an upload. An incomplete upload past its expiry is gone.
    pub(crate) async fn state(&self, id: Uuid) -> Result<UploadState> {
        let state = self.inner.store.get_upload(id).await?;
        if !state.complete && state.expires_at < Utc::now() {
            return Err(Error::Gone(format!("upload {id} expired")));
        }
        Ok(state)
    }

    /// The state of an upload the caller may see, addressed through a tus endpoint (a file
    /// upload is not reachable under /uploads/pipelines/ and the other way round) or not.
    pub(crate) async fn state_for(
        &self,
        caller: &Caller,
        id: Uuid,
        endpoint: Option<Endpoint>,
    ) -> Result<UploadState> {
        access::require(caller, Action::ReadFiles)?;
        let state = self.inner.store.get_upload(id).await?;
        if endpoint.is_some_and(|e| e != state.endpoint) {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        // Scope first: another's expired upload is as unknown as any.
        let state = self.inner.access.readable_upload(caller, state).await?;
        if !state.complete && state.expires_at < Utc::now() {
            return Err(Error::Gone(format!("upload {id} expired")));
        }
        Ok(state)
    }

    /// Starts a transfer at `offset`, which must be the durable offset, into an upload the
    /// caller may write. `length` sets a deferred length (tus Upload-Length on PATCH).
    pub(crate) async fn begin(
        &self,
        caller: &Caller,
        id: Uuid,
        endpoint: Option<Endpoint>,
        offset: u64,
        length: Option<u64>,
        checksum: Option<ChunkChecksum>,
    ) -> Result<Transfer> {
        access::require_some_write(caller)?;
        let state = self.state_for(caller, id, endpoint).await?;
        let state = self.inner.access.writable_upload(caller, state).await?;
        if state.complete || state.offset != offset {
            return Err(Error::OffsetMismatch {
                actual: state.offset,
            });
        }
        let mut lock = self.inner.locks.lock(id).await?;
        let (state, file) = match self.under_lock(&mut lock, id, offset, length).await {
            Ok(ready) => ready,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        let context = transfer::Context {
            completion: self.inner.completion.clone(),
            blocks: self.inner.blocks.clone(),
            max_size: self.inner.max_size,
            expiry: self.inner.expiry,
            pace: self.inner.pace,
            stored_bytes_quota: match (state.size, state.owner) {
                (None, Some(owner)) => self.inner.store.stored_bytes_quota(owner).await?,
                _ => None,
            },
        };
        match Transfer::new(context, lock, state, file, checksum) {
            Ok(transfer) => Ok(transfer),
            Err((lock, e)) => {
                lock.release().await;
                Err(e)
            }
        }
    }

    /// What a transfer checks and sets up once it holds the upload's lock: the row is what the
    /// last transfer left (the offset must still match), a deferred length is set, the partial
    /// file is opened at the offset, and a paused upload is uploading again.
    async fn under_lock(
        &self,
        lock: &mut lock::UploadLock,
        id: Uuid,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(UploadState, crate::datadir::PartialFile)> {
        let mut state = self.inner.store.get_upload(id).await?;
        if state.complete || state.offset != offset {
            return Err(Error::OffsetMismatch {
                actual: state.offset,
            });
        }
        if let Some(length) = length {
            match state.size {
                Some(size) if size == length => {}
                Some(_) => {
                    return Err(Error::invalid(
                        "Upload-Length",
                        "differs from the upload's length",
                    ));
                }
                None => {
                    self.check_size(Some(length))?;
                    self.inner.store.set_upload_length(id, length).await?;
                    state.size = Some(length);
                }
            }
        }
        let data = self.inner.content.data().clone();
        let file = tokio::task::spawn_blocking(move || data.open_transfer(id, offset))
            .await
            .map_err(Error::internal)??;
        tracing::debug!(upload = %id, offset, direct_io = file.is_direct(), "transfer starts");
        crate::store::session::resumed(lock.connection(), &state).await?;
        Ok((state, file))
    }

    /// Opens a package upload (creating its pipeline, UPLOADING), installed once its last byte
    /// arrives.
    pub(crate) async fn open_package(&self, new: NewPackage) -> Result<Pipeline> {
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

    /// tus termination: removes an upload, unless a transfer holds it; a complete upload's
    /// file is for the caller to delete like any file.
    pub(crate) async fn terminate(
        &self,
        caller: &Caller,
        id: Uuid,
        endpoint: Endpoint,
    ) -> Result<Terminated> {
        access::require_some_write(caller)?;
        let state = self.inner.store.get_upload(id).await?;
        if state.endpoint != endpoint {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        let state = self.inner.access.writable_upload(caller, state).await?;
        if state.complete && !state.is_partial {
            return match state.file_id {
                Some(file) => Ok(Terminated::Complete(file)),
                None => Err(Error::FailedPrecondition(
                    "the upload is complete".to_owned(),
                )),
            };
        }
        let lock = self.inner.locks.lock(id).await?;
        let removed = self.inner.store.remove_upload(&state).await;
        lock.release().await;
        removed?;
        self.inner.content.remove_partial(id).await;
        Ok(Terminated::Removed)
    }
}
