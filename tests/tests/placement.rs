//! Placement against real LXD: a node never holds runs whose requests add up to more than its
//! capacity, runs go only to nodes whose labels their node selector names, and SubmitRun
//! refuses what no registered node could take.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use pirus_proto::runner::v1::{self as run, runner_service_client::RunnerServiceClient};
use pirus_tests::{
    Kind, Launch,
    stack::{stack, stack_with, status},
    tempdir,
};
use tonic::Code;

fn sleeping(pipeline: &str, input: &str, seconds: u32) -> run::SubmitRunRequest {
    run::SubmitRunRequest {
        pipeline_id: pipeline.into(),
        config_json: format!(r#"{{"sleep": {seconds}}}"#),
        input_file_ids: vec![input.into()],
        ..Default::default()
    }
}

/// Four runs of 2 CPUs and 16 GiB each on a node of 4 CPUs and 40 GiB (and four slots): two
/// run at once, two wait; sampled every 100 ms, the node's reserved resources never pass its
/// capacity and are whole runs' requests; all four end DONE.
#[tokio::test]
async fn a_node_never_promises_more_than_its_capacity() -> Result<()> {
    let runner_args = [
        "--capacity-cpus",
        "4",
        "--capacity-memory",
        "40GiB",
        "--max-run-cpus",
        "2",
        "--max-run-memory",
        "16GiB",
    ];
    let mut s = stack_with(4, &[], &runner_args).await?;
    let (pipeline, input) = s.ready().await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut r = sleeping(&pipeline, &input, 3);
        r.resources = Some(run::Resources {
            cpu: 2,
            memory_bytes: 16 << 30,
            ..Default::default()
        });
        ids.push(s.submit(r).await?.id);
    }
    let (mut most_running, mut waiting_seen, mut capacity_said) = (0, false, false);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let node = s
            .run
            .list_nodes(run::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes
            .into_iter()
            .find(|n| n.name == s.node)
            .expect("the stack's node");
        let (capacity, reserved) = (node.capacity.unwrap(), node.reserved.unwrap());
        assert_eq!((capacity.cpu, capacity.memory_bytes), (4, 40 << 30));
        assert!(
            reserved.cpu <= capacity.cpu && reserved.memory_bytes <= capacity.memory_bytes,
            "reserved {reserved:?} past capacity {capacity:?}"
        );
        let mut statuses = Vec::new();
        for id in &ids {
            let now = s.get(id).await?;
            // A waiting run says why, with the numbers: no room (or, for the moment between
            // a run's end and the next claim, that it fits and waits its turn).
            if now.pending_reason == run::PendingReason::Capacity as i32 {
                assert!(
                    now.pending_message.starts_with("needs 2 CPUs and 16.0 GiB"),
                    "{}",
                    now.pending_message
                );
                capacity_said = true;
            }
            statuses.push(status(now.status));
        }
        let holding = statuses
            .iter()
            .filter(|st| {
                matches!(
                    st,
                    run::RunStatus::Initializing
                        | run::RunStatus::Running
                        | run::RunStatus::Finishing
                )
            })
            .count();
        most_running = most_running.max(holding);
        waiting_seen |= holding == 2 && statuses.contains(&run::RunStatus::Waiting);
        assert_eq!(reserved.cpu % 2, 0, "each held run reserves its 2 CPUs");
        assert_eq!(reserved.memory_bytes % (16 << 30), 0, "and its 16 GiB");
        if statuses.iter().all(|st| *st == run::RunStatus::Done) {
            break;
        }
        if statuses
            .iter()
            .any(|st| matches!(st, run::RunStatus::Error | run::RunStatus::Canceled))
            || Instant::now() > deadline
        {
            bail!("runs ended {statuses:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most_running, 2, "two runs of 2 CPUs at once on 4 CPUs");
    assert!(waiting_seen, "two waited while two ran");
    assert!(capacity_said, "a waiting run said PENDING_REASON_CAPACITY");
    Ok(())
}

/// A run whose node selector only a drained node matches waits; once that node takes runs
/// again it runs there. A selector no registered node matches, and a request larger than every
/// matching node, are refused naming the key and the field.
#[tokio::test]
async fn a_selector_run_waits_for_a_matching_node_then_runs_there() -> Result<()> {
    let mut s = stack(1).await?;
    let ssd = format!("{}-ssd", s.node);
    let work = tempdir()?;
    let other = Launch::new(Kind::Runner, &s.db.url)
        .args([
            "--node-name",
            &ssd,
            "--max-runs",
            "1",
            "--node-label",
            "disk=ssd",
        ])
        .args(["--work-dir", work.to_str().unwrap_or_default()])
        .args(["--catalogue-addr", &s.catalogue.grpc_url()])
        .start()
        .await?;
    let mut b = RunnerServiceClient::new(other.channel().await?);
    b.drain_node(run::DrainNodeRequest { name: ssd.clone() })
        .await?;
    let (pipeline, input) = s.ready().await?;
    let mut on_ssd = sleeping(&pipeline, &input, 0);
    on_ssd.node_selector = [("disk".to_owned(), "ssd".to_owned())].into();
    let queued = s.submit(on_ssd.clone()).await?;
    assert_eq!(
        queued.node_selector.get("disk").map(String::as_str),
        Some("ssd")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = s.get(&queued.id).await?;
    assert_eq!(
        status(waiting.status),
        run::RunStatus::Waiting,
        "the other node does not match"
    );
    pirus_tests::stack::assert_pending(&waiting, run::PendingReason::NoMatchingNode, "disk=ssd");
    b.undrain_node(run::UndrainNodeRequest { name: ssd.clone() })
        .await?;
    let events = s.watch(&queued.id, 0).await?;
    assert_eq!(
        status(events.last().expect("events").status),
        run::RunStatus::Done
    );
    assert_eq!(s.get(&queued.id).await?.node, ssd, "it ran on the ssd node");

    let mut gpu = on_ssd.clone();
    gpu.node_selector = [("gpu".to_owned(), "yes".to_owned())].into();
    let e = s.submit(gpu).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("node_selector[\"gpu\"]"),
        "{}",
        e.message()
    );
    let mut huge = on_ssd;
    huge.resources = Some(run::Resources {
        cpu: 4096,
        ..Default::default()
    });
    let e = s.submit(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("resources.cpu"), "{}", e.message());
    let nodes = s
        .run
        .list_nodes(run::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let labelled = nodes.iter().find(|n| n.name == ssd).expect("the ssd node");
    assert_eq!(labelled.labels.get("disk").map(String::as_str), Some("ssd"));
    Ok(())
}

/// Fair share: one principal holds the node's only slot and has 200 more runs queued; a
/// second principal's one run, submitted after them all, is the next to run.
#[tokio::test]
async fn a_second_principal_runs_next_although_the_first_queued_200_earlier() -> Result<()> {
    let mut s = stack(1).await?;
    let (pipeline, _) = s.ready().await?;
    let runs_of =
        async |name: &str| -> Result<(RunnerServiceClient<pirus_tests::Channel>, String)> {
            let token =
                pirus_tests::identity::principal(&s.catalogue, name, Default::default()).await?;
            let mut files =
                pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient::new(
                    s.catalogue.channel_as(&token).await?,
                );
            let file = files
                .create_file(pirus_proto::catalogue::v1::CreateFileRequest {
                    filename: "reads.txt".into(),
                    size: 0,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((
                RunnerServiceClient::new(s.runner.channel_as(&token).await?),
                file.id,
            ))
        };
    let (mut heavy, heavy_input) = runs_of("heavy").await?;
    let (mut light, light_input) = runs_of("light").await?;
    let first = heavy
        .submit_run(sleeping(&pipeline, &heavy_input, 4))
        .await?
        .into_inner();
    s.wait_running(&first.id).await?;
    let mut queued = Vec::new();
    for _ in 0..200 {
        queued.push(
            heavy
                .submit_run(sleeping(&pipeline, &heavy_input, 0))
                .await?
                .into_inner()
                .id,
        );
    }
    let newcomer = light
        .submit_run(sleeping(&pipeline, &light_input, 0))
        .await?
        .into_inner();
    let events = s.watch(&newcomer.id, 0).await?;
    assert_eq!(
        status(events.last().expect("events").status),
        run::RunStatus::Done
    );
    let mut ran_before = 0;
    for id in &queued {
        if s.get(id)
            .await?
            .started_at
            .is_some_and(|t| newcomer_started(&events).is_some_and(|n| (t.seconds, t.nanos) < n))
        {
            ran_before += 1;
        }
    }
    assert_eq!(
        ran_before, 0,
        "none of the 200 queued earlier started before the newcomer"
    );
    Ok(())
}

/// When the newcomer's run was claimed (its first event past WAITING).
fn newcomer_started(events: &[run::RunEvent]) -> Option<(i64, i32)> {
    events
        .iter()
        .find(|e| status(e.status) != run::RunStatus::Waiting)
        .and_then(|e| e.at.as_ref())
        .map(|t| (t.seconds, t.nanos))
}
