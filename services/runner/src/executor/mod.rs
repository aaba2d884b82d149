//! Executing one claimed run, from INITIALIZING to DONE, ERROR or CANCELED, in stages:
//!
//! 1. [`artifacts`]: the pipeline's image (fetched from the catalogue into a cache keyed by
//!    SHA-256, imported into LXD once per fingerprint) and the inputs (cached the same way).
//! 2. [`workspace`]: the run's folders, made afresh, reached only through [`safedir`]: nothing
//!    the container leaves there (links, FIFOs, devices, huge files) reaches the host.
//! 3. [`container`]: an unprivileged, bounded container tagged with its run, attempt and node;
//!    the wrapper is started detached and writes the exit status into the run's control folder,
//!    because LXD forgets a finished exec within seconds.
//! 4. [`monitor`]: exit status, progress, time and disk limits, control requests, fencing.
//! 5. [`results`]: once the container is gone (stopped and deleted first, so nothing inside can
//!    change what is read), the logs and outputs are pushed to the catalogue; the run's folders
//!    and volume are removed on every path.
//!
//! The orphan sweep ([`sweep`]) removes what belongs to no run this node holds.

mod adopt;
mod artifacts;
mod container;
mod finish;
mod monitor;
mod progress;
mod results;
mod safedir;
mod script;
mod staging;
mod start;
mod sweep;
mod workspace;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use pirus_db::listen::Notice;
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

pub(crate) use container::container_name;

use crate::{
    catalogue::Catalogue,
    domain::{Error, Plan, Result, Run},
    lifecycle::Event,
    limits::{Limits, NodeLimits},
    store::{Change, Stores},
};
use workspace::{Storage, Workspace};

/// A progress value must stay this long to become an event (CONTRACT §2.2).
const SETTLE: Duration = Duration::from_millis(100);

/// How a runner executes runs.
pub(crate) struct Settings {
    pub node: String,
    pub work_dir: PathBuf,
    pub databases_dir: Option<PathBuf>,
    pub storage_pool: String,
    pub isolated_idmap: bool,
    pub limits: NodeLimits,
    /// Host folders plans read host inputs from and write host outputs beneath
    /// (`--tes-file-roots`).
    pub tes_file_roots: Vec<PathBuf>,
    /// Bytes of cached inputs that no run uses kept for later runs.
    pub input_cache_size: u64,
    /// The plan of a run queued before plans were stored, from what its edge stored then
    /// (a TES task): given by the edge that knows that form, so that the executor does not.
    pub legacy_plan: LegacyPlan,
}

/// Makes the plan of a run queued before plans from the edge's own stored form of it.
pub(crate) type LegacyPlan = fn(&Value) -> Option<Plan>;

#[derive(Clone)]
pub(crate) struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    stores: Stores,
    lxd: pirus_lxd::Client,
    catalogue: Catalogue,
    node: String,
    /// `<work>/runs`, held open.
    runs: safedir::SafeDir,
    storage: Storage,
    artifacts: artifacts::Artifacts,
    limits: NodeLimits,
    isolated_idmap: bool,
    databases_dir: Option<PathBuf>,
    tes_file_roots: Vec<PathBuf>,
    legacy_plan: LegacyPlan,
    /// Notifications, for control requests (pause, resume, cancel) of this node's runs.
    notices: broadcast::Sender<Notice>,
    /// One container creation at a time (see [`container::create_and_start`]).
    creating: tokio::sync::Mutex<()>,
}

/// The names, limits and plan of one attempt of a run.
struct Attempt {
    run: Uuid,
    attempt: i32,
    container: String,
    folder: String,
    limits: Limits,
    /// As stored with the run; `None` for a pipeline run queued before plans were stored
    /// (its plan is its pipeline's command), or when it could not be read (`plan_error`).
    plan: Option<Plan>,
    plan_error: Option<String>,
    /// When the run's time limit started counting (the monitor sets it): collecting its
    /// outputs stops at the same limit.
    clock: std::sync::Mutex<Option<Instant>>,
}

impl Attempt {
    /// When the run's time limit runs out, once the monitor has started counting it.
    fn deadline(&self) -> Option<Instant> {
        let start = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        start.map(|s| s + self.limits.time)
    }
}

/// A run whose command runs: its folders, and the wrapper's exec operation while this process
/// knows it (a re-adopted run's is gone).
struct Started {
    workspace: Workspace,
    exec: Option<String>,
}

/// How the command ended.
enum Outcome {
    Exited(i32),
    TimedOut(Duration),
    Failed(String),
    /// Canceled on request: logs kept, outputs not collected.
    Canceled,
    /// This node no longer holds the run.
    Lost,
}

