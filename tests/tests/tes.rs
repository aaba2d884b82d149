//! GA4GH TES on the runner (CONTRACT §8), driven by stock clients against real runners, LXD
//! and PostgreSQL: py-tes 1.1 (the current Python client), py-tes 0.4 (what Snakemake's TES
//! executor pins) and the GA4GH TES compliance suite. The clients live in virtual
//! environments that `tests/tes-clients.sh` makes (tests/run.sh runs it).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use pirus_auth::Role;
use pirus_proto::{
    catalogue::v1::{self as cat, catalogue_service_client::CatalogueServiceClient},
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use pirus_tests::{
    http::Http,
    identity,
    stack::{self, Stack},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python of a client's virtual environment (see tests/tes-clients.sh).
fn python(venv: &str) -> Result<PathBuf> {
    let root = std::env::var("PIRUS_TES_VENVS").unwrap_or_else(|_| "/var/cache/pirus/venv".into());
    let python = PathBuf::from(root).join(venv).join("bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run tests/tes-clients.sh (tests/run.sh does)",
        python.display()
    );
    Ok(python)
}

/// Runs a client script to its end (blocking, off the runtime); answers its stdout.
async fn client(venv: &str, script: &str, args: Vec<String>) -> Result<String> {
    let python = python(venv)?;
    let script = repo().join("tests/tes").join(script);
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).args(args).output())
            .await??;
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    ensure!(
        output.status.success(),
        "{venv} client failed:\n{out}\n{err}"
    );
    Ok(out)
}

/// A user's token, and a file of theirs in the catalogue.
async fn user_with_file(s: &Stack, name: &str, data: &[u8]) -> Result<(String, String)> {
    let token = identity::mint(&s.db.url, name, Role::User, None, None).await?;
    let mut cat = CatalogueServiceClient::new(s.catalogue.channel_as(&token).await?);
    let file = cat
        .create_file(cat::CreateFileRequest {
            filename: "reads.txt".into(),
            size: data.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let message = cat::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: data.to_vec().into(),
        ..Default::default()
    };
    cat.write_upload(tokio_stream::iter([message])).await?;
    Ok((token, file.id))
}

fn runner_url(s: &Stack) -> String {
    s.runner.http_url("")
}

#[tokio::test]
async fn py_tes_1_1_creates_reads_lists_waits_and_cancels_tasks() -> Result<()> {
    let mut s = stack::stack(3).await?;
    s.install_version("alpine", "1.0.0").await?;
    let (ann, reads) = user_with_file(&s, "ann", b"r1\nr2\nr3\n").await?;
    let bob = identity::mint(&s.db.url, "bob", Role::User, None, None).await?;

    let out = client(
        "pytes11",
        "pytes11.py",
        vec![runner_url(&s), ann.clone(), reads, bob],
    )
    .await?;
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("the client's report: {out}"))?;

    // The outputs it was told about are in the catalogue, with what the executors wrote.
    let mut cat = CatalogueServiceClient::new(s.catalogue.channel_as(&ann).await?);
    let url = |path: &str| -> Result<String> {
        let url = report["outputs"][path]
            .as_str()
            .with_context(|| format!("no output {path}: {report}"))?;
        Ok(url.trim_start_matches("pirus://files/").to_owned())
    };
    let read = pirus_tests::read_file;
    assert_eq!(read(&mut cat, &url("/data/out/count.txt")?).await?, b"3\n");
    assert_eq!(read(&mut cat, &url("/data/out/a.log")?).await?, b"a\n");
    assert_eq!(
        String::from_utf8(read(&mut cat, &url("/data/out/copy.txt")?).await?)?,
        "hello from tes\n/data/work\nhi there\n"
    );

    // A task is a run: in ListRuns over gRPC, with its TES name; a run submitted over gRPC is
    // not a task.
    let io = report["io"].as_str().context("no task id")?.to_owned();
    let mut runs = RunnerServiceClient::new(s.runner.channel_as(&ann).await?);
    let listed = runs
        .list_runs(run::ListRunsRequest::default())
        .await?
        .into_inner();
    let task_run = listed
        .runs
        .iter()
        .find(|r| r.id == io)
        .context("task not in ListRuns")?;
    assert_eq!(task_run.name, "pytes-io");
    assert_eq!(stack::status(task_run.status), run::RunStatus::Done);
    let grpc_run = s.submit_ready("{}").await?;
    let (status, _) = get(&s, &format!("/ga4gh/tes/v1/tasks/{}", grpc_run.id)).await?;
    assert_eq!(status, 404, "a gRPC run answered as a task");
    s.watch(&grpc_run.id, 0).await?;
    s.assert_clean()?;
    Ok(())
}

