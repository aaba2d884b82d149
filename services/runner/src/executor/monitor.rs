//! Watching a running command: its exit status, its progress, its wall-clock limit, its disk
//! use (where the pool cannot bound it), control requests (pause, resume, cancel), and whether
//! this node still holds the run. Every read of the run's folder goes through its workspace,
//! which never blocks on what the container left there (a FIFO, a link, a device), so the
//! timeout and a cancel always act on time.

use std::time::{Duration, Instant};

use pirus_db::listen::Notice;
use pirus_lxd::Action;
use tokio::sync::broadcast;

use super::{Attempt, Executor, Outcome, Started, container::LXD_TIMEOUT, progress};
use crate::{
    domain::{Progress, Run},
    lifecycle::{Desired, Event},
    store::{CONTROL_CHANNEL, Change},
};

const POLL: Duration = Duration::from_millis(50);
/// How often the container, the fencing and the disk use are checked.
const CHECK: Duration = Duration::from_secs(2);

impl Executor {
    pub(super) async fn monitor(
        &self,
        run: &Run,
        attempt: &Attempt,
        started: &Started,
        progress: &mut progress::Tracker,
        control: &mut broadcast::Receiver<Notice>,
        mut paused: bool,
    ) -> Outcome {
        // The wall clock of the timeout counts from the run's start, across runner restarts.
        let since_start = run
            .started_at
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        let start = Instant::now() - since_start;
        *attempt.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
        let limits = &attempt.limits;
        let workspace = &started.workspace;
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
            if let Some(code) = workspace.exit_status() {
                return Outcome::Exited(code);
            }
            if start.elapsed() > limits.time {
                return Outcome::TimedOut(limits.time);
            }
            if let Some(p) = progress.poll(workspace.progress().as_deref())
                && !self.publish_progress(attempt, p).await
            {
                return Outcome::Lost;
            }
            // Now and then, make sure the container is still there and running, look for a
            // control request whose notification was missed, and weigh the run's folders.
            if last_check.elapsed() > CHECK {
                last_check = Instant::now();
                check_control = true;
                if let Some(outcome) = self.check(attempt, started).await {
                    return outcome;
                }
            }
        }
    }

    async fn check(&self, attempt: &Attempt, started: &Started) -> Option<Outcome> {
        let inner = &self.inner;
        let (workspace, limits) = (&started.workspace, &attempt.limits);
        if let Ok(false) = inner
            .stores
            .queue
            .holds(attempt.run, &inner.node, attempt.attempt)
            .await
        {
            return Some(Outcome::Lost);
        }
        match inner.lxd.state(&attempt.container).await {
            Ok(s) if s.status == "Running" || s.status == "Frozen" => {}
            Ok(s) if workspace.exit_status().is_none() => {
                return Some(Outcome::Failed(format!(
                    "the container stopped unexpectedly ({})",
                    s.status
                )));
            }
            Err(e) if e.is_not_found() => {
                return Some(Outcome::Failed("the container disappeared".into()));
            }
            _ => {}
        }
        // The wrapper's own exit, for when it could not write its status file (a run whose
        // folders are full); the file, written first, wins when both are there.
        if let Some(operation) = &started.exec
            && let Ok(Some(code)) = inner.lxd.exec_return(operation).await
        {
            return Some(Outcome::Exited(workspace.exit_status().unwrap_or(code)));
        }
        if !workspace.bounded() {
            match workspace.disk_usage().await {
                Ok(used) if used > limits.disk_bytes => {
                    return Some(Outcome::Failed(format!(
                        "the run's outputs and logs outgrew its disk limit of {}",
                        pirus_server::options::format_size(limits.disk_bytes)
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Some(Outcome::Failed(format!(
                        "the run's folders cannot be weighed: {e}"
                    )));
                }
            }
        }
        None
    }

    /// Drives the container towards the pending control request, and records what happened.
    async fn apply_control(&self, attempt: &Attempt, paused: &mut bool) -> Option<Outcome> {
        let desired = match self.inner.stores.queue.desired(attempt.run).await {
            Ok(d) => d?,
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "cannot read the run's desired state");
                return None;
            }
        };
        let (action, event, message) = match (desired, *paused) {
            (Desired::Canceled, _) => return Some(Outcome::Canceled),
            (Desired::Pause, false) => (Action::Freeze, Event::Paused, "paused"),
            (Desired::Running, true) => (Action::Unfreeze, Event::Resumed, "resumed"),
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
        *paused = event == Event::Paused;
        let change = Change::new(event, message);
        match self.change(attempt, change).await {
            Ok(true) => None,
            Ok(false) => Some(Outcome::Lost),
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "could not record the control request");
                None
            }
        }
    }

    /// Records a progress value; false when this node no longer holds the run.
    pub(super) async fn publish_progress(&self, attempt: &Attempt, p: Progress) -> bool {
        let message = format!("progress {:.3} {}", p.value, p.label);
        match self
            .change(
                attempt,
                Change {
                    progress: Some(p),
                    ..Change::new(Event::Noted, message)
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
}
