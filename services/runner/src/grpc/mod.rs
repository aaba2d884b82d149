//! gRPC edge of the runner. Handlers stay thin: convert the request, call one use case,
//! convert the answer.

mod convert;

use std::{path::PathBuf, pin::Pin, time::Duration};

use crate::executor::Executor;

use pirus_db::listen::Notice;
use pirus_proto::runner::v1::{self as pb, runner_service_server::RunnerService};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use convert::{event_to_proto, node_to_proto, parse_id, run_to_proto};

use crate::{
    domain::{Error, NewRun, Requested, RunFilter, RunStatus},
    executor::{Catalogue, container_name},
    store::{Desired, EVENTS_CHANNEL, Store},
    submit,
};

pub struct Runner {
    pub store: Store,
    pub notices: broadcast::Sender<Notice>,
    pub node: String,
    pub executor: Executor,
    pub databases_dir: Option<PathBuf>,
    pub catalogue: Catalogue,
    pub lxd: pirus_lxd::Client,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const LOG_CHUNK: usize = 64 << 10;
/// Bytes of a live log read per poll at most.
const LIVE_READ: u64 = 16 << 20;

#[tonic::async_trait]
impl RunnerService for Runner {
    async fn submit_run(
        &self,
        request: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
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
        };
        let run = submit::submit(&self.store, self.databases_dir.as_deref(), new).await?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(run_to_proto(self.store.get_run(id).await?)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = request.into_inner();
        let page = convert::page(r.page_size, &r.page_token)?;
        let filter = RunFilter {
            status: convert::status_from_proto(r.status)?,
            pipeline_id: match r.pipeline_id.as_str() {
                "" => None,
                id => Some(parse_id("pipeline_id", id)?),
            },
            node: (!r.node.is_empty()).then_some(r.node),
        };
        let runs = self.store.list_runs(&filter, page).await?;
        let next_page_token = convert::next_page_token(page, runs.last().map(|r| r.id), runs.len());
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
        let r = request.into_inner();
        let id = parse_id("run_id", &r.run_id)?;
        if r.after_seq < 0 {
            return Err(Error::invalid("after_seq", "must not be negative").into());
        }
        self.store.get_run(id).await?;
        // Subscribed before the first read: nothing committed after it can be missed.
        let notices = self.notices.subscribe();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(watch(self.store.clone(), id, r.after_seq, notices, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type StreamRunLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_run_logs(
        &self,
        request: Request<pb::StreamRunLogsRequest>,
    ) -> Result<Response<Self::StreamRunLogsStream>, Status> {
        let r = request.into_inner();
        let id = parse_id("run_id", &r.run_id)?;
        let file = match r.stream.as_str() {
            "stdout" => "out.log",
            "stderr" => "err.log",
            other => {
                return Err(
                    Error::invalid("stream", format!("'{other}' is not stdout or stderr")).into(),
                );
            }
        };
        if r.offset < 0 {
            return Err(Error::invalid("offset", "must not be negative").into());
        }
        self.store.get_run(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let logs = Logs {
            store: self.store.clone(),
            node: self.node.clone(),
            executor: self.executor.clone(),
            catalogue: self.catalogue.clone(),
        };
        tokio::spawn(logs.stream(id, r.stream, file, r.offset as u64, r.follow, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_run(
        &self,
        request: Request<pb::PauseRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(run_to_proto(
            self.store.request(id, Desired::Pause).await?,
        )))
    }

    async fn resume_run(
        &self,
        request: Request<pb::ResumeRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(run_to_proto(
            self.store.request(id, Desired::Running).await?,
        )))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        Ok(Response::new(run_to_proto(
            self.store.request(id, Desired::Canceled).await?,
        )))
    }

    async fn delete_run(
        &self,
        request: Request<pb::DeleteRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let (run, files) = self.store.delete_run(id).await?;
        for file in files {
            self.catalogue.delete(file).await?;
        }
        Ok(Response::new(run_to_proto(run)))
    }

    async fn get_run_monitoring(
        &self,
        request: Request<pb::GetRunMonitoringRequest>,
    ) -> Result<Response<pb::RunMonitoring>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let run = self.store.get_run(id).await?;
        if run.status.is_terminal() || run.status == RunStatus::Waiting {
            return Err(Error::FailedPrecondition(format!(
                "run {id} has no container (it is {})",
                run.status.as_str()
            ))
            .into());
        }
        if let Some(owner) = run.node.as_deref().filter(|owner| *owner != self.node) {
            // Live figures come from the owner's LXD: ask the owner.
            let address = self.store.node(owner).await?.address;
            let endpoint = if address.starts_with("http") {
                address
            } else {
                format!("http://{address}")
            };
            let mut client = pb::runner_service_client::RunnerServiceClient::connect(endpoint)
                .await
                .map_err(|e| Status::unavailable(format!("node {owner} is unreachable: {e}")))?;
            return client
                .get_run_monitoring(pb::GetRunMonitoringRequest { id: id.to_string() })
                .await;
        }
        let state = self
            .lxd
            .state(&container_name(run.id, run.attempt))
            .await
            .map_err(|e| Error::Unavailable(format!("LXD: {e}")))?;
        Ok(Response::new(pb::RunMonitoring {
            cpu_seconds: state.cpu_seconds,
            memory_bytes: state.memory_bytes,
            memory_peak_bytes: state.memory_peak_bytes,
            processes: state.processes,
            container_status: state.status,
            disk_bytes: state.disk_bytes,
            at: Some(convert::timestamp(chrono::Utc::now())),
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.store.nodes().await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_to_proto).collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(node_to_proto(
            self.store.set_draining(&name, true).await?,
        )))
    }

    async fn undrain_node(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(node_to_proto(
            self.store.set_draining(&name, false).await?,
        )))
    }
}

/// Sends every event after `after` and then live ones, until the terminal event. A
/// notification only says "look again": the table is re-read each time, so a reconnection of
/// the listener (or a lagging receiver) loses nothing, and nothing is sent twice.
async fn watch(
    store: Store,
    id: Uuid,
    mut after: i64,
    mut notices: broadcast::Receiver<Notice>,
    tx: mpsc::Sender<Result<pb::RunEvent, Status>>,
) {
    let payload = id.to_string();
    loop {
        match store.events_after(id, after).await {
            Ok(events) => {
                for event in events {
                    after = event.seq;
                    let terminal = event.status.is_terminal();
                    if tx.send(Ok(event_to_proto(event))).await.is_err() || terminal {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "watch could not read events; retrying");
            }
        }
        // Wait for a hint about this run; re-read at least every 5 s regardless.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                () = tx.closed() => return,
                notice = notices.recv() => match notice {
                    Ok(Notice::Notification { channel, payload: p }) if channel == EVENTS_CHANNEL && p == payload => break,
                    Ok(Notice::Notification { .. }) => {}
                    Ok(Notice::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

struct Logs {
    store: Store,
    node: String,
    executor: Executor,
    catalogue: Catalogue,
}

impl Logs {
    /// A log from `offset`: the live file while the run is alive here, the catalogue's copy
    /// once it ended, the owning node's stream while it is alive elsewhere.
    async fn stream(
        self,
        id: Uuid,
        stream: String,
        file: &'static str,
        mut offset: u64,
        follow: bool,
        tx: mpsc::Sender<Result<pb::LogChunk, Status>>,
    ) {
        let send_error = |e: Error| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Err(e.into())).await;
            }
        };
        loop {
            let run = match self.store.get_run(id).await {
                Ok(run) => run,
                Err(e) => return send_error(e).await,
            };
            if run.status.is_terminal() {
                match self.store.run_file(id, "log", file).await {
                    Ok(Some(log)) => {
                        if let Err(e) = self.catalogue.read(log, offset, &tx).await {
                            send_error(e).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => send_error(e).await,
                }
                return;
            }
            let here = run.node.as_deref() == Some(self.node.as_str());
            if let (false, Some(owner)) = (here, &run.node) {
                return forward(&self.store, owner, id, &stream, offset, follow, &tx).await;
            }
            if here {
                // Through the run's workspace: a log the container swapped for a link, a FIFO
                // or a device is refused, never followed or read.
                match self.executor.live_log(&run, file, offset, LIVE_READ).await {
                    Ok(data) if !data.is_empty() => {
                        for chunk in data.chunks(LOG_CHUNK) {
                            let message = pb::LogChunk {
                                offset: offset as i64,
                                data: chunk.to_vec().into(),
                            };
                            offset += chunk.len() as u64;
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !follow {
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// Relays the owning node's log stream.
async fn forward(
    store: &Store,
    owner: &str,
    id: Uuid,
    stream: &str,
    offset: u64,
    follow: bool,
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) {
    let address = match store.node(owner).await {
        Ok(node) => node.address,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let endpoint = if address.starts_with("http") {
        address
    } else {
        format!("http://{address}")
    };
    let client = pb::runner_service_client::RunnerServiceClient::connect(endpoint).await;
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "node {owner} is unreachable: {e}"
                ))))
                .await;
            return;
        }
    };
    let request = pb::StreamRunLogsRequest {
        run_id: id.to_string(),
        stream: stream.to_owned(),
        offset: offset as i64,
        follow,
    };
    match client.stream_run_logs(request).await {
        Ok(response) => {
            let mut remote = response.into_inner();
            while let Some(item) = remote.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
        Err(status) => {
            let _ = tx.send(Err(status)).await;
        }
    }
}
