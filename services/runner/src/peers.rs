//! Other runners, for reads that only a run's owning node can answer (live logs, monitoring):
//! the owner is found at its registered address and asked over gRPC. A forwarded call never
//! goes to this node itself (it would loop), connecting has a deadline, and the call carries
//! this runner's own token (the peer lets runners make forwarded reads; this node checked the
//! client).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use pirus_auth::client::OwnCredential;
use pirus_proto::runner::v1::{self as pb, runner_service_client::RunnerServiceClient};
use pirus_server::tls::ClientTls;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::{
    domain::{Error, LogChunk, LogStream, Monitoring, Result},
    store::NodeStore,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take to answer a forwarded call (for a log stream: to start it).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `call`, or UNAVAILABLE naming the peer once [`CALL_TIMEOUT`] has passed.
async fn answered<T>(
    owner: &str,
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => answer.map_err(|s| relayed(owner, s)),
        Err(_) => Err(unavailable(owner, "no answer in time")),
    }
}

#[derive(Clone)]
pub(crate) struct Peers {
    nodes: NodeStore,
    /// This node: never a peer.
    node: String,
    credential: OwnCredential,
    tls: ClientTls,
    /// One channel per peer address, kept: a forwarded read reuses its connection (and TLS
    /// session) rather than opening one per call.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Peer addresses whose channels are kept at most (the cache is emptied beyond).
const MAX_CHANNELS: usize = 256;

fn unavailable(owner: &str, e: impl std::fmt::Display) -> Error {
    tracing::warn!(node = %owner, error = %e, "a peer runner is unreachable");
    Error::Unavailable(format!(
        "node {owner}, which runs it, is unreachable; retry later"
    ))
}

impl Peers {
    pub(crate) fn new(
        nodes: NodeStore,
        node: String,
        credential: OwnCredential,
        tls: ClientTls,
    ) -> Self {
        Self {
            nodes,
            node,
            credential,
            tls,
            channels: Arc::default(),
        }
    }

    async fn client(&self, owner: &str) -> Result<RunnerServiceClient<Channel>> {
        if owner == self.node {
            return Err(Error::internal(
                "a forwarded call would loop back to this node",
            ));
        }
        let address = self.nodes.get(owner).await?.address;
        let url = if address.starts_with("http") {
            address
        } else {
            format!("http://{address}")
        };
        let mut channels = self.channels.lock().expect("peer channels");
        if let Some(channel) = channels.get(&url) {
            return Ok(RunnerServiceClient::new(channel.clone()));
        }
        // Connects on first use, within CONNECT_TIMEOUT; a failure answers that call
        // UNAVAILABLE, and the channel connects again on the next.
        let channel = self
            .tls
            .endpoint(&url)
            .map_err(|e| unavailable(owner, e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert(url, channel.clone());
        Ok(RunnerServiceClient::new(channel))
    }

    /// Relays the owner's log stream of a run into `tx`.
    pub(crate) async fn logs(
        &self,
        owner: &str,
        run: Uuid,
        stream: LogStream,
        offset: u64,
        follow: bool,
        tx: &mpsc::Sender<Result<LogChunk>>,
    ) -> Result<()> {
        let mut client = self.client(owner).await?;
        let request = pb::StreamRunLogsRequest {
            run_id: run.to_string(),
            stream: stream.as_str().to_owned(),
            offset: offset as i64,
            follow,
        };
        let mut remote = answered(
            owner,
            client.stream_run_logs(self.credential.get().request(request)),
        )
        .await?
        .into_inner();
        while let Some(item) = remote.next().await {
            let item = item
                .map(|c| LogChunk {
                    offset: c.offset as u64,
                    data: c.data,
                })
                .map_err(|s| relayed(owner, s));
            if tx.send(item).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// The owner's live figures of a run.
    pub(crate) async fn monitoring(&self, owner: &str, run: Uuid) -> Result<Monitoring> {
        let mut client = self.client(owner).await?;
        let request = self.credential.get().request(pb::GetRunMonitoringRequest {
            id: run.to_string(),
        });
        let m = answered(owner, client.get_run_monitoring(request))
            .await?
            .into_inner();
        Ok(Monitoring {
            cpu_seconds: m.cpu_seconds,
            memory_bytes: m.memory_bytes,
            memory_peak_bytes: m.memory_peak_bytes,
            processes: m.processes,
            container_status: m.container_status,
            disk_bytes: m.disk_bytes,
            at: m
                .at
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
                .unwrap_or_else(chrono::Utc::now),
        })
    }
}

/// A peer's error, passed on with its meaning kept.
fn relayed(owner: &str, s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::NotFound => Error::NotFound(s.message().to_owned()),
        tonic::Code::InvalidArgument => Error::invalid("request", s.message()),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(s.message().to_owned()),
        tonic::Code::OutOfRange => Error::OutOfRange(s.message().to_owned()),
        _ => unavailable(owner, s.message()),
    }
}
