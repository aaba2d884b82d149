//! Executing one claimed run, from INITIALIZING to DONE, ERROR or (later) CANCELED.
//!
//! 1. Prepare: the pipeline's image (fetched from the catalogue with ReadFile into a cache
//!    keyed by SHA-256, imported into LXD once per fingerprint), the inputs (cached the same
//!    way, hard-linked into the run folder), `config.json`, and a wrapper script.
//! 2. Start: an unprivileged container tagged with its run, attempt and node, the run folder
//!    mounted as CONTRACT §5 lays it out and owned by the container's mapped root; the wrapper
//!    is started detached and writes the command's exit status into the run folder, because
//!    LXD forgets a finished exec within seconds.
//! 3. Monitor: progress (a value left in place for 100 ms is an event), exit status, timeout.
//! 4. Finish: outputs (recursively, never following links) and both logs pushed to the
//!    catalogue idempotently; container and run folder removed, on failure paths too.

mod catalogue;
mod progress;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use pirus_db::listen::Notice;
use pirus_lxd::{Action, InstanceSpec};
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};
use uuid::Uuid;

pub use catalogue::Catalogue;

use crate::{
    domain::{Error, Progress, Result, Run, RunStatus},
    inputs::{CONFIG_FILE, input_names},
    store::{CONTROL_CHANNEL, Change, Desired, Store},
};

const LXD_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
/// A progress value must stay this long to become an event (CONTRACT §2.2).
const SETTLE: Duration = Duration::from_millis(100);

/// The run command's wrapper: its output into the log files, its exit status into the control
/// folder (atomically), whatever happens to the runner meanwhile.
const WRAPPER: &str = r#"#!/bin/sh
# Pirus run wrapper: runs the pipeline's command with its output in the log files, then
# records its exit status for the runner (LXD forgets finished commands within seconds).
cd "$PIRUS_OUTPUTS" 2>/dev/null || cd /
/bin/sh -c "$PIRUS_COMMAND" >> "$PIRUS_LOGS/out.log" 2>> "$PIRUS_LOGS/err.log" < /dev/null
status=$?
echo "$status" > /.pirus/exit_status.tmp && mv /.pirus/exit_status.tmp /.pirus/exit_status
"#;

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    lxd: pirus_lxd::Client,
    catalogue: Catalogue,
    node: String,
    work_dir: PathBuf,
    databases_dir: Option<PathBuf>,
    /// Notifications, for control requests (pause, resume, cancel) of this node's runs.
    notices: broadcast::Sender<Notice>,
    /// One import at a time per image fingerprint.
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// The paths and names of one attempt of a run.
struct Attempt {
    run: Uuid,
    attempt: i32,
    dir: PathBuf,
    container: String,
}

impl Attempt {
    fn new(work_dir: &Path, run: &Run) -> Self {
        Self {
            run: run.id,
            attempt: run.attempt,
            dir: work_dir
                .join("runs")
                .join(format!("{}-{}", run.id, run.attempt)),
            container: container_name(run.id, run.attempt),
        }
    }
}

/// An io error that names the path it happened at.
fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::internal(format!("{}: {e}", path.display()))
}

