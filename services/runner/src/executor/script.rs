//! The shell script that runs a staged plan ([`Staging`]), written by the runner into the
//! run's read-only inputs folder, and the log it leaves in the control folder.
//!
//! The script places the staged inputs at their paths, runs the steps in order (each in a
//! subshell with its own working folder, environment and redirections), then copies the
//! outputs into the outputs folder as `<output index>/<path>`, from where the runner collects
//! them. Everything it does happens inside the container, as the container's root: no path a
//! plan names is ever resolved on the host.
//!
//! It records what happened in `/.pirus/tes.log` (the name runs started before plans used, so
//! that a runner re-adopting one of those reads its log), one line per fact, which the runner
//! reads (bounded) when the attempt ends: `start <i> <time> <out> <err>` and `end <i> <time>
//! <status> <out> <err>` (times in RFC 3339; out and err the sizes of the run's two logs, so
//! that each step's share of them can be cut out), `system <text>` for a failure that is not
//! a step's, and `missing <i>` for an output that was not there. The container can write that
//! file too; it can only misreport its own run.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::domain::plan::{Staging, Step, has_wildcards};

/// The script's name in the inputs folder.
pub(super) const SCRIPT: &str = "plan.sh";
/// The control folder's log of the script, as the runner reads it.
pub(super) const LOG: &str = "control/tes.log";
/// Bytes of the script's log read at most.
pub(super) const MAX_LOG: u64 = 256 << 10;

/// The staged copy of input `i` in the inputs folder.
pub(super) fn staged_input(i: usize) -> String {
    format!("plan-{i}")
}

/// `s` as one shell word, quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path with wildcards as a shell pattern: `*` and `?` match, everything else is literal.
fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 2);
    for c in path.chars() {
        if c == '*' || c == '?' || c.is_ascii_alphanumeric() || "/._-".contains(c) {
            out.push(c);
        } else {
            out.push('\\');
            out.push(c);
        }
    }
    out
}

/// The parent folder of an absolute path (`/` for a top-level one).
fn parent(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((parent, _)) => parent,
    }
}

/// The script of a staged plan's `steps` and `staging`, whose staged inputs are in
/// `inputs_dir` inside the container.
pub(super) fn script(steps: &[Step], staging: &Staging, run: &str, inputs_dir: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"#!/bin/sh
# Pirus: the plan of run {run}, written by its runner. Places the inputs, runs the steps in
# order, then stages the outputs for collection; what happened goes to /.pirus/tes.log.
pirus_log() {{ echo "$*" >> /.pirus/tes.log; }}
pirus_size() {{ if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }}
pirus_now() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
pirus_logs() {{ echo "$(pirus_size "$PIRUS_LOGS/out.log") $(pirus_size "$PIRUS_LOGS/err.log")"; }}
pirus_stage() {{ mkdir -p "$PIRUS_OUTPUTS/$1$(dirname "$2")" && cp "$2" "$PIRUS_OUTPUTS/$1$2"; }}
: > /.pirus/tes.log
cd /"#
    );
    place(&mut s, staging, inputs_dir);
    for (i, step) in steps.iter().enumerate() {
        run_step(&mut s, i, step);
    }
    s.push_str("cd /\n");
    stage_outputs(&mut s, staging);
    s.push_str("exit 0\n");
    s
}

/// Places the inputs, makes the folders and the outputs' parents.
fn place(s: &mut String, staging: &Staging, inputs_dir: &str) {
    for (i, input) in staging.inputs.iter().enumerate() {
        let staged = format!("{inputs_dir}/{}", staged_input(i));
        let path = quote(&input.path);
        // A folder's files go into the folder at its path (made if missing).
        let place = if input.directory {
            format!(
                "mkdir -p {path} && cp -R {} {path}/",
                quote(&format!("{staged}/."))
            )
        } else {
            format!(
                "mkdir -p {} && cp {} {path}",
                quote(parent(&input.path)),
                quote(&staged)
            )
        };
        let _ = writeln!(
            s,
            "{place} || {{ pirus_log {}; exit 0; }}",
            quote(&format!(
                "system input {i}: cannot place it at {}",
                input.path
            ))
        );
    }
    for folder in &staging.folders {
        let _ = writeln!(
            s,
            "mkdir -p {} || {{ pirus_log {}; exit 0; }}",
            quote(folder),
            quote(&format!("system cannot make the volume {folder}"))
        );
    }
    for output in &staging.outputs {
        if !has_wildcards(&output.path) {
            let dir = if output.directory {
                output.path.as_str()
            } else {
                parent(&output.path)
            };
            let _ = writeln!(s, "mkdir -p {} 2>/dev/null", quote(dir));
        }
    }
}

