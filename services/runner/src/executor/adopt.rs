//! Taking runs back at start-up: this node's containers and folders matched with the runs it
//! holds (the rest swept), and each held run resumed where it was.

use pirus_db::listen::Notice;
use tokio::sync::broadcast;

use super::workspace::Workspace;
use super::{Attempt, Executor, Outcome, SETTLE, Started, container, progress};
use crate::domain::{Result, Run, RunStatus};

impl Executor {
    /// At start-up, before claiming: matches this node's containers and run folders with the
    /// runs it holds. Containers and folders of anything else are removed; the runs it holds
    /// are answered, to be resumed with [`Executor::resume`].
    pub(crate) async fn adopt_at_start(&self) -> Result<Vec<Run>> {
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
    pub(crate) async fn resume(&self, run: Run) {
        let attempt = self.attempt(&run).await;
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
                self.watch_again(&run, &attempt, &mut progress, &mut control)
                    .await
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

    /// A RUNNING or PAUSE run taken back: watched again while its container is there; ended
    /// as its exit status file says when the container went while the runner was away.
    async fn watch_again(
        &self,
        run: &Run,
        attempt: &Attempt,
        progress: &mut progress::Tracker,
        control: &mut broadcast::Receiver<Notice>,
    ) -> (Option<Workspace>, Outcome) {
        let found = self.inner.lxd.instance(&attempt.container).await;
        match (self.open_workspace(attempt).await, found) {
            (Ok(workspace), Ok(Some(_))) => {
                let started = Started {
                    workspace,
                    exec: None,
                };
                let paused = run.status == RunStatus::Pause;
                let outcome = self
                    .monitor(run, attempt, &started, progress, control, paused)
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
                    Outcome::Failed("the container disappeared while its runner was away".into()),
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
}
