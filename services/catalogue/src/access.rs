//! The catalogue's use of the policy in `pirus_auth::policy`: what a caller may do with files,
//! uploads and pipelines. The use cases (files, pipelines, the upload engine) call these and
//! nothing else decides. A resource outside the caller's scope answers exactly as a missing
//! one does (NOT_FOUND, same message), so ids cannot be probed; an action the caller's role
//! lacks is PERMISSION_DENIED.
//!
//! Scopes: admins and operators see every file and upload; a user its own; a runner the files
//! an unfinished run held by its node reads (inputs, the pipeline's image) and the outputs and
//! logs of such runs, which only it may register (they then belong to the run's owner).

use pirus_auth::{
    Caller, Role,
    policy::{self, Action, Scope},
};
use uuid::Uuid;

use crate::{
    domain::{Error, File, FileKind, NewFile, Pipeline, PipelineStatus, Result, UploadState},
    store::{RunHolder, Store},
};

#[derive(Clone)]
pub(crate) struct Access {
    store: Store,
}

/// The role may take the action (PERMISSION_DENIED otherwise).
pub(crate) fn require(caller: &Caller, action: Action) -> Result<()> {
    policy::check(caller, action).map_err(Into::into)
}

/// The role may fill some upload (its files, packages, or a run's results): checked before an
/// upload is read, so that a refusal never depends on what exists.
pub(crate) fn require_some_write(caller: &Caller) -> Result<()> {
    let may = [
        Action::CreateFiles,
        Action::InstallPipelines,
        Action::RegisterRunResults,
    ]
    .into_iter()
    .any(|a| policy::permits(caller, a));
    if may {
        Ok(())
    } else {
        require(caller, Action::CreateFiles)
    }
}

fn is_run_result(kind: FileKind) -> bool {
    matches!(kind, FileKind::Output | FileKind::Log)
}

impl Access {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The run's holder when `node` holds `run` now (the run is unfinished and claimed by it).
    async fn holder(&self, node: &str, run: Uuid) -> Result<Option<RunHolder>> {
        Ok(self
            .store
            .run_holder(run)
            .await?
            .filter(|h| h.unfinished && h.node.as_deref() == Some(node)))
    }

    /// Whether `node` holds `run` now.
    pub(crate) async fn node_holds(&self, node: &str, run: Uuid) -> Result<bool> {
        Ok(self.holder(node, run).await?.is_some())
    }

    /// Whether a file is within the caller's scope.
    async fn sees(&self, caller: &Caller, file: &File) -> Result<bool> {
        match policy::scope(caller) {
            Scope::Node(node) => match file.source_run_id {
                Some(run) if is_run_result(file.kind) => self.node_holds(&node, run).await,
                _ => self.store.node_reads(&node, file.id).await,
            },
            scope => Ok(scope.owns(file.owner)),
        }
    }

    /// `file`, if the caller's role may take `action` (ReadFiles, DeleteFiles) and the file is
    /// within its scope; others are NOT_FOUND.
    pub(crate) async fn file_for(
        &self,
        caller: &Caller,
        action: Action,
        file: File,
    ) -> Result<File> {
        require(caller, action)?;
        if self.sees(caller, &file).await? {
            Ok(file)
        } else {
            Err(Error::NotFound(format!("file {}", file.id)))
        }
    }

    /// Who owns a file the caller creates: a data file is the caller's (CreateFiles); a run's
    /// output or log is the run's owner's, and only a runner whose node holds the run may
    /// register one (RegisterRunResults).
    pub(crate) async fn new_file_owner(
        &self,
        caller: &Caller,
        new: &NewFile,
    ) -> Result<Option<Uuid>> {
        let kind = new.kind.unwrap_or(FileKind::Data);
        if !is_run_result(kind) {
            require(caller, Action::CreateFiles)?;
            return Ok(Some(caller.principal));
        }
        require(caller, Action::RegisterRunResults)?;
        let run = new.source_run_id.ok_or_else(|| {
            Error::invalid("source_run_id", "is required for OUTPUT and LOG files")
        })?;
        let node = caller.node.as_deref().unwrap_or_default();
        // The unrestricted caller of `--auth none` stands for whichever node holds the run.
        let holder = if caller.unrestricted {
            self.store.run_holder(run).await?.filter(|h| h.unfinished)
        } else {
            self.holder(node, run).await?
        };
        match holder {
            Some(holder) => Ok(holder.owner),
            None => Err(Error::PermissionDenied(format!(
                "source_run_id: run {run} is not an unfinished run held by node '{node}'; a \
                 runner registers only the results of its own runs"
            ))),
        }
    }

    /// Whether an upload is within the caller's scope: its creator's, or for a runner the
    /// upload of a result of a run its node holds.
    async fn sees_upload(&self, caller: &Caller, upload: &UploadState) -> Result<bool> {
        let node = match policy::scope(caller) {
            Scope::Node(node) => node,
            scope => return Ok(scope.owns(upload.owner)),
        };
        let Some(file) = upload.file_id else {
            return Ok(false);
        };
        match self.store.get_file(file).await {
            Ok(File {
                source_run_id: Some(run),
                kind,
                ..
            }) if is_run_result(kind) => self.node_holds(&node, run).await,
            Ok(_) | Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `upload`, if the caller's role may take `action` and the upload is within its scope;
    /// others are NOT_FOUND.
    async fn upload_for(
        &self,
        caller: &Caller,
        action: Action,
        upload: UploadState,
    ) -> Result<UploadState> {
        require(caller, action)?;
        if self.sees_upload(caller, &upload).await? {
            Ok(upload)
        } else {
            Err(Error::NotFound(format!("upload {}", upload.id)))
        }
    }

    /// An upload whose state the caller may read; others are NOT_FOUND.
    pub(crate) async fn readable_upload(
        &self,
        caller: &Caller,
        upload: UploadState,
    ) -> Result<UploadState> {
        self.upload_for(caller, Action::ReadFiles, upload).await
    }

    /// An upload the caller may write to or terminate: it may create what the upload fills
    /// (files, packages, a run's results) and the upload is within its scope.
    pub(crate) async fn writable_upload(
        &self,
        caller: &Caller,
        upload: UploadState,
    ) -> Result<UploadState> {
        let action = match (caller.role, upload.pipeline_id) {
            (_, Some(_)) => Action::InstallPipelines,
            (Role::Runner, None) => Action::RegisterRunResults,
            (_, None) => Action::CreateFiles,
        };
        self.upload_for(caller, action, upload).await
    }

    /// A pipeline the caller may read: every READY one, and any for those who read all.
    pub(crate) fn readable_pipeline(caller: &Caller, pipeline: Pipeline) -> Result<Pipeline> {
        require(caller, Action::ReadReadyPipelines)?;
        if pipeline.status == PipelineStatus::Ready
            || policy::permits(caller, Action::ReadAllPipelines)
        {
            Ok(pipeline)
        } else {
            Err(Error::NotFound(format!("pipeline {}", pipeline.id)))
        }
    }
}
