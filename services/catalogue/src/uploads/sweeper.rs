//! Background upkeep of uploads, run by every catalogue process (the work is idempotent and
//! each item is taken under its upload's lock or its blob's row lock):
//!
//! - an upload nobody wrote for 30 s shows PAUSE;
//! - an incomplete upload past its expiry is removed with its file and partial bytes;
//! - an upload whose bytes are all durable but that was never completed (a crash between the
//!   last commit and completion) is completed;
//! - a blob whose last reference went away is removed;
//! - a partial file that belongs to no upload (the image of an install a crashed process was
//!   extracting) is removed once it is older than the upload expiry.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Uploads;
use crate::domain::Error;

/// An upload that received nothing for this long is shown paused (CONTRACT §2.1).
pub(super) const IDLE_PAUSE: Duration = Duration::from_secs(30);

pub(crate) async fn run_sweeper(uploads: Uploads, period: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = sweep(&uploads).await {
            tracing::warn!(error = %e, "upload sweep failed; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

async fn sweep(uploads: &Uploads) -> Result<(), Error> {
    let (store, content) = (&uploads.inner.store, &uploads.inner.content);
    let paused = store.pause_idle_uploads(IDLE_PAUSE).await?;
    if paused > 0 {
        tracing::info!(count = paused, "idle uploads paused");
    }

    for upload in store.expired_uploads(100).await? {
        let Ok(lock) = uploads.inner.locks.lock(upload.id).await else {
            continue; // A transfer is writing it after all: not expired.
        };
        // The bytes first, then the row, both under the lock: once the upload is unknown
        // (404), nothing of it is left on disk. A crash between the two leaves an expired row
        // without bytes, which the next sweep removes.
        content.remove_partial(upload.id).await;
        let removed = store.remove_upload(&upload).await;
        lock.release().await;
        removed?;
        tracing::info!(upload = %upload.id, "expired upload removed");
    }

    for id in store.stalled_complete_uploads().await? {
        let Ok(lock) = uploads.inner.locks.lock(id).await else {
            continue;
        };
        let state = store.get_upload(id).await;
        let result = match state {
            Ok(state) if !state.complete => uploads
                .completion()
                .complete(&state, None)
                .await
                .map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        lock.release().await;
        if let Err(e) = result {
            tracing::warn!(upload = %id, error = %e, "could not complete a stalled upload");
        }
    }

    for sha256 in store.unreferenced_blobs(100).await? {
        content.collect_blob(&sha256).await;
    }

    let storage = content.data().clone();
    let age = uploads.inner.expiry;
    let stale = tokio::task::spawn_blocking(move || storage.stale_partials(age))
        .await
        .map_err(Error::internal)??;
    if !stale.is_empty() {
        let known = store.existing_uploads(&stale).await?;
        for id in stale.into_iter().filter(|id| !known.contains(id)) {
            tracing::info!(file = %id, "removing a partial file that belongs to no upload");
            content.remove_partial(id).await;
        }
    }
    Ok(())
}