/// A GET with the harness's (admin) token: (status, body).
async fn get(s: &Stack, path: &str) -> Result<(u16, String)> {
    let response = Http::default()
        .send("GET", &s.runner.http_url(path), &[], Vec::new())
        .await?;
    Ok((response.status, response.body))
}

#[tokio::test]
async fn py_tes_0_4_reads_every_task_over_v1() -> Result<()> {
    let mut s = stack::stack(3).await?;
    s.install_version("alpine", "1.0.0").await?;
    let ann = identity::mint(&s.db.url, "ann", Role::User, None, None).await?;
    let bob = identity::mint(&s.db.url, "bob", Role::User, None, None).await?;
    let out = client("pytes04", "pytes04.py", vec![runner_url(&s), ann, bob]).await?;
    let report: serde_json::Value = serde_json::from_str(out.trim())?;
    assert!(report["ok"].is_string(), "{report}");
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn unknown_paths_and_bad_requests_are_answered_plainly() -> Result<()> {
    let mut s = stack::stack(1).await?;
    s.install_version("alpine", "1.0.0").await?;
    for path in [
        "/ga4gh/tes/v2/tasks",
        "/v1/nothing",
        "/ga4gh/tes/v1/tasks/x/y",
    ] {
        assert_eq!(get(&s, path).await?.0, 404, "{path}");
    }
    let (status, body) = get(&s, "/ga4gh/tes/v1/tasks/not-a-task").await?;
    assert_eq!(status, 404, "{body}");
    let post = |body: &'static str| {
        let url = s.runner.http_url("/ga4gh/tes/v1/tasks");
        async move {
            let r = Http::default()
                .send("POST", &url, &[("content-type", "application/json")], body)
                .await?;
            Ok::<_, anyhow::Error>((r.status, r.body))
        }
    };
    let (status, body) = post(r#"{"executors": "nope"}"#).await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        post(r#"{"executors": [{"image": "alpine", "command": ["true"], "workdir": "/a/../b"}]}"#)
            .await?;
    assert!(
        status == 400 && body.contains("executors[0].workdir"),
        "{status} {body}"
    );
    let (status, body) = post(
        r#"{"executors": [{"image": "alpine", "command": ["true"]}],
            "resources": {"cpu_cores": 100000}}"#,
    )
    .await?;
    assert!(
        status == 400 && body.contains("resources.cpu"),
        "{status} {body}"
    );
    // Without a token: refused before anything is read.
    let anonymous = Http::anonymous()
        .send(
            "GET",
            &s.runner.http_url("/ga4gh/tes/v1/tasks"),
            &[],
            Vec::new(),
        )
        .await?;
    assert_eq!(anonymous.status, 401);
    Ok(())
}

