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

mod artifacts;
mod catalogue;
mod container;
mod finish;
mod monitor;
mod progress;
mod results;
mod safedir;
mod sweep;
mod task;
mod workspace;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use pirus_db::listen::Notice;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

pub use catalogue::Catalogue;
pub use container::container_name;

use crate::{
    domain::{Error, Result, Run, RunStatus},
    inputs::CONFIG_FILE,
    lifecycle::{Desired, Event},
    limits::{Limits, NodeLimits},
    store::{Change, Stores},
};
use container::Layout;
use workspace::{Storage, Workspace};

/// A progress value must stay this long to become an event (CONTRACT §2.2).
const SETTLE: Duration = Duration::from_millis(100);

/// How a runner executes runs.
pub struct Settings {
    pub node: String,
    pub work_dir: PathBuf,
    pub databases_dir: Option<PathBuf>,
    pub storage_pool: String,
    pub isolated_idmap: bool,
    pub limits: NodeLimits,
    /// Host folders TES tasks read `file://` inputs from and write `file://` outputs beneath.
    pub tes_file_roots: Vec<PathBuf>,
    /// Bytes of cached inputs that no run uses kept for later runs.
    pub input_cache_size: u64,
}

#[derive(Clone)]
pub struct Executor {
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
    /// Notifications, for control requests (pause, resume, cancel) of this node's runs.
    notices: broadcast::Sender<Notice>,
    /// One container creation at a time (see [`container::create_and_start`]).
    creating: tokio::sync::Mutex<()>,
}

