//! gRPC edge of the catalogue. Handlers stay thin: convert the request, call one use case,
//! convert the answer.

pub(crate) mod access;
mod convert;
mod status;

use std::{pin::Pin, sync::Arc};

use pirus_auth::layer::{AuditTarget, caller};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_server::CatalogueService};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use convert::{file_to_proto, parse_id, parse_optional_id, pipeline_to_proto, upload_status};

use crate::{
    domain::{
        DOCUMENT_NAMES, Error, FileFilter, FileKind, NewFile, PipelineFilter, check_filename,
        check_tags, parse_sha256, request_id,
    },
    files::Files,
    pipelines::Pipelines,
    store::NewPackage,
    uploads::{
        Uploads,
        driver::{self, Piece, Stop},
    },
};

/// The handlers' use cases: the upload engine, files and pipelines.
pub(crate) struct Catalogue {
    pub uploads: Uploads,
    pub files: Files,
    pub pipelines: Pipelines,
    pub public_url: Arc<str>,
}

type ReadFileStream = Pin<Box<dyn Stream<Item = Result<pb::ReadFileResponse, Status>> + Send>>;

/// Request fields of CreateFile that describe the file, checked.
fn new_file(request: pb::CreateFileRequest) -> Result<NewFile, Error> {
    let name = check_filename("filename", &request.filename)?;
    if request.size < 0 {
        return Err(Error::invalid("size", "must not be negative"));
    }
    let sha256 = parse_sha256("sha256", &request.sha256)?;
    let request_id = request_id("request_id", &request.request_id)?;
    check_tags("tags", &request.tags)?;
    let kind = convert::file_kind(request.kind)?;
    let source_run_id = parse_optional_id("source_run_id", &request.source_run_id)?;
    match kind {
        Some(FileKind::Package | FileKind::Image) => {
            return Err(Error::invalid(
                "kind",
                "PACKAGE and IMAGE files are made by the catalogue when it installs a pipeline",
            ));
        }
        Some(FileKind::Output | FileKind::Log) if source_run_id.is_none() => {
            return Err(Error::invalid(
                "source_run_id",
                "is required for OUTPUT and LOG files",
            ));
        }
        _ => {}
    }
    Ok(NewFile {
        name,
        size: Some(request.size as u64),
        sha256,
        request_id,
        tags: request.tags,
        kind,
        source_run_id,
        metadata: String::new(),
        owner: None,
    })
}

#[tonic::async_trait]
impl CatalogueService for Catalogue {
    async fn create_pipeline(
        &self,
        request: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let request = request.into_inner();
        let filename = check_filename("filename", &request.filename)?;
        if request.size < 0 {
            return Err(Error::invalid("size", "must not be negative").into());
        }
        let new = NewPackage {
            filename,
            size: Some(request.size as u64),
            sha256: parse_sha256("sha256", &request.sha256)?,
            request_id: request_id("request_id", &request.request_id)?,
            metadata: String::new(),
            owner: None,
        };
        let pipeline = self.pipelines.create(&caller, new).await?;
        audit.set(pipeline.id);
        Ok(Response::new(pipeline_to_proto(pipeline, &self.public_url)))
    }

