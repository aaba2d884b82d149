//! Runs, end to end, against real PostgreSQL and LXD and the real catalogue: a busybox pipeline
//! built here is installed, runs are submitted and executed in unprivileged containers, their
//! events, logs and outputs checked, and nothing is left behind.

use std::time::Duration;

use anyhow::{Result, bail};
use pirus_proto::{
    catalogue::v1::{self as cat, catalogue_service_client::CatalogueServiceClient},
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use pirus_tests::Channel;
use pirus_tests::{
    Kind, Launch, TestDb,
    stack::{Stack, node_containers, stack, status, statuses, terminal},
};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn a_run_executes_in_lxd_with_inputs_outputs_logs_and_progress() -> Result<()> {
    let mut s = stack(2).await?;
    let pipeline = s.pipeline().await?;
    let input = s.upload("reads.txt", b"one\ntwo\nthree\n").await?;

    let submitted = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            name: "count".into(),
            config_json: r#"{"input": "reads.txt"}"#.into(),
            input_file_ids: vec![input.clone()],
            ..Default::default()
        })
        .await?;
    assert_eq!(status(submitted.status), run::RunStatus::Waiting);
    assert_eq!(
        submitted.attempt, 1,
        "a waiting run shows the attempt it waits for"
    );
    let config: serde_json::Value = serde_json::from_str(&submitted.config_json)?;
    assert_eq!(
        config,
        serde_json::json!({"input": "reads.txt", "exit_code": 0, "sleep": 0})
    );
    assert_eq!(submitted.pipeline_version, "1.0.0");
    assert_eq!(
        submitted.resources.as_ref().map(|r| r.memory_bytes),
        Some(256 << 20)
    );

    let events = s.watch(&submitted.id, 0).await?;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "seq starts at 1 with no gap"
    );
    use run::RunStatus::*;
    assert_eq!(
        statuses(&events),
        vec![Waiting, Initializing, Running, Finishing, Done]
    );
    // A client resuming from the last seq it stored (or past it) of a run that has ended gets
    // no events and the end of the stream, at once.
    let last = events.last().map_or(0, |e| e.seq);
    for after in [last, last + 5] {
        let rest = tokio::time::timeout(Duration::from_secs(5), s.watch(&submitted.id, after))
            .await
            .map_err(|_| {
                anyhow::anyhow!("WatchRun after seq {after} of a DONE run did not end")
            })??;
        assert!(rest.is_empty(), "{rest:?}");
    }
    // From the seq before the terminal one: just the terminal event.
    let tail = s.watch(&submitted.id, last - 1).await?;
    assert_eq!(statuses(&tail), vec![Done]);
    let values: Vec<f64> = events
        .iter()
        .filter(|e| status(e.status) == Running)
        .filter_map(|e| e.progress.as_ref().map(|p| p.value))
        .collect();
    assert!(values.contains(&1.0), "progress reached 1.0: {values:?}");
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {values:?}"
    );

    let done = s
        .run
        .get_run(run::GetRunRequest {
            id: submitted.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status(done.status), Done);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.node, s.node);
    assert_eq!(done.attempt, 1);
    assert_eq!(
        done.progress.as_ref().map(|p| p.label.as_str()),
        Some("4 / 4")
    );
    assert!(done.ended_at.is_some());

    // Outputs, named by their path, links never collected.
    assert_eq!(done.output_file_ids.len(), 2, "{done:?}");
    let mut outputs = Vec::new();
    for id in &done.output_file_ids {
        let f = s
            .cat
            .get_file(cat::GetFileRequest { id: id.clone() })
            .await?
            .into_inner();
        assert_eq!(cat::FileKind::try_from(f.kind)?, cat::FileKind::Output);
        assert_eq!(f.source_run_id, submitted.id);
        outputs.push((f.name.clone(), String::from_utf8(s.read(id).await?)?));
    }
    outputs.sort();
    assert_eq!(
        outputs,
        vec![
            ("count.txt".into(), "3\n".into()),
            ("sub/lines.txt".into(), "> one\n> two\n> three\n".into())
        ]
    );

    // Both logs, in the catalogue and through StreamRunLogs after the end.
    assert_eq!(done.log_file_ids.len(), 2);
    let stdout = String::from_utf8(s.logs(&done.id, "stdout").await?)?;
    assert!(
        stdout.starts_with(&format!("starting run {}", done.id)),
        "{stdout}"
    );
    assert!(stdout.ends_with("done\n"), "{stdout}");
    let mut logs = s
        .run
        .stream_run_logs(run::StreamRunLogsRequest {
            run_id: done.id.clone(),
            stream: "stderr".into(),
            offset: 2,
            follow: false,
        })
        .await?
        .into_inner();
    let first = logs.next().await.expect("a chunk")?;
    assert_eq!((first.offset, first.data.as_ref()), (2, &b"warning\n"[..]));

    s.assert_clean()?;
    Ok(())
}

