//! Ending an attempt: the container goes first (so nothing inside can change what is read),
//! then the results are collected, the run's folders removed, and the end recorded.

use super::{Attempt, Executor, Outcome, container, progress, results, workspace};
use crate::{
    domain::{Error, Result, Run, RunStatus},
    lifecycle::Event,
    store::Change,
};
use workspace::Workspace;

impl Executor {
    /// Ends an attempt: the container goes first (so nothing inside can change what is read),
    /// then the results are collected, the run's folders removed, and the end recorded.
    pub(super) async fn finish(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<Workspace>,
        outcome: Outcome,
        progress: &mut progress::Tracker,
    ) {
        let inner = &self.inner;
        let workspace = match workspace {
            Some(w) => Some(w),
            None => self.open_workspace(attempt).await.ok(),
        };
        if matches!(outcome, Outcome::Lost) {
            tracing::warn!(run = %run.id, attempt = run.attempt, "this node lost the run; removing its container");
        } else if let Some(p) =
            progress.poll_now(workspace.as_ref().and_then(|w| w.progress()).as_deref())
        {
            // The progress file is read once more after the command ends.
            self.publish_progress(attempt, p).await;
        }
        if let Err(e) = container::remove(&inner.lxd, &attempt.container).await {
            tracing::warn!(run = %run.id, error = %e, "could not remove the container");
        }
        let ending = match outcome {
            Outcome::Lost => None,
            Outcome::Exited(code) => {
                self.finish_exited(run, attempt, workspace.as_ref(), code)
                    .await
            }
            Outcome::TimedOut(limit) => {
                let _ = self.collect(attempt, workspace.as_ref(), false).await;
                Some((
                    Event::Failed,
                    format!("timed out after {}s", limit.as_secs()),
                ))
            }
            Outcome::Failed(reason) => {
                let _ = self.collect(attempt, workspace.as_ref(), false).await;
                Some((Event::Failed, reason))
            }
            Outcome::Canceled => {
                let _ = self.collect(attempt, workspace.as_ref(), false).await;
                Some((Event::Canceled, "canceled on request".to_owned()))
            }
        };
        let removed = match workspace {
            Some(workspace) => workspace.remove(&inner.storage).await,
            None => self.discard(attempt).await,
        };
        if let Err(e) = removed {
            tracing::warn!(run = %run.id, error = %e, "could not remove the run's folders");
        }
        if let Some((event, message)) = ending {
            let failed = matches!(event, Event::Failed | Event::Collected { ok: false });
            let end = Change {
                error_message: failed.then(|| message.clone()),
                ..Change::new(event, message)
            };
            if let Err(e) = self.change(attempt, end).await {
                tracing::error!(run = %run.id, error = %e, "could not record the end of the run");
            }
        }
    }

    /// A command that exited: FINISHING, then its outputs and logs collected; answers the end.
    async fn finish_exited(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        code: i32,
    ) -> Option<(Event, String)> {
        let message = format!("command exited with status {code}");
        let finishing = if run.status == RunStatus::Finishing {
            Ok(true)
        } else {
            let exited = Change {
                exit_code: Some(code),
                ..Change::new(Event::Exited, message.clone())
            };
            self.change(attempt, exited).await
        };
        match finishing {
            Ok(true) => Some(match (self.collect(attempt, workspace, true).await, code) {
                (Err(e), _) => (
                    Event::Collected { ok: false },
                    format!("{message}; collecting its results failed: {e}"),
                ),
                (Ok(()), 0) => (Event::Collected { ok: true }, message),
                (Ok(()), _) => (Event::Collected { ok: false }, message),
            }),
            Ok(false) => None,
            Err(e) => Some((Event::Failed, format!("{message}; {e}"))),
        }
    }

    /// Pushes the logs, and the outputs when `outputs`; what was skipped becomes an event.
    async fn collect(
        &self,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        outputs: bool,
    ) -> Result<()> {
        let Some(workspace) = workspace else {
            return if outputs {
                Err(Error::internal("the run's folders are gone"))
            } else {
                Ok(())
            };
        };
        let collected = results::collect(
            &self.inner.catalogue,
            attempt.run,
            workspace,
            outputs,
            attempt.limits.disk_bytes,
        )
        .await;
        let collected = match collected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(run = %attempt.run, error = %e, "collecting results failed");
                return Err(e);
            }
        };
        if let Some(message) = collected.message()
            && let Err(e) = self
                .change(attempt, Change::new(Event::Noted, message))
                .await
        {
            tracing::warn!(run = %attempt.run, error = %e, "could not record what was skipped");
        }
        Ok(())
    }

    /// Removes an attempt's folders and volume without a workspace at hand.
    async fn discard(&self, attempt: &Attempt) -> Result<()> {
        let inner = &self.inner;
        if inner.storage.caps().await?.volumes {
            inner.storage.delete_volume(&attempt.container).await?;
        }
        let (runs, folder) = (inner.runs.clone(), attempt.folder.clone());
        workspace::blocking(move || runs.remove_tree(&folder)).await
    }
}