    async fn install_pipeline(
        &self,
        request: Request<pb::InstallPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let file = parse_id("file_id", &request.into_inner().file_id)?;
        audit.set(file);
        let pipeline = self.pipelines.install_file(&caller, file).await?;
        audit.set(pipeline.id);
        Ok(Response::new(pipeline_to_proto(pipeline, &self.public_url)))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.into_inner().id)?;
        let pipeline = self.pipelines.get(&caller, id).await?;
        Ok(Response::new(pipeline_to_proto(pipeline, &self.public_url)))
    }

    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let page = convert::page(request.page_size, &request.page_token)?;
        let filter = PipelineFilter {
            status: convert::pipeline_status(request.status)?,
            name: (!request.name.is_empty()).then_some(request.name),
        };
        let pipelines = self.pipelines.list(&caller, filter, page).await?;
        let (pipelines, next_page_token) = convert::paged(page, pipelines, |p| p.id);
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines: pipelines
                .into_iter()
                .map(|p| pipeline_to_proto(p, &self.public_url))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        let pipeline = self.pipelines.delete(&caller, id).await?;
        Ok(Response::new(pipeline_to_proto(pipeline, &self.public_url)))
    }

    async fn get_pipeline_document(
        &self,
        request: Request<pb::GetPipelineDocumentRequest>,
    ) -> Result<Response<pb::PipelineDocument>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let id = parse_id("pipeline_id", &request.pipeline_id)?;
        if !DOCUMENT_NAMES.contains(&request.name.as_str()) {
            return Err(Error::invalid(
                "name",
                format!(
                    "'{}' is not one of {}",
                    request.name,
                    DOCUMENT_NAMES.join(", ")
                ),
            )
            .into());
        }
        let (content_type, content) = self.pipelines.document(&caller, id, &request.name).await?;
        Ok(Response::new(pb::PipelineDocument {
            content_type,
            content: content.into(),
        }))
    }

    async fn create_file(
        &self,
        request: Request<pb::CreateFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let new = new_file(request.into_inner())?;
        let file = self.files.create(&caller, new).await?;
        audit.set(file.id);
        Ok(Response::new(file_to_proto(file, &self.public_url)))
    }

    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.into_inner().id)?;
        let file = self.files.get(&caller, id).await?;
        Ok(Response::new(file_to_proto(file, &self.public_url)))
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let page = convert::page(request.page_size, &request.page_token)?;
        let filter = FileFilter {
            status: convert::file_status(request.status)?,
            kind: convert::file_kind(request.kind)?,
            source_run_id: parse_optional_id("source_run_id", &request.source_run_id)?,
            owner: None,
            owner_name: Some(request.owner).filter(|o| !o.is_empty()),
        };
        let files = self.files.list(&caller, filter, page).await?;
        let (files, next_page_token) = convert::paged(page, files, |f| f.id);
        Ok(Response::new(pb::ListFilesResponse {
            files: files
                .into_iter()
                .map(|f| file_to_proto(f, &self.public_url))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        let file = self.files.delete(&caller, id).await?;
        Ok(Response::new(file_to_proto(file, &self.public_url)))
    }

    async fn write_upload(
        &self,
        request: Request<Streaming<pb::WriteUploadRequest>>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Error::invalid("upload_id", "the stream carried no message"))?;
        let id = parse_id("upload_id", &first.upload_id)?;
        if first.offset < 0 {
            return Err(Error::invalid("offset", "must not be negative").into());
        }
        let transfer = self
            .uploads
            .begin(&caller, id, None, first.offset as u64, None, None)
            .await?;
        let state = driver::drive(transfer, write_pieces(first, stream))
            .await
            .map_err(|stop| match stop {
                Stop::Idle => Status::deadline_exceeded("nothing arrived for 30 s"),
                Stop::Slow(why) => Status::deadline_exceeded(why),
                Stop::Cut(status) => status,
                Stop::Refused(e) => e.into(),
            })?;
        Ok(Response::new(upload_status(&state)))
    }

    async fn get_upload_status(
        &self,
        request: Request<pb::GetUploadStatusRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("upload_id", &request.into_inner().upload_id)?;
        let state = self.uploads.state_for(&caller, id, None).await?;
        Ok(Response::new(upload_status(&state)))
    }

    type ReadFileStream = ReadFileStream;

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let id = parse_id("file_id", &request.file_id)?;
        if request.offset < 0 {
            return Err(Error::invalid("offset", "must not be negative").into());
        }
        if request.limit < 0 {
            return Err(Error::invalid("limit", "must not be negative").into());
        }
        let chunks = self
            .files
            .read(&caller, id, request.offset as u64, request.limit as u64)
            .await?;
        let stream = chunks.map(|chunk| {
            chunk
                .map(|(offset, data)| pb::ReadFileResponse {
                    offset: offset as i64,
                    data,
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A WriteUpload stream as the transfer driver's pieces: every message names the same upload
/// (or none) and says its offset.
fn write_pieces(
    first: pb::WriteUploadRequest,
    stream: Streaming<pb::WriteUploadRequest>,
) -> impl tokio_stream::Stream<Item = Result<Piece, Status>> + Send + Unpin + 'static {
    let upload_id = first.upload_id.clone();
    tokio_stream::once(Ok(first))
        .chain(stream)
        .map(move |message| {
            let message = message?;
            if !message.upload_id.is_empty() && message.upload_id != upload_id {
                return Err(Error::invalid("upload_id", "differs from the first message's").into());
            }
            Ok(Piece {
                offset: Some(u64::try_from(message.offset).unwrap_or(u64::MAX)),
                data: message.data,
                last: message.finish_write,
            })
        })
}
