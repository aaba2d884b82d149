//! One tail of a running run's log per process, shared by all its live followers.
//!
//! The tail of a run's stdout (or stderr) reads the log's new bytes every 200 ms through the
//! run's workspace (the one link-refusing path) and looks at the run's status about once a
//! second; it broadcasts what it reads, and ends once the run has ended or left this node, or
//! once no follower is left. A follower reads what it missed from the file itself (from its
//! own offset), then takes the broadcast: a piece past its offset means it fell behind, and it
//! reads the gap from the file; a piece it already has is skipped. So a thousand followers of
//! a run cost one status query a second and one read per poll, not a thousand of each.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{domain::LogStream, executor::Executor, store::RunStore};

/// How often a tail reads its log.
const POLL: Duration = Duration::from_millis(200);
/// Polls between two looks at the run's status.
const STATUS_EVERY: u32 = 5;
/// Bytes one read of a log takes at most.
const READ: u64 = 4 << 20;
/// Pieces a slow follower may be behind before it reads the file again.
const BACKLOG: usize = 64;

/// What a tail broadcasts.
#[derive(Clone, Debug)]
pub(crate) enum Tailed {
    /// Bytes of the log at `offset`.
    Piece { offset: u64, data: Bytes },
    /// The run ended or left this node: followers look at it again.
    Ended,
}

#[derive(Clone)]
pub(crate) struct Tails {
    inner: Arc<Inner>,
}

struct Inner {
    runs: RunStore,
    executor: Executor,
    node: String,
    tails: Mutex<HashMap<(Uuid, LogStream), broadcast::Sender<Tailed>>>,
}

impl Tails {
    pub(crate) fn new(runs: RunStore, executor: Executor, node: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                runs,
                executor,
                node,
                tails: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The live tail of one log of run `id`, starting it if there is none.
    pub(crate) fn subscribe(&self, id: Uuid, stream: LogStream) -> broadcast::Receiver<Tailed> {
        let mut tails = self.inner.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tail) = tails.get(&(id, stream)) {
            return tail.subscribe();
        }
        let (tail, receiver) = broadcast::channel(BACKLOG);
        tails.insert((id, stream), tail.clone());
        tokio::spawn(run_tail(
            std::sync::Arc::clone(&self.inner),
            id,
            stream,
            tail,
        ));
        receiver
    }
}

async fn run_tail(inner: Arc<Inner>, id: Uuid, stream: LogStream, tail: broadcast::Sender<Tailed>) {
    // Followers read the history themselves: the tail starts where the log ends now.
    let mut position = None;
    let mut polls = 0;
    let mut run = inner.runs.get(id).await.ok();
    while let Some(current) = run.as_ref() {
        let here = current.node.as_deref() == Some(inner.node.as_str());
        match position {
            None if here && !current.status.is_terminal() => {
                let size = inner.executor.live_log_size(current, stream.file()).await;
                position = size.ok().map(|size| size.unwrap_or(0));
            }
            None => break,
            // Read once more after the run ended: what it wrote last goes out too.
            Some(at) => {
                let read = inner.executor.live_log(current, stream.file(), at, READ);
                if let Ok(data) = read.await
                    && !data.is_empty()
                {
                    position = Some(at + data.len() as u64);
                    let _ = tail.send(Tailed::Piece {
                        offset: at,
                        data: data.into(),
                    });
                }
            }
        }
        if current.status.is_terminal() || !here {
            break;
        }
        tokio::time::sleep(POLL).await;
        if tail.receiver_count() == 0 {
            break;
        }
        polls += 1;
        if polls % STATUS_EVERY == 0 {
            run = inner.runs.get(id).await.ok().or(run);
        }
    }
    let _ = tail.send(Tailed::Ended);
    let mut tails = inner.tails.lock().unwrap_or_else(|e| e.into_inner());
    if tails
        .get(&(id, stream))
        .is_some_and(|t| t.same_channel(&tail))
    {
        tails.remove(&(id, stream));
    }
}
