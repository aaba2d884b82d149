//! The pipeline use cases: announcing a package upload (opened by the engine, installed once
//! whole), installing a package uploaded earlier as a file, reading pipelines and their
//! documents, and uninstalling (which deletes the pipeline's package and image files).

use pirus_auth::{
    Caller,
    policy::{self, Action},
};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    access::{self, Access},
    content::Content,
    domain::{Pipeline, PipelineFilter, PipelineStatus, Result},
    files::Files,
    store::{NewPackage, Store},
    uploads::Uploads,
};

#[derive(Clone)]
pub(crate) struct Pipelines {
    uploads: Uploads,
    store: Store,
    files: Files,
    content: Content,
    /// Pipelines to install, for the installer.
    installs: mpsc::UnboundedSender<Uuid>,
}

impl Pipelines {
    pub(crate) fn new(
        uploads: Uploads,
        store: Store,
        files: Files,
        content: Content,
        installs: mpsc::UnboundedSender<Uuid>,
    ) -> Self {
        Self {
            uploads,
            store,
            files,
            content,
            installs,
        }
    }

    /// Announces a package upload: a pipeline UPLOADING, installed once its last byte arrives.
    pub(crate) async fn create(&self, caller: &Caller, mut new: NewPackage) -> Result<Pipeline> {
        access::require(caller, Action::InstallPipelines)?;
        new.owner = Some(caller.principal);
        self.uploads.open_package(new).await
    }

    /// Installs a package uploaded earlier as a plain file.
    pub(crate) async fn install_file(&self, caller: &Caller, file: Uuid) -> Result<Pipeline> {
        access::require(caller, Action::InstallPipelines)?;
        let pipeline = self.store.create_install(file).await?;
        let _ = self.installs.send(pipeline.id);
        Ok(pipeline)
    }

    pub(crate) async fn get(&self, caller: &Caller, id: Uuid) -> Result<Pipeline> {
        access::require(caller, Action::ReadReadyPipelines)?;
        Access::readable_pipeline(caller, self.store.get_pipeline(id).await?)
    }

    /// Pipelines the caller may read: READY ones only, unless it reads all.
    pub(crate) async fn list(
        &self,
        caller: &Caller,
        mut filter: PipelineFilter,
        page: crate::domain::Page,
    ) -> Result<Vec<Pipeline>> {
        access::require(caller, Action::ReadReadyPipelines)?;
        if !policy::permits(caller, Action::ReadAllPipelines) {
            match filter.status {
                None => filter.status = Some(PipelineStatus::Ready),
                Some(PipelineStatus::Ready) => {}
                Some(_) => return Ok(Vec::new()),
            }
        }
        self.store.list_pipelines(&filter, page).await
    }

    /// A document of a pipeline the caller may read: its content type and bytes.
    pub(crate) async fn document(
        &self,
        caller: &Caller,
        id: Uuid,
        name: &str,
    ) -> Result<(String, Vec<u8>)> {
        self.get(caller, id).await?;
        self.store.pipeline_document(id, name).await
    }

    /// Uninstalls a pipeline: its row and documents, its image, its package upload.
    pub(crate) async fn delete(&self, caller: &Caller, id: Uuid) -> Result<Pipeline> {
        access::require(caller, Action::DeletePipelines)?;
        let deleted = self.store.delete_pipeline(id).await?;
        let pipeline = deleted.pipeline;
        if let Some(upload) = pipeline.upload_id
            && pipeline.status != PipelineStatus::Ready
        {
            self.content.remove_partial(upload).await;
        }
        for file in deleted.files {
            if let Err(e) = self.files.remove(file).await {
                tracing::warn!(%file, error = %e, "could not delete a file of a deleted pipeline");
            }
        }
        Ok(pipeline)
    }
}
