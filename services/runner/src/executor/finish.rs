//! Ending an attempt: the container goes first (so nothing inside can change what is read),
//! then the results are collected, the run's folders removed, and the end recorded.

use tokio_util::sync::CancellationToken;

use super::{Attempt, Executor, Outcome, container, progress, results, staging, workspace};
use crate::{
    domain::{
        Error, Result, Run, RunStatus,
        plan::{AttemptRecord, Delivered, Staging},
    },
    lifecycle::Desired,
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
        // A re-adopted run whose plan cannot be read cannot be collected as its plan says.
        let outcome = match (outcome, &attempt.plan_error) {
            (Outcome::Exited(_), Some(why)) => Outcome::Failed(why.clone()),
            (outcome, _) => outcome,
        };
        // A staged plan's report, read once nothing in the container can change it.
        let staged = attempt
            .plan
            .as_ref()
            .and_then(|p| Some((p.steps.len(), p.staging.as_ref()?)));
        let report = match (staged, &workspace) {
            (Some((steps, s)), Some(w)) => Some(staging::report(w, steps, s)),
            _ => None,
        };
        let staging = staged.map(|(_, s)| s);
        let mut delivered = Vec::new();
        let ended = Ended {
            staging,
            problem: report
                .as_ref()
                .zip(staging)
                .and_then(|((r, _), s)| staging::problem(r, s)),
        };
        let ending = self
            .conclude(
                run,
                attempt,
                workspace.as_ref(),
                outcome,
                ended,
                &mut delivered,
            )
            .await;
        // The attempt's record goes in before the end is recorded: a client that sees the run
        // end sees its record.
        if let (Some(s), Some((report, logs))) = (staging, report) {
            self.record_steps(run, staging::record(logs, &report, s, delivered))
                .await;
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
        self.tidy(run, attempt, workspace).await;
    }

    /// What the outcome means for the run, its results collected as it allows: an event and
    /// its message (`None`: this node lost the run, and records nothing).
    async fn conclude(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        outcome: Outcome,
        ended: Ended<'_>,
        delivered: &mut Vec<Delivered>,
    ) -> Option<(Event, String)> {
        let (event, message) = match outcome {
            Outcome::Lost => return None,
            Outcome::Exited(code) => {
                return self
                    .finish_exited(run, attempt, workspace, code, ended, delivered)
                    .await;
            }
            Outcome::TimedOut(limit) => (
                Event::Failed,
                format!("timed out after {}s", limit.as_secs()),
            ),
            Outcome::Failed(reason) => (Event::Failed, reason),
            Outcome::Canceled => (Event::Canceled, "canceled on request".to_owned()),
        };
        // The logs only: no outputs of a run that did not end by itself.
        let _ = self.collect(attempt, workspace, false).await;
        Some((event, message))
    }

    /// Stores what a staged plan's attempt left (a failure is logged: the run still ends).
    async fn record_steps(&self, run: &Run, record: AttemptRecord) {
        let inner = &self.inner;
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
            tracing::warn!(run = %run.id, error = %e, "could not record the attempt's steps");
        }
    }

    /// Removes the attempt's folders, once its end is recorded: a runner stopped in between
    /// leaves folders of an ended run, which the next start's sweep removes; the other way
    /// round it would find a FINISHING run without its folders and end it ERROR, its outputs
    /// delivered. Then trims the input cache, whose inputs the run may have been the last to
    /// use.
    async fn tidy(&self, run: &Run, attempt: &Attempt, workspace: Option<Workspace>) {
        let inner = &self.inner;
        let removed = match workspace {
            Some(workspace) => workspace.remove(&inner.storage).await,
            None => self.discard(attempt).await,
        };
        if let Err(e) = removed {
            tracing::warn!(run = %run.id, error = %e, "could not remove the run's folders");
        }
        if let Err(e) = inner.artifacts.trim_inputs().await {
            tracing::warn!(error = %e, "could not trim the input cache");
        }
    }

    /// A command that exited: FINISHING, then its outputs and logs collected; answers the end.
    /// A staged plan whose script reported a problem (an input it could not place, an output
    /// that was not there) ends ERROR with exit status 0 (not a step's failure); its host
    /// outputs are written beneath the node's roots into `delivered`.
    async fn finish_exited(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        code: i32,
        ended: Ended<'_>,
        delivered: &mut Vec<Delivered>,
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
        if let (Ok(true), 0, Some(problem)) = (&finishing, code, &ended.problem) {
            let _ = self.collect(attempt, workspace, false).await;
            return Some((Event::Collected { ok: false }, problem.clone()));
        }
        match finishing {
            Ok(true) => {
                let collected = self
                    .collect_outputs(run, attempt, workspace, ended.staging)
                    .await;
                let mut collected = match collected {
                    Ok(Some(Stopped::Canceled)) => {
                        let why = format!(
                            "{message}; canceled on request while its outputs were collected"
                        );
                        return Some((Event::Canceled, why));
                    }
                    Ok(Some(Stopped::TimedOut(limit))) => {
                        let why = format!(
                            "{message}; timed out after {}s while its outputs were collected",
                            limit.as_secs()
                        );
                        return Some((Event::Failed, why));
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                if let (Ok(()), 0, Some(s), Some(w)) = (&collected, code, ended.staging, workspace)
                {
                    match staging::deliver(w, s, &self.inner.tes_file_roots).await {
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

    /// Pushes the logs and outputs: all of a run's, and of a staged plan's those for the
    /// catalogue. Stops early (saying why) when the run is canceled meanwhile or its time
    /// limit runs out: collecting thousands of outputs is part of the run.
    async fn collect_outputs(
        &self,
        run: &Run,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        staging: Option<&Staging>,
    ) -> Result<Option<Stopped>> {
        let stop = CancellationToken::new();
        let watch = tokio::spawn(self.watch_collection(run, attempt, stop.clone()));
        let stopped = match staging {
            None => {
                self.collect_some(attempt, workspace, true, &|_| true, &stop)
                    .await
            }
            Some(s) => {
                let keep = |staged: &str| staging::for_catalogue(s, staged);
                self.collect_some(attempt, workspace, true, &keep, &stop)
                    .await
            }
        };
        watch.abort();
        match stopped {
            // Stopped: the watch cancelled it, and says why.
            Ok(true) => Ok(watch.await.ok().flatten()),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Cancels `stop` when the run is asked to cancel, or when its time limit runs out;
    /// answers which.
    fn watch_collection(
        &self,
        run: &Run,
        attempt: &Attempt,
        stop: CancellationToken,
    ) -> impl Future<Output = Option<Stopped>> + Send + 'static {
        let queue = self.inner.stores.queue.clone();
        let (id, limit) = (run.id, attempt.limits.time);
        // The limit counts from the command's start (the monitor's clock), or for a run taken
        // over while finishing, from when it started.
        let deadline = attempt.deadline().or_else(|| {
            let since = (chrono::Utc::now() - run.started_at?).to_std().ok()?;
            Some(std::time::Instant::now() - since + limit)
        });
        async move {
            loop {
                tokio::time::sleep(COLLECTION_CHECK).await;
                if deadline.is_some_and(|d| std::time::Instant::now() > d) {
                    stop.cancel();
                    return Some(Stopped::TimedOut(limit));
                }
                if let Ok(Some(Desired::Canceled)) = queue.desired(id).await {
                    stop.cancel();
                    return Some(Stopped::Canceled);
                }
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
        let never = CancellationToken::new();
        self.collect_some(attempt, workspace, outputs, &|_| true, &never)
            .await
            .map(drop)
    }

    /// Pushes the logs, and the outputs `keep` takes when `outputs`, until `stop`; what was
    /// skipped becomes an event. Answers whether `stop` cut it short.
    async fn collect_some(
        &self,
        attempt: &Attempt,
        workspace: Option<&Workspace>,
        outputs: bool,
        keep: &(dyn Fn(&str) -> bool + Sync),
        stop: &CancellationToken,
    ) -> Result<bool> {
        let Some(workspace) = workspace else {
            return if outputs {
                Err(Error::internal("the run's folders are gone"))
            } else {
                Ok(false)
            };
        };
        let collected = results::collect(
            &self.inner.catalogue,
            attempt.run,
            workspace,
            outputs,
            keep,
            attempt.limits.disk_bytes,
            stop,
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
        Ok(collected.stopped)
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

/// How often collecting outputs looks for a cancel and at the time limit.
const COLLECTION_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Why collecting outputs stopped early.
enum Stopped {
    Canceled,
    TimedOut(std::time::Duration),
}

/// How a command ended, with what a staged plan's script reported.
struct Ended<'a> {
    staging: Option<&'a Staging>,
    /// Why the plan failed though its steps did not.
    problem: Option<String>,
}
