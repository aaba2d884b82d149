//! The parts of executing a run that only staged plans ([`Staging`]) have: their inputs staged
//! into the run's inputs folder before the container starts (the script, `content`, catalogue
//! files, and host files copied from beneath the node's `--tes-file-roots`), and after it ends,
//! the script's report read and host outputs written beneath those roots.
//!
//! Host paths a plan names are only ever opened beneath a root with [`SafeDir`] (no link, no
//! `..`, no other mount on the way); paths inside the container are only ever used by the
//! script, inside the container.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use uuid::Uuid;

use super::{
    safedir::SafeDir,
    script::{self, Report},
    workspace::{self, Workspace},
};
use crate::domain::{
    Error, Result,
    plan::{
        AttemptRecord, Delivered, Destination, Output, Source, Staging, Step, StepLog,
        has_wildcards,
    },
};

/// Bytes of each step's share of the run's stdout (and of its stderr) kept in its log (the
/// tail), and of all steps' shares of an attempt together: a plan of many steps keeps less of
/// each, so an attempt's record stays within 2 x 256 KiB.
const LOG_TAIL: u64 = 64 << 10;
const ATTEMPT_LOG_TAIL: u64 = 256 << 10;

/// The first input or output this node cannot move: the run ends naming it.
pub(super) fn unsupported(staging: &Staging, roots: &[PathBuf]) -> Option<String> {
    for (i, input) in staging.inputs.iter().enumerate() {
        match &input.source {
            Source::Content(_) | Source::Catalogue(_) => {}
            Source::Host(path) if input.directory => {
                return Some(format!(
                    "inputs[{i}] (file://{path}): file:// directories are not supported; name each file"
                ));
            }
            Source::Host(path) => {
                if let Err(e) = beneath(roots, path) {
                    return Some(format!("inputs[{i}] (file://{path}): {e}"));
                }
            }
            Source::Unfetchable(url) => {
                return Some(format!(
                    "inputs[{i}] ({url}): this node fetches pirus:// and file:// URLs only"
                ));
            }
        }
    }
    for (i, output) in staging.outputs.iter().enumerate() {
        match &output.to {
            Destination::Catalogue => {}
            Destination::Host(path) => {
                if let Err(e) = beneath(roots, path) {
                    return Some(format!("outputs[{i}] (file://{path}): {e}"));
                }
            }
            Destination::Unwritable(url) => {
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

/// Links a plan's catalogue inputs into the run's inputs folder: a file as its staged name,
/// a folder as a folder of that name holding its files under their catalogue names
/// (sanitised and made unique as a run's inputs are).
pub(super) async fn link_inputs(
    artifacts: &super::artifacts::Artifacts,
    db: &pirus_db::sea_orm::DatabaseConnection,
    staging: &Staging,
    inputs: &SafeDir,
) -> Result<()> {
    let mut named = Vec::new();
    for (i, input) in staging.inputs.iter().enumerate() {
        let Source::Catalogue(ids) = &input.source else {
            continue;
        };
        let staged = script::staged_input(i);
        if !input.directory {
            named.extend(ids.first().map(|id| (*id, staged)));
            continue;
        }
        inputs.create_dir(&staged, 0o755)?;
        let files: std::collections::HashMap<Uuid, String> = pirus_db::views::files(db, ids)
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
    artifacts.link_named(&named, inputs).await
}

/// What [`stage`] writes: the plan's steps and staging, for run `run`, whose inputs folder is
/// `inputs_dir` inside the container.
pub(super) struct Staged {
    pub steps: Vec<Step>,
    pub staging: Staging,
    pub run: Uuid,
    pub inputs_dir: String,
}

/// Writes the script, the `content` inputs and the host inputs into the run's inputs folder
/// (the catalogue's are linked by the artifacts cache). The host inputs together are copied
/// only up to `budget` bytes (the run's disk limit): they land on the runner's own disk, so a
/// plan naming a huge host file is refused, naming it, instead of filling it.
pub(super) async fn stage(
    plan: Staged,
    inputs: SafeDir,
    roots: Vec<PathBuf>,
    budget: u64,
) -> Result<()> {
    workspace::blocking(move || {
        let mut copied = 0u64;
        let run = plan.run.to_string();
        let script = script::script(&plan.steps, &plan.staging, &run, &plan.inputs_dir);
        inputs.write_new(script::SCRIPT, script.as_bytes(), 0o644)?;
        for (i, input) in plan.staging.inputs.iter().enumerate() {
            let staged = script::staged_input(i);
            let host = match &input.source {
                Source::Content(content) => {
                    inputs.write_new(&staged, content.as_bytes(), 0o644)?;
                    continue;
                }
                Source::Host(path) => path,
                Source::Catalogue(_) | Source::Unfetchable(_) => continue,
            };
            let url = format!("file://{host}");
            let (root, relative) = beneath(&roots, host)
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

/// What the attempt's script reported, with each step's share of the run's logs.
pub(super) fn report(
    workspace: &Workspace,
    steps: usize,
    staging: &Staging,
) -> (Report, Vec<StepLog>) {
    let text = workspace
        .read_control(script::LOG, script::MAX_LOG)
        .unwrap_or_default();
    let report = script::parse(
        &String::from_utf8_lossy(&text),
        steps,
        staging.outputs.len(),
    );
    let tail = LOG_TAIL.min(ATTEMPT_LOG_TAIL / report.steps.len().max(1) as u64);
    let share = |file: &str, from: u64, to: Option<u64>| -> Option<String> {
        let to = to?;
        let start = from.max(to.saturating_sub(tail));
        let bytes = workspace
            .read_log(file, start, to.saturating_sub(start))
            .ok()?;
        (!bytes.is_empty()).then(|| script::text(&bytes))
    };
    let logs = report
        .steps
        .iter()
        .map(|e| StepLog {
            start_time: e.start,
            end_time: e.end,
            stdout: share("out.log", e.logs_at_start.0, e.logs_at_end.map(|l| l.0)),
            stderr: share("err.log", e.logs_at_start.1, e.logs_at_end.map(|l| l.1)),
            // A step cut short (canceled, timed out, lost) has no status of its own.
            exit_code: e.exit_code.unwrap_or(-1),
        })
        .collect();
    (report, logs)
}

/// Whether a staged output (`<index>/<path>`) goes to the catalogue.
pub(super) fn for_catalogue(staging: &Staging, staged: &str) -> bool {
    output_of(staging, staged).is_some_and(|(i, _)| staging.outputs[i].to == Destination::Catalogue)
}

fn output_of<'a>(staging: &Staging, staged: &'a str) -> Option<(usize, &'a str)> {
    let (index, path) = staged.split_once('/')?;
    let index: usize = index.parse().ok()?;
    (index < staging.outputs.len()).then_some((index, path))
}

/// Where a staged file of a host output goes: the output's host path for a file, else that
/// path joined with the file's path below the output's folder, or below `path_prefix` for
/// wildcards.
fn destination(output: &Output, base: &str, path: &str) -> Option<String> {
    let base_dir = base.trim_end_matches('/');
    if has_wildcards(&output.path) {
        let prefix = output.path_prefix.as_deref().unwrap_or("/");
        let rest = path.strip_prefix(prefix)?.trim_start_matches('/');
        return Some(format!("{base_dir}/{rest}"));
    }
    if !output.directory {
        return Some(base.to_owned());
    }
    let rest = path
        .strip_prefix(output.path.trim_end_matches('/'))?
        .trim_start_matches('/');
    Some(format!("{base_dir}/{rest}"))
}

/// Writes the staged host outputs beneath the node's roots; answers what was written.
pub(super) async fn deliver(
    workspace: &Workspace,
    staging: &Staging,
    roots: &[PathBuf],
) -> Result<Vec<Delivered>> {
    let listing = workspace.list_outputs().await?;
    let mut delivered = Vec::new();
    for (staged, size) in listing.files {
        let Some((i, path)) = output_of(staging, &staged) else {
            continue;
        };
        let output = &staging.outputs[i];
        let Destination::Host(base) = &output.to else {
            continue;
        };
        let path = format!("/{path}");
        let Some(host) = destination(output, base, &path) else {
            continue;
        };
        let url = format!("file://{host}");
        let (root, relative) = beneath(roots, &host)
            .map_err(|e| Error::internal(format!("outputs[{i}] ({url}): {e}")))?;
        let source = workspace
            .open_output(&staged)?
            .ok_or_else(|| Error::internal(format!("outputs[{i}]: {path} vanished")))?;
        let root = root.to_path_buf();
        workspace::blocking(move || {
            let root = SafeDir::open(&root)?;
            if let Some((parent, _)) = relative.rsplit_once('/') {
                root.create_dirs(parent, 0o755)?;
            }
            let mut into = root.create_file(&relative, 0o644)?;
            let mut from = source.file;
            std::io::copy(&mut from, &mut into)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("outputs[{i}] ({url}): {e}")))?;
        delivered.push(Delivered {
            url,
            path,
            size_bytes: size.to_string(),
        });
    }
    Ok(delivered)
}

/// The attempt's record.
pub(super) fn record(
    steps: Vec<StepLog>,
    report: &Report,
    staging: &Staging,
    delivered: Vec<Delivered>,
) -> AttemptRecord {
    let mut system_logs = report.system.clone();
    for &i in &report.missing {
        if let Some(output) = staging.outputs.get(i) {
            system_logs.push(format!("outputs[{i}]: {} was not there", output.path));
        }
    }
    AttemptRecord {
        steps,
        system_logs,
        delivered,
    }
}

/// A failure the script reported that was not a step's.
pub(super) fn problem(report: &Report, staging: &Staging) -> Option<String> {
    if let Some(first) = report.system.first() {
        return Some(first.clone());
    }
    let missing: Vec<String> = report
        .missing
        .iter()
        .filter_map(|&i| {
            staging
                .outputs
                .get(i)
                .map(|o| format!("outputs[{i}] ({})", o.path))
        })
        .collect();
    (!missing.is_empty()).then(|| format!("missing outputs: {}", missing.join(", ")))
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
    fn outputs_land_where_their_destination_says() {
        let output = |path: &str, prefix: Option<&str>, directory: bool| Output {
            path: path.into(),
            path_prefix: prefix.map(str::to_owned),
            directory,
            to: Destination::Catalogue,
        };
        let file = output("/data/x.txt", None, false);
        assert_eq!(
            destination(&file, "/srv/o/x.txt", "/data/x.txt").as_deref(),
            Some("/srv/o/x.txt")
        );
        let dir = output("/data/d/", None, true);
        assert_eq!(
            destination(&dir, "/srv/o/d", "/data/d/sub/y").as_deref(),
            Some("/srv/o/d/sub/y")
        );
        let glob = output("/data/*.bam", Some("/data"), false);
        assert_eq!(
            destination(&glob, "/srv/o/g", "/data/a.bam").as_deref(),
            Some("/srv/o/g/a.bam")
        );
    }
}
