//! The file use cases: creating a file (its upload opened by the engine), reading one, listing,
//! ranged reads of its content, and deletion (guarded by what uses it, and leaving no bytes
//! behind).

use bytes::Bytes;
use pirus_auth::{
    Caller,
    policy::{self, Action, Scope},
};
use tokio_stream::Stream;
use uuid::Uuid;

use crate::{
    access::{self, Access},
    content::Content,
    domain::{Error, File, FileFilter, NewFile, Page, Result},
    store::Store,
    uploads::{LockConnector, Uploads},
};

#[derive(Clone)]
pub(crate) struct Files {
    uploads: Uploads,
    store: Store,
    content: Content,
    locks: LockConnector,
    access: Access,
}

impl Files {
    pub(crate) fn new(
        uploads: Uploads,
        store: Store,
        content: Content,
        locks: LockConnector,
        access: Access,
    ) -> Self {
        Self {
            uploads,
            store,
            content,
            locks,
            access,
        }
    }

    /// Creates a file and opens its upload. The caller owns a data file; a run's output or log
    /// belongs to the run's owner, and is registered only by the runner holding the run. A
    /// run's result registered again answers the file registered before, if it has the same
    /// digest.
    pub(crate) async fn create(&self, caller: &Caller, mut new: NewFile) -> Result<File> {
        new.owner = self.access.new_file_owner(caller, &new).await?;
        let sha256 = new.sha256.clone();
        let file = self.uploads.open_file(new).await?;
        if file.source_run_id.is_some()
            && let (Some(asked), Some(registered)) = (&sha256, &file.sha256)
            && asked != registered
        {
            return Err(Error::AlreadyExists(format!(
                "a {} named '{}' of run {} is registered already with another SHA-256 \
                 ({registered})",
                file.kind.as_str(),
                file.name,
                file.source_run_id.unwrap_or_default()
            )));
        }
        self.named(file).await
    }

    /// `file` with its owner's name (what clients are answered).
    async fn named(&self, file: File) -> Result<File> {
        self.store
            .with_owner_names(vec![file])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("a file lost while naming its owner"))
    }

    pub(crate) async fn get(&self, caller: &Caller, id: Uuid) -> Result<File> {
        access::require(caller, Action::ReadFiles)?;
        let file = self.store.get_file(id).await?;
        let file = self
            .access
            .file_for(caller, Action::ReadFiles, file)
            .await?;
        self.named(file).await
    }

    /// Files within the caller's scope: a user lists its own; a runner the results of one
    /// run its node holds (`source_run_id`).
    pub(crate) async fn list(
        &self,
        caller: &Caller,
        filter: FileFilter,
        page: Page,
    ) -> Result<Vec<File>> {
        access::require(caller, Action::ReadFiles)?;
        let mut filter = filter;
        if let Some(name) = &filter.owner_name {
            policy::scope(caller).may_list_owner(caller, name)?;
            match self.store.principal_id(name).await? {
                Some(id) => filter.owner = Some(id),
                None => return Ok(Vec::new()),
            }
        }
        match policy::scope(caller) {
            Scope::All => {}
            Scope::Own(me) => filter.owner = Some(me),
            Scope::Node(node) => {
                let Some(run) = filter.source_run_id else {
                    return Err(Error::PermissionDenied(
                        "a runner token lists only the files of a run its node holds: give \
                         source_run_id"
                            .to_owned(),
                    ));
                };
                if !self.access.node_holds(&node, run).await? {
                    return Ok(Vec::new());
                }
            }
        }
        let files = self.store.list_files(&filter, page).await?;
        self.store.with_owner_names(files).await
    }

    /// A ranged read of a ready file's content, in chunks of at most 1 MiB.
    pub(crate) async fn read(
        &self,
        caller: &Caller,
        id: Uuid,
        offset: u64,
        limit: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        self.get(caller, id).await?;
        self.content.read(id, offset, limit).await
    }

    /// Deletes a file (FAILED_PRECONDITION while a pipeline or unfinished run uses it), its
    /// upload, and its blob once nothing else references it.
    pub(crate) async fn delete(&self, caller: &Caller, id: Uuid) -> Result<File> {
        access::require(caller, Action::DeleteFiles)?;
        let file = self.store.get_file(id).await?;
        self.access
            .file_for(caller, Action::DeleteFiles, file)
            .await?;
        let removed = self.remove(id).await?;
        self.named(removed).await
    }

    /// Deletes a file for the catalogue itself (a deleted pipeline's package and image).
    pub(crate) async fn remove(&self, id: Uuid) -> Result<File> {
        let file = self.store.get_file(id).await?;
        let lock = match file.upload_id {
            Some(upload) => Some(self.locks.lock(upload).await?),
            None => None,
        };
        let deleted = self.store.delete_file(id).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let deleted = deleted?;
        if let Some(upload) = deleted.partial {
            self.content.remove_partial(upload).await;
        }
        if let Some(sha256) = deleted.unreferenced_blob {
            self.content.collect_blob(&sha256).await;
        }
        Ok(deleted.file)
    }
}
