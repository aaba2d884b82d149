//! The protos are the API's contract: they pass `buf lint` (the STANDARD rules, and every
//! element documented), and `buf breaking` refuses what would break a client built against
//! them (a field removed or renumbered, an RPC or an enum value renamed) while letting
//! additions through. With the real buf (tests/run.sh installs it from npm).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

fn buf(args: &[&str]) -> Result<std::process::Output> {
    Command::new("buf").args(args).output().context(
        "buf not found: tests/run.sh installs it (proto/check.sh --install, npm @bufbuild/buf)",
    )
}

/// A copy of the proto folder.
fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[test]
fn the_protos_pass_buf_lint_with_every_element_documented() -> Result<()> {
    let out = buf(&["lint", proto_dir().to_str().unwrap()])?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check is live: an undocumented field is refused.
    let dir = pirus_tests::tempdir()?.join("proto");
    copy(&proto_dir(), &dir)?;
    let file = dir.join("pirus/runner/v1/runner.proto");
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        text.replacen(
            "  // The run's id.\n  string run_id = 1;",
            "  string run_id = 1;",
            1,
        ),
    )?;
    let out = buf(&["lint", dir.to_str().unwrap()])?;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(r#"Field "run_id" should have a non-empty comment"#),
        "{said}"
    );
    Ok(())
}

#[test]
fn buf_breaking_refuses_incompatible_changes_and_lets_additions_through() -> Result<()> {
    let runner = "pirus/runner/v1/runner.proto";
    let cases: [(&str, &str, &str, Option<&str>); 5] = [
        (
            "a field removed",
            "  // Send events with seq > after_seq (0: from the first).\n  int64 after_seq = 2;\n",
            "",
            Some(
                r#"Previously present field "2" with name "after_seq" on message "WatchRunRequest" was deleted."#,
            ),
        ),
        (
            "a field renumbered",
            "int64 after_seq = 2;",
            "int64 after_seq = 12;",
            Some(r#"Previously present field "2" with name "after_seq""#),
        ),
        (
            "an RPC renamed",
            "rpc GetRun(GetRunRequest)",
            "rpc FetchRun(GetRunRequest)",
            Some(r#"Previously present RPC "GetRun" on service "RunnerService" was deleted."#),
        ),
        (
            "an enum value renamed",
            "RUN_STATUS_PAUSE = 4;",
            "RUN_STATUS_PAUSED = 4;",
            Some(
                r#"Enum value "4" on enum "RunStatus" changed name from "RUN_STATUS_PAUSE" to "RUN_STATUS_PAUSED"."#,
            ),
        ),
        (
            "a field added",
            "  int64 after_seq = 2;\n}",
            "  int64 after_seq = 2;\n  // Stop after this many events.\n  int64 limit = 3;\n}",
            None,
        ),
    ];
    let base = proto_dir();
    for (what, from, to, refusal) in cases {
        let dir = pirus_tests::tempdir()?.join("proto");
        copy(&base, &dir)?;
        let file = dir.join(runner);
        let text = std::fs::read_to_string(&file)?;
        assert!(
            text.contains(from),
            "{what}: the proto no longer has {from:?}"
        );
        std::fs::write(&file, text.replacen(from, to, 1))?;
        let out = buf(&[
            "breaking",
            dir.to_str().unwrap(),
            "--against",
            base.to_str().unwrap(),
        ])?;
        let said = String::from_utf8_lossy(&out.stdout);
        match refusal {
            Some(expected) => {
                assert!(!out.status.success(), "{what} passed buf breaking");
                assert!(said.contains(expected), "{what}: {said}");
            }
            None => assert!(
                out.status.success(),
                "{what} was refused: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    Ok(())
}
