//! gRPC edge of the runner. Handlers stay thin: convert the request, call one use case
//! ([`Runs`]), convert the answer.

mod convert;
mod status;

use std::{pin::Pin, time::Duration};

use pirus_auth::layer::{AuditTarget, caller};
use pirus_proto::runner::v1::{self as pb, runner_service_server::RunnerService};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use convert::{event_to_proto, monitoring_to_proto, node_to_proto, parse_id, run_to_proto};

use crate::{
    domain::{Error, LogStream, NewRun, Requested, RunFilter},
    lifecycle,
    runs::Runs,
};

pub(crate) struct Runner {
    pub runs: Runs,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A use case's stream of domain items as a gRPC stream.
fn relay<T: Send + 'static, P: Send + 'static>(
    rx: mpsc::Receiver<crate::domain::Result<T>>,
    convert: fn(T) -> P,
) -> BoxStream<P> {
    Box::pin(ReceiverStream::new(rx).map(move |item| item.map(convert).map_err(Status::from)))
}

#[tonic::async_trait]
impl RunnerService for Runner {
    async fn submit_run(
        &self,
        request: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let r = request.into_inner();
        let input_file_ids = r
            .input_file_ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("input_file_ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        if r.request_id.len() > 256 {
            return Err(Error::invalid("request_id", "is longer than 256 bytes").into());
        }
        if r.max_attempts < 0 || r.max_attempts > 100 {
            return Err(Error::invalid("max_attempts", "must be from 0 (default 1) to 100").into());
        }
        let time = match r.timeout {
            None => None,
            Some(t) if t.seconds > 0 => Some(Duration::from_secs(t.seconds as u64)),
            Some(_) => return Err(Error::invalid("timeout", "must be at least one second").into()),
        };
        let resources = r.resources.unwrap_or_default();
        for (field, value) in [
            ("resources.memory_bytes", resources.memory_bytes),
            ("resources.disk_bytes", resources.disk_bytes),
        ] {
            if value < 0 {
                return Err(Error::invalid(field, "must not be negative").into());
            }
        }
        let positive = |n: i64| (n > 0).then_some(n as u64);
        let new = NewRun {
            pipeline_id: parse_id("pipeline_id", &r.pipeline_id)?,
            name: r.name,
            config_json: r.config_json,
            input_file_ids,
            priority: r.priority,
            request_id: (!r.request_id.is_empty()).then_some(r.request_id),
            requested: Requested {
                cpus: (resources.cpu > 0).then_some(resources.cpu),
                memory_bytes: positive(resources.memory_bytes),
                processes: (resources.processes > 0).then_some(resources.processes),
                disk_bytes: positive(resources.disk_bytes),
                time,
            },
            max_attempts: (r.max_attempts > 0).then_some(r.max_attempts as u32),
            node_selector: r.node_selector.into_iter().collect(),
            owner: None,
        };
        let run = self.runs.submit(&caller, new).await?;
        audit.set(run.id);
        Ok(Response::new(run_to_proto(run)))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(run_to_proto(
            self.runs.get(&caller, id).await?,
        )))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let page = convert::page(r.page_size, &r.page_token)?;
        let filter = RunFilter {
            status: convert::status_from_proto(r.status)?,
            pipeline_id: match r.pipeline_id.as_str() {
                "" => None,
                id => Some(parse_id("pipeline_id", id)?),
            },
            node: (!r.node.is_empty()).then_some(r.node),
            owner_name: Some(r.owner).filter(|o| !o.is_empty()),
            ..Default::default()
        };
        let runs = self.runs.list(&caller, filter, page).await?;
        let (runs, next_page_token) = convert::paged(page, runs, |r| r.id);
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(run_to_proto).collect(),
            next_page_token,
        }))
    }

    type WatchRunStream = BoxStream<pb::RunEvent>;

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let id = parse_id("run_id", &r.run_id)?;
        if r.after_seq < 0 {
            return Err(Error::invalid("after_seq", "must not be negative").into());
        }
        let events = self.runs.watch(&caller, id, r.after_seq).await?;
        Ok(Response::new(relay(events, event_to_proto)))
    }

    type StreamRunLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_run_logs(
        &self,
        request: Request<pb::StreamRunLogsRequest>,
    ) -> Result<Response<Self::StreamRunLogsStream>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let id = parse_id("run_id", &r.run_id)?;
        let stream = LogStream::parse(&r.stream).ok_or_else(|| {
            Error::invalid("stream", format!("'{}' is not stdout or stderr", r.stream))
        })?;
        if r.offset < 0 {
            return Err(Error::invalid("offset", "must not be negative").into());
        }
        let chunks = self
            .runs
            .logs(&caller, id, stream, r.offset as u64, r.follow)
            .await?;
        Ok(Response::new(relay(chunks, |c| pb::LogChunk {
            offset: c.offset as i64,
            data: c.data,
        })))
    }

    async fn pause_run(
        &self,
        request: Request<pb::PauseRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        let run = self
            .runs
            .control(&caller, id, lifecycle::Request::Pause)
            .await?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn resume_run(
        &self,
        request: Request<pb::ResumeRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        let run = self
            .runs
            .control(&caller, id, lifecycle::Request::Resume)
            .await?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        let run = self
            .runs
            .control(&caller, id, lifecycle::Request::Cancel)
            .await?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn delete_run(
        &self,
        request: Request<pb::DeleteRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let id = parse_id("id", &request.into_inner().id)?;
        audit.set(id);
        Ok(Response::new(run_to_proto(
            self.runs.delete(&caller, id).await?,
        )))
    }

    async fn get_run_monitoring(
        &self,
        request: Request<pb::GetRunMonitoringRequest>,
    ) -> Result<Response<pb::RunMonitoring>, Status> {
        let caller = caller(&request)?;
        let id = parse_id("id", &request.into_inner().id)?;
        let monitoring = self.runs.monitoring(&caller, id).await?;
        Ok(Response::new(monitoring_to_proto(monitoring)))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = caller(&request)?;
        let nodes = self.runs.nodes(&caller).await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_to_proto).collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let name = request.into_inner().name;
        audit.set(&name);
        let node = self.runs.set_draining(&caller, &name, true).await?;
        Ok(Response::new(node_to_proto(node)))
    }

    async fn undrain_node(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let name = request.into_inner().name;
        audit.set(&name);
        let node = self.runs.set_draining(&caller, &name, false).await?;
        Ok(Response::new(node_to_proto(node)))
    }
}
