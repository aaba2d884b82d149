//! The parts of executing a run that only TES tasks have: their inputs staged into the run's
//! inputs folder before the container starts (the script, `content`, catalogue files, and
//! `file://` files copied from beneath the node's `--tes-file-roots`), and after it ends, the
//! script's report read and `file://` outputs written beneath those roots.
//!
//! Host paths a task names are only ever opened beneath a root with [`SafeDir`] (no link, no
//! `..`, no other mount on the way); paths inside the container are only ever used by the
//! script, inside the container.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use tes::v1::types::{
    requests::Task,
    responses::{ExecutorLog, OutputFile},
    task::IoType,
};
use uuid::Uuid;

use super::{
    safedir::SafeDir,
    workspace::{self, Workspace},
};
use crate::{
    domain::{Error, Result},
    tes::{
        Scheme,
        script::{self, Report},
        task::AttemptRecord,
    },
};

/// Bytes of each executor's share of the run's stdout (and of its stderr) kept in its task
/// log (the tail), and of all executors' shares of an attempt together: a task of many
/// executors keeps less of each, so an attempt's log stays within 2 x 256 KiB.
const LOG_TAIL: u64 = 64 << 10;
const ATTEMPT_LOG_TAIL: u64 = 256 << 10;

/// The first input or output this node cannot move: the task ends SYSTEM_ERROR naming it.
pub fn unsupported(task: &Task, roots: &[PathBuf]) -> Option<String> {
    let inputs = task.inputs.iter().flatten().enumerate();
    for (i, input) in inputs.filter(|(_, input)| input.content.is_none()) {
        let url = input.url.as_deref().unwrap_or_default();
        match Scheme::of(url) {
            Scheme::Pirus => {}
            Scheme::File if input.ty == IoType::Directory => {
                return Some(format!(
                    "inputs[{i}] ({url}): file:// directories are not supported; name each file"
                ));
            }
            Scheme::File => {
                if let Err(e) = beneath(roots, &url["file://".len()..]) {
                    return Some(format!("inputs[{i}] ({url}): {e}"));
                }
            }
            Scheme::Other => {
                return Some(format!(
                    "inputs[{i}] ({url}): this node fetches pirus:// and file:// URLs only"
                ));
            }
        }
    }
    for (i, output) in task.outputs.iter().flatten().enumerate() {
        let url = &output.url;
        match Scheme::of(url) {
            Scheme::Pirus => {}
            Scheme::File => {
                if let Err(e) = beneath(roots, &url["file://".len()..]) {
                    return Some(format!("outputs[{i}] ({url}): {e}"));
                }
            }
            Scheme::Other => {
                return Some(format!(
                    "outputs[{i}] ({url}): this node writes pirus:// and file:// URLs only"
                ));
            }
        }
    }
    None
}