/// Runs step `i` in a subshell, logging its start and end; a failure stops the script unless
/// the step ignores errors.
fn run_step(s: &mut String, i: usize, step: &Step) {
    let _ = writeln!(s, "# step {i}");
    for redirect in [&step.stdout, &step.stderr].into_iter().flatten() {
        let _ = writeln!(s, "mkdir -p {} 2>/dev/null", quote(parent(redirect)));
    }
    let _ = writeln!(s, r#"pirus_log "start {i} $(pirus_now) $(pirus_logs)""#);
    s.push_str("(\n");
    if let Some(workdir) = &step.workdir {
        let w = quote(workdir);
        let _ = writeln!(s, "  mkdir -p {w} && cd {w} || exit 126");
    }
    for (key, value) in &step.env {
        let _ = writeln!(s, "  export {}", quote(&format!("{key}={value}")));
    }
    let mut line = String::from("  exec");
    for arg in &step.command {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    for (op, path) in [
        ("<", &step.stdin),
        (">", &step.stdout),
        ("2>", &step.stderr),
    ] {
        if let Some(path) = path {
            let _ = write!(line, " {op} {}", quote(path));
        }
    }
    s.push_str(&line);
    s.push_str("\n)\npirus_status=$?\n");
    let _ = writeln!(
        s,
        r#"pirus_log "end {i} $(pirus_now) $pirus_status $(pirus_logs)""#
    );
    if !step.ignore_error {
        s.push_str("[ \"$pirus_status\" -eq 0 ] || exit \"$pirus_status\"\n");
    }
}

/// Copies each output into the outputs folder as `<index>/<path>`, or logs it missing.
fn stage_outputs(s: &mut String, staging: &Staging) {
    for (i, output) in staging.outputs.iter().enumerate() {
        let _ = writeln!(s, "# output {i}");
        let path = quote(&output.path);
        let failed = quote(&format!("system output {i}: cannot stage {}", output.path));
        if has_wildcards(&output.path) {
            let _ = writeln!(
                s,
                "for f in {}; do if [ -f \"$f\" ]; then pirus_stage {i} \"$f\" || pirus_log {failed}; fi; done",
                pattern(&output.path)
            );
        } else if output.directory {
            let staged = format!("\"$PIRUS_OUTPUTS/{i}\"{path}");
            let _ = writeln!(
                s,
                "if [ -d {path} ]; then {{ mkdir -p {staged} && cp -R {} {staged}/; }} || pirus_log {failed}; else pirus_log 'missing {i}'; fi",
                quote(&format!("{}/.", output.path.trim_end_matches('/')))
            );
        } else {
            let _ = writeln!(
                s,
                "if [ -f {path} ]; then pirus_stage {i} {path} || pirus_log {failed}; else pirus_log 'missing {i}'; fi"
            );
        }
    }
}

/// Bytes a container wrote, as text a record can hold: invalid UTF-8 and NUL (which
/// PostgreSQL's jsonb refuses, and which would lose the whole record) become U+FFFD.
pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

/// What the script's log says happened.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Report {
    pub steps: Vec<StepRecord>,
    /// Failures that were not a step's.
    pub system: Vec<String>,
    /// Outputs (by index) that were not there.
    pub missing: Vec<usize>,
}

/// One step's run, as the log tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct StepRecord {
    pub index: usize,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// The run's out.log and err.log sizes when it started, and when it ended.
    pub logs_at_start: (u64, u64),
    pub logs_at_end: Option<(u64, u64)>,
}