/// Runs the compliance suite's tests at `tests` (a folder or file; relative to the suite) for
/// `version` against `server`; answers (passed, the failed tests' files, the whole output).
async fn compliance(
    server: &str,
    version: &str,
    tests: &str,
) -> Result<(usize, Vec<String>, String)> {
    let python = python("compliance")?;
    let dir = repo().join("tests/tes-compliance");
    let (server, version, tests) = (server.to_owned(), version.to_owned(), tests.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .args(["-m", "compliance_suite.cli", "report", "--server", &server])
            .args(["--version", &version, "--test-path", &tests])
            .output()
    })
    .await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Without its colours.
    let text = text
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| match i {
            0 => part,
            _ => part.split_once('m').map_or(part, |(_, rest)| rest),
        })
        .collect::<String>();
    let count = |label: &str| -> Option<usize> {
        let at = text.find(&format!("{label} - "))? + label.len() + 3;
        text[at..].split_whitespace().next()?.parse().ok()
    };
    let (Some(passed), Some(failed)) = (count("Passed"), count("Failed")) else {
        bail!("the suite printed no summary:\n{text}");
    };
    // "Compliance Test-18 for tests/create_task_ignore_error.yml failed."
    let failures: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("Compliance Test-")?
                .strip_suffix(" failed.")
        })
        .filter_map(|l| Some(l.split_once(" for ")?.1.to_owned()))
        .collect();
    ensure!(
        failures.len() == failed,
        "{failed} failures but {failures:?}\n{text}"
    );
    Ok((passed, failures, text))
}

/// The GA4GH TES compliance suite, for TES 1.1.0 and 1.0.0, against a runner serving with
/// `--auth none` on loopback (the suite sends no token), with pipelines installed under the
/// image names its tests use.
///
/// Every test passes but one, which cannot pass against a backend that runs its executors:
/// `create_task_ignore_error.yml` creates a task and reads its executor logs in the very next
/// request, without waiting for the task to run. The same test with its reads polling until
/// the task ended (`tests/tes/compliance-polled/`) must pass.
#[tokio::test]
async fn the_ga4gh_compliance_suite_passes() -> Result<()> {
    let mut s = stack::stack_with(4, &[], &["--auth", "none"]).await?;
    s.install_version("alpine", "3.19").await?;
    s.install_version("ubuntu", "20.04").await?;
    let server = s.runner.http_url("/ga4gh/tes/");
    const UNWAITED: &str = "tests/create_task_ignore_error.yml";
    for version in ["1.1.0", "1.0.0"] {
        let (passed, failures, text) = compliance(&server, version, "tests").await?;
        eprintln!(
            "TES compliance {version}: {passed} passed, {} failed {failures:?}",
            failures.len()
        );
        let unexpected: Vec<&String> = failures.iter().filter(|f| *f != UNWAITED).collect();
        assert!(
            unexpected.is_empty(),
            "TES {version}: {unexpected:#?}\n{text}"
        );
        // The suite holds 23 tests for 1.1.0 and skips 7 of them for 1.0.0.
        let expected = if version == "1.1.0" { 22 } else { 16 };
        assert!(
            passed >= expected,
            "TES {version}: only {passed} passed\n{text}"
        );
    }
    let polled = repo().join("tests/tes/compliance-polled");
    let (passed, failures, text) =
        compliance(&server, "1.1.0", polled.to_str().unwrap_or_default()).await?;
    assert!(failures.is_empty() && passed == 1, "{failures:?}\n{text}");
    // Every task the suite made ended (or was canceled): nothing is left running.
    pirus_tests::eventually(
        Duration::from_secs(120),
        "the suite's tasks end",
        || async {
            let (_, body) = get(&s, "/ga4gh/tes/v1/tasks?state=RUNNING")
                .await
                .unwrap_or_default();
            body.contains("\"tasks\":[]")
        },
    )
    .await?;
    Ok(())
}

