//! Claims runs for this node: woken by a NOTIFY of a new run, by a finished run freeing a slot,
//! by a reconnection of the listener (notifications may have been lost), and every few seconds
//! regardless. It claims nothing while LXD is unreachable or the node drains.
//!
//! The node's row lock and its count of active runs in the database decide a claim; this
//! process's own count of the runs it executes only spares the database the attempt when the
//! node is full (a full node does not query on every new run's hint), and hints that queue up
//! while a claim is under way are taken as one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use pirus_db::listen::Notice;
use tokio::sync::{
    Notify,
    broadcast::{self, error::TryRecvError},
};
use tokio_util::sync::CancellationToken;

use crate::{
    executor::Executor,
    lease::NodeState,
    limits::NodeLimits,
    placement::Placement,
    store::{ClaimBounds, Stores},
};

pub(crate) struct Scheduler {
    pub stores: Stores,
    pub executor: Executor,
    pub node: String,
    pub max_runs: u32,
    /// The largest run this node takes, and what a run that asks for nothing gets.
    pub limits: NodeLimits,
    /// What the node has to give its runs, and its labels.
    pub placement: Placement,
    pub state: NodeState,
}

impl Scheduler {
    pub(crate) async fn run(
        self,
        mut notices: broadcast::Receiver<Notice>,
        shutdown: CancellationToken,
    ) {
        let slots = Slots::default();
        // Take back what an earlier process of this node left, and clean up the rest, before
        // claiming anything new (retried until LXD and the database answer).
        let adopted = loop {
            match self.executor.adopt_at_start().await {
                Ok(runs) => break runs,
                Err(e) => tracing::warn!(error = %e, "start-up reconciliation failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        for run in adopted {
            let executor = self.executor.clone();
            let held = slots.hold();
            tokio::spawn(async move {
                executor.resume(run).await;
                drop(held);
            });
        }
        loop {
            self.claim_all(&slots).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = slots.freed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                notice = notices.recv() => self.take_hints(notice, &mut notices).await,
            }
        }
    }

    /// Takes `first` and every hint queued behind it: the one claim that follows answers them
    /// all (every hint, on any channel, leads to the next claim).
    /// After a reconnection to the database, orphans are looked for again.
    async fn take_hints(
        &self,
        first: Result<Notice, broadcast::error::RecvError>,
        notices: &mut broadcast::Receiver<Notice>,
    ) {
        let mut notice = first.map_err(drop);
        loop {
            if let Ok(Notice::Reconnected) = notice
                && let Err(e) = self.executor.sweep_orphans().await
            {
                tracing::warn!(error = %e, "orphan sweep after a reconnection failed");
            }
            notice = match notices.try_recv() {
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
                next => next.map_err(drop),
            };
        }
    }

    async fn claim_all(&self, slots: &Slots) {
        if !self.state.lxd_up() || slots.held() >= self.max_runs {
            return;
        }
        match self.stores.nodes.is_draining(&self.node).await {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node's state");
                return;
            }
        }
        loop {
            let claimed = self
                .stores
                .queue
                .claim(
                    &self.node,
                    ClaimBounds {
                        max_runs: self.max_runs,
                        limits: &self.limits,
                        placement: &self.placement,
                    },
                )
                .await;
            let claimed = match claimed {
                Ok(Some(id)) => self.stores.runs.get(id).await.map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match claimed {
                Ok(Some(run)) => {
                    let executor = self.executor.clone();
                    let held = slots.hold();
                    tokio::spawn(async move {
                        executor.execute(run).await;
                        drop(held);
                    });
                    if slots.held() >= self.max_runs {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a run failed");
                    return;
                }
            }
        }
    }
}

/// The runs this process executes, and a wake-up when one of them ends. A run holds its slot
/// until its execution returns: after its end is recorded and its folders are removed, so the
/// next run does not land beside a previous one's files.
#[derive(Clone, Default)]
struct Slots {
    held: Arc<AtomicU32>,
    freed: Arc<Notify>,
}

impl Slots {
    fn held(&self) -> u32 {
        self.held.load(Ordering::Acquire)
    }

    /// One more run executing until the returned guard drops.
    fn hold(&self) -> Held {
        self.held.fetch_add(1, Ordering::AcqRel);
        Held(self.clone())
    }
}

struct Held(Slots);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}