/// Reads the script's log. Lines it does not understand are ignored (the container may write
/// anything there); only the plan's `steps` steps and `outputs` outputs are believed, each
/// once, and at most 16 system lines of 1,024 characters: what the container writes cannot
/// grow the attempt's record beyond that.
pub(super) fn parse(log: &str, steps: usize, outputs: usize) -> Report {
    let mut report = Report::default();
    let time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    for line in log.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["start", i, at, out, err] => {
                let (Ok(index), Ok(out), Ok(err)) = (i.parse(), out.parse(), err.parse()) else {
                    continue;
                };
                if index < steps && report.steps.iter().all(|e| e.index != index) {
                    report.steps.push(StepRecord {
                        index,
                        start: time(at),
                        logs_at_start: (out, err),
                        ..Default::default()
                    });
                }
            }
            ["end", i, at, status, out, err] => {
                let Ok(index) = i.parse::<usize>() else {
                    continue;
                };
                if let Some(e) = report.steps.iter_mut().find(|e| e.index == index) {
                    e.end = time(at);
                    e.exit_code = status.parse().ok();
                    e.logs_at_end = out.parse().ok().zip(err.parse().ok());
                }
            }
            ["missing", i] => {
                if let Ok(i) = i.parse::<usize>()
                    && i < outputs
                    && !report.missing.contains(&i)
                {
                    report.missing.push(i);
                }
            }
            ["system", ..] => {
                // (A line of just "system" has no text.)
                let text = line.strip_prefix("system ").unwrap_or_default();
                if report.system.len() < 16 {
                    let line: String = text.chars().take(1024).collect();
                    report.system.push(line.replace('\0', "\u{FFFD}"));
                }
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(command: &[&str]) -> Step {
        Step {
            command: command.iter().map(|w| (*w).to_owned()).collect(),
            ..Step::default()
        }
    }

    fn script_of(steps: Vec<Step>) -> String {
        script(&steps, &Staging::default(), "r", "/pipeline/inputs")
    }

    #[test]
    fn every_word_a_plan_names_is_quoted() {
        let s = script_of(vec![Step {
            env: [("A".to_owned(), "it's".to_owned())].into(),
            workdir: Some("/w d".into()),
            stdout: Some("/o/out file".into()),
            ..step(&["sh", "-c", "echo '$HOME'; rm -rf /"])
        }]);
        assert!(
            s.contains(r#"exec 'sh' '-c' 'echo '\''$HOME'\''; rm -rf /' > '/o/out file'"#),
            "{s}"
        );
        assert!(s.contains(r#"export 'A=it'\''s'"#), "{s}");
        assert!(
            s.contains("mkdir -p '/w d' && cd '/w d' || exit 126"),
            "{s}"
        );
        assert!(s.contains("mkdir -p '/o' 2>/dev/null"), "{s}");
    }

    #[test]
    fn a_failure_stops_the_plan_unless_ignored() {
        let s = script_of(vec![
            Step {
                ignore_error: true,
                ..step(&["false"])
            },
            step(&["true"]),
        ]);
        let stops = s.matches("|| exit \"$pirus_status\"").count();
        assert_eq!(stops, 1, "{s}");
        let first = s.find("# step 1").unwrap();
        assert!(s[first..].contains("|| exit \"$pirus_status\""));
    }

    #[test]
    fn wildcards_match_but_nothing_else_is_special() {
        assert_eq!(pattern("/data/out $x/*.txt"), r"/data/out\ \$x/*.txt");
        assert!(has_wildcards("/a/*.bam") && !has_wildcards("/a/b.bam"));
        assert_eq!(parent("/data/file"), "/data");
        assert_eq!(parent("/file"), "/");
    }

    #[test]
    fn the_log_is_read_and_nonsense_ignored() {
        let log = "start 0 2026-11-30T10:00:00Z 0 0\nend 0 2026-11-30T10:00:01Z 3 6 0\n\
                   start 0 bogus 1 1\nstart 9 2026-11-30T10:00:00Z 0 0\nrubbish\n\
                   system input 1: cannot place it at /x\nmissing 2\n";
        let r = parse(log, 2, 3);
        assert_eq!(r.steps.len(), 1);
        let e = &r.steps[0];
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.logs_at_end, Some((6, 0)));
        assert!(e.start.is_some() && e.end.is_some());
        assert_eq!(r.system, vec!["input 1: cannot place it at /x".to_owned()]);
        assert_eq!(r.missing, vec![2]);
    }

    #[test]
    fn nothing_the_container_writes_breaks_or_swells_the_report() {
        let mut log = String::from("system\nmissing 9\n");
        for _ in 0..10_000 {
            log.push_str("missing 0\nsystem x\n");
        }
        let r = parse(&log, 1, 1);
        assert_eq!(r.missing, vec![0]);
        assert_eq!(r.system.len(), 16);
        assert_eq!(r.system[0], "");
    }

    /// A NUL byte in a step's output or the log would make the record unstorable (jsonb).
    #[test]
    fn nul_bytes_never_reach_a_record() {
        assert_eq!(text(b"a\0b\xff"), "a\u{FFFD}b\u{FFFD}");
        let r = parse("system x\0y\n", 1, 1);
        assert_eq!(r.system, vec!["x\u{FFFD}y".to_owned()]);
    }
}
