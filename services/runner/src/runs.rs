//! The runner's use cases behind RunnerService, apart from submission (`submit.rs`): reading
//! and following runs, their logs and live figures (from this node, the catalogue, or the
//! owning node), control requests, deletion, and the nodes. gRPC handlers convert and call
//! these; nothing here knows of gRPC but the peer adapter.

use std::{path::PathBuf, time::Duration};

use pirus_auth::{
    Caller,
    policy::{self, Action},
};
use pirus_db::views::RunFileKind;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    access,
    catalogue::Catalogue,
    domain::{
        Error, LogChunk, LogStream, Monitoring, NewRun, Node, Page, Result, Run, RunEvent,
        RunFilter, RunStatus,
    },
    executor::{Executor, container_name},
    follow::logs::Tailed,
    lifecycle::Request,
    peers::Peers,
    store::Stores,
    submit,
};

/// An offset past the end of an ended run's log is OUT_OF_RANGE, naming the log's size: the
/// log will not grow, and a client must not retry it (UNAVAILABLE would say to).
fn past_the_end(offset: u64, size: u64) -> Result<()> {
    if offset > size {
        return Err(Error::OutOfRange(format!(
            "offset {offset} is past the end of the run's log ({size} bytes)"
        )));
    }
    Ok(())
}

/// A log chunk streamed to a client at most.
const LOG_CHUNK: usize = 64 << 10;
/// Bytes of a live log read per poll at most.
const LIVE_READ: u64 = 16 << 20;
/// How often a followed live log is read again.
const LOG_POLL: Duration = Duration::from_millis(200);
/// How often a watch re-reads a run's events with no hint.

#[derive(Clone)]
pub(crate) struct Runs {
    pub stores: Stores,
    /// The shared readers of runs' events, for WatchRun.
    pub feeds: crate::follow::events::Feeds,
    /// The shared tails of running runs' logs, for StreamRunLogs.
    pub tails: crate::follow::logs::Tails,
    pub node: String,
    pub executor: Executor,
    pub catalogue: Catalogue,
    pub peers: Peers,
    pub lxd: pirus_lxd::Client,
    pub databases_dir: Option<PathBuf>,
}

impl Runs {
    /// Queues a run for the caller, who owns it; a user's inputs must be its own files.
    pub(crate) async fn submit(&self, caller: &Caller, mut new: NewRun) -> Result<Run> {
        access::require(caller, Action::SubmitRuns)?;
        new.owner = Some(caller.principal);
        let inputs_of = policy::scope(caller).owner_filter();
        let run =
            submit::submit(&self.stores, self.databases_dir.as_deref(), new, inputs_of).await?;
        self.explained(run).await
    }

    pub(crate) async fn get(&self, caller: &Caller, id: Uuid) -> Result<Run> {
        let run = access::allowed(caller, Action::ReadRuns, self.stores.runs.get(id)).await?;
        self.explained(run).await
    }

    /// `run`, saying why it waits if it does.
    async fn explained(&self, run: Run) -> Result<Run> {
        let mut runs = self.explain(vec![run]).await?;
        runs.pop()
            .ok_or_else(|| Error::internal("a run lost while saying why it waits"))
    }