/// The names and limits of one attempt of a run.
struct Attempt {
    run: Uuid,
    attempt: i32,
    container: String,
    folder: String,
    limits: Limits,
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
    pub fn new(
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
                notices,
                creating: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn attempt(&self, run: &Run) -> Attempt {
        Attempt {
            run: run.id,
            attempt: run.attempt,
            container: container_name(run.id, run.attempt),
            folder: workspace::folder_name(run.id, run.attempt),
            limits: self.inner.limits.effective(&run.requested),
        }
    }

    /// Runs a claimed run to its end. Never fails: every failure ends the run ERROR with the
    /// reason, and the container and run folders are removed whatever happened.
    pub async fn execute(&self, run: Run) {
        let attempt = self.attempt(&run);
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

    /// Prepares and starts the run, then watches it until its command ends.
    async fn start(
        &self,
        run: &Run,
        attempt: &Attempt,
        progress: &mut progress::Tracker,
        control: &mut broadcast::Receiver<Notice>,
    ) -> (Option<Workspace>, Outcome) {
        match self.prepare_and_start(run, attempt).await {
            Ok(started) => {
                let outcome = self
                    .monitor(run, attempt, &started, progress, control, false)
                    .await;
                (Some(started.workspace), outcome)
            }
            Err(e) => (None, self.start_failed(run.id, e).await),
        }
    }

    /// At start-up, before claiming: matches this node's containers and run folders with the
    /// runs it holds. Containers and folders of anything else are removed; the runs it holds
    /// are answered, to be resumed with [`Executor::resume`].
    pub async fn adopt_at_start(&self) -> Result<Vec<Run>> {
        let held = self.sweep_orphans().await?;
        // A cache that cannot be tidied is no reason to hold up the node's runs.
        if let Err(e) = self.inner.artifacts.remove_leftovers().await {
            tracing::warn!(error = %e, "could not tidy the cache");
        }
        let mut runs = Vec::new();
        for (id, _) in held {
            runs.push(self.inner.stores.runs.get(id).await?);
        }
        Ok(runs)
    }

    /// Takes a run this node held before a restart back: a RUNNING or PAUSE run is watched
    /// again (its command is not started again: the exit status file says when it ended, even
    /// if that was while the runner was away, or the container is already gone); an
    /// INITIALIZING one is prepared again (its half-made container, and anything it started,
    /// removed first); a FINISHING one finishes again (pushing outputs is idempotent).
    pub async fn resume(&self, run: Run) {
        let attempt = self.attempt(&run);
        tracing::info!(run = %run.id, attempt = run.attempt, status = run.status.as_str(), "re-adopting a run");
        let mut progress = progress::Tracker::new(SETTLE);
        progress.assume_published(run.progress.clone());
        let mut control = self.inner.notices.subscribe();
        let (workspace, outcome) = match run.status {
            RunStatus::Initializing => {
                let _ = container::remove(&self.inner.lxd, &attempt.container).await;
                self.start(&run, &attempt, &mut progress, &mut control)
                    .await
            }
            RunStatus::Running | RunStatus::Pause => {
                let found = self.inner.lxd.instance(&attempt.container).await;
                match (self.open_workspace(&attempt).await, found) {
                    (Ok(workspace), Ok(Some(_))) => {
                        let started = Started {
                            workspace,
                            exec: None,
                        };
                        let paused = run.status == RunStatus::Pause;
                        let outcome = self
                            .monitor(
                                &run,
                                &attempt,
                                &started,
                                &mut progress,
                                &mut control,
                                paused,
                            )
                            .await;
                        (Some(started.workspace), outcome)
                    }
                    (Err(e), _) => (
                        None,
                        Outcome::Failed(format!("the run's folders are gone: {e}")),
                    ),
                    // The command ended and the container was removed (finishing removes it
                    // before it records the end), but the runner stopped in between: the
                    // exit status file, which outlives the container, says how it ended.
                    (Ok(workspace), Ok(None)) => match workspace.exit_status() {
                        Some(code) => (Some(workspace), Outcome::Exited(code)),
                        None => (
                            Some(workspace),
                            Outcome::Failed(
                                "the container disappeared while its runner was away".into(),
                            ),
                        ),
                    },
                    (Ok(workspace), Err(e)) => {
                        tracing::warn!(run = %run.id, error = %e, "LXD failed while re-adopting");
                        (
                            Some(workspace),
                            Outcome::Failed("LXD failed while the run was re-adopted".into()),
                        )
                    }
                }
            }
            RunStatus::Finishing => (
                self.open_workspace(&attempt).await.ok(),
                Outcome::Exited(run.exit_code.unwrap_or(-1)),
            ),
            _ => return,
        };
        self.finish(&run, &attempt, workspace, outcome, &mut progress)
            .await;
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
    pub async fn live_log(&self, run: &Run, file: &str, offset: u64, max: u64) -> Result<Vec<u8>> {
        let workspace = self.open_workspace(&self.attempt(run)).await?;
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
    pub async fn live_log_size(&self, run: &Run, file: &str) -> Result<Option<u64>> {
        let workspace = self.open_workspace(&self.attempt(run)).await?;
        let file = file.to_owned();
        workspace::blocking(move || Ok(workspace.open_log(&file)?.map(|log| log.size))).await
    }

    /// Records a change of the run. A status change is retried with back-off while the
    /// database is unreachable (for up to 10 minutes): a run must not be stranded by an
    /// outage. Progress is not retried; the next value supersedes it.
    async fn change(&self, attempt: &Attempt, change: Change) -> Result<bool> {
        let store = &self.inner.stores.runs;
        let node = &self.inner.node;
        let mut backoff = Duration::from_millis(200);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let result = store
                .change(attempt.run, node, attempt.attempt, change.clone())
                .await;
            match result {
                Err(e) if change.event != Event::Noted && Instant::now() < deadline => {
                    tracing::warn!(run = %attempt.run, error = %e, "recording a status change failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn prepare_and_start(&self, run: &Run, attempt: &Attempt) -> Result<Started> {
        let inner = &self.inner;
        let pipeline = pirus_db::views::pipeline(inner.stores.db(), run.pipeline_id)
            .await?
            .ok_or_else(|| Error::internal(format!("pipeline {} is gone", run.pipeline_id)))?;
        let manifest = pipeline.manifest.as_ref().unwrap_or(&Value::Null);
        // A TES task runs its executors (a script of the runner's), not the pipeline's command.
        let task = match &run.tes {
            None => None,
            Some(_) => Some(
                crate::tes::task::of_run(run)
                    .ok_or_else(|| Error::internal("the run's TES task cannot be read"))?,
            ),
        };
        let layout = match &task {
            None => Layout::from_manifest(manifest)?,
            Some(task) => {
                if let Some(why) = task::unsupported(task, &inner.tes_file_roots) {
                    return Err(Error::FailedPrecondition(why));
                }
                Layout::for_task(manifest)
            }
        };
        inner
            .artifacts
            .ensure_image(&run.image_sha256, pipeline.image_file_id)
            .await?;

        let labels = container::labels(run.id, run.attempt, &inner.node);
        let workspace = Workspace::create(
            &inner.storage,
            &inner.runs,
            &attempt.container,
            &labels,
            attempt.folder.clone(),
            attempt.limits.disk_bytes,
        )
        .await?;
        let inputs = workspace.inputs()?;
        if let Some(task) = task {
            task::link_inputs(&inner.artifacts, inner.stores.db(), &task, &inputs).await?;
            let roots = inner.tes_file_roots.clone();
            let budget = attempt.limits.disk_bytes;
            task::stage(task, run.id, inputs, layout.inputs.clone(), roots, budget).await?;
        } else {
            self.write_inputs(run, &pipeline, inputs).await?;
        }
        let spec = container::Spec {
            run,
            node: &inner.node,
            layout: &layout,
            workspace: &workspace,
            limits: attempt.limits,
            pool: inner.storage.pool(),
            caps: inner.storage.caps().await?,
            isolated_idmap: inner.isolated_idmap,
            databases_dir: inner.databases_dir.as_deref(),
            profile_nics: if layout.network {
                Vec::new()
            } else {
                container::profile_nics(&inner.lxd).await?
            },
        };
        container::create_and_start(&inner.lxd, &inner.creating, &spec.build(), &workspace).await?;
        // Canceled while being prepared: the command never starts.
        if inner.stores.queue.desired(run.id).await? == Some(Desired::Canceled) {
            return Err(Error::FailedPrecondition(
                "canceled while being prepared".into(),
            ));
        }
        let exec =
            container::exec_command(&inner.lxd, &attempt.container, &spec.environment()).await?;
        let started = self
            .change(attempt, Change::new(Event::Started, "command started"))
            .await?;
        if !started {
            return Err(Error::FailedPrecondition(
                "this node no longer holds the run".into(),
            ));
        }
        Ok(Started {
            workspace,
            exec: Some(exec),
        })
    }

    /// A pipeline run's inputs: its input files linked under their sanitised names, and its
    /// configuration (CONTRACT §5).
    async fn write_inputs(
        &self,
        run: &Run,
        pipeline: &pirus_db::views::PipelineView,
        inputs: safedir::SafeDir,
    ) -> Result<()> {
        self.inner.artifacts.link_inputs(run, &inputs).await?;
        let config = json!({
            "pirus": {
                "run_id": run.id.to_string(),
                "run_name": run.name,
                "pipeline_id": run.pipeline_id.to_string(),
                "pipeline_name": pipeline.name,
            },
            "job": run.config,
        });
        let config = serde_json::to_vec_pretty(&config).map_err(Error::internal)?;
        workspace::blocking(move || inputs.write_new(CONFIG_FILE, &config, 0o644)).await
    }

    /// What a failed start means: a cancel that arrived meanwhile, or a failure.
    async fn start_failed(&self, run: Uuid, e: Error) -> Outcome {
        match self.inner.stores.queue.desired(run).await {
            Ok(Some(Desired::Canceled)) => Outcome::Canceled,
            _ => Outcome::Failed(format!("the run could not start: {e}")),
        }
    }
}
