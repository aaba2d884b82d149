//! The orphan sweep: containers, volumes and run folders of this node that belong to no run it
//! holds (finished runs, attempts it lost, unknown runs) are removed. Run at start-up and after
//! every reconnection to the database, since LXD's events and PostgreSQL's notifications can
//! both be missed.

use uuid::Uuid;

use super::{Executor, container, workspace};
use crate::domain::{Error, Result};

impl Executor {
    /// Removes what belongs to no run this node holds; answers the runs it holds.
    pub(crate) async fn sweep_orphans(&self) -> Result<Vec<(Uuid, i32)>> {
        let inner = &self.inner;
        // Containers, volumes and folders first, held runs after: they exist only once their
        // run's claim committed, so one created meanwhile is never mistaken for an orphan.
        let instances = inner.lxd.instances().await.map_err(Error::internal)?;
        let volumes = inner.storage.node_volumes(&inner.node).await?;
        let runs = inner.runs.clone();
        let folders = workspace::blocking(move || runs.subfolders()).await?;
        let held = inner.stores.queue.held_by(&inner.node).await?;
        let keep: Vec<String> = held
            .iter()
            .map(|(run, attempt)| container::container_name(*run, *attempt))
            .collect();
        for instance in instances {
            let ours = instance.config.get("user.pirus.node") == Some(&inner.node);
            if ours && !keep.contains(&instance.name) {
                tracing::warn!(container = %instance.name, "removing an orphan container");
                container::remove(&inner.lxd, &instance.name).await?;
            }
        }
        for volume in volumes {
            if !keep.contains(&volume) {
                tracing::warn!(%volume, "removing an orphan volume");
                inner.storage.delete_volume(&volume).await?;
            }
        }
        let held_folders: Vec<String> = held
            .iter()
            .map(|(run, attempt)| workspace::folder_name(*run, *attempt))
            .collect();
        for folder in folders {
            if !held_folders.contains(&folder) {
                tracing::warn!(%folder, "removing an orphan run folder");
                let runs = inner.runs.clone();
                if let Err(e) = workspace::blocking(move || runs.remove_tree(&folder)).await {
                    tracing::warn!(error = %e, "could not remove an orphan run folder");
                }
            }
        }
        // The inputs those folders linked may be used by no run now.
        if let Err(e) = inner.artifacts.trim_inputs().await {
            tracing::warn!(error = %e, "could not trim the input cache");
        }
        Ok(held)
    }
}
