//! gRPC edge of the runner. Handlers stay thin: convert the request, call one use case, convert
//! the answer. RPCs whose work has not landed answer UNIMPLEMENTED and say so: declared, never
//! faked.

use std::pin::Pin;

use pirus_proto::runner::v1::{self as pb, runner_service_server::RunnerService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct Runner {}

impl Runner {
    pub fn new() -> Self {
        Self {}
    }
}

/// The answer of an RPC whose work is still to come.
fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented yet: run execution, control and node management are still \
         being built"
    ))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl RunnerService for Runner {
    async fn submit_run(
        &self,
        _: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("SubmitRun"))
    }

    async fn get_run(&self, _: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("GetRun"))
    }

    async fn list_runs(
        &self,
        _: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        Err(not_yet("ListRuns"))
    }

    type WatchRunStream = BoxStream<pb::RunEvent>;

    async fn watch_run(
        &self,
        _: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        Err(not_yet("WatchRun"))
    }

    type StreamRunLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_run_logs(
        &self,
        _: Request<pb::StreamRunLogsRequest>,
    ) -> Result<Response<Self::StreamRunLogsStream>, Status> {
        Err(not_yet("StreamRunLogs"))
    }

    async fn pause_run(
        &self,
        _: Request<pb::PauseRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("PauseRun"))
    }

    async fn resume_run(
        &self,
        _: Request<pb::ResumeRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("ResumeRun"))
    }

    async fn cancel_run(
        &self,
        _: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("CancelRun"))
    }

    async fn delete_run(
        &self,
        _: Request<pb::DeleteRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(not_yet("DeleteRun"))
    }

    async fn get_run_monitoring(
        &self,
        _: Request<pb::GetRunMonitoringRequest>,
    ) -> Result<Response<pb::RunMonitoring>, Status> {
        Err(not_yet("GetRunMonitoring"))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        Err(not_yet("ListNodes"))
    }

    async fn drain_node(
        &self,
        _: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Err(not_yet("DrainNode"))
    }

    async fn undrain_node(
        &self,
        _: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        Err(not_yet("UndrainNode"))
    }
}
