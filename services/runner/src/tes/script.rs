//! The shell script a TES task's container runs, written by the runner into the run's
//! read-only inputs folder, and the log it leaves in the control folder.
//!
//! The script places the staged inputs at their paths, runs the executors in order (each in a
//! subshell with its own working folder, environment and redirections), then copies the
//! outputs into the outputs folder as `<output index>/<path>`, from where the runner collects
//! them. Everything it does happens inside the container, as the container's root: no path a
//! task names is ever resolved on the host.
//!
//! It records what happened in `/.pirus/tes.log`, one line per fact, which the runner reads
//! (bounded) when the attempt ends: `start <i> <time> <out> <err>` and `end <i> <time>
//! <status> <out> <err>` (times in RFC 3339; out and err the sizes of the run's two logs, so
//! that each executor's share of them can be cut out), `system <text>` for a failure that is
//! not an executor's, and `missing <i>` for an output that was not there. The container can
//! write that file too; it can only misreport its own task.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use tes::v1::types::{requests::Task, task::IoType};

/// The script's name in the inputs folder.
pub const SCRIPT: &str = "tes.sh";
/// The control folder's log of the script, as the runner reads it.
pub const LOG: &str = "control/tes.log";
/// Bytes of the script's log read at most.
pub const MAX_LOG: u64 = 256 << 10;

/// The staged copy of input `i` in the inputs folder.
pub fn staged_input(i: usize) -> String {
    format!("tes-{i}")
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

/// Whether a TES path holds wildcards.
pub fn has_wildcards(path: &str) -> bool {
    path.contains(['*', '?'])
}

/// The parent folder of an absolute path (`/` for a top-level one).
fn parent(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((parent, _)) => parent,
    }
}