    /// `runs`, each WAITING one saying why it waits (`crate::pending`), from the nodes as they
    /// are now and its owner's usage: three reads for any number of runs, none when none waits.
    async fn explain(&self, mut runs: Vec<Run>) -> Result<Vec<Run>> {
        let waiting: Vec<Uuid> = runs
            .iter()
            .filter(|r| r.status == RunStatus::Waiting)
            .map(|r| r.id)
            .collect();
        if waiting.is_empty() {
            return Ok(runs);
        }
        let mut owners: Vec<Uuid> = runs.iter().filter_map(|r| r.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        let nodes = self.stores.nodes.list().await?;
        let (not_ready, rooms) = self.stores.queue.waiting_facts(&waiting, &owners).await?;
        for run in runs.iter_mut().filter(|r| r.status == RunStatus::Waiting) {
            let owner = run.owner.and_then(|o| rooms.get(&o));
            run.pending = Some(crate::pending::why(
                &run.requested,
                &run.node_selector,
                !not_ready.contains(&run.id),
                &nodes,
                owner,
            ));
        }
        Ok(runs)
    }

    /// Runs within the caller's scope.
    pub(crate) async fn list(
        &self,
        caller: &Caller,
        mut filter: RunFilter,
        page: Page,
    ) -> Result<Vec<Run>> {
        filter.owner = access::list_owner(caller)?;
        if let Some(name) = &filter.owner_name {
            pirus_auth::policy::scope(caller).may_list_owner(caller, name)?;
            match pirus_auth::principals::id_of(self.stores.db(), name).await? {
                Some(id) => filter.owner = Some(id),
                None => return Ok(Vec::new()),
            }
        }
        let runs = self.stores.runs.list(&filter, page).await?;
        self.explain(runs).await
    }

    /// Every event of a run after `after`, then live ones, until the terminal event: through
    /// the run's one shared reader ([`crate::follow::events`]), so watchers cost one query each to join
    /// and nothing per change beyond the reader's.
    pub(crate) async fn watch(
        &self,
        caller: &Caller,
        id: Uuid,
        after: i64,
    ) -> Result<mpsc::Receiver<Result<RunEvent>>> {
        // A run that had ended before this read has all its events written: one read answers
        // the rest (none when `after` is at or past its terminal event), then the stream ends.
        let ended = access::allowed(caller, Action::ReadRuns, self.stores.runs.get(id))
            .await?
            .status
            .is_terminal();
        let (tx, rx) = mpsc::channel(64);
        let feeds = self.feeds.clone();
        tokio::spawn(async move { feeds.watch(id, after, ended, tx).await });
        Ok(rx)
    }

    /// A log from `offset`: the live file while the run is alive here, the owning node's
    /// stream while it is alive elsewhere, the catalogue's copy once it ended. With `follow`,
    /// until the run ends.
    pub(crate) async fn logs(
        &self,
        caller: &Caller,
        id: Uuid,
        stream: LogStream,
        offset: u64,
        follow: bool,
    ) -> Result<mpsc::Receiver<Result<LogChunk>>> {
        let run = access::live_readable(caller, self.stores.runs.get(id)).await?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let credential = caller.credential.clone();
        tokio::spawn(async move {
            let streamed = this
                .stream_log(run, stream, offset, follow, &credential, &tx)
                .await;
            if let Err(e) = streamed {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// Streams one log of `run` (as read when the call was authorized; read again each time
    /// the run may have moved on).
    async fn stream_log(
        &self,
        run: Run,
        stream: LogStream,
        mut offset: u64,
        follow: bool,
        credential: &pirus_auth::Credential,
        tx: &mpsc::Sender<Result<LogChunk>>,
    ) -> Result<()> {
        let id = run.id;
        let mut known = Some(run);
        loop {
            let run = match known.take() {
                Some(run) => run,
                None => self.stores.runs.get(id).await?,
            };
            if run.status.is_terminal() {
                return self.send_ended(&run, stream, offset, credential, tx).await;
            }
            match run.node.as_deref() {
                Some(owner) if owner != self.node => {
                    return self.peers.logs(owner, id, stream, offset, follow, tx).await;
                }
                Some(_) => {
                    // Live, here: what this follower missed from the file, then the run's
                    // shared tail ([`crate::follow::logs`]) until the run ends or leaves this node.
                    let mut tail = follow.then(|| self.tails.subscribe(id, stream));
                    if !self.send_from_file(&run, stream, &mut offset, tx).await? {
                        return Ok(());
                    }
                    let Some(tail) = tail.as_mut() else {
                        return Ok(());
                    };
                    if !self
                        .follow_tail(&run, stream, &mut offset, tail, tx)
                        .await?
                    {
                        return Ok(());
                    }
                }
                None => {
                    // Not claimed yet: nothing to read; look again shortly.
                    if !follow {
                        return Ok(());
                    }
                    tokio::select! {
                        () = tx.closed() => return Ok(()),
                        () = tokio::time::sleep(LOG_POLL) => {}
                    }
                }
            }
        }
    }

    /// The rest of an ended run's log from `offset`: from its workspace while that is still on
    /// this node, else from the catalogue's copy.
    async fn send_ended(
        &self,
        run: &Run,
        stream: LogStream,
        mut offset: u64,
        credential: &pirus_auth::Credential,
        tx: &mpsc::Sender<Result<LogChunk>>,
    ) -> Result<()> {
        // While the run's workspace is still on this node, the rest of the log comes
        // from it rather than from the catalogue's copy of the same file (a thousand
        // followers of a run that just ended would otherwise all read that at once).
        if run.node.as_deref() == Some(self.node.as_str())
            && let Ok(size) = self.executor.live_log_size(run, stream.file()).await
        {
            past_the_end(offset, size.unwrap_or(0))?;
            if !self.send_from_file(run, stream, &mut offset, tx).await? {
                return Ok(());
            }
            // The folders go just after the end is recorded: when they went during
            // this read, the rest comes from the catalogue's copy, whole by then.
            if self
                .executor
                .live_log_size(run, stream.file())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        let log = self
            .stores
            .runs
            .file(run.id, RunFileKind::Log, stream.file());
        // A follower that has the whole log already (the usual case for one that
        // followed the run to its end) is done without a read: a thousand of them
        // would otherwise all call the catalogue at once, beyond its reader bound.
        match log.await? {
            Some((file, size)) if offset < size => {
                // As the caller: the catalogue checks the log is theirs to read.
                self.catalogue.read(file, offset, credential, tx).await?;
            }
            Some((_, size)) => past_the_end(offset, size)?,
            None => {}
        }
        Ok(())
    }

    /// Sends a live log's bytes from `offset` to its current end, through the run's
    /// workspace (a log the container swapped for a link, a FIFO or a device is refused, never
    /// followed or read); false when the follower went away.
    async fn send_from_file(
        &self,
        run: &Run,
        stream: LogStream,
        offset: &mut u64,
        tx: &mpsc::Sender<Result<LogChunk>>,
    ) -> Result<bool> {
        loop {
            let Ok(data) = self
                .executor
                .live_log(run, stream.file(), *offset, LIVE_READ)
                .await
            else {
                return Ok(true);
            };
            if data.is_empty() {
                return Ok(true);
            }
            if !send_log(tx, offset, &data).await {
                return Ok(false);
            }
        }
    }

    /// Follows a run's shared tail; true when the tail ended (the run ended or moved: look at
    /// it again), false when the follower went away.
    async fn follow_tail(
        &self,
        run: &Run,
        stream: LogStream,
        offset: &mut u64,
        tail: &mut tokio::sync::broadcast::Receiver<Tailed>,
        tx: &mpsc::Sender<Result<LogChunk>>,
    ) -> Result<bool> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let piece = tokio::select! {
                () = tx.closed() => return Ok(false),
                piece = tail.recv() => piece,
            };
            match piece {
                Ok(Tailed::Piece { offset: at, data }) => {
                    if at > *offset && !self.send_from_file(run, stream, offset, tx).await? {
                        return Ok(false);
                    }
                    let end = at + data.len() as u64;
                    if end > *offset && at <= *offset {
                        let skip = (*offset - at) as usize;
                        if !send_log(tx, offset, &data[skip..]).await {
                            return Ok(false);
                        }
                    }
                }
                Ok(Tailed::Ended) | Err(RecvError::Closed) => return Ok(true),
                Err(RecvError::Lagged(_)) => {
                    if !self.send_from_file(run, stream, offset, tx).await? {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Pause, resume or cancel, as the lifecycle allows.
    pub(crate) async fn control(&self, caller: &Caller, id: Uuid, request: Request) -> Result<Run> {
        access::allowed(caller, Action::ControlRuns, self.stores.runs.get(id)).await?;
        self.stores.runs.request(id, request).await
    }

    /// Removes a run that ended with its output and log files (deleted in the catalogue as
    /// the caller, whose files they are).
    pub(crate) async fn delete(&self, caller: &Caller, id: Uuid) -> Result<Run> {
        let run = access::allowed(caller, Action::DeleteRuns, self.stores.runs.get(id)).await?;
        crate::lifecycle::request(run.status, Request::Delete)
            .map_err(|e| Error::FailedPrecondition(format!("run {id}: {e}")))?;
        // Its files first, the run last: when the catalogue fails, the run is still there and
        // the same call, retried, completes (a file already gone counts as deleted). Files of
        // an ended run no longer change; the store checks the lifecycle again as it deletes.
        for file in run.output_file_ids.iter().chain(&run.log_file_ids) {
            self.catalogue.delete(*file, &caller.credential).await?;
        }
        let (run, _) = self.stores.runs.delete(id).await?;
        Ok(run)
    }

    /// Live figures of a run's container, from its node's LXD.
    pub(crate) async fn monitoring(&self, caller: &Caller, id: Uuid) -> Result<Monitoring> {
        let run = access::live_readable(caller, self.stores.runs.get(id)).await?;
        if run.status.is_terminal() || run.status == RunStatus::Waiting {
            return Err(Error::FailedPrecondition(format!(
                "run {id} has no container (it is {})",
                run.status.as_str()
            )));
        }
        match run.node.as_deref() {
            Some(owner) if owner != self.node => self.peers.monitoring(owner, id).await,
            _ => {
                let state = self
                    .lxd
                    .state(&container_name(run.id, run.attempt))
                    .await
                    .map_err(|e| {
                        tracing::warn!(run = %id, error = %e, "LXD did not answer");
                        Error::Unavailable("the node's LXD did not answer; retry later".into())
                    })?;
                Ok(Monitoring {
                    cpu_seconds: state.cpu_seconds,
                    memory_bytes: state.memory_bytes,
                    memory_peak_bytes: state.memory_peak_bytes,
                    processes: state.processes,
                    container_status: state.status,
                    disk_bytes: state.disk_bytes,
                    at: chrono::Utc::now(),
                })
            }
        }
    }

    pub(crate) async fn nodes(&self, caller: &Caller) -> Result<Vec<Node>> {
        access::require(caller, Action::ReadNodes)?;
        self.stores.nodes.list().await
    }

    pub(crate) async fn set_draining(
        &self,
        caller: &Caller,
        name: &str,
        draining: bool,
    ) -> Result<Node> {
        access::require(caller, Action::DrainNodes)?;
        self.stores.nodes.set_draining(name, draining).await
    }
}

/// Sends `data` (at `offset`) in chunks, moving `offset`; false when the follower went away.
async fn send_log(tx: &mpsc::Sender<Result<LogChunk>>, offset: &mut u64, data: &[u8]) -> bool {
    for piece in data.chunks(LOG_CHUNK) {
        let chunk = LogChunk {
            offset: *offset,
            data: bytes::Bytes::copy_from_slice(piece),
        };
        *offset += piece.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return false;
        }
    }
    true
}
