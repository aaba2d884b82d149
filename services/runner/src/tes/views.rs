//! Runs answered as TES tasks (CONTRACT §8): their state, and the MINIMAL, BASIC and FULL
//! views, made from the task stored with the run and what each attempt recorded.

use std::collections::{BTreeMap, HashMap};

use pirus_db::views::RunOutput;
use tes::v1::types::{
    requests::{self, View},
    responses::{ExecutorLog, MinimalTask, OutputFile, Task, TaskLog},
    task::State,
};
use uuid::Uuid;

use super::Scheme;
use crate::{
    domain::{
        Result, Run, RunStatus,
        plan::{AttemptRecord, Delivered, StepLog},
    },
    runs::Runs,
    store::AttemptLog,
};

/// The task a run holds (its `tes` column), if it is one.
pub(super) fn of_run(run: &Run) -> Option<requests::Task> {
    run.tes
        .as_ref()
        .and_then(|t| serde_json::from_value(t.clone()).ok())
}

/// A run's TES state (CONTRACT §8).
pub(super) fn state(run: &Run) -> State {
    match run.status {
        RunStatus::Waiting => State::Queued,
        RunStatus::Initializing => State::Initializing,
        RunStatus::Running | RunStatus::Finishing => State::Running,
        RunStatus::Pause => State::Paused,
        RunStatus::Done => State::Complete,
        RunStatus::Error if run.exit_code.is_some_and(|c| c != 0) => State::ExecutorError,
        RunStatus::Error => State::SystemError,
        RunStatus::Canceled => State::Canceled,
    }
}

/// The statuses (and, for errors, whether the command failed) a TES state stands for.
pub(super) fn statuses(state: State) -> Option<(Vec<RunStatus>, Option<bool>)> {
    use RunStatus as S;
    Some(match state {
        State::Queued => (vec![S::Waiting], None),
        State::Initializing => (vec![S::Initializing], None),
        State::Running => (vec![S::Running, S::Finishing], None),
        State::Paused => (vec![S::Pause], None),
        State::Complete => (vec![S::Done], None),
        State::ExecutorError => (vec![S::Error], Some(true)),
        State::SystemError => (vec![S::Error], Some(false)),
        State::Canceled => (vec![S::Canceled], None),
        // Never a Pirus run's state.
        State::Unknown | State::Canceling | State::Preempted => return None,
    })
}

pub(super) fn minimal(run: &Run) -> MinimalTask {
    MinimalTask {
        id: run.id.to_string(),
        state: Some(state(run)),
    }
}

/// What a task's BASIC and FULL views are made from.
#[derive(Default)]
pub(super) struct Detail {
    pub attempts: Vec<AttemptLog>,
    pub outputs: Vec<RunOutput>,
}

/// The catalogue outputs of a task, from its run's output files (`<output index>/<path>`).
fn catalogue_outputs(task: &requests::Task, files: &[RunOutput]) -> Vec<OutputFile> {
    let outputs = task.outputs.as_deref().unwrap_or_default();
    files
        .iter()
        .filter_map(|f| {
            let (index, path) = f.name.split_once('/')?;
            let output = outputs.get(index.parse::<usize>().ok()?)?;
            (Scheme::of(&output.url) == Scheme::Pirus).then(|| OutputFile {
                url: format!("pirus://files/{}", f.id),
                path: format!("/{path}"),
                size_bytes: f.size.unwrap_or(0).to_string(),
            })
        })
        .collect()
}

/// A run as a TES task in the BASIC or FULL view.
pub(super) fn task(run: &Run, detail: &Detail, view: View) -> Task {
    let mut spec = of_run(run).unwrap_or_default();
    let full = view == View::Full;
    if !full {
        for input in spec.inputs.iter_mut().flatten() {
            input.content = None;
        }
    }
    let last = detail.attempts.iter().map(|a| a.attempt).max();
    let logs: Vec<TaskLog> = detail
        .attempts
        .iter()
        .map(|a| {
            let record: AttemptRecord = a
                .tes_log
                .clone()
                .and_then(|l| serde_json::from_value(l).ok())
                .unwrap_or_default();
            let mut outputs: Vec<OutputFile> =
                record.delivered.into_iter().map(output_file).collect();
            if Some(a.attempt) == last {
                outputs.splice(0..0, catalogue_outputs(&spec, &detail.outputs));
            }
            let executors = record
                .steps
                .into_iter()
                .map(|step| executor_log(step, full))
                .collect();
            let mut system = record.system_logs;
            if !a.error_message.is_empty() {
                system.push(a.error_message.clone());
            }
            TaskLog {
                logs: executors,
                metadata: None,
                start_time: Some(a.started_at),
                end_time: a.ended_at,
                outputs,
                system_logs: (full && !system.is_empty()).then_some(system),
            }
        })
        .collect();
    Task {
        id: Some(run.id.to_string()),
        state: Some(state(run)),
        name: spec.name,
        description: spec.description,
        inputs: spec.inputs.filter(|v| !v.is_empty()),
        outputs: spec.outputs.filter(|v| !v.is_empty()),
        resources: spec.resources,
        executors: spec.executors,
        volumes: spec.volumes.filter(|v| !v.is_empty()),
        tags: spec.tags.filter(|t: &BTreeMap<_, _>| !t.is_empty()),
        logs: (!logs.is_empty()).then_some(logs),
        creation_time: Some(run.created_at),
    }
}

/// What the BASIC and FULL views of tasks add to their runs (their attempts' records and
/// their catalogue outputs), for a page of them in two queries; in the order of `runs`.
pub(super) async fn details(runs: &Runs, of: &[Run]) -> Result<Vec<Detail>> {
    let ids: Vec<Uuid> = of.iter().map(|r| r.id).collect();
    let mut details: HashMap<Uuid, Detail> =
        ids.iter().map(|id| (*id, Detail::default())).collect();
    for attempt in runs.stores.runs.attempt_logs(&ids).await? {
        if let Some(d) = details.get_mut(&attempt.run_id) {
            d.attempts.push(attempt);
        }
    }
    for output in pirus_db::views::run_outputs(runs.stores.db(), &ids).await? {
        if let Some(d) = details.get_mut(&output.source_run_id) {
            d.outputs.push(output);
        }
    }
    Ok(ids
        .iter()
        .map(|id| details.remove(id).unwrap_or_default())
        .collect())
}

/// A step's record as an executor log; its output only in the FULL view.
fn executor_log(step: StepLog, full: bool) -> ExecutorLog {
    ExecutorLog {
        start_time: step.start_time,
        end_time: step.end_time,
        stdout: step.stdout.filter(|_| full),
        stderr: step.stderr.filter(|_| full),
        exit_code: step.exit_code,
    }
}

fn output_file(d: Delivered) -> OutputFile {
    OutputFile {
        url: d.url,
        path: d.path,
        size_bytes: d.size_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_both_ways() {
        for state in [
            State::Queued,
            State::Initializing,
            State::Running,
            State::Paused,
            State::Complete,
            State::ExecutorError,
            State::SystemError,
            State::Canceled,
        ] {
            assert!(statuses(state).is_some(), "{state:?}");
        }
        assert!(statuses(State::Preempted).is_none());
    }
}
