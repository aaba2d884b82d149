//! Ending an attempt: the container goes first (so nothing inside can change what is read),
//! then the results are collected, the run's folders removed, and the end recorded.

use tes::v1::types::{requests::Task, responses::OutputFile};

use super::{Attempt, Executor, Outcome, container, progress, results, task, workspace};
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
        // A TES task's report, read once nothing in the container can change it.
        let tes = crate::tes::task::of_run(run);
        let report = match (&tes, &workspace) {
            (Some(t), Some(w)) => Some(task::report(w, t)),
            _ => None,
        };
        let mut delivered = Vec::new();
        let ending = match outcome {
            Outcome::Lost => None,
            Outcome::Exited(code) => {
                let ended = Ended {
                    code,
                    task: tes.as_ref(),
                    problem: report
                        .as_ref()
                        .zip(tes.as_ref())
                        .and_then(|((r, _), t)| problem(r, t)),
                };
                self.finish_exited(run, attempt, workspace.as_ref(), ended, &mut delivered)
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
        // The task log goes in before the end is recorded: a client that sees the task end
        // sees its log.
        if let (Some(t), Some((report, logs))) = (&tes, report) {
            let record = task::record(logs, &report, t, delivered);
            let stored = match serde_json::to_value(record) {
                Ok(record) => {
                    inner
                        .stores
                        .runs
                        .set_attempt_log(run.id, &inner.node, run.attempt, record)
                        .await
                }
                Err(e) => Err(Error::internal(e)),
            };
            if let Err(e) = stored {
                tracing::warn!(run = %run.id, error = %e, "could not record the task's log");
            }
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
        // The folders go once the end is recorded: a runner stopped in between leaves folders
        // of an ended run, which the next start's sweep removes; the other way round it would
        // find a FINISHING run without its folders and end it ERROR, its outputs delivered.
        let removed = match workspace {
            Some(workspace) => workspace.remove(&inner.storage).await,
            None => self.discard(attempt).await,
        };
        if let Err(e) = removed {
            tracing::warn!(run = %run.id, error = %e, "could not remove the run's folders");
        }
        // Its inputs may be used by no run now.
        if let Err(e) = inner.artifacts.trim_inputs().await {
            tracing::warn!(error = %e, "could not trim the input cache");
        }
    }

    /// A command that exited: FINISHING, then its outputs and logs collected; answers the end.
    /// A TES task whose script reported a problem (an input it could not place, an output that
    /// was not there) ends ERROR with exit status 0, which TES reads as SYSTEM_ERROR; its
    /// `file://` outputs are written beneath the node's roots into `delivered`.
    async fn finish_exited(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        ended: Ended<'_>,
        delivered: &mut Vec<OutputFile>,
    ) -> Option<(Event, String)> {
        let code = ended.code;
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
        if let (Ok(true), 0, Some(problem)) = (&finishing, code, &ended.problem) {
            let _ = self.collect(attempt, workspace, false).await;
            return Some((Event::Collected { ok: false }, problem.clone()));
        }
        match finishing {
            Ok(true) => {
                let mut collected = self.collect_outputs(attempt, workspace, ended.task).await;
                if let (Ok(()), 0, Some(t), Some(w)) = (&collected, code, ended.task, workspace) {
                    match task::deliver(w, t, &self.inner.tes_file_roots).await {
                        Ok(files) => *delivered = files,
                        Err(e) => collected = Err(e),
                    }
                }
                Some(match (collected, code) {
                    (Err(e), _) => (
                        Event::Collected { ok: false },
                        format!("{message}; collecting its results failed: {e}"),
                    ),
                    (Ok(()), 0) => (Event::Collected { ok: true }, message),
                    (Ok(()), _) => (Event::Collected { ok: false }, message),
                })
            }
            Ok(false) => None,
            Err(e) => Some((Event::Failed, format!("{message}; {e}"))),
        }
    }

    /// Pushes the logs and outputs: all of a run's, and of a task's those for the catalogue.
    async fn collect_outputs(
        &self,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        task: Option<&Task>,
    ) -> Result<()> {
        match task {
            None => self.collect_some(attempt, workspace, true, &|_| true).await,
            Some(t) => {
                let keep = |staged: &str| task::for_catalogue(t, staged);
                self.collect_some(attempt, workspace, true, &keep).await
            }
        }
    }

    /// Pushes the logs, and the outputs when `outputs`.
    async fn collect(
        &self,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        outputs: bool,
    ) -> Result<()> {
        self.collect_some(attempt, workspace, outputs, &|_| true)
            .await
    }

    /// Pushes the logs, and the outputs `keep` takes when `outputs`; what was skipped becomes
    /// an event.
    async fn collect_some(
        &self,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        outputs: bool,
        keep: &(dyn Fn(&str) -> bool + Sync),
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
            keep,
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

/// How a command ended, with what a TES task's script reported.
struct Ended<'a> {
    code: i32,
    task: Option<&'a Task>,
    /// Why the task failed though its executors did not.
    problem: Option<String>,
}

/// A failure the script reported that was not an executor's.
fn problem(report: &crate::tes::script::Report, task: &Task) -> Option<String> {
    if let Some(first) = report.system.first() {
        return Some(first.clone());
    }
    let outputs = task.outputs.as_deref().unwrap_or_default();
    let missing: Vec<String> = report
        .missing
        .iter()
        .filter_map(|&i| outputs.get(i).map(|o| format!("outputs[{i}] ({})", o.path)))
        .collect();
    (!missing.is_empty()).then(|| format!("missing outputs: {}", missing.join(", ")))
}
