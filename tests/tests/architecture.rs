//! The architecture's rules, checked: which crate may use which (each crate's `lib.rs` says it,
//! its Cargo.toml must agree), no service naming the other's tables in its SQL (they meet only
//! through `pirus_db::views`), and the statuses those views type being exactly the schema's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

const CRATES: &[&str] = &[
    "shared/proto",
    "shared/db",
    "shared/server",
    "shared/lxd",
    "shared/auth",
    "shared/form",
    "services/catalogue",
    "services/runner",
    "cli",
    "tests",
];

/// The `pirus-*` crates a Cargo.toml's `[dependencies]` names (dev-dependencies apart).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = "";
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[dependencies]"
            && let Some(name) = line.split(['.', ' ', '=']).next()
            && name.starts_with("pirus-")
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    out
}

/// The crates a `lib.rs` header lists after `Depends on (within Pirus):` and `Never on:`.
fn declared(lib: &str) -> Option<(Vec<String>, Vec<String>)> {
    let header: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ");
    let rest = header.split("Depends on (within Pirus):").nth(1)?;
    let (depends, never) = rest.split_once("Never on:")?;
    let names = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("pirus-"))
            .map(str::to_owned)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let never_list = never.split('.').next().unwrap_or_default();
    Some((names(depends), names(never_list)))
}

#[test]
fn every_crate_declares_its_dependencies_and_keeps_to_them() -> Result<()> {
    for krate in CRATES {
        let dir = repo().join(krate);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        let lib = std::fs::read_to_string(dir.join("src/lib.rs"))?;
        let (allowed, never) =
            declared(&lib).with_context(|| format!("{krate}/src/lib.rs has no dependency line"))?;
        let actual = dependencies(&manifest);
        assert_eq!(
            actual, allowed,
            "{krate}: Cargo.toml's pirus dependencies differ from what lib.rs declares"
        );
        for name in &never {
            assert!(!actual.contains(name), "{krate} must not depend on {name}");
        }
    }
    Ok(())
}

/// Every `.rs` file below `dir`, with its text.
fn sources(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.clone(), std::fs::read_to_string(&path)?));
            }
        }
    }
    Ok(out)
}

/// Whether SQL in `text` names `table` after FROM, JOIN, INTO or UPDATE.
fn names_table(text: &str, table: &str) -> bool {
    let words: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    words
        .windows(2)
        .any(|w| matches!(w[0].as_str(), "from" | "join" | "into" | "update") && w[1] == table)
}

/// Whether Rust source names the TES protocol: the `tes` crate or the runner's TES edge.
fn names_tes(text: &str) -> bool {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .any(|code| {
            code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .any(|word| word.starts_with("tes::") || word.starts_with("crate::tes::"))
        })
}

/// TES is an edge over the runner's domain: the executor runs plans and never names TES, and
/// outside `tes/` only `lib.rs` (which wires the edge in) does.
#[test]
fn tes_stays_in_its_edge() -> Result<()> {
    let runner = repo().join("services/runner/src");
    for (path, text) in sources(&runner)? {
        let relative = path.strip_prefix(&runner)?.to_string_lossy().into_owned();
        if relative.starts_with("tes/") || relative == "lib.rs" {
            continue;
        }
        assert!(
            !names_tes(&text),
            "services/runner/src/{relative} names TES: only the TES edge (tes/) may"
        );
    }
    // The rule itself works.
    assert!(names_tes("use tes::v1::types::requests::Task;"));
    assert!(names_tes("    let t = crate::tes::task::of_run(run);"));
    assert!(!names_tes(
        "    let tes = run.tes.as_ref(); // tes::x in a comment"
    ));
    assert!(!names_tes("    tes_file_roots: Vec<PathBuf>,"));
    Ok(())
}

#[test]
fn no_service_reads_the_other_s_tables() -> Result<()> {
    let rules = [
        (
            "services/runner/src",
            &[
                "pipelines",
                "files",
                "uploads",
                "blobs",
                "pipeline_documents",
            ][..],
        ),
        (
            "services/catalogue/src",
            &["runs", "run_events", "run_attempts", "nodes"][..],
        ),
    ];
    for (dir, tables) in rules {
        for (path, text) in sources(&repo().join(dir))? {
            // A store's own tests may set up the other service's rows.
            if path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            for table in tables {
                assert!(
                    !names_table(&text, table),
                    "{} names the table {table}: read it through pirus_db::views",
                    path.display()
                );
            }
        }
    }
    // The rule itself works.
    assert!(names_table("SELECT id FROM files f WHERE", "files"));
    assert!(!names_table("SELECT id FROM file_for_runs f", "files"));
    Ok(())
}

/// The values a status CHECK constraint of `table` allows.
async fn allowed_statuses(db: &pirus_tests::TestDb, table: &str) -> Result<Vec<String>> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             WHERE t.relname = $1 AND c.contype = 'c'",
            &[&table],
        )
        .await?;
    let def = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .find(|d| d.contains("status"))
        .with_context(|| format!("no status constraint on {table}"))?;
    let mut values: Vec<String> = def
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    values.sort();
    Ok(values)
}

#[tokio::test]
async fn the_boundary_types_every_status_the_schema_allows() -> Result<()> {
    use pirus_db::views::{FileState, PipelineState};
    let (db, _pool) = pirus_tests::migrated_db().await?;
    let mut pipelines: Vec<String> = PipelineState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    pipelines.sort();
    assert_eq!(allowed_statuses(&db, "pipelines").await?, pipelines);
    let mut files: Vec<String> = FileState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    files.sort();
    assert_eq!(allowed_statuses(&db, "files").await?, files);
    Ok(())
}
