//! TES tasks as Pirus runs: a submitted task validated (every problem named by its field) and
//! queued as a run of the pipeline its executors name; a run answered as a task, in the three
//! views.

use std::collections::BTreeMap;

use pirus_auth::{Caller, policy};
use pirus_db::views::{self, PipelineView, RunOutput};
use tes::v1::types::{
    requests::{self, View},
    responses::{ExecutorLog, MinimalTask, OutputFile, Task, TaskLog},
    task::{IoType, State},
};
use uuid::Uuid;

use super::{Scheme, script::has_wildcards};
use crate::{
    access,
    domain::{Error, Requested, Result, Run, RunStatus},
    runs::Runs,
    store::{AttemptLog, RunInsert},
    submit,
};

/// Executors of a task at most.
const MAX_EXECUTORS: usize = 64;
/// Words of one executor's command at most.
const MAX_ARGS: usize = 4096;
/// Bytes of one input's `content` at most, and of all of them.
/// (TES asks servers to take at least 128 KiB.)
const MAX_CONTENT: usize = 256 << 10;
const MAX_CONTENTS: usize = 1 << 20;
/// Inputs, outputs and volumes of a task at most, each.
const MAX_FILES: usize = submit::MAX_INPUTS;
const MAX_TAGS: usize = 128;
const MAX_PATH: usize = 4096;

/// Backend parameters this runner understands (TES `resources.backend_parameters`).
pub const BACKEND_PARAMETERS: [&str; 3] = ["priority", "max_attempts", "timeout_seconds"];

/// What a runner records of one attempt of a task, in `run_attempts.tes_log`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    #[serde(default)]
    pub executors: Vec<ExecutorLog>,
    #[serde(default)]
    pub system_logs: Vec<String>,
    /// Outputs delivered outside the catalogue (`file://`).
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
}

/// The task a run holds (its `tes` column), if it is one.
pub fn of_run(run: &Run) -> Option<requests::Task> {
    run.tes
        .as_ref()
        .and_then(|t| serde_json::from_value(t.clone()).ok())
}

fn invalid(field: impl AsRef<str>, message: impl Into<String>) -> Error {
    Error::invalid(field.as_ref(), message)
}

/// An absolute path inside the container: no `..`, no control characters, not the control
/// folder.
fn check_path(field: &str, path: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(invalid(field, format!("'{path}' is not an absolute path")));
    }
    if path.len() > MAX_PATH || path.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be at most {MAX_PATH} bytes, without control characters"),
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(field, format!("'{path}' has a '..' component")));
    }
    if path.trim_end_matches('/').is_empty() {
        return Err(invalid(field, "must name something below '/'"));
    }
    if path == "/.pirus" || path.starts_with("/.pirus/") {
        return Err(invalid(field, "/.pirus is the runner's own folder"));
    }
    Ok(())
}

fn check_text(field: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max || text.contains('\0') {
        return Err(invalid(
            field,
            format!("must be at most {max} bytes, without NUL characters"),
        ));
    }
    Ok(())
}

/// A backend parameter's value as a positive whole number.
fn whole(field: &str, value: &serde_json::Value) -> Result<u64> {
    let n = match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        v => v.as_u64(),
    };
    n.filter(|n| *n > 0)
        .ok_or_else(|| invalid(field, "must be a positive whole number"))
}

/// What a valid task asks of its run, beyond the task itself.
#[derive(Debug, Default)]
struct Asked {
    requested: Requested,
    priority: i32,
    max_attempts: i32,
    /// `pirus://files/<id>` inputs, in order, and the field that names each.
    files: Vec<Uuid>,
    file_fields: Vec<String>,
}