/// Development mode, as the README offers it: both services with `--auth none` (every caller
/// is the unrestricted anonymous one) run a pipeline end to end, its outputs and logs
/// registered with the catalogue by a runner that presents no runner token of its node.
#[tokio::test]
async fn a_run_completes_with_auth_off_on_both_services() -> Result<()> {
    let none = ["--auth", "none"];
    let mut s = pirus_tests::stack::stack_with(1, &none, &none).await?;
    let submitted = s.submit_ready("{}").await?;
    let events = s.watch(&submitted.id, 0).await?;
    let done = s.get(&submitted.id).await?;
    use run::RunStatus::*;
    assert_eq!(
        statuses(&events),
        vec![Waiting, Initializing, Running, Finishing, Done],
        "{}",
        done.error_message
    );
    let mut files = s.files_of(&done).await?;
    files.sort();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["count.txt", "err.log", "out.log", "sub/lines.txt"]);
    assert_eq!(files[0].1, b"1\n");
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn failing_and_timed_out_runs_end_in_error() -> Result<()> {
    let mut s = stack(2).await?;
    let (pipeline, input) = s.ready().await?;
    let failing = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            config_json: r#"{"exit_code": 3}"#.into(),
            input_file_ids: vec![input.clone()],
            ..Default::default()
        })
        .await?;
    let slow = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            config_json: r#"{"sleep": 120}"#.into(),
            input_file_ids: vec![input.clone()],
            timeout: Some(prost_types::Duration {
                seconds: 4,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await?;

    let events = s.watch(&failing.id, 0).await?;
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Error));
    assert!(
        statuses(&events).contains(&run::RunStatus::Finishing),
        "a run whose command ended passes FINISHING"
    );
    let failed = s
        .run
        .get_run(run::GetRunRequest {
            id: failing.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(failed.exit_code, Some(3));
    assert!(
        failed.error_message.contains("status 3"),
        "{}",
        failed.error_message
    );
    assert_eq!(
        failed.output_file_ids.len(),
        2,
        "a failed run's outputs are kept"
    );

    let events = s.watch(&slow.id, 0).await?;
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Error));
    let timed_out = s
        .run
        .get_run(run::GetRunRequest {
            id: slow.id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        timed_out.error_message.contains("timed out after 4s"),
        "{}",
        timed_out.error_message
    );
    assert_eq!(timed_out.exit_code, None);
    assert_eq!(timed_out.log_file_ids.len(), 2, "logs are kept");
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn submissions_are_validated_and_idempotent() -> Result<()> {
    let mut s = stack(1).await?;
    let (pipeline, input) = s.ready().await?;
    let base = run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        input_file_ids: vec![input.clone()],
        ..Default::default()
    };
    for (config, field) in [
        (r#"{"exit_code": "zero"}"#, "config_json.exit_code"),
        (r#"{"exit_code": 300}"#, "config_json.exit_code"),
        (r#"{"colour": "red"}"#, "config_json"),
        (r#"{"input": "other.txt"}"#, "config_json.input"),
        (r#"{"exit_code": "#, "config_json"),
        ("[]", "config_json"),
    ] {
        let status = s
            .submit(run::SubmitRunRequest {
                config_json: config.into(),
                ..base.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{config}");
        assert!(
            status.message().starts_with(field),
            "{config}: {}",
            status.message()
        );
        if config.contains("colour") {
            assert!(
                status.message().contains("colour"),
                "the unexpected field is named: {}",
                status.message()
            );
        }
    }
    for (request, code, field) in [
        (
            run::SubmitRunRequest {
                pipeline_id: "nope".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "pipeline_id",
        ),
        (
            run::SubmitRunRequest {
                pipeline_id: uuid::Uuid::now_v7().to_string(),
                ..base.clone()
            },
            Code::NotFound,
            "pipeline",
        ),
        (
            run::SubmitRunRequest {
                input_file_ids: vec![uuid::Uuid::now_v7().to_string()],
                ..base.clone()
            },
            Code::NotFound,
            "input_file_ids[0]",
        ),
        (
            run::SubmitRunRequest {
                input_file_ids: vec!["x".into()],
                ..base.clone()
            },
            Code::InvalidArgument,
            "input_file_ids[0]",
        ),
        (
            run::SubmitRunRequest {
                timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "timeout",
        ),
    ] {
        let status = s.submit(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }

    let once = run::SubmitRunRequest {
        request_id: "submit-1".into(),
        ..base.clone()
    };
    let a = s.submit(once.clone()).await?;
    let b = s.submit(once.clone()).await?;
    assert_eq!(a.id, b.id);
    // The same key for another run: ALREADY_EXISTS, naming the key and what differs.
    let reused = s
        .submit(run::SubmitRunRequest {
            config_json: r#"{"exit_code": 3}"#.into(),
            ..once
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert!(
        reused.message().contains("submit-1") && reused.message().contains("config_json"),
        "{}",
        reused.message()
    );
    let list = s
        .run
        .list_runs(run::ListRunsRequest {
            pipeline_id: pipeline.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.runs.len(), 1);
    s.watch(&a.id, 0).await?;

    // Replay from any point gives exactly the events after it.
    let all = s.watch(&a.id, 0).await?;
    for after in 0..all.len() as i64 {
        let tail = s.watch(&a.id, after).await?;
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            ((after + 1)..=all.len() as i64).collect::<Vec<_>>()
        );
    }
    let nodes = s
        .run
        .list_nodes(run::ListNodesRequest {})
        .await?
        .into_inner();
    let node = nodes
        .nodes
        .iter()
        .find(|n| n.name == s.node)
        .expect("the node is registered");
    assert_eq!(
        run::NodeStatus::try_from(node.status)?,
        run::NodeStatus::Online
    );
    assert!(node.lxd_available && !node.lxd_version.is_empty());
    assert_eq!(node.max_runs, 1);
    Ok(())
}

#[tokio::test]
async fn the_concurrency_cap_holds_under_load() -> Result<()> {
    let mut s = stack(2).await?;
    let (pipeline, input) = s.ready().await?;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = s
            .submit(run::SubmitRunRequest {
                pipeline_id: pipeline.clone(),
                name: format!("load {i}"),
                config_json: r#"{"sleep": 1}"#.into(),
                input_file_ids: vec![input.clone()],
                ..Default::default()
            })
            .await?;
        ids.push(r.id);
    }
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let runs = s
            .run
            .list_runs(run::ListRunsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .runs;
        use run::RunStatus::*;
        let active = runs
            .iter()
            .filter(|r| matches!(status(r.status), Initializing | Running | Pause | Finishing))
            .count();
        assert!(
            active <= 2,
            "{active} runs active at once with --max-runs 2"
        );
        most = most.max(active);
        if runs.iter().all(|r| terminal(status(r.status))) {
            assert!(runs.iter().all(|r| status(r.status) == Done), "{runs:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "runs did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 2, "the node used both of its slots");
    s.assert_clean()?;
    Ok(())
}

/// The LISTEN connection is killed mid-run: the watch still sees every event once.
#[tokio::test]
async fn a_watch_survives_the_loss_of_the_listen_connection() -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_sleeping(3).await?;
    let mut stream = s.follow(&r.id, 0).await?;
    let mut events = vec![stream.next().await.expect("first event")?];
    // Wait until the run is running, then cut every LISTEN connection of the database.
    while status(events.last().unwrap().status) != run::RunStatus::Running {
        events.push(stream.next().await.expect("more events")?);
    }
    let sql = s.db.client().await?;
    let killed = sql
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await?;
    assert!(
        !killed.is_empty(),
        "a LISTEN connection was found and terminated"
    );
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await? {
        events.push(event?);
    }
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Done));
    Ok(())
}

/// StreamRunLogs with follow, from the start of a run to its end, gives the whole log once.
#[tokio::test]
async fn logs_stream_while_the_run_is_alive_and_after() -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_sleeping(2).await?;
    let mut logs = s
        .run
        .stream_run_logs(run::StreamRunLogsRequest {
            run_id: r.id.clone(),
            stream: "stdout".into(),
            offset: 0,
            follow: true,
        })
        .await?
        .into_inner();
    let mut followed = Vec::new();
    let mut saw_alive = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), logs.next()).await? {
        let chunk = chunk?;
        assert_eq!(chunk.offset as usize, followed.len(), "contiguous offsets");
        followed.extend_from_slice(&chunk.data);
        let now = s
            .run
            .get_run(run::GetRunRequest { id: r.id.clone() })
            .await?
            .into_inner();
        saw_alive |= !terminal(status(now.status));
    }
    assert!(saw_alive, "some of the log arrived while the run was alive");
    let followed = String::from_utf8(followed)?;
    assert!(
        followed.starts_with("starting run") && followed.ends_with("done\n"),
        "{followed}"
    );
    let bad = s
        .run
        .stream_run_logs(run::StreamRunLogsRequest {
            run_id: r.id.clone(),
            stream: "stdlog".into(),
            offset: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("stream"), "{}", bad.message());
    Ok(())
}

/// kill -9 of a runner during a run, then a restart under the same node name: the run carries
/// on (its command is not started again), its logs are complete, and it ends DONE once.
/// An offset past the end of an ended run's log is OUT_OF_RANGE naming the log's size (it
/// was UNAVAILABLE, which clients retry for ever); at the end exactly, the stream just ends.
#[tokio::test]
async fn a_log_offset_past_the_end_of_an_ended_run_is_out_of_range() -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_ready("{}").await?;
    s.watch(&r.id, 0).await?;
    let size = s.logs(&r.id, "stdout").await?.len() as i64;
    let read = |offset: i64| run::StreamRunLogsRequest {
        run_id: r.id.clone(),
        stream: "stdout".into(),
        offset,
        follow: false,
    };
    let mut at_end = s.run.stream_run_logs(read(size)).await?.into_inner();
    assert!(at_end.next().await.is_none(), "nothing past the end");
    let mut past = s.run.stream_run_logs(read(size + 10)).await?.into_inner();
    let refused = match past.next().await {
        Some(Err(status)) => status,
        other => bail!("an offset past the end answered {other:?}"),
    };
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains(&format!("({size} bytes)")),
        "{}",
        refused.message()
    );
    Ok(())
}

#[tokio::test]
async fn a_run_survives_kill_9_of_its_runner() -> Result<()> {
    survives_runner_restart("KILL", false).await
}

/// A runner stopped gracefully leaves its containers running and re-adopts them.
#[tokio::test]
async fn a_run_survives_a_graceful_restart_of_its_runner() -> Result<()> {
    survives_runner_restart("TERM", false).await
}

/// kill -9 of a runner just after the run's command ended and its container was removed, but
/// before the end was recorded (finishing removes the container first): the restarted runner
/// finishes the run from its exit status file, DONE, instead of failing it for a missing
/// container. (A soak saw one run of 600 end ERROR "the container disappeared while its
/// runner was away" this way.)
#[tokio::test]
async fn a_run_whose_container_was_removed_as_its_runner_died_ends_done() -> Result<()> {
    survives_runner_restart("KILL", true).await
}

async fn survives_runner_restart(signal: &str, container_removed: bool) -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_sleeping(4).await?;
    s.wait_running(&r.id).await?;
    s.runner.signal(signal)?;
    let _ = s.runner.wait_exit(Duration::from_secs(10)).await?;
    let node_containers = node_containers(&s.node)?;
    assert!(
        !node_containers.stdout.is_empty(),
        "the container outlives its runner"
    );
    if container_removed {
        let name = String::from_utf8(node_containers.stdout)?.trim().to_owned();
        // The command (4 s) ends while the runner is away; then its container goes.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let deleted = std::process::Command::new("lxc")
            .args(["delete", "--force", &name])
            .output()?;
        assert!(deleted.status.success(), "{deleted:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart_runner(&mut s).await?;
    let events = s.watch(&r.id, 0).await?;
    use run::RunStatus::*;
    assert_eq!(
        statuses(&events),
        vec![Waiting, Initializing, Running, Finishing, Done]
    );
    assert_eq!(
        events.iter().filter(|e| status(e.status) == Done).count(),
        1,
        "DONE once"
    );
    let done = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!((done.attempt, done.exit_code), (1, Some(0)));
    let mut logs = s
        .run
        .stream_run_logs(run::StreamRunLogsRequest {
            run_id: r.id.clone(),
            stream: "stdout".into(),
            offset: 0,
            follow: false,
        })
        .await?
        .into_inner();
    let mut stdout = Vec::new();
    while let Some(chunk) = logs.next().await {
        stdout.extend_from_slice(&chunk?.data);
    }
    let stdout = String::from_utf8(stdout)?;
    assert_eq!(
        stdout.matches("starting run").count(),
        1,
        "the command ran once:\n{stdout}"
    );
    assert!(stdout.ends_with("done\n"), "the log is complete:\n{stdout}");
    s.assert_clean()?;
    Ok(())
}

/// Starts the stack's runner again (after it was stopped): same node, work folder, catalogue.
async fn restart_runner(s: &mut pirus_tests::stack::Stack) -> Result<()> {
    s.restart_runner(1).await
}

/// A runner stopped after recording a run's end but before removing its folders (they go
/// last) leaves them behind; its next start removes them, and the run stays DONE.
#[tokio::test]
async fn folders_of_an_ended_run_left_by_a_stopped_runner_go_at_its_next_start() -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_sleeping(0).await?;
    let events = s.watch(&r.id, 0).await?;
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Done));
    s.runner.signal("KILL")?;
    let _ = s.runner.wait_exit(Duration::from_secs(10)).await?;
    let left = s.work_dir.join("runs").join(format!("{}-1", r.id));
    std::fs::create_dir_all(left.join("outputs"))?;
    std::fs::write(
        left.join("outputs/result.txt"),
        "a result already delivered",
    )?;
    restart_runner(&mut s).await?;
    s.assert_clean()?;
    let run = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!(status(run.status), run::RunStatus::Done);
    Ok(())
}

/// A run whose input is still uploading waits in the queue, then runs once the input is whole.
#[tokio::test]
async fn a_run_waits_for_its_inputs_to_finish_uploading() -> Result<()> {
    let mut s = stack(1).await?;
    let pipeline = s.pipeline().await?;
    let file = s
        .cat
        .create_file(cat::CreateFileRequest {
            filename: "reads.txt".into(),
            size: 6,
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = cat::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: b"a\nb".to_vec().into(),
        ..Default::default()
    };
    s.cat.write_upload(tokio_stream::iter([first])).await?;
    let r = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            input_file_ids: vec![file.id.clone()],
            ..Default::default()
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!(
        status(waiting.status),
        run::RunStatus::Waiting,
        "it must wait for its input"
    );
    let rest = cat::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 3,
        data: b"\nc\n".to_vec().into(),
        ..Default::default()
    };
    s.cat.write_upload(tokio_stream::iter([rest])).await?;
    let events = s.watch(&r.id, 0).await?;
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Done));
    let done = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    let mut counts = Vec::new();
    for id in &done.output_file_ids {
        let f = s
            .cat
            .get_file(cat::GetFileRequest { id: id.clone() })
            .await?
            .into_inner();
        if f.name == "count.txt" {
            counts.push(String::from_utf8(s.read(id).await?)?);
        }
    }
    assert_eq!(counts, vec!["3\n"], "the run saw the whole input");
    Ok(())
}

/// Pause, resume, cancel and delete, sent to a runner that does not own the run (it claims
/// nothing: --max-runs 0); the owner acts on them. A waiting run is canceled at once.
#[tokio::test]
async fn control_requests_through_another_runner_reach_the_owner() -> Result<()> {
    let mut s = stack(1).await?;
    let other = Launch::new(Kind::Runner, &s.db.url)
        .args(["--node-name", &format!("{}-b", s.node), "--max-runs", "0"])
        .args([
            "--catalogue-addr",
            &format!("http://{}", s.catalogue.addrs().grpc),
        ])
        .start()
        .await?;
    let mut b = RunnerServiceClient::new(other.channel().await?);
    let (pipeline, input) = s.ready().await?;
    let long = run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: r#"{"sleep": 120}"#.into(),
        input_file_ids: vec![input.clone()],
        ..Default::default()
    };
    let r = s.submit(long.clone()).await?;
    let queued = s.submit(long).await?;
    let get = |c: &mut RunnerServiceClient<Channel>, id: String| {
        let mut c = c.clone();
        async move {
            c.get_run(run::GetRunRequest { id })
                .await
                .map(|r| r.into_inner())
        }
    };
    let a = s.run.clone();
    let wait_for = |want: run::RunStatus, id: String| {
        let c = a.clone();
        async move {
            for _ in 0..600 {
                let now = get(&mut c.clone(), id.clone()).await?;
                if status(now.status) == want {
                    return Ok::<_, anyhow::Error>(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("run {id} never became {want:?}")
        }
    };
    wait_for(run::RunStatus::Running, r.id.clone()).await?;

    // The queued run is canceled at once, by the other runner.
    let canceled = b
        .cancel_run(run::CancelRunRequest {
            id: queued.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status(canceled.status), run::RunStatus::Canceled);
    let events = s.watch(&queued.id, 0).await?;
    assert_eq!(
        statuses(&events),
        vec![run::RunStatus::Waiting, run::RunStatus::Canceled]
    );

    let monitoring = |c: &mut RunnerServiceClient<Channel>, id: String| {
        let mut c = c.clone();
        async move {
            c.get_run_monitoring(run::GetRunMonitoringRequest { id })
                .await
                .map(|r| r.into_inner())
        }
    };
    b.pause_run(run::PauseRunRequest { id: r.id.clone() })
        .await?;
    wait_for(run::RunStatus::Pause, r.id.clone()).await?;
    assert_eq!(
        monitoring(&mut s.run, r.id.clone()).await?.container_status,
        "Frozen"
    );
    // Asked of the runner that does not own the run: forwarded to the owner.
    let forwarded = monitoring(&mut b, r.id.clone()).await?;
    assert_eq!(forwarded.container_status, "Frozen");
    b.resume_run(run::ResumeRunRequest { id: r.id.clone() })
        .await?;
    wait_for(run::RunStatus::Running, r.id.clone()).await?;
    let m = monitoring(&mut s.run, r.id.clone()).await?;
    assert_eq!(m.container_status, "Running");
    assert!(m.processes >= 2 && m.memory_bytes > 0, "{m:?}");
    let refused = b
        .resume_run(run::ResumeRunRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    // A live log read through the runner that does not own the run: forwarded to the owner.
    let mut logs = b
        .stream_run_logs(run::StreamRunLogsRequest {
            run_id: r.id.clone(),
            stream: "stdout".into(),
            offset: 0,
            follow: false,
        })
        .await?
        .into_inner();
    let mut live = Vec::new();
    while let Some(chunk) = logs.next().await {
        live.extend_from_slice(&chunk?.data);
    }
    assert!(
        String::from_utf8(live)?.starts_with("starting run"),
        "forwarded live log"
    );
    b.cancel_run(run::CancelRunRequest { id: r.id.clone() })
        .await?;
    let ended = wait_for(run::RunStatus::Canceled, r.id.clone()).await?;
    assert_eq!(ended.log_file_ids.len(), 2, "logs kept");
    assert!(ended.output_file_ids.is_empty(), "outputs not collected");
    let events = s.watch(&r.id, 0).await?;
    use run::RunStatus::*;
    assert_eq!(
        statuses(&events),
        vec![Waiting, Initializing, Running, Pause, Running, Canceled]
    );
    for refused in [
        b.pause_run(run::PauseRunRequest { id: r.id.clone() })
            .await
            .unwrap_err(),
        b.cancel_run(run::CancelRunRequest { id: r.id.clone() })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    s.assert_clean()?;

    let deleted = b
        .delete_run(run::DeleteRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!(deleted.id, r.id);
    assert_eq!(
        get(&mut s.run, r.id.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    for log in ended.log_file_ids {
        let gone = s
            .cat
            .get_file(cat::GetFileRequest { id: log })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    Ok(())
}

/// DeleteRun removes a run's files before the run: when the catalogue is down the call fails
/// UNAVAILABLE and leaves the run, and the same call completes once the catalogue is back.
#[tokio::test]
async fn a_deletion_the_catalogue_interrupts_completes_when_retried() -> Result<()> {
    let mut s = stack(1).await?;
    let r = s.submit_ready(r#"{"input": "reads.txt"}"#).await?;
    s.watch(&r.id, 0).await?;
    let done = s.get(&r.id).await?;
    let files: Vec<String> = [done.output_file_ids, done.log_file_ids].concat();
    assert!(!files.is_empty(), "the run left outputs and logs");

    let addrs = s.catalogue.addrs();
    s.catalogue.signal("KILL")?;
    s.catalogue.wait_exit(Duration::from_secs(10)).await?;
    let refused = s
        .run
        .delete_run(run::DeleteRunRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(s.get(&r.id).await?.id, r.id, "the run is still there");

    // The catalogue back on its addresses and data: the same call completes.
    let data = s.catalogue.dir.join("data");
    let mut again = Launch::new(Kind::Catalogue, &s.db.url);
    again.at = Some(addrs);
    let again = again
        .args(["--data-dir", data.to_str().unwrap_or_default()])
        .start()
        .await?;
    let old = std::mem::replace(&mut s.catalogue, again);
    let deleted = s
        .run
        .delete_run(run::DeleteRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!(deleted.id, r.id);
    let gone = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    for file in files {
        let gone = s
            .cat
            .get_file(cat::GetFileRequest { id: file })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    drop(old);
    Ok(())
}

/// A node that is killed and not heard from for its lease: another runner records it OFFLINE,
/// its run that allows a retry runs again as attempt 2 elsewhere, the one that does not ends
/// ERROR with the reason. When the lost node comes back, it removes the containers of the
/// attempts it no longer holds.
#[tokio::test]
async fn a_lost_node_s_runs_are_retried_or_ended() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let cat_addr = format!("http://{}", catalogue.addrs().grpc);
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (a_name, b_name) = (format!("lost-a-{tag}"), format!("lost-b-{tag}"));
    let a_dir = pirus_tests::tempdir()?;
    let db_url = db.url.clone();
    let runner = |name: &str, dir: &std::path::Path, max_runs: &str| {
        Launch::new(Kind::Runner, &db_url)
            .args([
                "--node-name",
                name,
                "--max-runs",
                max_runs,
                "--node-lease",
                "3s",
            ])
            .args([
                "--work-dir",
                dir.to_str().unwrap(),
                "--catalogue-addr",
                &cat_addr,
            ])
    };
    let mut a = runner(&a_name, &a_dir, "2").start().await?;
    let mut s = Stack {
        cat: CatalogueServiceClient::new(catalogue.channel().await?),
        run: RunnerServiceClient::new(a.channel().await?),
        node: a_name.clone(),
        work_dir: a_dir.clone(),
        db,
        catalogue,
        runner: runner(&format!("lost-idle-{tag}"), &pirus_tests::tempdir()?, "0")
            .start()
            .await?,
    };
    let (pipeline, input) = s.ready().await?;
    let submit = |attempts: i32| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: r#"{"sleep": 6}"#.into(),
        input_file_ids: vec![input.clone()],
        max_attempts: attempts,
        ..Default::default()
    };
    let retried = s.submit(submit(2)).await?;
    let ended = s.submit(submit(1)).await?;
    for id in [&retried.id, &ended.id] {
        for _ in 0..300 {
            let r = s
                .run
                .get_run(run::GetRunRequest { id: id.clone() })
                .await?
                .into_inner();
            if status(r.status) == run::RunStatus::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.signal("KILL")?;
    a.wait_exit(Duration::from_secs(10)).await?;
    let b = runner(&b_name, &pirus_tests::tempdir()?, "2")
        .start()
        .await?;
    s.run = RunnerServiceClient::new(b.channel().await?);

    let events = s.watch(&retried.id, 0).await?;
    let done = s
        .run
        .get_run(run::GetRunRequest {
            id: retried.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status(done.status), run::RunStatus::Done, "{events:?}");
    assert_eq!((done.attempt, done.node.as_str()), (2, b_name.as_str()));
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("node {a_name} was lost"))),
        "{events:?}"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    s.watch(&ended.id, 0).await?;
    let failed = s
        .run
        .get_run(run::GetRunRequest {
            id: ended.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status(failed.status), run::RunStatus::Error);
    assert!(
        failed.error_message.contains("was lost"),
        "{}",
        failed.error_message
    );
    let nodes = s
        .run
        .list_nodes(run::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let lost = nodes.iter().find(|n| n.name == a_name).expect("node a");
    assert_eq!(
        run::NodeStatus::try_from(lost.status)?,
        run::NodeStatus::Offline
    );

    // The lost node comes back: the containers of its old attempts go.
    let a_again = runner(&a_name, &a_dir, "2").start().await?;
    pirus_tests::eventually(
        Duration::from_secs(30),
        "the returning node removes its stale containers",
        || {
            let node = a_name.clone();
            async move {
                let out = node_containers(&node);
                out.map(|o| o.stdout.is_empty()).unwrap_or(false)
            }
        },
    )
    .await?;
    drop(a_again);
    drop(b);
    Ok(())
}

/// Two runners race for two dozen runs: every run is executed once, by one of them, in one
/// attempt; both take part.
#[tokio::test]
async fn runners_racing_for_runs_execute_each_once() -> Result<()> {
    let mut s = stack(3).await?;
    let second = Launch::new(Kind::Runner, &s.db.url)
        .args(["--node-name", &format!("{}-2", s.node), "--max-runs", "3"])
        .args([
            "--catalogue-addr",
            &format!("http://{}", s.catalogue.addrs().grpc),
        ])
        .start()
        .await?;
    let (pipeline, input) = s.ready().await?;
    let mut ids = Vec::new();
    for i in 0..24 {
        let request = run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            name: format!("race {i}"),
            input_file_ids: vec![input.clone()],
            ..Default::default()
        };
        // Submitted through both runners.
        let r = if i % 2 == 0 {
            s.submit(request).await?
        } else {
            RunnerServiceClient::new(second.channel().await?)
                .submit_run(request)
                .await?
                .into_inner()
        };
        ids.push(r.id);
    }
    let mut nodes = std::collections::BTreeSet::new();
    for id in &ids {
        let events = s.watch(id, 0).await?;
        assert_eq!(
            events
                .iter()
                .filter(|e| status(e.status) == run::RunStatus::Running
                    && e.message == "command started")
                .count(),
            1,
            "run {id}: {:?}",
            events
                .iter()
                .map(|e| (e.seq, status(e.status), e.message.as_str()))
                .collect::<Vec<_>>()
        );
        let r = s
            .run
            .get_run(run::GetRunRequest { id: id.clone() })
            .await?
            .into_inner();
        assert_eq!(
            (status(r.status), r.attempt),
            (run::RunStatus::Done, 1),
            "{r:?}"
        );
        nodes.insert(r.node);
    }
    let attempts: i64 =
        s.db.client()
            .await?
            .query_one("SELECT count(*) FROM run_attempts", &[])
            .await?
            .get(0);
    assert_eq!(attempts, 24, "one attempt per run");
    assert_eq!(nodes.len(), 2, "both runners took runs: {nodes:?}");
    s.assert_clean()?;
    Ok(())
}

/// A drained node takes no new runs and finishes its own; undrained, it takes runs again.
#[tokio::test]
async fn a_drained_node_takes_no_new_runs() -> Result<()> {
    let mut s = stack(2).await?;
    let (pipeline, input) = s.ready().await?;
    let request = |sleep: u32| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: format!(r#"{{"sleep": {sleep}}}"#),
        input_file_ids: vec![input.clone()],
        ..Default::default()
    };
    let own = s.submit(request(2)).await?;
    for _ in 0..300 {
        let r = s
            .run
            .get_run(run::GetRunRequest { id: own.id.clone() })
            .await?
            .into_inner();
        if status(r.status) == run::RunStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node = s
        .run
        .drain_node(run::DrainNodeRequest {
            name: s.node.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        run::NodeStatus::try_from(node.status)?,
        run::NodeStatus::Draining
    );
    let later = s.submit(request(0)).await?;
    s.watch(&own.id, 0).await?;
    assert_eq!(
        status(
            s.run
                .get_run(run::GetRunRequest { id: own.id.clone() })
                .await?
                .into_inner()
                .status
        ),
        run::RunStatus::Done
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = s
        .run
        .get_run(run::GetRunRequest {
            id: later.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        status(waiting.status),
        run::RunStatus::Waiting,
        "a draining node takes no new run"
    );
    let node = s
        .run
        .undrain_node(run::UndrainNodeRequest {
            name: s.node.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        run::NodeStatus::try_from(node.status)?,
        run::NodeStatus::Online
    );
    s.watch(&later.id, 0).await?;
    assert_eq!(
        status(
            s.run
                .get_run(run::GetRunRequest {
                    id: later.id.clone()
                })
                .await?
                .into_inner()
                .status
        ),
        run::RunStatus::Done
    );
    let missing = s
        .run
        .drain_node(run::DrainNodeRequest {
            name: "no-such-node".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

/// PostgreSQL restarts in the middle of a run (a private cluster): both services reconnect,
/// the LISTEN connection too, and the run ends DONE with every event in place.
#[tokio::test]
async fn a_postgresql_restart_mid_run_loses_nothing() -> Result<()> {
    let pg = pirus_tests::pg::PrivatePostgres::start()?;
    let db = TestDb::create_on(&pg.admin_url()).await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let node = format!("pg-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let work_dir = pirus_tests::tempdir()?;
    let runner = Launch::new(Kind::Runner, &db.url)
        .args([
            "--node-name",
            &node,
            "--max-runs",
            "1",
            "--work-dir",
            work_dir.to_str().unwrap(),
        ])
        .args([
            "--catalogue-addr",
            &format!("http://{}", catalogue.addrs().grpc),
        ])
        .start()
        .await?;
    let mut s = Stack {
        cat: CatalogueServiceClient::new(catalogue.channel().await?),
        run: RunnerServiceClient::new(runner.channel().await?),
        db,
        catalogue,
        runner,
        node,
        work_dir,
    };
    let r = s.submit_sleeping(5).await?;
    let mut stream = s.follow(&r.id, 0).await?;
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e?;
        let running = status(e.status) == run::RunStatus::Running;
        events.push(e);
        if running {
            break;
        }
    }
    pg.stop()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.pg_ctl_start()?;
    // The watch that was open across the restart carries on to the end.
    while let Some(e) = tokio::time::timeout(Duration::from_secs(90), stream.next()).await? {
        events.push(e?);
    }
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    use run::RunStatus::*;
    assert_eq!(
        statuses(&events),
        vec![Waiting, Initializing, Running, Finishing, Done]
    );
    let done = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!(done.output_file_ids.len(), 2);
    // And the services serve new work afterwards.
    let again = s
        .submit(run::SubmitRunRequest {
            pipeline_id: done.pipeline_id.clone(),
            input_file_ids: done.input_file_ids.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(statuses(&s.watch(&again.id, 0).await?).last(), Some(&Done));
    s.assert_clean()?;
    Ok(())
}

/// The same runner process frozen past its lease (SIGSTOP), its run retried elsewhere, then
/// thawed (SIGCONT): it reports nothing more on the run it lost and removes its container.
#[tokio::test]
async fn a_frozen_runner_that_lost_its_run_stands_down() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let cat_addr = format!("http://{}", catalogue.addrs().grpc);
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (a_name, b_name) = (format!("frozen-a-{tag}"), format!("frozen-b-{tag}"));
    let db_url = db.url.clone();
    let runner = |name: &str, max_runs: &str| {
        Launch::new(Kind::Runner, &db_url)
            .args([
                "--node-name",
                name,
                "--max-runs",
                max_runs,
                "--node-lease",
                "3s",
            ])
            .args([
                "--work-dir",
                pirus_tests::tempdir().unwrap().to_str().unwrap(),
                "--catalogue-addr",
                &cat_addr,
            ])
    };
    let a = runner(&a_name, "1").start().await?;
    let mut s = Stack {
        cat: CatalogueServiceClient::new(catalogue.channel().await?),
        run: RunnerServiceClient::new(a.channel().await?),
        node: a_name.clone(),
        work_dir: pirus_tests::tempdir()?,
        db,
        catalogue,
        runner: a,
    };
    let (pipeline, input) = s.ready().await?;
    let r = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            config_json: r#"{"sleep": 8}"#.into(),
            input_file_ids: vec![input],
            max_attempts: 2,
            ..Default::default()
        })
        .await?;
    s.wait_running(&r.id).await?;
    s.runner.signal("STOP")?;
    let b = runner(&b_name, "1").start().await?;
    s.run = RunnerServiceClient::new(b.channel().await?);
    // Wait until B holds attempt 2, then thaw A.
    // Frozen inside a transaction, the runner's locks are freed when PostgreSQL ends it
    // (idle_in_transaction_session_timeout, 30 s), so allow for that beside the lease.
    pirus_tests::eventually(
        Duration::from_secs(90),
        "attempt 2 runs on the other node",
        || {
            let mut c = s.run.clone();
            let id = r.id.clone();
            let b_name = b_name.clone();
            async move {
                c.get_run(run::GetRunRequest { id })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        r.attempt == 2
                            && r.node == b_name
                            && status(r.status) == run::RunStatus::Running
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    s.runner.signal("CONT")?;
    let events = s.watch(&r.id, 0).await?;
    assert_eq!(statuses(&events).last(), Some(&run::RunStatus::Done));
    let lost = events
        .iter()
        .position(|e| e.message.contains("was lost"))
        .expect("the loss is an event");
    assert!(
        events[lost + 1..].iter().all(|e| e.attempt == 2),
        "the lost attempt reported nothing after it lost the run: {events:?}"
    );
    let done = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert_eq!((done.attempt, done.node.as_str()), (2, b_name.as_str()));
    pirus_tests::eventually(
        Duration::from_secs(30),
        "the thawed runner removes its stale container",
        || {
            let node = a_name.clone();
            async move {
                node_containers(&node)
                    .map(|o| o.stdout.is_empty())
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    drop(b);
    Ok(())
}

/// After a reconnection to the database the runner looks for orphans again: a container of
/// its node that belongs to no run it holds is removed.
#[tokio::test]
async fn orphans_are_swept_after_a_database_reconnection() -> Result<()> {
    let mut s = stack(1).await?;
    // Installing the pipeline puts its image in reach; a run imports it into LXD.
    let (pipeline, input) = s.ready().await?;
    let r = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            input_file_ids: vec![input],
            ..Default::default()
        })
        .await?;
    s.watch(&r.id, 0).await?;
    let image = s
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner()
        .image_sha256;
    let orphan = format!(
        "pirus-orphan-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let status = std::process::Command::new("lxc")
        .args([
            "init",
            &image,
            &orphan,
            "-c",
            &format!("user.pirus.node={}", s.node),
        ])
        .output()?;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let sql = s.db.client().await?;
    sql.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        &[],
    )
    .await?;
    pirus_tests::eventually(
        Duration::from_secs(30),
        "the orphan is removed after the reconnection",
        || {
            let orphan = orphan.clone();
            async move {
                std::process::Command::new("lxc")
                    .args(["info", &orphan])
                    .output()
                    .map(|o| !o.status.success())
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    s.assert_clean()?;
    Ok(())
}

/// The SHA-256 names of the cached inputs in a runner's work folder.
fn cached_inputs(work_dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(work_dir.join("cache/inputs"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Waits (at most 30 s) until a runner's input cache holds exactly `expected`.
async fn cache_holds(s: &Stack, expected: &[&str], what: &str) -> Result<()> {
    let expected: std::collections::BTreeSet<String> =
        expected.iter().map(|s| (*s).to_owned()).collect();
    let work_dir = s.work_dir.clone();
    pirus_tests::eventually(Duration::from_secs(30), what, || {
        let (work_dir, expected) = (work_dir.clone(), expected.clone());
        async move { cached_inputs(&work_dir) == expected }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; the cache holds {:?}", cached_inputs(&s.work_dir)))
}

/// With `--input-cache-size` below one input, an input leaves the cache once no run uses it,
/// never while one does; a removed input is fetched again by the next run that needs it;
/// what a fetch cut short by a crash left goes at the runner's next start; within the size,
/// unused inputs stay.
#[tokio::test]
async fn unused_inputs_leave_the_cache_beyond_its_size() -> Result<()> {
    let mut s = pirus_tests::stack::stack_with(2, &[], &["--input-cache-size", "500B"]).await?;
    let pipeline = s.pipeline().await?;
    let (a_data, b_data) = (b"a\n".repeat(300), b"b\n".repeat(300));
    let (a_sha, b_sha) = (sha256_hex(&a_data), sha256_hex(&b_data));
    let a = s.upload("reads.txt", &a_data).await?;
    let b = s.upload("reads.txt", &b_data).await?;
    let submit = |input: &str, config: &str| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: config.to_owned(),
        input_file_ids: vec![input.to_owned()],
        ..Default::default()
    };

    // A run sleeping on A holds it while a run of B starts and ends.
    let sleeping = s.submit(submit(&a, r#"{"sleep": 600}"#)).await?;
    s.wait_running(&sleeping.id).await?;
    let quick = s.submit(submit(&b, "{}")).await?;
    s.watch(&quick.id, 0).await?;
    assert_eq!(status(s.get(&quick.id).await?.status), run::RunStatus::Done);
    cache_holds(&s, &[&a_sha], "B leaves the cache, A in use stays").await?;

    // Once its run ends, A is unused too, and over the size.
    s.run
        .cancel_run(run::CancelRunRequest {
            id: sleeping.id.clone(),
        })
        .await?;
    s.watch(&sleeping.id, 0).await?;
    cache_holds(&s, &[], "A leaves the cache once its run ended").await?;

    // A run of A fetches it again.
    let again = s.submit(submit(&a, "{}")).await?;
    s.watch(&again.id, 0).await?;
    let done = s.get(&again.id).await?;
    assert_eq!(status(done.status), run::RunStatus::Done, "{done:?}");
    cache_holds(&s, &[], "A leaves again after the run that fetched it").await?;

    // A fetch cut short by a crash leaves a temporary file, which the next start removes.
    s.runner.signal("KILL")?;
    let _ = s.runner.wait_exit(Duration::from_secs(10)).await?;
    let leftover = s.work_dir.join(format!("cache/inputs/{a_sha}.part-0123"));
    std::fs::write(&leftover, b"half")?;
    restart_runner(&mut s).await?;
    cache_holds(&s, &[], "the leftover goes at the runner's start").await?;

    // Restarted with the default size (10 GiB), it keeps what its runs fetched.
    for input in [&a, &b] {
        let r = s.submit(submit(input, "{}")).await?;
        s.watch(&r.id, 0).await?;
    }
    cache_holds(&s, &[&a_sha, &b_sha], "unused inputs within the size stay").await?;
    Ok(())
}