/// The root a host path lies beneath, and the path relative to it.
fn beneath<'a>(
    roots: &'a [PathBuf],
    path: &str,
) -> std::result::Result<(&'a Path, String), String> {
    let path = Path::new(path);
    for root in roots {
        if let Ok(rest) = path.strip_prefix(root) {
            let rest = rest.to_string_lossy().into_owned();
            if !rest.is_empty() {
                return Ok((root.as_path(), rest));
            }
        }
    }
    Err(if roots.is_empty() {
        "this node has no --tes-file-roots, so no file:// URL".to_owned()
    } else {
        format!(
            "not beneath this node's --tes-file-roots ({})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Links a task's `pirus://` inputs into the run's inputs folder: a FILE as its staged name, a
/// DIRECTORY as a folder of that name holding its files under their catalogue names
/// (sanitised and made unique as a run's inputs are).
pub async fn link_inputs(
    artifacts: &super::artifacts::Artifacts,
    db: &pirus_db::sea_orm::DatabaseConnection,
    task: &Task,
    inputs: &SafeDir,
) -> Result<()> {
    let mut named = Vec::new();
    for (i, input) in task.inputs.iter().flatten().enumerate() {
        if input.content.is_some() {
            continue;
        }
        let Some(ids) = input
            .url
            .as_deref()
            .and_then(crate::tes::task::catalogue_ids)
        else {
            continue;
        };
        let staged = script::staged_input(i);
        match input.ty {
            IoType::File => named.extend(ids.first().map(|id| (*id, staged))),
            IoType::Directory => {
                inputs.create_dir(&staged, 0o755)?;
                let files: std::collections::HashMap<Uuid, String> =
                    pirus_db::views::files(db, &ids)
                        .await?
                        .into_iter()
                        .map(|f| (f.id, f.name))
                        .collect();
                let names: Vec<String> = ids
                    .iter()
                    .map(|id| files.get(id).cloned().unwrap_or_else(|| id.to_string()))
                    .collect();
                for (id, name) in ids.iter().zip(crate::inputs::input_names(&names)) {
                    named.push((*id, format!("{staged}/{name}")));
                }
            }
        }
    }
    artifacts.link_named(&named, inputs).await
}

/// Writes the script, the `content` inputs and the `file://` inputs into the run's inputs
/// folder (the catalogue's are linked by the artifacts cache). The `file://` inputs together
/// are copied only up to `budget` bytes (the run's disk limit): they land on the runner's own
/// disk, so a task naming a huge host file is refused, naming it, instead of filling it.
pub async fn stage(
    task: Task,
    run: Uuid,
    inputs: SafeDir,
    inputs_dir: String,
    roots: Vec<PathBuf>,
    budget: u64,
) -> Result<()> {
    workspace::blocking(move || {
        let mut copied = 0u64;
        let script = script::script(&task, &run.to_string(), &inputs_dir);
        inputs.write_new(script::SCRIPT, script.as_bytes(), 0o644)?;
        for (i, input) in task.inputs.iter().flatten().enumerate() {
            let staged = script::staged_input(i);
            if let Some(content) = &input.content {
                inputs.write_new(&staged, content.as_bytes(), 0o644)?;
                continue;
            }
            let url = input.url.as_deref().unwrap_or_default();
            if Scheme::of(url) != Scheme::File {
                continue;
            }
            let (root, relative) = beneath(&roots, &url["file://".len()..])
                .map_err(|e| std::io::Error::other(format!("inputs[{i}]: {e}")))?;
            let source = SafeDir::open(root)?
                .open_regular(&relative)
                .map_err(|e| std::io::Error::new(e.kind(), format!("inputs[{i}] ({url}): {e}")))?
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("inputs[{i}] ({url}): no such file"),
                    )
                })?;
            copied = copied.saturating_add(source.size);
            if copied > budget {
                return Err(std::io::Error::other(format!(
                    "inputs[{i}] ({url}): the file:// inputs add up to more than the run's \
                     disk limit of {budget} bytes"
                )));
            }
            let mut into = inputs.create_file(&staged, 0o644)?;
            // What was measured, even if the file grows meanwhile.
            std::io::copy(&mut source.file.take(source.size), &mut into)?;
        }
        Ok(())
    })
    .await
}

/// What the attempt's script reported, with each executor's share of the run's logs.
pub fn report(workspace: &Workspace, task: &Task) -> (Report, Vec<ExecutorLog>) {
    let text = workspace
        .read_control(script::LOG, script::MAX_LOG)
        .unwrap_or_default();
    let outputs = task.outputs.as_ref().map_or(0, Vec::len);
    let report = script::parse(
        &String::from_utf8_lossy(&text),
        task.executors.len(),
        outputs,
    );
    let tail = LOG_TAIL.min(ATTEMPT_LOG_TAIL / report.executors.len().max(1) as u64);
    let share = |file: &str, from: u64, to: Option<u64>| -> Option<String> {
        let to = to?;
        let start = from.max(to.saturating_sub(tail));
        let bytes = workspace
            .read_log(file, start, to.saturating_sub(start))
            .ok()?;
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
    };
    let logs = report
        .executors
        .iter()
        .map(|e| ExecutorLog {
            start_time: e.start,
            end_time: e.end,
            stdout: share("out.log", e.logs_at_start.0, e.logs_at_end.map(|l| l.0)),
            stderr: share("err.log", e.logs_at_start.1, e.logs_at_end.map(|l| l.1)),
            // An executor cut short (canceled, timed out, lost) has no status of its own.
            exit_code: e.exit_code.unwrap_or(-1),
        })
        .collect();
    (report, logs)
}

/// Whether a staged output (`<index>/<path>`) goes to the catalogue.
pub fn for_catalogue(task: &Task, staged: &str) -> bool {
    output_of(task, staged).is_some_and(|(i, _)| {
        let outputs = task.outputs.as_deref().unwrap_or_default();
        Scheme::of(&outputs[i].url) == Scheme::Pirus
    })
}

fn output_of<'a>(task: &Task, staged: &'a str) -> Option<(usize, &'a str)> {
    let (index, path) = staged.split_once('/')?;
    let index: usize = index.parse().ok()?;
    (index < task.outputs.as_deref().unwrap_or_default().len()).then_some((index, path))
}

