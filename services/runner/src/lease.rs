//! This runner's node: registered at start (taking over a node of the same name), its lease
//! renewed every third of `--node-lease`, LXD's availability reported with it.
//!
//! The lease is renewed on a fixed schedule that nothing else waits in: from a thread of its
//! own, on a single-threaded runtime of its own, over a database connection of its own. LXD is
//! probed, and lost nodes looked for, in a loop on the main runtime, and each renewal reports
//! the latest probe. (They once shared one loop, so an LXD slow to answer while it started
//! containers, up to the probe's 5 s, delayed the renewal past a 2 s lease and the node was
//! recorded offline; and a renewal on the main runtime and the work pool waited behind
//! whatever saturated them, such as thousands of log followers ending at once.)

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
    domain::{Error, Result},
    limits::Limits,
    store::{NodeRegistration, NodeStore},
};

/// What the rest of the runner reads of the node's state.
#[derive(Clone, Default)]
pub(crate) struct NodeState {
    lxd_up: Arc<AtomicBool>,
}

impl NodeState {
    pub(crate) fn lxd_up(&self) -> bool {
        self.lxd_up.load(Ordering::Relaxed)
    }
}

pub(crate) struct Node {
    pub nodes: NodeStore,
    pub lxd: pirus_lxd::Client,
    pub name: String,
    pub address: String,
    pub max_runs: u32,
    /// The largest run this node takes, registered with it.
    pub largest: Limits,
    /// Its capacity and labels, registered with it.
    pub placement: crate::placement::Placement,
    pub lease: Duration,
    pub lxd_gauge: Gauge,
    /// The database the lease is renewed in, over a connection of its own.
    pub database_url: String,
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
    pub(crate) async fn run(
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
                placement: &self.placement,
                lease_seconds: self.lease.as_secs().max(1),
                incarnation,
                lxd_version: version.clone(),
            })
            .await?;
        tracing::info!(node = %self.name, address = %self.address, "node registered");
        let _ = registered.send(());
        let period = (self.lease / 3).max(Duration::from_millis(500));
        let (probed, latest) = tokio::sync::watch::channel(version);
        let renewal = Renewal {
            database_url: self.database_url.clone(),
            name: self.name.clone(),
            incarnation,
            period,
            latest,
            shutdown: shutdown.clone(),
        };
        let (renewed, renew) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("pirus-lease".into())
            .spawn(move || {
                renewal.run();
                drop(renewed);
            })
            .map_err(Error::internal)?;
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
        let (_, ()) = tokio::join!(renew, watch);
        Ok(())
    }
}

/// The lease's renewal, run on its own thread ([`Renewal::run`]).
struct Renewal {
    database_url: String,
    name: String,
    incarnation: Uuid,
    period: Duration,
    /// The latest LXD probe, reported with each renewal.
    latest: tokio::sync::watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
}

impl Renewal {
    /// Renews the lease every `period` until shutdown, on a runtime of this thread's own: a
    /// request runtime saturated by its callers does not delay the timer, the query or the
    /// wake-up of its answer. The connection is opened on this runtime too (a socket belongs
    /// to the runtime that opened it), and re-opened by the pool if the database restarts.
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the lease's runtime; the node's lease lapses");
                return;
            }
        };
        runtime.block_on(self.renew());
    }

    async fn connect(&self) -> Option<NodeStore> {
        let mut config = pirus_db::DbConfig::new(&self.database_url);
        config.max_connections = 1;
        config.connect_timeout = self.period;
        config.acquire_timeout = self.period;
        match pirus_db::connect(&config).await {
            Ok(db) => Some(NodeStore::new(db)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect for the node's lease; retrying");
                None
            }
        }
    }

    async fn renew(self) {
        let mut nodes = self.connect().await;
        let start = tokio::time::Instant::now() + self.period;
        let mut ticks = tokio::time::interval_at(start, self.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if nodes.is_none() {
                nodes = self.connect().await;
            }
            let Some(store) = &nodes else { continue };
            let version = self.latest.borrow().clone();
            match store.heartbeat(&self.name, self.incarnation, version).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %self.name, "another runner took this node over")
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
            }
        }
    }
}