/// Checks everything about a task that does not need the database.
fn validate(task: &requests::Task) -> Result<Asked> {
    let mut asked = Asked {
        max_attempts: 1,
        ..Default::default()
    };
    if let Some(name) = &task.name
        && (name.len() > 256 || name.chars().any(char::is_control))
    {
        return Err(invalid(
            "name",
            "must be at most 256 characters, without control characters",
        ));
    }
    if let Some(description) = &task.description {
        check_text("description", description, 64 << 10)?;
    }
    if task.executors.is_empty() {
        return Err(invalid("executors", "a task needs at least one executor"));
    }
    if task.executors.len() > MAX_EXECUTORS {
        return Err(invalid(
            "executors",
            format!("a task has at most {MAX_EXECUTORS} executors"),
        ));
    }
    for (i, e) in task.executors.iter().enumerate() {
        let field = |f: &str| format!("executors[{i}].{f}");
        if e.image.trim().is_empty() {
            return Err(invalid(field("image"), "names no pipeline"));
        }
        if e.command.is_empty() {
            return Err(invalid(field("command"), "must not be empty"));
        }
        if e.command.len() > MAX_ARGS {
            return Err(invalid(
                field("command"),
                format!("has more than {MAX_ARGS} words"),
            ));
        }
        for (j, arg) in e.command.iter().enumerate() {
            check_text(&format!("executors[{i}].command[{j}]"), arg, 128 << 10)?;
        }
        for (f, path) in [
            ("workdir", &e.workdir),
            ("stdin", &e.stdin),
            ("stdout", &e.stdout),
            ("stderr", &e.stderr),
        ] {
            if let Some(path) = path {
                check_path(&field(f), path)?;
            }
        }
        for (key, value) in e.env.iter().flatten() {
            let ok = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && key.len() <= 256;
            if !ok {
                return Err(invalid(
                    field(&format!("env.{key}")),
                    "is not a variable name (letters, digits and '_', not starting with a digit)",
                ));
            }
            check_text(&field(&format!("env.{key}")), value, 128 << 10)?;
        }
    }
    let inputs = task.inputs.as_deref().unwrap_or_default();
    let outputs = task.outputs.as_deref().unwrap_or_default();
    let volumes = task.volumes.as_deref().unwrap_or_default();
    for (what, n) in [
        ("inputs", inputs.len()),
        ("outputs", outputs.len()),
        ("volumes", volumes.len()),
    ] {
        if n > MAX_FILES {
            return Err(invalid(what, format!("a task has at most {MAX_FILES}")));
        }
    }
    let mut content_bytes = 0;
    for (i, input) in inputs.iter().enumerate() {
        check_path(&format!("inputs[{i}].path"), &input.path)?;
        if has_wildcards(&input.path) {
            return Err(invalid(
                format!("inputs[{i}].path"),
                "an input's path has no wildcards",
            ));
        }
        if let Some(content) = &input.content {
            if content.len() > MAX_CONTENT {
                return Err(invalid(
                    format!("inputs[{i}].content"),
                    format!("is more than {MAX_CONTENT} bytes; upload it and name it by URL"),
                ));
            }
            content_bytes += content.len();
            if content_bytes > MAX_CONTENTS {
                return Err(invalid(
                    format!("inputs[{i}].content"),
                    format!("the inputs' contents add up to more than {MAX_CONTENTS} bytes"),
                ));
            }
            continue;
        }
        let field = format!("inputs[{i}].url");
        let url = input
            .url
            .as_deref()
            .ok_or_else(|| invalid(&field, "an input needs a url or content"))?;
        match Scheme::of(url) {
            Scheme::Pirus => {
                let ids = catalogue_ids(url).ok_or_else(|| {
                    invalid(
                        &field,
                        format!(
                            "'{url}' is not pirus://files/<file id> (a DIRECTORY: \
                             pirus://files/<file id>,<file id>,...)"
                        ),
                    )
                })?;
                if input.ty == IoType::File && ids.len() != 1 {
                    return Err(invalid(
                        &field,
                        "a FILE input is one catalogue file; a list of them is a DIRECTORY",
                    ));
                }
                asked.file_fields.extend(ids.iter().map(|_| field.clone()));
                asked.files.extend(ids);
                if asked.files.len() > submit::MAX_INPUTS {
                    return Err(invalid(
                        &field,
                        format!(
                            "a task reads at most {} catalogue files",
                            submit::MAX_INPUTS
                        ),
                    ));
                }
            }
            Scheme::File => check_path(&field, &url["file://".len()..])?,
            Scheme::Other => {}
        }
    }
    for (i, output) in outputs.iter().enumerate() {
        let field = format!("outputs[{i}].path");
        check_path(&field, &output.path)?;
        if let Some(prefix) = &output.path_prefix
            && !output.path.starts_with(prefix.as_str())
        {
            return Err(invalid(
                format!("outputs[{i}].path_prefix"),
                format!("'{prefix}' does not begin '{}'", output.path),
            ));
        }
        let url_field = format!("outputs[{i}].url");
        match Scheme::of(&output.url) {
            Scheme::Pirus if !output.url.starts_with("pirus://files/") => {
                return Err(invalid(
                    url_field,
                    "a catalogue output's url is pirus://files/ (its file's id is given back)",
                ));
            }
            Scheme::File => check_path(&url_field, &output.url["file://".len()..])?,
            _ => {}
        }
    }
    for (i, volume) in volumes.iter().enumerate() {
        check_path(&format!("volumes[{i}]"), volume)?;
    }
    if let Some(tags) = &task.tags {
        if tags.len() > MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("a task has at most {MAX_TAGS} tags"),
            ));
        }
        for (key, value) in tags {
            if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
                return Err(invalid(
                    format!("tags.{key}"),
                    "a tag's key is 1 to 256 characters, without control characters",
                ));
            }
            check_text(&format!("tags.{key}"), value, 4096)?;
        }
    }
    if let Some(r) = &task.resources {
        if let Some(cpus) = r.cpu_cores {
            if cpus <= 0 {
                return Err(invalid("resources.cpu_cores", "must be positive"));
            }
            asked.requested.cpus = Some(cpus as u32);
        }
        let gib = |field: &str, v: Option<f64>| -> Result<Option<u64>> {
            match v {
                None => Ok(None),
                Some(gb) if gb.is_finite() && gb > 0.0 && gb < 1e9 => {
                    Ok(Some((gb * (1u64 << 30) as f64).ceil() as u64))
                }
                Some(_) => Err(invalid(field, "must be a positive number of GiB")),
            }
        };
        asked.requested.memory_bytes = gib("resources.ram_gb", r.ram_gb)?;
        asked.requested.disk_bytes = gib("resources.disk_gb", r.disk_gb)?;
        let strict = r.backend_parameters_strict.unwrap_or(false);
        for (key, value) in r.backend_parameters.iter().flatten() {
            let field = format!("resources.backend_parameters.{key}");
            match key.as_str() {
                "priority" => {
                    asked.priority = match value {
                        serde_json::Value::String(s) => s.trim().parse().ok(),
                        v => v.as_i64().and_then(|n| i32::try_from(n).ok()),
                    }
                    .ok_or_else(|| invalid(&field, "must be a whole number"))?
                }
                "max_attempts" => {
                    asked.max_attempts = whole(&field, value)?.min(10) as i32;
                }
                "timeout_seconds" => {
                    asked.requested.time =
                        Some(std::time::Duration::from_secs(whole(&field, value)?));
                }
                _ if strict => {
                    return Err(invalid(
                        field,
                        format!(
                            "this backend does not know it (it knows {})",
                            BACKEND_PARAMETERS.join(", ")
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(asked)
}

/// The catalogue files a `pirus://files/<id>[,<id>...]` URL names (`None`: not such a URL).
pub fn catalogue_ids(url: &str) -> Option<Vec<Uuid>> {
    url.strip_prefix("pirus://files/")?
        .split(',')
        .map(|id| Uuid::try_parse(id.trim()).ok())
        .collect::<Option<Vec<_>>>()
        .filter(|ids| !ids.is_empty())
}

/// `name` or `name:version`, split.
fn image_name(image: &str) -> (&str, Option<&str>) {
    match image.trim().rsplit_once(':') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => (name, Some(version)),
        _ => (image.trim(), None),
    }
}

/// A version as numbers where it has them, for "newest".
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-', '+'])
        .map(|part| match part.parse() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// The READY pipeline an executor's image names: that version, or the newest.
async fn pipeline_of(runs: &Runs, field: &str, image: &str) -> Result<PipelineView> {
    let (name, version) = image_name(image);
    let mut candidates = views::ready_pipelines_named(runs.stores.db(), name).await?;
    candidates.retain(|p| version.is_none_or(|v| p.version == v));
    candidates.sort_by_key(|p| version_key(&p.version));
    candidates.pop().ok_or_else(|| {
        invalid(
            field,
            match version {
                Some(v) => format!("no READY pipeline '{name}' of version '{v}' is installed"),
                None => format!("no READY pipeline named '{name}' is installed"),
            },
        )
    })
}

/// Queues a task as a run of the caller's; answers its id.
pub async fn create(runs: &Runs, caller: &Caller, task: requests::Task) -> Result<Uuid> {
    access::require(caller, pirus_auth::policy::Action::SubmitRuns)?;
    let asked = validate(&task)?;
    let pipeline = pipeline_of(runs, "executors[0].image", &task.executors[0].image).await?;
    for (i, e) in task.executors.iter().enumerate().skip(1) {
        let field = format!("executors[{i}].image");
        // Most tasks name one image in every executor: resolved once, not once each.
        if e.image != task.executors[0].image
            && pipeline_of(runs, &field, &e.image).await?.id != pipeline.id
        {
            return Err(invalid(
                field,
                format!(
                    "'{}' is not the pipeline of executors[0] ('{}'): a task's executors run in one container",
                    e.image, task.executors[0].image
                ),
            ));
        }
    }
    let stores = &runs.stores;
    let manifest = pipeline.manifest.clone().unwrap_or_default();
    let requested = submit::requested(&asked.requested, &manifest);
    submit::fits_a_node(
        &requested,
        &asked.requested,
        &stores.nodes.largest_runs().await?,
    )?;
    // Every catalogue input must be the caller's (another's is not found).
    submit::input_file_names(
        stores,
        &asked.files,
        policy::scope(caller).owner_filter(),
        |i| asked.file_fields[i].clone(),
        |field, id| Error::invalid(&field, format!("file {id} not found")),
    )
    .await?;
    let name = match task.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => format!("{} {}", pipeline.name, pipeline.version),
    };
    let id = Uuid::now_v7();
    let run = stores
        .runs
        .insert(RunInsert {
            id,
            name,
            config: serde_json::json!({}),
            input_file_ids: asked.files,
            priority: asked.priority,
            request_id: None,
            requested,
            max_attempts: asked.max_attempts,
            pipeline,
            owner: Some(caller.accessor),
            tes: Some(serde_json::to_value(&task).map_err(Error::internal)?),
        })
        .await?;
    Ok(run.id)
}

/// A run's TES state (CONTRACT §8).
pub fn state(run: &Run) -> State {
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
pub fn statuses(state: State) -> Option<(Vec<RunStatus>, Option<bool>)> {
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

pub fn minimal(run: &Run) -> MinimalTask {
    MinimalTask {
        id: run.id.to_string(),
        state: Some(state(run)),
    }
}

/// What a task's BASIC and FULL views are made from.
#[derive(Default)]
pub struct Detail {
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
pub fn task(run: &Run, detail: &Detail, view: View) -> Task {
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
            let mut outputs = record.outputs;
            if Some(a.attempt) == last {
                outputs.splice(0..0, catalogue_outputs(&spec, &detail.outputs));
            }
            let executors = record
                .executors
                .into_iter()
                .map(|mut e| {
                    if !full {
                        e.stdout = None;
                        e.stderr = None;
                    }
                    e
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> requests::Task {
        serde_json::from_str(json).unwrap()
    }

    fn problem(json: &str) -> String {
        validate(&parse(json)).unwrap_err().to_string()
    }

    #[test]
    fn problems_name_their_field() {
        assert!(problem(r#"{"executors": []}"#).starts_with("executors:"));
        assert!(
            problem(r#"{"executors": [{"image": "a", "command": []}]}"#)
                .starts_with("executors[0].command:")
        );
        assert!(
            problem(
                r#"{"executors": [{"image": "a", "command": ["x"]}],
                    "inputs": [{"path": "/d/../etc/shadow", "content": "x"}]}"#
            )
            .starts_with("inputs[0].path:")
        );
        assert!(
            problem(
                r#"{"executors": [{"image": "a", "command": ["x"]}],
                    "inputs": [{"path": "relative", "content": "x"}]}"#
            )
            .starts_with("inputs[0].path:")
        );
        assert!(
            problem(r#"{"executors": [{"image": "a", "command": ["x"], "env": {"1A": "x"}}]}"#)
                .starts_with("executors[0].env.1A:")
        );
        assert!(
            problem(
                r#"{"executors": [{"image": "a", "command": ["x"]}],
                    "inputs": [{"path": "/x", "url": "pirus://files/nope"}]}"#
            )
            .starts_with("inputs[0].url:")
        );
        assert!(
            problem(
                r#"{"executors": [{"image": "a", "command": ["x"]}],
                    "outputs": [{"path": "/.pirus/exit_status", "url": "pirus://files/"}]}"#
            )
            .starts_with("outputs[0].path:")
        );
        assert!(
            problem(
                r#"{"executors": [{"image": "a", "command": ["x"]}],
                    "resources": {"backend_parameters": {"VmSize": "x"},
                                  "backend_parameters_strict": true}}"#
            )
            .starts_with("resources.backend_parameters.VmSize:")
        );
    }

    #[test]
    fn unknown_schemes_and_lenient_parameters_are_accepted() {
        let asked = validate(&parse(
            r#"{"executors": [{"image": "a", "command": ["x"]}],
                "inputs": [{"path": "/data/f", "url": "s3://bucket/f"}],
                "resources": {"cpu_cores": 2, "ram_gb": 0.5,
                              "backend_parameters": {"VmSize": "x", "priority": "7"}}}"#,
        ))
        .unwrap();
        assert_eq!(asked.requested.cpus, Some(2));
        assert_eq!(asked.requested.memory_bytes, Some(512 << 20));
        assert_eq!(asked.priority, 7);
    }

    #[test]
    fn images_name_a_pipeline_and_maybe_its_version() {
        assert_eq!(image_name("ubuntu:20.04"), ("ubuntu", Some("20.04")));
        assert_eq!(image_name("alpine"), ("alpine", None));
        assert!(version_key("1.10.0") > version_key("1.9.2"));
    }

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
