//! The file use cases: creating a file (its upload opened by the engine), reading one, listing,
//! ranged reads of its content, and deletion (guarded by what uses it, and leaving no bytes
//! behind).

use bytes::Bytes;
use tokio_stream::Stream;
use uuid::Uuid;

use crate::{
    content::Content,
    domain::{File, FileFilter, NewFile, Page, Result},
    store::Store,
    uploads::{LockConnector, Uploads},
};

#[derive(Clone)]
pub struct Files {
    uploads: Uploads,
    store: Store,
    content: Content,
    locks: LockConnector,
}

impl Files {
    pub fn new(uploads: Uploads, store: Store, content: Content, locks: LockConnector) -> Self {
        Self {
            uploads,
            store,
            content,
            locks,
        }
    }

    /// Creates a file and opens its upload.
    pub async fn create(&self, new: NewFile) -> Result<File> {
        self.uploads.open_file(new).await
    }

    pub async fn get(&self, id: Uuid) -> Result<File> {
        self.store.get_file(id).await
    }

    pub async fn list(&self, filter: &FileFilter, page: Page) -> Result<Vec<File>> {
        self.store.list_files(filter, page).await
    }

    /// A ranged read of a ready file's content, in chunks of at most 1 MiB.
    pub async fn read(
        &self,
        id: Uuid,
        offset: u64,
        limit: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        self.content.read(id, offset, limit).await
    }

    /// Deletes a file (FAILED_PRECONDITION while a pipeline or unfinished run uses it), its
    /// upload, and its blob once nothing else references it.
    pub async fn delete(&self, id: Uuid) -> Result<File> {
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