/// What a run executes is stored with it as a plan since migration 9. Runs queued before
/// have none: a TES task queued then runs from its stored task, a pipeline run from its
/// pipeline's command, and a task that was running when its runner was upgraded (killed, then
/// started on the new code) is re-adopted and completes the same way.
#[tokio::test]
async fn runs_queued_or_running_before_plans_were_stored_complete() -> Result<()> {
    let mut s = stack::stack(2).await?;
    s.install_version("alpine", "3.19").await?;
    let db = s.db.client().await?;
    let forget_plan = async |id: &str| -> Result<()> {
        let changed = db
            .execute("UPDATE runs SET plan = NULL WHERE id::text = $1", &[&id])
            .await?;
        ensure!(changed == 1, "run {id} has no row");
        Ok(())
    };
    let task = |script: &str| {
        serde_json::json!({
            "executors": [{"image": "alpine", "command": ["sh", "-c", script]}],
            "outputs": [{"path": "/out/x.txt", "url": "pirus://files/"}]
        })
    };
    // Queued: the node takes nothing while the plans are removed.
    let drain = run::DrainNodeRequest {
        name: s.node.clone(),
    };
    s.run.drain_node(drain).await?;
    let queued = create(&s, task("mkdir -p /out && echo queued > /out/x.txt")).await?;
    let pipeline_run = s.submit_ready("{}").await?;
    forget_plan(&queued).await?;
    forget_plan(&pipeline_run.id).await?;
    let undrain = run::UndrainNodeRequest {
        name: s.node.clone(),
    };
    s.run.undrain_node(undrain).await?;
    let done = ended(&s, &queued).await?;
    assert_eq!(done["state"], "COMPLETE", "{done}");
    assert_eq!(done["logs"][0]["logs"][0]["exit_code"], 0, "{done}");
    let output = done["logs"][0]["outputs"][0]["url"]
        .as_str()
        .unwrap_or_default();
    let id = output.trim_start_matches("pirus://files/");
    assert_eq!(s.read(id).await?, b"queued\n", "{done}");
    let events = s.watch(&pipeline_run.id, 0).await?;
    assert_eq!(stack::statuses(&events).last(), Some(&run::RunStatus::Done));
    let pipeline_run = s.get(&pipeline_run.id).await?;
    let mut files = s.files_of(&pipeline_run).await?;
    files.sort();
    assert_eq!(files[0], ("count.txt".to_owned(), b"1\n".to_vec()));

    // Running: the runner goes while the task sleeps, and its plan with it.
    let running = create(&s, task("sleep 3; mkdir -p /out && echo ran > /out/x.txt")).await?;
    s.wait_running(&running).await?;
    s.runner.signal("KILL")?;
    let _ = s.runner.wait_exit(Duration::from_secs(10)).await?;
    forget_plan(&running).await?;
    s.restart_runner(2).await?;
    let done = ended(&s, &running).await?;
    assert_eq!(done["state"], "COMPLETE", "{done}");
    let output = done["logs"][0]["outputs"][0]["url"]
        .as_str()
        .unwrap_or_default();
    let id = output.trim_start_matches("pirus://files/");
    assert_eq!(s.read(id).await?, b"ran\n", "{done}");
    s.assert_clean()?;
    Ok(())
}

