//! This runner's node: registered at start (taking over a node of the same name), its lease
//! renewed every third of `--node-lease`, LXD's availability reported with it.
//!
//! The lease is renewed on a fixed schedule that nothing else waits in: LXD is probed, and
//! lost nodes looked for, in a loop of their own, and each renewal reports the latest probe.
//! (They once shared one loop, so an LXD slow to answer while it started containers, up to
//! the probe's 5 s, delayed the renewal past a 2 s lease and the node was recorded offline.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::Result,
    limits::Limits,
    store::{NodeRegistration, NodeStore},
};

/// What the rest of the runner reads of the node's state.
#[derive(Clone, Default)]
pub struct NodeState {
    lxd_up: Arc<AtomicBool>,
}

impl NodeState {
    pub fn lxd_up(&self) -> bool {
        self.lxd_up.load(Ordering::Relaxed)
    }
}

pub struct Node {
    pub nodes: NodeStore,
    pub lxd: pirus_lxd::Client,
    pub name: String,
    pub address: String,
    pub max_runs: u32,
    /// The largest run this node takes, registered with it.
    pub largest: Limits,
    pub lease: Duration,
    pub lxd_gauge: Gauge,
}

impl Node {
    async fn lxd_version(&self, state: &NodeState, last: &mut Option<bool>) -> Option<String> {
        let probe = tokio::time::timeout(Duration::from_secs(5), self.lxd.server_info()).await;
        let version = match probe {
            Ok(Ok(info)) => Some(info.server_version),
            Ok(Err(e)) => {
                if *last != Some(false) {
                    tracing::warn!(error = %e, "LXD unreachable; no runs are claimed until it answers");
                }
                None
            }
            Err(_) => {
                if *last != Some(false) {
                    tracing::warn!(
                        "LXD did not answer within 5s; no runs are claimed until it does"
                    );
                }
                None
            }
        };
        if version.is_some() && *last != Some(true) {
            tracing::info!(
                version = version.as_deref().unwrap_or_default(),
                "LXD reachable"
            );
        }
        *last = Some(version.is_some());
        state.lxd_up.store(version.is_some(), Ordering::Relaxed);
        self.lxd_gauge.set(i64::from(version.is_some()));
        version
    }

    /// Registers the node, then renews its lease until shutdown.
    pub async fn run(
        self,
        state: NodeState,
        registered: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let incarnation = Uuid::now_v7();
        let mut last = None;
        let version = self.lxd_version(&state, &mut last).await;
        self.nodes
            .register(&NodeRegistration {
                name: &self.name,
                address: &self.address,
                max_runs: self.max_runs,
                largest: &self.largest,
                lease_seconds: self.lease.as_secs().max(1),
                incarnation,
                lxd_version: version.clone(),
            })
            .await?;
        tracing::info!(node = %self.name, address = %self.address, "node registered");
        let _ = registered.send(());
        let period = (self.lease / 3).max(Duration::from_millis(500));
        let (probed, latest) = tokio::sync::watch::channel(version);
        let renew = async {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let version = latest.borrow().clone();
                match self.nodes.heartbeat(&self.name, incarnation, version).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(node = %self.name, "another runner took this node over")
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                }
            }
        };
        let watch = async {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                probed.send_replace(self.lxd_version(&state, &mut last).await);
                // Any runner notices a lost node; the first to lock its row settles its runs.
                match self.nodes.expire().await {
                    Ok(nodes) => {
                        for node in nodes {
                            tracing::warn!(%node, "node lost: recorded offline, its runs requeued or ended");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "looking for lost nodes failed; retrying")
                    }
                }
            }
        };
        tokio::join!(renew, watch);
        Ok(())
    }
}