/// Where a staged file of a `file://` output goes: the output's URL for a file, else the
/// URL joined with its path below the output's folder, or below `path_prefix` for wildcards.
fn destination(output: &tes::v1::types::task::Output, path: &str) -> Option<String> {
    let url = output.url.trim_end_matches('/');
    if script::has_wildcards(&output.path) {
        let prefix = output.path_prefix.as_deref().unwrap_or("/");
        let rest = path.strip_prefix(prefix)?.trim_start_matches('/');
        return Some(format!("{url}/{rest}"));
    }
    match output.ty {
        IoType::File => Some(output.url.clone()),
        IoType::Directory => {
            let rest = path
                .strip_prefix(output.path.trim_end_matches('/'))?
                .trim_start_matches('/');
            Some(format!("{url}/{rest}"))
        }
    }
}

/// Writes the staged `file://` outputs beneath the node's roots; answers them as TES reports
/// them.
pub async fn deliver(
    workspace: &Workspace,
    task: &Task,
    roots: &[PathBuf],
) -> Result<Vec<OutputFile>> {
    let outputs = task.outputs.as_deref().unwrap_or_default();
    let listing = workspace.list_outputs().await?;
    let mut delivered = Vec::new();
    for (staged, size) in listing.files {
        let Some((i, path)) = output_of(task, &staged) else {
            continue;
        };
        let output = &outputs[i];
        if Scheme::of(&output.url) != Scheme::File {
            continue;
        }
        let path = format!("/{path}");
        let Some(url) = destination(output, &path) else {
            continue;
        };
        let (root, relative) = beneath(roots, &url["file://".len()..])
            .map_err(|e| Error::internal(format!("outputs[{i}] ({url}): {e}")))?;
        let source = workspace
            .open_output(&staged)?
            .ok_or_else(|| Error::internal(format!("outputs[{i}]: {path} vanished")))?;
        let (root, relative_owned) = (root.to_path_buf(), relative.clone());
        workspace::blocking(move || {
            let root = SafeDir::open(&root)?;
            if let Some((parent, _)) = relative_owned.rsplit_once('/') {
                root.create_dirs(parent, 0o755)?;
            }
            let mut into = root.create_file(&relative_owned, 0o644)?;
            let mut from = source.file;
            std::io::copy(&mut from, &mut into)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("outputs[{i}] ({url}): {e}")))?;
        delivered.push(OutputFile {
            url,
            path,
            size_bytes: size.to_string(),
        });
    }
    Ok(delivered)
}

/// The attempt's record, for its task log.
pub fn record(
    executors: Vec<ExecutorLog>,
    report: &Report,
    task: &Task,
    outputs: Vec<OutputFile>,
) -> AttemptRecord {
    let mut system_logs = report.system.clone();
    let declared = task.outputs.as_deref().unwrap_or_default();
    for &i in &report.missing {
        if let Some(output) = declared.get(i) {
            system_logs.push(format!("outputs[{i}]: {} was not there", output.path));
        }
    }
    AttemptRecord {
        executors,
        system_logs,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_must_lie_beneath_a_root() {
        let roots = vec![PathBuf::from("/srv/tes")];
        assert_eq!(
            beneath(&roots, "/srv/tes/a/b.txt").unwrap(),
            (Path::new("/srv/tes"), "a/b.txt".to_owned())
        );
        assert!(beneath(&roots, "/srv/tesx/a").is_err());
        assert!(beneath(&roots, "/etc/shadow").is_err());
        assert!(beneath(&roots, "/srv/tes").is_err());
        assert!(beneath(&[], "/srv/tes/a").is_err());
    }

    #[test]
    fn outputs_land_where_their_url_says() {
        let output =
            |json: &str| -> tes::v1::types::task::Output { serde_json::from_str(json).unwrap() };
        let file = output(r#"{"url": "file:///srv/o/x.txt", "path": "/data/x.txt"}"#);
        assert_eq!(
            destination(&file, "/data/x.txt").as_deref(),
            Some("file:///srv/o/x.txt")
        );
        let dir = output(r#"{"url": "file:///srv/o/d", "path": "/data/d/", "type": "DIRECTORY"}"#);
        assert_eq!(
            destination(&dir, "/data/d/sub/y").as_deref(),
            Some("file:///srv/o/d/sub/y")
        );
        let glob =
            output(r#"{"url": "file:///srv/o/g", "path": "/data/*.bam", "path_prefix": "/data"}"#);
        assert_eq!(
            destination(&glob, "/data/a.bam").as_deref(),
            Some("file:///srv/o/g/a.bam")
        );
    }
}