/// The attack on listings: 64 tasks of about 2 MB each answered BASIC were a 126 MB response
/// and took the runner from 240 MB to 614 MB; eight such requests at once, to 1.9 GB. Pages of
/// whole tasks now hold at most 16 (BASIC) or 8 (FULL) tasks and 8 MiB, with a token for the
/// rest, and a caller makes at most two such listings at once (429 past that).
#[tokio::test]
async fn heavy_task_listings_are_bounded_in_bytes_and_per_caller() -> Result<()> {
    let mut s = stack::stack(1).await?;
    s.install_version("alpine", "3.19").await?;
    let user = identity::mint(&s.db.url, "lister", Role::User, None, None).await?;
    let auth = format!("Bearer {user}");
    let drain = run::DrainNodeRequest {
        name: s.node.clone(),
    };
    s.run.drain_node(drain).await?;
    // 24 tasks of about 1.9 MB each, queued (the node takes none).
    let word = "x".repeat(120 << 10);
    let task = serde_json::json!({
        "executors": [{"image": "alpine", "command": vec![word.as_str(); 16]}],
    });
    let body = task.to_string();
    let url = s.runner.http_url("/ga4gh/tes/v1/tasks");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let mut created = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let r = Http::anonymous()
            .send("POST", &url, &headers, body.clone())
            .await?;
        ensure!(r.status == 200, "create: {} {}", r.status, r.body);
        let id: serde_json::Value = serde_json::from_str(&r.body)?;
        created.insert(id["id"].as_str().context("no id")?.to_owned());
    }
    // Listed whole, page by page, each within its bound.
    let mut listed = std::collections::BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = format!("{url}?view=BASIC&page_size=100&page_token={token}");
        let r = Http::anonymous()
            .send("GET", &page, &headers[1..], "")
            .await?;
        ensure!(
            r.status == 200,
            "list: {} {}",
            r.status,
            &r.body[..r.body.len().min(200)]
        );
        assert!(r.body.len() <= 8 << 20, "a page of {} bytes", r.body.len());
        let answer: serde_json::Value = serde_json::from_str(&r.body)?;
        let tasks = answer["tasks"].as_array().context("no tasks")?;
        assert!(
            !tasks.is_empty() && tasks.len() <= 16,
            "{} tasks",
            tasks.len()
        );
        for t in tasks {
            listed.insert(t["id"].as_str().unwrap_or_default().to_owned());
        }
        match answer["next_page_token"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed, created);
    // Eight at once by one caller: two are served at a time, the others refused (429).
    let before = pirus_tests::peak_rss(s.runner.pid())?;
    let first = format!("{url}?view=BASIC&page_size=100");
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (first, auth) = (first.clone(), auth.clone());
        calls.push(tokio::spawn(async move {
            let headers = [("authorization", auth.as_str())];
            Http::anonymous().send("GET", &first, &headers, "").await
        }));
    }
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await??.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429) && statuses.contains(&200),
        "{statuses:?}"
    );
    let grew = pirus_tests::peak_rss(s.runner.pid())?.saturating_sub(before);
    eprintln!(
        "8 BASIC listings at once: {statuses:?}, peak RSS +{} MiB",
        grew >> 20
    );
    assert!(grew < 256 << 20, "peak RSS grew by {} MiB", grew >> 20);
    Ok(())
}

/// POSTs a task (as the harness's admin); answers its id.
async fn create(s: &Stack, task: serde_json::Value) -> Result<String> {
    let r = Http::default()
        .send(
            "POST",
            &s.runner.http_url("/ga4gh/tes/v1/tasks"),
            &[("content-type", "application/json")],
            task.to_string(),
        )
        .await?;
    ensure!(r.status == 200, "create: {} {}", r.status, r.body);
    let created: serde_json::Value = serde_json::from_str(&r.body)?;
    Ok(created["id"].as_str().context("no id")?.to_owned())
}