pub fn container_name(run: Uuid, attempt: i32) -> String {
    format!("pirus-{}-{attempt}", run.simple())
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

/// The manifest fields a run needs.
struct Layout {
    command: String,
    inputs: String,
    outputs: String,
    logs: String,
    databases: String,
    network: bool,
}

impl Layout {
    fn from_manifest(m: &Value) -> Result<Self> {
        let text = |key: &str, default: &str| m[key].as_str().unwrap_or(default).to_owned();
        let command = text("run", "");
        if command.is_empty() {
            return Err(Error::internal(
                "the pipeline's manifest has no run command",
            ));
        }
        Ok(Self {
            command,
            inputs: text("inputs", "/pipeline/inputs"),
            outputs: text("outputs", "/pipeline/outputs"),
            logs: text("logs", "/pipeline/logs"),
            databases: text("databases", "/pipeline/databases"),
            network: m["network"].as_bool().unwrap_or(false),
        })
    }
}

impl Executor {
    pub fn new(
        store: Store,
        lxd: pirus_lxd::Client,
        catalogue: Catalogue,
        node: String,
        work_dir: PathBuf,
        databases_dir: Option<PathBuf>,
        notices: broadcast::Sender<Notice>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                lxd,
                catalogue,
                node,
                work_dir,
                databases_dir,
                notices,
                image_locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs a claimed run to its end. Never fails: every failure ends the run ERROR with the
    /// reason, and the container and run folder are removed whatever happened.
    pub async fn execute(&self, run: Run) {
        let attempt = Attempt::new(&self.inner.work_dir, &run);
        let started = Instant::now();
        tracing::info!(run = %run.id, attempt = run.attempt, "run claimed");
        let mut progress = progress::Tracker::new(attempt.dir.join("logs/progress.json"), SETTLE);
        // Subscribed first: a control request that arrives while the run starts is not missed.
        let mut control = self.inner.notices.subscribe();
        let outcome = match self.prepare_and_start(&run, &attempt).await {
            Ok(()) => {
                self.monitor(&run, &attempt, &mut progress, &mut control, false)
                    .await
            }
            Err(e) => self.start_failed(run.id, e).await,
        };
        self.finish(&run, &attempt, outcome, &mut progress).await;
        tracing::info!(run = %run.id, elapsed = ?started.elapsed(), "run ended");
    }

    /// Removes this node's containers and run folders that belong to no run it holds
    /// (finished runs, attempts it lost, unknown runs); answers the runs it holds. Run at
    /// start-up and after every reconnection to the database, since LXD's events and
    /// PostgreSQL's notifications can both be missed.
    pub async fn sweep_orphans(&self) -> Result<Vec<(Uuid, i32)>> {
        let inner = &self.inner;
        // Containers and folders first, held runs after: a container exists only once its
        // run's claim committed, so one created meanwhile is never mistaken for an orphan.
        let instances = inner.lxd.instances().await.map_err(Error::internal)?;
        let mut folders = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(inner.work_dir.join("runs")).await {
            while let Some(entry) = entries.next_entry().await? {
                folders.push(entry.path());
            }
        }
        let held = inner.store.active_runs(&inner.node).await?;
        let keep: Vec<String> = held
            .iter()
            .map(|(run, attempt)| container_name(*run, *attempt))
            .collect();
        for instance in instances {
            let ours = instance.config.get("user.pirus.node") == Some(&inner.node);
            if ours && !keep.contains(&instance.name) {
                tracing::warn!(container = %instance.name, "removing an orphan container");
                inner
                    .lxd
                    .remove_instance(&instance.name, LXD_TIMEOUT)
                    .await
                    .map_err(Error::internal)?;
            }
        }
        let held_folders: Vec<String> = held
            .iter()
            .map(|(run, attempt)| format!("{run}-{attempt}"))
            .collect();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !held_folders.contains(&name) {
                tracing::warn!(folder = %name, "removing an orphan run folder");
                let _ = tokio::fs::remove_dir_all(&folder).await;
            }
        }
        Ok(held)
    }

    /// At start-up, before claiming: matches this node's containers and run folders with the
    /// runs it holds. Containers and folders of anything else (finished runs, attempts this
    /// node no longer holds, unknown runs) are removed; the runs it holds are answered, to be
    /// resumed with [`Executor::resume`].
    pub async fn adopt_at_start(&self) -> Result<Vec<Run>> {
        let held = self.sweep_orphans().await?;
        let mut runs = Vec::new();
        for (id, _) in held {
            runs.push(self.inner.store.get_run(id).await?);
        }
        Ok(runs)
    }

    /// Takes a run this node held before a restart back: a RUNNING or PAUSE run is watched
    /// again (its command is not started again: the exit status file says when it ended, even
    /// if that was while the runner was away); an INITIALIZING one is prepared again (its
    /// half-made container, and anything it started, removed first); a FINISHING one finishes
    /// again (pushing outputs is idempotent).
    pub async fn resume(&self, run: Run) {
        let attempt = Attempt::new(&self.inner.work_dir, &run);
        tracing::info!(run = %run.id, attempt = run.attempt, status = run.status.as_str(), "re-adopting a run");
        let mut progress = progress::Tracker::new(attempt.dir.join("logs/progress.json"), SETTLE);
        progress.assume_published(run.progress.clone());
        let mut control = self.inner.notices.subscribe();
        let outcome = match run.status {
            RunStatus::Initializing => {
                let _ = self
                    .inner
                    .lxd
                    .remove_instance(&attempt.container, LXD_TIMEOUT)
                    .await;
                match self.prepare_and_start(&run, &attempt).await {
                    Ok(()) => {
                        self.monitor(&run, &attempt, &mut progress, &mut control, false)
                            .await
                    }
                    Err(e) => self.start_failed(run.id, e).await,
                }
            }
            RunStatus::Running | RunStatus::Pause => {
                match self.inner.lxd.instance(&attempt.container).await {
                    Ok(Some(_)) => {
                        let paused = run.status == RunStatus::Pause;
                        self.monitor(&run, &attempt, &mut progress, &mut control, paused)
                            .await
                    }
                    Ok(None) => Outcome::Failed(
                        "the container disappeared while its runner was away".into(),
                    ),
                    Err(e) => Outcome::Failed(format!("LXD: {e}")),
                }
            }
            RunStatus::Finishing => Outcome::Exited(run.exit_code.unwrap_or(-1)),
            _ => return,
        };
        self.finish(&run, &attempt, outcome, &mut progress).await;
    }

    /// Records a change of the run. A status change is retried with back-off while the
    /// database is unreachable (for up to 10 minutes): a run must not be stranded by an
    /// outage. Progress is not retried; the next value supersedes it.
    async fn change(&self, attempt: &Attempt, change: Change) -> Result<bool> {
        let store = &self.inner.store;
        let node = &self.inner.node;
        let mut backoff = Duration::from_millis(200);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let result = store
                .change(attempt.run, node, attempt.attempt, change.clone())
                .await;
            match result {
                Err(e) if change.status.is_some() && Instant::now() < deadline => {
                    tracing::warn!(run = %attempt.run, error = %e, "recording a status change failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn prepare_and_start(&self, run: &Run, attempt: &Attempt) -> Result<()> {
        let inner = &self.inner;
        let pipeline = inner
            .store
            .pipeline(run.pipeline_id)
            .await?
            .ok_or_else(|| Error::internal(format!("pipeline {} is gone", run.pipeline_id)))?;
        let layout = Layout::from_manifest(pipeline.manifest.as_ref().unwrap_or(&Value::Null))?;
        self.ensure_image(&run.image_sha256, pipeline.image_file_id)
            .await?;

        // The run folder.
        let dir = &attempt.dir;
        let _ = tokio::fs::remove_dir_all(dir).await;
        for sub in ["inputs", "outputs", "logs", "control"] {
            let path = dir.join(sub);
            tokio::fs::create_dir_all(&path).await.map_err(at(&path))?;
        }
        self.link_inputs(run, &dir.join("inputs")).await?;
        let config = json!({
            "pirus": {
                "run_id": run.id.to_string(),
                "run_name": run.name,
                "pipeline_id": run.pipeline_id.to_string(),
                "pipeline_name": pipeline.name,
            },
            "job": run.config,
        });
        let config_path = dir.join("inputs").join(CONFIG_FILE);
        let config_bytes = serde_json::to_vec_pretty(&config).map_err(Error::internal)?;
        tokio::fs::write(&config_path, config_bytes)
            .await
            .map_err(at(&config_path))?;
        let wrapper = dir.join("control/run.sh");
        tokio::fs::write(&wrapper, WRAPPER)
            .await
            .map_err(at(&wrapper))?;
        for log in ["out.log", "err.log"] {
            let path = dir.join("logs").join(log);
            tokio::fs::write(&path, b"").await.map_err(at(&path))?;
        }

        // The container.
        let disk = |source: &Path, path: &str, readonly: bool| {
            let mut d = BTreeMap::from([
                ("type".to_owned(), "disk".to_owned()),
                ("source".to_owned(), source.display().to_string()),
                ("path".to_owned(), path.to_owned()),
            ]);
            if readonly {
                d.insert("readonly".to_owned(), "true".to_owned());
            }
            d
        };
        let mut devices = BTreeMap::from([
            (
                "pirus-inputs".to_owned(),
                disk(&dir.join("inputs"), &layout.inputs, true),
            ),
            (
                "pirus-outputs".to_owned(),
                disk(&dir.join("outputs"), &layout.outputs, false),
            ),
            (
                "pirus-logs".to_owned(),
                disk(&dir.join("logs"), &layout.logs, false),
            ),
            (
                "pirus-control".to_owned(),
                disk(&dir.join("control"), "/.pirus", false),
            ),
        ]);
        if let Some(databases) = &inner.databases_dir {
            devices.insert(
                "pirus-databases".to_owned(),
                disk(databases, &layout.databases, true),
            );
        }
        if !layout.network {
            // No network unless the manifest asks: every NIC the profile would bring is masked
            // by a device of type none under the same name.
            let profile = inner
                .lxd
                .profile_devices("default")
                .await
                .map_err(Error::internal)?;
            for (name, device) in profile {
                if device.get("type").map(String::as_str) == Some("nic") {
                    devices.insert(
                        name,
                        BTreeMap::from([("type".to_owned(), "none".to_owned())]),
                    );
                }
            }
        }
        let mut config = BTreeMap::from([
            ("user.pirus.run".to_owned(), run.id.to_string()),
            ("user.pirus.attempt".to_owned(), run.attempt.to_string()),
            ("user.pirus.node".to_owned(), inner.node.clone()),
        ]);
        if let Some(cpu) = run.cpu_limit {
            config.insert("limits.cpu".to_owned(), cpu.to_string());
        }
        if let Some(memory) = run.memory_limit {
            config.insert("limits.memory".to_owned(), memory.to_string());
        }
        let spec = InstanceSpec {
            name: attempt.container.clone(),
            image: run.image_sha256.clone(),
            config,
            devices,
        };
        inner
            .lxd
            .remove_instance(&attempt.container, LXD_TIMEOUT)
            .await
            .map_err(Error::internal)?;
        inner
            .lxd
            .create_instance(&spec, LXD_TIMEOUT)
            .await
            .map_err(Error::internal)?;
        let instance = inner
            .lxd
            .instance(&attempt.container)
            .await
            .map_err(Error::internal)?
            .ok_or_else(|| Error::internal("the container vanished after creation"))?;
        let uid = instance
            .root_host_uid()
            .ok_or_else(|| Error::internal("the container has no id map (is it privileged?)"))?;
        for sub in ["outputs", "logs", "control"] {
            chown_tree(&dir.join(sub), uid).await.map_err(|e| {
                Error::internal(format!("chown of {}: {e}", dir.join(sub).display()))
            })?;
        }
        inner
            .lxd
            .set_state(&attempt.container, Action::Start, LXD_TIMEOUT)
            .await
            .map_err(Error::internal)?;

        let environment = BTreeMap::from([
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
            ("PIRUS_RUN_ID".to_owned(), run.id.to_string()),
            (
                "PIRUS_CONFIG_FILE".to_owned(),
                format!("{}/{CONFIG_FILE}", layout.inputs),
            ),
            (
                "PIRUS_PROGRESS_FILE".to_owned(),
                format!("{}/progress.json", layout.logs),
            ),
            ("PIRUS_INPUTS".to_owned(), layout.inputs.clone()),
            ("PIRUS_OUTPUTS".to_owned(), layout.outputs.clone()),
            ("PIRUS_LOGS".to_owned(), layout.logs.clone()),
            ("PIRUS_DATABASES".to_owned(), layout.databases.clone()),
            ("PIRUS_COMMAND".to_owned(), layout.command.clone()),
        ]);
        let command = ["/bin/sh".to_owned(), "/.pirus/run.sh".to_owned()];
        // Canceled while being prepared: the command never starts.
        if inner.store.desired(run.id).await? == Some(Desired::Canceled) {
            return Err(Error::FailedPrecondition(
                "canceled while being prepared".into(),
            ));
        }
        inner
            .lxd
            .exec_detached(&attempt.container, &command, &environment)
            .await
            .map_err(Error::internal)?;
        let started = self
            .change(
                attempt,
                Change {
                    status: Some(RunStatus::Running),
                    message: "command started".into(),
                    ..Default::default()
                },
            )
            .await?;
        if !started {
            return Err(Error::FailedPrecondition(
                "this node no longer holds the run".into(),
            ));
        }
        Ok(())
    }

    /// The image in LXD, fetched from the catalogue if LXD lacks it.
    async fn ensure_image(&self, sha256: &str, file: Option<Uuid>) -> Result<()> {
        let inner = &self.inner;
        if inner.lxd.has_image(sha256).await.map_err(Error::internal)? {
            return Ok(());
        }
        let lock = inner
            .image_locks
            .lock()
            .await
            .entry(sha256.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if inner.lxd.has_image(sha256).await.map_err(Error::internal)? {
            return Ok(());
        }
        let file = file.ok_or_else(|| Error::internal("the pipeline has no image file"))?;
        let path = inner
            .work_dir
            .join("cache/images")
            .join(format!("{sha256}.tar"));
        inner.catalogue.fetch(file, sha256, &path).await?;
        let imported = inner
            .lxd
            .ensure_image(&path, sha256, LXD_TIMEOUT)
            .await
            .map_err(Error::internal);
        // LXD keeps its own copy.
        let _ = tokio::fs::remove_file(&path).await;
        imported
    }

    /// Inputs: cached by SHA-256 (fetched once), hard-linked into the run folder.
    async fn link_inputs(&self, run: &Run, into: &Path) -> Result<()> {
        let inner = &self.inner;
        let files = inner.store.input_files(&run.input_file_ids).await?;
        let ordered: Vec<_> = run
            .input_file_ids
            .iter()
            .map(|id| {
                files
                    .iter()
                    .find(|f| f.id == *id)
                    .ok_or_else(|| Error::internal(format!("input {id} is gone")))
            })
            .collect::<Result<_>>()?;
        let names = input_names(&ordered.iter().map(|f| f.name.clone()).collect::<Vec<_>>());
        for (file, name) in ordered.into_iter().zip(names) {
            let sha256 = file
                .sha256
                .clone()
                .ok_or_else(|| Error::internal(format!("input {} is not ready", file.id)))?;
            let cached = inner.work_dir.join("cache/inputs").join(&sha256);
            if !tokio::fs::try_exists(&cached).await? {
                inner.catalogue.fetch(file.id, &sha256, &cached).await?;
            }
            let link = into.join(name);
            tokio::fs::hard_link(&cached, &link).await.map_err(|e| {
                Error::internal(format!(
                    "link {} -> {}: {e}",
                    cached.display(),
                    link.display()
                ))
            })?;
        }
        Ok(())
    }

    async fn monitor(
        &self,
        run: &Run,
        attempt: &Attempt,
        progress: &mut progress::Tracker,
        control: &mut broadcast::Receiver<Notice>,
        mut paused: bool,
    ) -> Outcome {
        // The wall clock of the timeout counts from the run's start, across runner restarts.
        let since_start = run
            .started_at
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        let started = Instant::now() - since_start;
        let timeout = run.timeout_seconds.map(|s| Duration::from_secs(s as u64));
        let exit_path = attempt.dir.join("control/exit_status");
        let mut last_check = Instant::now();
        let id = run.id.to_string();
        let mut check_control = true;
        loop {
            if check_control {
                check_control = false;
                if let Some(outcome) = self.apply_control(attempt, &mut paused).await {
                    return outcome;
                }
            }
            tokio::time::sleep(POLL).await;
            loop {
                match control.try_recv() {
                    Ok(Notice::Notification { channel, payload })
                        if channel == CONTROL_CHANNEL && payload == id =>
                    {
                        check_control = true;
                    }
                    Ok(Notice::Reconnected) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        check_control = true
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if let Ok(text) = tokio::fs::read_to_string(&exit_path).await
                && let Ok(code) = text.trim().parse::<i32>()
            {
                return Outcome::Exited(code);
            }
            if let Some(timeout) = timeout
                && started.elapsed() > timeout
            {
                return Outcome::TimedOut(timeout);
            }
            if let Some(p) = progress.poll().await
                && !self.publish_progress(attempt, p).await
            {
                return Outcome::Lost;
            }
            // Now and then, make sure the container is still there and running, and look for
            // a control request whose notification was missed.
            if last_check.elapsed() > Duration::from_secs(2) {
                last_check = Instant::now();
                check_control = true;
                if let Ok(false) = self
                    .inner
                    .store
                    .holds(attempt.run, &self.inner.node, attempt.attempt)
                    .await
                {
                    return Outcome::Lost;
                }
                match self.inner.lxd.state(&attempt.container).await {
                    Ok(s) if s.status == "Running" || s.status == "Frozen" => {}
                    Ok(s) if !exit_path.exists() => {
                        return Outcome::Failed(format!(
                            "the container stopped unexpectedly ({})",
                            s.status
                        ));
                    }
                    Err(e) if e.is_not_found() => {
                        return Outcome::Failed("the container disappeared".into());
                    }
                    _ => {}
                }
            }
        }
    }

    /// What a failed start means: a cancel that arrived meanwhile, or a failure.
    async fn start_failed(&self, run: Uuid, e: Error) -> Outcome {
        match self.inner.store.desired(run).await {
            Ok(Some(Desired::Canceled)) => Outcome::Canceled,
            _ => Outcome::Failed(format!("the run could not start: {e}")),
        }
    }

    /// Drives the container towards the pending control request, and records what happened.
    async fn apply_control(&self, attempt: &Attempt, paused: &mut bool) -> Option<Outcome> {
        let desired = match self.inner.store.desired(attempt.run).await {
            Ok(d) => d?,
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "cannot read the run's desired state");
                return None;
            }
        };
        let (action, status, message) = match (desired, *paused) {
            (Desired::Canceled, _) => return Some(Outcome::Canceled),
            (Desired::Pause, false) => (Action::Freeze, RunStatus::Pause, "paused"),
            (Desired::Running, true) => (Action::Unfreeze, RunStatus::Running, "resumed"),
            _ => return None,
        };
        if let Err(e) = self
            .inner
            .lxd
            .set_state(&attempt.container, action, LXD_TIMEOUT)
            .await
        {
            tracing::warn!(run = %attempt.run, error = %e, "could not change the container: {message}");
            return None;
        }
        *paused = status == RunStatus::Pause;
        let change = Change {
            status: Some(status),
            message: message.into(),
            clear_desired: true,
            ..Default::default()
        };
        match self.change(attempt, change).await {
            Ok(true) => None,
            Ok(false) => Some(Outcome::Lost),
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "could not record the control request");
                None
            }
        }
    }

    async fn publish_progress(&self, attempt: &Attempt, p: Progress) -> bool {
        let message = format!("progress {:.3} {}", p.value, p.label);
        match self
            .change(
                attempt,
                Change {
                    progress: Some(p),
                    message,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "could not record progress");
                true
            }
        }
    }

    async fn finish(
        &self,
        run: &Run,
        attempt: &Attempt,
        outcome: Outcome,
        progress: &mut progress::Tracker,
    ) {
        let inner = &self.inner;
        if matches!(outcome, Outcome::Lost) {
            tracing::warn!(run = %run.id, attempt = run.attempt, "this node lost the run; removing its container");
        } else if let Some(p) = progress.poll_now().await {
            // The progress file is read once more after the command ends.
            self.publish_progress(attempt, p).await;
        }
        let stop_first = matches!(
            outcome,
            Outcome::TimedOut(_) | Outcome::Failed(_) | Outcome::Canceled
        );
        if stop_first {
            let _ = inner
                .lxd
                .set_state(
                    &attempt.container,
                    Action::Stop { force: true },
                    LXD_TIMEOUT,
                )
                .await;
        }

        let ending = match outcome {
            Outcome::Lost => None,
            Outcome::Exited(code) => {
                let message = format!("command exited with status {code}");
                let finishing = Change {
                    status: Some(RunStatus::Finishing),
                    exit_code: Some(code),
                    message: message.clone(),
                    ..Default::default()
                };
                let already = run.status == RunStatus::Finishing;
                let finishing = if already {
                    Ok(true)
                } else {
                    self.change(attempt, finishing).await
                };
                match finishing {
                    Ok(true) => {
                        let pushed = self.push_results(run, attempt, true).await;
                        Some(match (pushed, code) {
                            (Err(e), _) => (
                                RunStatus::Error,
                                format!("{message}; collecting its results failed: {e}"),
                            ),
                            (Ok(()), 0) => (RunStatus::Done, message),
                            (Ok(()), _) => (RunStatus::Error, message),
                        })
                    }
                    Ok(false) => None,
                    Err(e) => Some((RunStatus::Error, format!("{message}; {e}"))),
                }
            }
            Outcome::TimedOut(limit) => {
                let _ = self.push_results(run, attempt, false).await;
                Some((
                    RunStatus::Error,
                    format!("timed out after {}s", limit.as_secs()),
                ))
            }
            Outcome::Failed(reason) => {
                let _ = self.push_results(run, attempt, false).await;
                Some((RunStatus::Error, reason))
            }
            Outcome::Canceled => {
                let _ = self.push_results(run, attempt, false).await;
                Some((RunStatus::Canceled, "canceled on request".to_owned()))
            }
        };

        if let Err(e) = inner
            .lxd
            .remove_instance(&attempt.container, LXD_TIMEOUT)
            .await
        {
            tracing::warn!(run = %run.id, error = %e, "could not remove the container");
        }
        if let Err(e) = tokio::fs::remove_dir_all(&attempt.dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(run = %run.id, error = %e, "could not remove the run folder");
        }
        if let Some((status, message)) = ending {
            let error_message = (status == RunStatus::Error).then(|| message.clone());
            let end = Change {
                status: Some(status),
                error_message,
                message,
                ..Default::default()
            };
            if let Err(e) = self.change(attempt, end).await {
                tracing::error!(run = %run.id, error = %e, "could not record the end of the run");
            }
        }
    }

    /// Pushes the logs, and the outputs when `outputs`, to the catalogue.
    async fn push_results(&self, run: &Run, attempt: &Attempt, outputs: bool) -> Result<()> {
        let catalogue = &self.inner.catalogue;
        for (stream, name) in [("out.log", "out.log"), ("err.log", "err.log")] {
            let path = attempt.dir.join("logs").join(stream);
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                catalogue
                    .push(run.id, catalogue::PushKind::Log, name, &path)
                    .await?;
            }
        }
        if outputs {
            let root = attempt.dir.join("outputs");
            for (relative, path) in regular_files(&root).await? {
                catalogue
                    .push(run.id, catalogue::PushKind::Output, &relative, &path)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Regular files under `root`, recursively, named by their path relative to it. Links are
/// never followed: a pipeline could point one at any host file.
async fn regular_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let kind = entry.file_type().await?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .map_err(Error::internal)?
                    .to_string_lossy()
                    .into_owned();
                out.push((relative, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// chown -R, without following links.
async fn chown_tree(path: &Path, uid: u32) -> Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut pending = vec![path];
        while let Some(p) = pending.pop() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid))?;
            if std::fs::symlink_metadata(&p)?.is_dir() {
                for entry in std::fs::read_dir(&p)? {
                    pending.push(entry?.path());
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(Error::internal)??;
    Ok(())
}