impl Executor {
    pub(crate) fn new(
        stores: Stores,
        lxd: pirus_lxd::Client,
        catalogue: Catalogue,
        settings: Settings,
        notices: broadcast::Sender<Notice>,
    ) -> Result<Self> {
        let runs = safedir::SafeDir::create(&settings.work_dir.join("runs"))?;
        let artifacts = artifacts::Artifacts::new(
            lxd.clone(),
            catalogue.clone(),
            stores.db().clone(),
            settings.work_dir.join("cache"),
            settings.input_cache_size,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                storage: Storage::new(lxd.clone(), settings.storage_pool),
                stores,
                lxd,
                catalogue,
                node: settings.node,
                runs,
                artifacts,
                limits: settings.limits,
                isolated_idmap: settings.isolated_idmap,
                databases_dir: settings.databases_dir,
                tes_file_roots: settings.tes_file_roots,
                legacy_plan: settings.legacy_plan,
                notices,
                creating: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The attempt's names and limits, and its plan as stored with the run.
    async fn attempt(&self, run: &Run) -> Attempt {
        let mut attempt = self.folders_of(run);
        match self.load_plan(run.id).await {
            Ok(plan) => attempt.plan = plan,
            Err(e) => attempt.plan_error = Some(format!("the run's plan cannot be read: {e}")),
        }
        attempt
    }

    /// The attempt's names and limits, without its plan: for reads of its folders.
    fn folders_of(&self, run: &Run) -> Attempt {
        Attempt {
            run: run.id,
            attempt: run.attempt,
            container: container_name(run.id, run.attempt),
            folder: workspace::folder_name(run.id, run.attempt),
            limits: self.inner.limits.effective(&run.requested),
            plan: None,
            plan_error: None,
            clock: std::sync::Mutex::new(None),
        }
    }

    /// The plan stored with a run; for a run queued before plans were stored, its edge's
    /// stored form converted, or `None` (a pipeline run: its pipeline's command). Retried
    /// while the database is unreachable, as a status change is.
    async fn load_plan(&self, run: Uuid) -> Result<Option<Plan>> {
        let store = &self.inner.stores.runs;
        let stored = retried(run, "reading the run's plan", || store.plan(run)).await?;
        match stored {
            (Some(plan), _) => serde_json::from_value(plan)
                .map(Some)
                .map_err(Error::internal),
            (None, Some(legacy)) => (self.inner.legacy_plan)(&legacy)
                .map(Some)
                .ok_or_else(|| Error::internal("the run's stored task cannot be read")),
            (None, None) => Ok(None),
        }
    }

    /// Runs a claimed run to its end. Never fails: every failure ends the run ERROR with the
    /// reason, and the container and run folders are removed whatever happened.
    pub(crate) async fn execute(&self, run: Run) {
        let attempt = self.attempt(&run).await;
        let started = Instant::now();
        tracing::info!(run = %run.id, attempt = run.attempt, "run claimed");
        let mut progress = progress::Tracker::new(SETTLE);
        // Subscribed first: a control request that arrives while the run starts is not missed.
        let mut control = self.inner.notices.subscribe();
        let (workspace, outcome) = self
            .start(&run, &attempt, &mut progress, &mut control)
            .await;
        self.finish(&run, &attempt, workspace, outcome, &mut progress)
            .await;
        tracing::info!(run = %run.id, elapsed = ?started.elapsed(), "run ended");
    }

    async fn open_workspace(&self, attempt: &Attempt) -> Result<Workspace> {
        let inner = &self.inner;
        Workspace::open(
            &inner.storage,
            &inner.runs,
            &attempt.container,
            attempt.folder.clone(),
        )
        .await
    }

    /// Live bytes of a run's log (`out.log` or `err.log`) while this node holds it.
    pub(crate) async fn live_log(
        &self,
        run: &Run,
        file: &str,
        offset: u64,
        max: u64,
    ) -> Result<Vec<u8>> {
        let workspace = self.open_workspace(&self.folders_of(run)).await?;
        let file = file.to_owned();
        workspace::blocking(move || {
            workspace
                .read_log(&file, offset, max)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
    }

    /// The size of a run's log in its workspace while this node holds it (`None`: no log
    /// yet), through the same link-refusing path as its bytes.
    pub(crate) async fn live_log_size(&self, run: &Run, file: &str) -> Result<Option<u64>> {
        let workspace = self.open_workspace(&self.folders_of(run)).await?;
        let file = file.to_owned();
        workspace::blocking(move || Ok(workspace.open_log(&file)?.map(|log| log.size))).await
    }

    /// Records a change of the run. A status change is retried with back-off while the
    /// database is unreachable (for up to 10 minutes): a run must not be stranded by an
    /// outage. Progress is not retried; the next value supersedes it.
    async fn change(&self, attempt: &Attempt, change: Change) -> Result<bool> {
        let store = &self.inner.stores.runs;
        let node = &self.inner.node;
        let record = || store.change(attempt.run, node, attempt.attempt, change.clone());
        if change.event == Event::Noted {
            return record().await;
        }
        retried(attempt.run, "recording a status change", record).await
    }
}

/// Calls `call` until it answers, with back-off, for up to 10 minutes while it fails: a run
/// must not be stranded by a database outage.
async fn retried<T, F>(run: Uuid, what: &str, mut call: impl FnMut() -> F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_millis(200);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match call().await {
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(%run, error = %e, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