/// The script for `task`, whose staged inputs are in `inputs_dir` inside the container.
pub fn script(task: &Task, run: &str, inputs_dir: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"#!/bin/sh
# Pirus: TES task {run}, written by its runner. Places the inputs, runs the executors in
# order, then stages the outputs for collection; what happened goes to /.pirus/tes.log.
pirus_log() {{ echo "$*" >> /.pirus/tes.log; }}
pirus_size() {{ if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi; }}
pirus_now() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
pirus_logs() {{ echo "$(pirus_size "$PIRUS_LOGS/out.log") $(pirus_size "$PIRUS_LOGS/err.log")"; }}
pirus_stage() {{ mkdir -p "$PIRUS_OUTPUTS/$1$(dirname "$2")" && cp "$2" "$PIRUS_OUTPUTS/$1$2"; }}
: > /.pirus/tes.log
cd /"#
    );
    for (i, input) in task.inputs.iter().flatten().enumerate() {
        let staged = format!("{inputs_dir}/{}", staged_input(i));
        let path = quote(&input.path);
        // A DIRECTORY's files go into the folder at its path (made if missing).
        let place = match input.ty {
            IoType::File => format!(
                "mkdir -p {} && cp {} {path}",
                quote(parent(&input.path)),
                quote(&staged)
            ),
            IoType::Directory => {
                format!(
                    "mkdir -p {path} && cp -R {} {path}/",
                    quote(&format!("{staged}/."))
                )
            }
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
    for volume in task.volumes.iter().flatten() {
        let _ = writeln!(
            s,
            "mkdir -p {} || {{ pirus_log {}; exit 0; }}",
            quote(volume),
            quote(&format!("system cannot make the volume {volume}"))
        );
    }
    for output in task.outputs.iter().flatten() {
        if !has_wildcards(&output.path) {
            let dir = match output.ty {
                IoType::File => parent(&output.path),
                IoType::Directory => output.path.as_str(),
            };
            let _ = writeln!(s, "mkdir -p {} 2>/dev/null", quote(dir));
        }
    }
    for (i, executor) in task.executors.iter().enumerate() {
        let _ = writeln!(s, "# executor {i}");
        for redirect in [&executor.stdout, &executor.stderr].into_iter().flatten() {
            let _ = writeln!(s, "mkdir -p {} 2>/dev/null", quote(parent(redirect)));
        }
        let _ = writeln!(s, r#"pirus_log "start {i} $(pirus_now) $(pirus_logs)""#);
        s.push_str("(\n");
        if let Some(workdir) = &executor.workdir {
            let w = quote(workdir);
            let _ = writeln!(s, "  mkdir -p {w} && cd {w} || exit 126");
        }
        for (key, value) in executor.env.iter().flatten() {
            let _ = writeln!(s, "  export {}", quote(&format!("{key}={value}")));
        }
        let mut line = String::from("  exec");
        for arg in &executor.command {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        for (op, path) in [
            ("<", &executor.stdin),
            (">", &executor.stdout),
            ("2>", &executor.stderr),
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
        if !executor.ignore_error.unwrap_or(false) {
            s.push_str("[ \"$pirus_status\" -eq 0 ] || exit \"$pirus_status\"\n");
        }
    }
    s.push_str("cd /\n");
    for (i, output) in task.outputs.iter().flatten().enumerate() {
        let _ = writeln!(s, "# output {i}");
        let path = quote(&output.path);
        let failed = quote(&format!("system output {i}: cannot stage {}", output.path));
        if has_wildcards(&output.path) {
            let _ = writeln!(
                s,
                "for f in {}; do if [ -f \"$f\" ]; then pirus_stage {i} \"$f\" || pirus_log {failed}; fi; done",
                pattern(&output.path)
            );
        } else {
            match output.ty {
                IoType::File => {
                    let _ = writeln!(
                        s,
                        "if [ -f {path} ]; then pirus_stage {i} {path} || pirus_log {failed}; else pirus_log 'missing {i}'; fi"
                    );
                }
                IoType::Directory => {
                    let staged = format!("\"$PIRUS_OUTPUTS/{i}\"{path}");
                    let _ = writeln!(
                        s,
                        "if [ -d {path} ]; then {{ mkdir -p {staged} && cp -R {} {staged}/; }} || pirus_log {failed}; else pirus_log 'missing {i}'; fi",
                        quote(&format!("{}/.", output.path.trim_end_matches('/')))
                    );
                }
            }
        }
    }
    s.push_str("exit 0\n");
    s
}

/// What the script's log says happened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub executors: Vec<ExecutorRecord>,
    /// Failures that were not an executor's.
    pub system: Vec<String>,
    /// Outputs (by index) that were not there.
    pub missing: Vec<usize>,
}

/// One executor's run, as the log tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutorRecord {
    pub index: usize,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// The run's out.log and err.log sizes when it started, and when it ended.
    pub logs_at_start: (u64, u64),
    pub logs_at_end: Option<(u64, u64)>,
}

/// Reads the script's log. Lines it does not understand are ignored (the container may write
/// anything there); only the task's `executors` executors and `outputs` outputs are believed,
/// each once, and at most 16 system lines of 1,024 characters: what the container writes
/// cannot grow the task's log beyond that.
pub fn parse(log: &str, executors: usize, outputs: usize) -> Report {
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
                if index < executors && report.executors.iter().all(|e| e.index != index) {
                    report.executors.push(ExecutorRecord {
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
                if let Some(e) = report.executors.iter_mut().find(|e| e.index == index) {
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
                    report.system.push(text.chars().take(1024).collect());
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

    fn task(json: &str) -> Task {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_word_a_task_names_is_quoted() {
        let t = task(
            r#"{"executors": [{"image": "alpine", "command": ["sh", "-c", "echo '$HOME'; rm -rf /"],
                "env": {"A": "it's"}, "workdir": "/w d", "stdout": "/o/out file"}]}"#,
        );
        let s = script(&t, "r", "/pipeline/inputs");
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
    fn a_failure_stops_the_task_unless_ignored() {
        let t = task(
            r#"{"executors": [{"image": "a", "command": ["false"], "ignore_error": true},
                              {"image": "a", "command": ["true"]}]}"#,
        );
        let s = script(&t, "r", "/in");
        let stops = s.matches("|| exit \"$pirus_status\"").count();
        assert_eq!(stops, 1, "{s}");
        let first = s.find("# executor 1").unwrap();
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
        assert_eq!(r.executors.len(), 1);
        let e = &r.executors[0];
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
}
