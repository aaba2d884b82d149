//! Installing pipeline packages (CONTRACT §4): a package is untrusted input, inspected in
//! bounded time and memory on the blocking pool; the image is stored as a content-addressed
//! blob and a File of kind IMAGE; documents go to the database; the pipeline ends READY, or
//! ERROR with every problem found.
//!
//! Installs are queued by a completed package upload or by InstallPipeline, and found again by
//! a periodic scan of INSTALLING pipelines, so an install a crashed process left is resumed
//! (by any catalogue process: each install runs under its pipeline's advisory lock).

mod archive;
pub(crate) mod form;
mod image;
mod inspect;
mod manifest;
#[cfg(test)]
mod props;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    datadir::DataDir,
    domain::{Error, PipelineStatus, Result},
    store::{InstallRecord, Store},
    uploads::LockConnector,
};

/// How often INSTALLING pipelines are looked for besides those queued.
const SCAN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct Installer {
    store: Store,
    storage: DataDir,
    locks: LockConnector,
    /// `--max-image-size`.
    max_image: u64,
}

impl Installer {
    pub(crate) fn new(
        store: Store,
        storage: DataDir,
        locks: LockConnector,
        max_image: u64,
    ) -> Self {
        Self {
            store,
            storage,
            locks,
            max_image,
        }
    }

    /// Runs queued installs one at a time (an install is disk- and CPU-bound) until shutdown.
    pub(crate) async fn run(
        self,
        mut queue: mpsc::UnboundedReceiver<Uuid>,
        shutdown: CancellationToken,
    ) {
        let mut scan = tokio::time::interval(SCAN_INTERVAL);
        loop {
            let ids = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(id) = queue.recv() => vec![id],
                _ = scan.tick() => match self.store.installing_pipelines().await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for pending installs");
                        continue;
                    }
                },
            };
            for id in ids {
                if shutdown.is_cancelled() {
                    return;
                }
                if let Err(e) = self.install(id).await {
                    tracing::warn!(pipeline = %id, error = %e, "install attempt failed; retried later");
                }
            }
        }
    }

    /// Installs one pipeline, unless another process is installing it or it is not INSTALLING.
    async fn install(&self, id: Uuid) -> Result<()> {
        let lock = match self.locks.lock_install(id).await {
            Ok(lock) => lock,
            Err(Error::Locked) => return Ok(()),
            Err(e) => return Err(e),
        };
        let result = self.install_locked(id).await;
        lock.release().await;
        result
    }

    async fn install_locked(&self, id: Uuid) -> Result<()> {
        let pipeline = self.store.get_pipeline(id).await?;
        if pipeline.status != PipelineStatus::Installing {
            return Ok(());
        }
        let package_id = pipeline
            .package_file_id
            .ok_or_else(|| Error::internal("an installing pipeline without a package"))?;
        let package = self.store.get_file(package_id).await?;
        let (Some(sha256), Some(size)) = (package.sha256.clone(), package.size) else {
            return Err(Error::internal("package file without content"));
        };
        tracing::info!(pipeline = %id, package = %package_id, size, "installing");
        let started = std::time::Instant::now();
        let storage = self.storage.clone();
        let path = storage.blob_path(&sha256);
        let max_image = self.max_image;
        let inspected =
            tokio::task::spawn_blocking(move || inspect::inspect(&path, size, &storage, max_image))
                .await
                .map_err(Error::internal)?;
        let inspected = match inspected {
            Ok(inspected) => inspected,
            Err(problems) => {
                tracing::info!(pipeline = %id, problems = problems.len(), "package refused");
                return self.store.fail_install(id, &problems.join("\n")).await;
            }
        };

        let m = &inspected.manifest;
        let (image_sha256, image_size, temp) = match inspected.image {
            inspect::Image::Extracted { temp, sha256, size } => (sha256, size, Some(temp)),
            inspect::Image::Package => (sha256.clone(), size, None),
        };
        let record = InstallRecord {
            name: m.name.clone(),
            version: m.version.clone(),
            description: m.description.clone(),
            license: m.license.clone(),
            developers: m.developers.clone(),
            pirus_api: m.pirus_api.clone(),
            manifest: serde_json::to_value(m).map_err(Error::internal)?,
            form: inspected.form,
            documents: inspected
                .documents
                .into_iter()
                .map(|d| (d.name, d.content_type, d.content))
                .collect(),
            image_sha256: image_sha256.clone(),
            image_size,
        };
        let storage = self.storage.clone();
        let promote = move || match temp {
            Some(temp) => storage.promote(temp, &image_sha256),
            // The package is the image: its blob is already in place.
            None => Ok(()),
        };
        let installed = self.store.finish_install(id, record, promote).await;
        if let Some(temp) = temp {
            // Promoted (and so gone) on success; dropped otherwise.
            let storage = self.storage.clone();
            let _ = tokio::task::spawn_blocking(move || storage.remove_partial(temp)).await;
        }
        if installed? {
            tracing::info!(pipeline = %id, elapsed = ?started.elapsed(), "pipeline installed");
        }
        Ok(())
    }
}