/// Waits for a task to end; answers it in the FULL view.
async fn ended(s: &Stack, id: &str) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = get(s, &format!("/ga4gh/tes/v1/tasks/{id}?view=FULL")).await?;
        ensure!(status == 200, "get: {status} {body}");
        let task: serde_json::Value = serde_json::from_str(&body)?;
        match task["state"].as_str().unwrap_or_default() {
            "COMPLETE" | "EXECUTOR_ERROR" | "SYSTEM_ERROR" | "CANCELED" => return Ok(task),
            _ if std::time::Instant::now() > deadline => bail!("task {id} did not end: {task}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn system_logs(task: &serde_json::Value) -> String {
    task["logs"][0]["system_logs"].to_string()
}

/// `file://` inputs and outputs only beneath `--tes-file-roots`, never through a link; a
/// `pirus://` DIRECTORY input is a folder of catalogue files.
#[tokio::test]
async fn host_files_move_only_beneath_the_roots_and_never_through_links() -> Result<()> {
    let root = pirus_tests::tempdir()?;
    let outside = pirus_tests::tempdir()?;
    std::fs::create_dir_all(root.join("in"))?;
    std::fs::write(root.join("in/data.txt"), "x\ny\n")?;
    std::fs::write(outside.join("secret.txt"), "secret\n")?;
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("in/link.txt"))?;
    std::os::unix::fs::symlink(&outside, root.join("escape"))?;
    let roots = root.to_str().unwrap_or_default().to_owned();
    let mut s = stack::stack_with(2, &[], &["--tes-file-roots", &roots]).await?;
    s.install_version("alpine", "1.0.0").await?;
    let a = s.upload("a.txt", b"aaa\n").await?;
    let b = s.upload("b.txt", b"bb\n").await?;
    let url = |path: &str| format!("file://{}/{path}", root.display());

    let id = create(
        &s,
        serde_json::json!({
            "executors": [{"image": "alpine", "command": ["sh", "-c",
                "mkdir -p /data/out/d && wc -l < /data/in.txt > /data/out/n.txt && \
                 ls /data/dir > /data/out/list.txt && cp /data/dir/* /data/out/d/"]}],
            "inputs": [
                {"path": "/data/in.txt", "url": url("in/data.txt")},
                {"path": "/data/dir", "url": format!("pirus://files/{a},{b}"), "type": "DIRECTORY"},
            ],
            "outputs": [
                {"path": "/data/out/n.txt", "url": url("out/n.txt")},
                {"path": "/data/out/d", "url": url("out/d"), "type": "DIRECTORY"},
                {"path": "/data/out/list.txt", "url": "pirus://files/"},
            ],
        }),
    )
    .await?;
    let task = ended(&s, &id).await?;
    assert_eq!(task["state"], "COMPLETE", "{task}");
    assert_eq!(std::fs::read_to_string(root.join("out/n.txt"))?, "2\n");
    assert_eq!(std::fs::read_to_string(root.join("out/d/a.txt"))?, "aaa\n");
    assert_eq!(std::fs::read_to_string(root.join("out/d/b.txt"))?, "bb\n");
    let outputs = task["logs"][0]["outputs"]
        .as_array()
        .context("no outputs")?;
    let list = outputs
        .iter()
        .find(|o| o["path"] == "/data/out/list.txt")
        .context("list.txt not reported")?;
    let list_id = list["url"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("pirus://files/");
    assert_eq!(s.read(list_id).await?, b"a.txt\nb.txt\n");
    assert!(
        outputs
            .iter()
            .any(|o| o["url"] == url("out/d/a.txt") && o["size_bytes"] == "4"),
        "{outputs:?}"
    );

    // A link beneath a root, a path outside every root, an output through a linked folder:
    // each ends SYSTEM_ERROR naming it, and nothing outside the roots is read or written.
    let linked = create(
        &s,
        serde_json::json!({
            "executors": [{"image": "alpine", "command": ["cat", "/data/x"]}],
            "inputs": [{"path": "/data/x", "url": url("in/link.txt")}],
        }),
    )
    .await?;
    let outside_root = create(
        &s,
        serde_json::json!({
            "executors": [{"image": "alpine", "command": ["true"]}],
            "inputs": [{"path": "/data/x", "url": "file:///etc/passwd"}],
        }),
    )
    .await?;
    let through_link = create(
        &s,
        serde_json::json!({
            "executors": [{"image": "alpine", "command": ["sh", "-c", "echo owned > /o.txt"]}],
            "outputs": [{"path": "/o.txt", "url": url("escape/o.txt")}],
        }),
    )
    .await?;
    let task = ended(&s, &linked).await?;
    assert_eq!(task["state"], "SYSTEM_ERROR", "{task}");
    assert!(system_logs(&task).contains("inputs[0]"), "{task}");
    assert!(!task.to_string().contains("secret"), "{task}");
    let task = ended(&s, &outside_root).await?;
    assert_eq!(task["state"], "SYSTEM_ERROR", "{task}");
    assert!(system_logs(&task).contains("not beneath"), "{task}");
    let task = ended(&s, &through_link).await?;
    assert_eq!(task["state"], "SYSTEM_ERROR", "{task}");
    assert!(system_logs(&task).contains("outputs[0]"), "{task}");
    assert!(
        !outside.join("o.txt").exists(),
        "a task wrote through a link"
    );
    s.assert_clean()?;
    Ok(())
}
