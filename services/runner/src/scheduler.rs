//! Claims runs for this node: woken by a NOTIFY of a new run, by a finished run freeing a slot,
//! by a reconnection of the listener (notifications may have been lost), and every few seconds
//! regardless. It claims nothing while LXD is unreachable or the node drains.

use std::{sync::Arc, time::Duration};

use pirus_db::listen::Notice;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    executor::Executor,
    limits::Limits,
    node::NodeState,
    store::{RUNS_CHANNEL, Stores},
};

pub struct Scheduler {
    pub stores: Stores,
    pub executor: Executor,
    pub node: String,
    pub max_runs: u32,
    /// The largest run this node takes.
    pub largest: Limits,
    pub state: NodeState,
}

impl Scheduler {
    pub async fn run(self, mut notices: broadcast::Receiver<Notice>, shutdown: CancellationToken) {
        let freed = Arc::new(Notify::new());
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
            let freed = freed.clone();
            tokio::spawn(async move {
                executor.resume(run).await;
                freed.notify_one();
            });
        }
        loop {
            self.claim_all(&freed).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = freed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                notice = notices.recv() => match notice {
                    Ok(Notice::Notification { channel, .. }) if channel != RUNS_CHANNEL => continue,
                    // After a reconnection to the database, orphans are looked for again.
                    Ok(Notice::Reconnected) => {
                        if let Err(e) = self.executor.sweep_orphans().await {
                            tracing::warn!(error = %e, "orphan sweep after a reconnection failed");
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    async fn claim_all(&self, freed: &Arc<Notify>) {
        if !self.state.lxd_up() {
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
                .claim(&self.node, self.max_runs, &self.largest)
                .await;
            let claimed = match claimed {
                Ok(Some(id)) => self.stores.runs.get(id).await.map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match claimed {
                Ok(Some(run)) => {
                    let executor = self.executor.clone();
                    let freed = freed.clone();
                    tokio::spawn(async move {
                        executor.execute(run).await;
                        freed.notify_one();
                    });
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
