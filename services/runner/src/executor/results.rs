//! Collecting a run's results once its container is gone: the two logs, and the outputs when
//! the command ended. Every file is opened through the workspace (regular files only, never
//! through a link) and pushed from its open handle, within the run's disk limit. What is not a
//! regular file is skipped and named, for the run's events.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    safedir::{Skipped, refusal},
    workspace::Workspace,
};
use crate::{
    catalogue::{Catalogue, PushKind},
    domain::{Error, Result},
};

/// Outputs pushed at once: each push is a few round trips to the catalogue and a commit
/// there, so a run of thousands of small outputs is collected in parallel.
const PARALLEL_PUSHES: usize = 4;

/// What collection left out, for the run's events.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub skipped: Vec<Skipped>,
    /// A log longer than the run's disk limit was cut there.
    pub truncated: Vec<String>,
    /// Collection was stopped before every output was pushed (the run was canceled, or its
    /// time ran out).
    pub stopped: bool,
}

impl Collected {
    /// One event message naming what was skipped or cut (at most a few dozen names).
    pub(super) fn message(&self) -> Option<String> {
        const SHOWN: usize = 20;
        let mut parts = Vec::new();
        if !self.skipped.is_empty() {
            let mut names: Vec<String> = self
                .skipped
                .iter()
                .take(SHOWN)
                .map(|s| format!("{} ({})", s.name, s.why))
                .collect();
            if self.skipped.len() > SHOWN {
                names.push(format!("and {} more", self.skipped.len() - SHOWN));
            }
            parts.push(format!(
                "skipped what is not a regular file: {}",
                names.join(", ")
            ));
        }
        if !self.truncated.is_empty() {
            parts.push(format!(
                "cut at the run's disk limit: {}",
                self.truncated.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Pushes the logs, and the outputs when `outputs` (those `keep` takes, by relative path), to
/// the catalogue. `budget` is the run's disk limit, and bounds the bytes pushed in all: the
/// logs first (a log past what is left is cut), then the outputs (refused if they add up to
/// more than is left). Counted in bytes, not in blocks used: a sparse file weighs its size.
/// Outputs are pushed [`PARALLEL_PUSHES`] at a time, until `stop` is cancelled.
pub(super) async fn collect(
    catalogue: &Catalogue,
    run: Uuid,
    workspace: &Workspace,
    outputs: bool,
    keep: &(dyn Fn(&str) -> bool + Sync),
    budget: u64,
    stop: &CancellationToken,
) -> Result<Collected> {
    let mut collected = Collected::default();
    let mut left = budget;
    for log in ["out.log", "err.log"] {
        match workspace.open_log(log) {
            Ok(Some(file)) => {
                let size = file.size.min(left);
                left -= size;
                if size < file.size {
                    collected.truncated.push(log.to_owned());
                }
                catalogue
                    .push(run, PushKind::Log, log, file.file, size)
                    .await?;
            }
            Ok(None) => {}
            Err(e) => collected.skipped.push(Skipped {
                name: format!("logs/{log}"),
                why: refusal(&e).ok_or_else(|| Error::from(e))?,
            }),
        }
    }
    if !outputs {
        return Ok(collected);
    }
    let listing = workspace.list_outputs().await?;
    let total = listing.total_size();
    if total > left {
        return Err(Error::internal(format!(
            "the outputs hold {total} bytes, more than the {left} bytes left of the run's disk \
             limit of {budget} bytes after its logs"
        )));
    }
    collected.skipped.extend(listing.skipped);
    let push = |relative: String| async move {
        match workspace.open_output(&relative) {
            Ok(Some(file)) => catalogue
                .push(run, PushKind::Output, &relative, file.file, file.size)
                .await
                .map(|()| None),
            Ok(None) => Ok(None),
            Err(e) => Ok(Some(Skipped {
                why: refusal(&e).ok_or_else(|| Error::from(e))?,
                name: relative,
            })),
        }
    };
    let kept = listing.files.into_iter().filter(|(r, _)| keep(r));
    let mut pushes = futures::stream::iter(kept.map(|(relative, _)| push(relative)))
        .buffer_unordered(PARALLEL_PUSHES);
    loop {
        let pushed = tokio::select! {
            biased;
            () = stop.cancelled() => {
                collected.stopped = true;
                break;
            }
            pushed = pushes.next() => pushed,
        };
        match pushed {
            None => break,
            Some(Ok(skipped)) => collected.skipped.extend(skipped),
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(collected)
}
