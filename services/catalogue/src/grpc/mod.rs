//! gRPC edge of the catalogue. Handlers stay thin: convert the request, call one use case,
//! convert the answer. RPCs whose work has not landed answer UNIMPLEMENTED and say so: declared,
//! never faked.

use std::pin::Pin;

use pirus_proto::catalogue::v1::{self as pb, catalogue_service_server::CatalogueService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub struct Catalogue {}

impl Catalogue {
    pub fn new() -> Self {
        Self {}
    }
}

/// The answer of an RPC whose work is still to come.
fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented yet: uploads, package install and the pipeline and file API \
         are still being built"
    ))
}

type ReadFileStream = Pin<Box<dyn Stream<Item = Result<pb::ReadFileResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CatalogueService for Catalogue {
    async fn create_pipeline(
        &self,
        _: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        Err(not_yet("CreatePipeline"))
    }

    async fn install_pipeline(
        &self,
        _: Request<pb::InstallPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        Err(not_yet("InstallPipeline"))
    }

    async fn get_pipeline(
        &self,
        _: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        Err(not_yet("GetPipeline"))
    }

    async fn list_pipelines(
        &self,
        _: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        Err(not_yet("ListPipelines"))
    }

    async fn delete_pipeline(
        &self,
        _: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        Err(not_yet("DeletePipeline"))
    }

    async fn get_pipeline_document(
        &self,
        _: Request<pb::GetPipelineDocumentRequest>,
    ) -> Result<Response<pb::PipelineDocument>, Status> {
        Err(not_yet("GetPipelineDocument"))
    }

    async fn create_file(
        &self,
        _: Request<pb::CreateFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        Err(not_yet("CreateFile"))
    }

    async fn get_file(&self, _: Request<pb::GetFileRequest>) -> Result<Response<pb::File>, Status> {
        Err(not_yet("GetFile"))
    }

    async fn list_files(
        &self,
        _: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        Err(not_yet("ListFiles"))
    }

    async fn delete_file(
        &self,
        _: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        Err(not_yet("DeleteFile"))
    }

    async fn write_upload(
        &self,
        _: Request<Streaming<pb::WriteUploadRequest>>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        Err(not_yet("WriteUpload"))
    }

    async fn get_upload_status(
        &self,
        _: Request<pb::GetUploadStatusRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        Err(not_yet("GetUploadStatus"))
    }

    type ReadFileStream = ReadFileStream;

    async fn read_file(
        &self,
        _: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        Err(not_yet("ReadFile"))
    }
}
