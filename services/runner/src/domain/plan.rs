//! What a run executes, whoever asked for it: a [`Plan`]. Each edge makes one at submission
//! (SubmitRun a one-step plan from the pipeline's manifest, the TES edge a plan of a task's
//! executors) and the executor runs any plan without knowing which edge made it. Plans are
//! stored with their run (`runs.plan`), so a runner that restarts, or another that takes the
//! run over, runs exactly what was submitted.
//!
//! A plan either keeps the pipeline convention ([`Staging`] absent: the run's input files and
//! `config.json` in the inputs folder, everything left in the outputs folder collected) or
//! stages files itself: inputs placed at paths, folders made, outputs picked by path and sent
//! to the catalogue or beneath a host folder, and a report of each step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a run executes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Run in order, in one container of the run's image.
    pub steps: Vec<Step>,
    /// `None`: the pipeline convention (one step, the run's folders as CONTRACT §5 says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<Staging>,
}

/// One command of a plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    /// The program and its arguments, as exec(2) takes them.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Paths inside the container the step's standard streams come from or go to; unset, its
    /// output goes to the run's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// A failure of this step does not stop the plan.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_error: bool,
}

/// What a plan that stages its own files places and picks up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Staging {
    /// Placed before the first step, in order.
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Folders made before the first step.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Picked up after the last step, in order.
    #[serde(default)]
    pub outputs: Vec<Output>,
}

/// A file or folder placed at `path` inside the container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Input {
    pub path: String,
    /// A folder of files rather than one file.
    #[serde(default)]
    pub directory: bool,
    pub source: Source,
}

/// Where an input's bytes come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// These bytes, given with the submission.
    Content(String),
    /// Catalogue files (one for a file; a folder's, in order).
    Catalogue(Vec<Uuid>),
    /// A host file (an absolute path), read only beneath the node's allowed roots.
    Host(String),
    /// A URL this service cannot fetch: the run ends naming it.
    Unfetchable(String),
}

/// Files picked up at `path` (wildcards `*` and `?` allowed) after the last step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Output {
    pub path: String,
    /// For wildcard paths: the part of each match dropped before it is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub directory: bool,
    pub to: Destination,
}

/// Where an output goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Destination {
    /// Files of the run in the catalogue.
    Catalogue,
    /// Beneath this host path (absolute), only within the node's allowed roots.
    Host(String),
    /// A URL this service cannot write: the run ends naming it.
    Unwritable(String),
}

impl Plan {
    /// A pipeline's plan: its manifest's `run` command, run with `sh -c` (CONTRACT §4), in
    /// the pipeline convention.
    pub(crate) fn pipeline(manifest: &serde_json::Value) -> Option<Self> {
        let command = manifest["run"].as_str().filter(|c| !c.is_empty())?;
        Some(Self {
            steps: vec![Step {
                command: vec!["/bin/sh".into(), "-c".into(), command.into()],
                ..Step::default()
            }],
            staging: None,
        })
    }
}

/// Whether a plan's path holds wildcards.
pub(crate) fn has_wildcards(path: &str) -> bool {
    path.contains(['*', '?'])
}

/// What one attempt of a staged plan left: a log per step that ran, failures that were not a
/// step's, and the outputs written beneath host folders. Stored with the attempt; the field
/// names are those records have had since before plans (`executors`, `outputs`), so records
/// written then read the same.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AttemptRecord {
    #[serde(default, rename = "executors")]
    pub steps: Vec<StepLog>,
    #[serde(default)]
    pub system_logs: Vec<String>,
    /// Outputs delivered beneath host folders.
    #[serde(default, rename = "outputs")]
    pub delivered: Vec<Delivered>,
}

/// One step's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
    /// The tail of the step's share of the run's stdout and stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// -1 for a step cut short (canceled, timed out, lost).
    pub exit_code: i32,
}

/// An output written beneath a host folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Delivered {
    /// `file://` and the host path it was written to.
    pub url: String,
    /// Its path inside the container.
    pub path: String,
    /// Its size, as a decimal string.
    pub size_bytes: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_plan_is_its_run_command_under_sh() {
        let plan = Plan::pipeline(&serde_json::json!({"run": "/pipeline/run.sh x"})).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(
            plan.steps[0].command,
            ["/bin/sh", "-c", "/pipeline/run.sh x"]
        );
        assert!(plan.staging.is_none());
        assert!(Plan::pipeline(&serde_json::json!({"run": ""})).is_none());
        assert!(Plan::pipeline(&serde_json::json!({})).is_none());
    }

    #[test]
    fn plans_round_trip_through_their_stored_form() {
        let plan = Plan {
            steps: vec![Step {
                command: vec!["cat".into()],
                stdin: Some("/in/a".into()),
                ignore_error: true,
                ..Step::default()
            }],
            staging: Some(Staging {
                inputs: vec![Input {
                    path: "/in/a".into(),
                    directory: false,
                    source: Source::Catalogue(vec![Uuid::nil()]),
                }],
                folders: vec!["/v".into()],
                outputs: vec![Output {
                    path: "/out/*.txt".into(),
                    path_prefix: Some("/out".into()),
                    directory: false,
                    to: Destination::Host("/srv/o".into()),
                }],
            }),
        };
        let stored = serde_json::to_value(&plan).unwrap();
        assert_eq!(serde_json::from_value::<Plan>(stored).unwrap(), plan);
    }

    /// Records written before plans (TES task logs) read as attempt records.
    #[test]
    fn attempt_records_written_before_plans_still_read() {
        let old = serde_json::json!({
            "executors": [{"start_time": "2026-11-30T10:00:00Z", "exit_code": 3, "stdout": "x"}],
            "system_logs": ["input 1: cannot place it"],
            "outputs": [{"url": "file:///srv/o/x", "path": "/x", "size_bytes": "2"}]
        });
        let record: AttemptRecord = serde_json::from_value(old).unwrap();
        assert_eq!(record.steps[0].exit_code, 3);
        assert_eq!(record.steps[0].stdout.as_deref(), Some("x"));
        assert_eq!(record.delivered[0].url, "file:///srv/o/x");
        assert_eq!(record.system_logs.len(), 1);
    }
}
