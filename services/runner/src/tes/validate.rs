//! A submitted TES task checked before anything is queued: every problem is INVALID_ARGUMENT
//! naming its field (`executors[0].command`, `inputs[2].url`, `tags.k`), and everything a task
//! can make the runner hold is bounded (executors, words, contents, files, tags, paths).

use tes::v1::types::{requests, task::IoType};
use uuid::Uuid;

use super::{Scheme, task::catalogue_ids};
use crate::{
    domain::{Error, Requested, Result, plan::has_wildcards},
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
pub(super) const BACKEND_PARAMETERS: [&str; 3] = ["priority", "max_attempts", "timeout_seconds"];

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
pub(super) struct Asked {
    pub(super) requested: Requested,
    pub(super) priority: i32,
    pub(super) max_attempts: i32,
    /// `pirus://files/<id>` inputs, in order, and the field that names each.
    pub(super) files: Vec<Uuid>,
    pub(super) file_fields: Vec<String>,
}

/// Checks everything about a task that does not need the database.
pub(super) fn validate(task: &requests::Task) -> Result<Asked> {
    let mut asked = Asked {
        max_attempts: 1,
        ..Default::default()
    };
    check_header(task)?;
    check_executors(task)?;
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
    check_inputs(inputs, &mut asked)?;
    check_outputs(outputs)?;
    for (i, volume) in volumes.iter().enumerate() {
        check_path(&format!("volumes[{i}]"), volume)?;
    }
    check_tags(task)?;
    if let Some(r) = &task.resources {
        check_resources(r, &mut asked)?;
    }
    Ok(asked)
}

/// The task's name and description.
fn check_header(task: &requests::Task) -> Result<()> {
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
    Ok(())
}

/// Each executor: an image, a command of bounded words, absolute paths, variable names.
fn check_executors(task: &requests::Task) -> Result<()> {
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
    Ok(())
}

/// Each input: an absolute path without wildcards, `content` within bounds or a URL; the
/// catalogue files they name go into `asked`.
fn check_inputs(inputs: &[tes::v1::types::task::Input], asked: &mut Asked) -> Result<()> {
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
    Ok(())
}

/// Each output: an absolute path, a `path_prefix` that begins it, a URL this runner can use.
fn check_outputs(outputs: &[tes::v1::types::task::Output]) -> Result<()> {
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
    Ok(())
}

/// At most [`MAX_TAGS`] tags, each key and value bounded.
fn check_tags(task: &requests::Task) -> Result<()> {
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
    Ok(())
}

/// Resources as the run's requests, and the backend parameters this runner knows.
fn check_resources(r: &tes::v1::types::task::Resources, asked: &mut Asked) -> Result<()> {
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
                asked.requested.time = Some(std::time::Duration::from_secs(whole(&field, value)?));
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
    Ok(())
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
}
