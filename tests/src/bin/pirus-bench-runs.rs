//! Benchmark client for runs: installs a package, then measures submit -> DONE latency of
//! sequential trivial runs, and the throughput of a batch submitted at once. Prints
//! `image <sha256>`, `latency <seconds>` per run, and `batch <runs> <seconds>`.
//!
//! With `PIRUS_BENCH_TES` (the runner's HTTP URL) it then alternates, SEQUENTIAL times, a TES
//! task (POST /ga4gh/tes/v1/tasks, polled until COMPLETE) whose one executor greets and writes
//! an output to the catalogue, and the same work submitted over gRPC (the package's run:
//! greets, writes outputs); prints `tes <seconds>` and `grpc <seconds>` for each.
//! Used by bench/runs.sh.
//!
//! Usage: pirus-bench-runs CATALOGUE_ADDR RUNNER_ADDR PACKAGE SEQUENTIAL BATCH

// A command-line tool: its answers go to stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pirus_proto::{
    catalogue::v1::{self as cat, catalogue_service_client::CatalogueServiceClient},
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use tokio_stream::StreamExt;

async fn until_done(
    runner: &mut RunnerServiceClient<pirus_tests::Channel>,
    id: &str,
) -> Result<()> {
    let mut events = runner
        .watch_run(run::WatchRunRequest {
            run_id: id.into(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    let mut last = run::RunStatus::Unspecified;
    while let Some(e) = events.next().await {
        last = run::RunStatus::try_from(e?.status)?;
    }
    if last != run::RunStatus::Done {
        let r = runner
            .get_run(run::GetRunRequest { id: id.into() })
            .await?
            .into_inner();
        bail!("run {id} ended {last:?}: {}", r.error_message);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [catalogue, runner, package, sequential, batch] = args.as_slice() else {
        bail!("usage: pirus-bench-runs CATALOGUE_ADDR RUNNER_ADDR PACKAGE SEQUENTIAL BATCH");
    };
    let (sequential, batch): (usize, usize) = (sequential.parse()?, batch.parse()?);
    let mut cat =
        CatalogueServiceClient::new(pirus_tests::identity::connect_from_env(catalogue).await?);
    let mut runner =
        RunnerServiceClient::new(pirus_tests::identity::connect_from_env(runner).await?);

    let bytes = std::fs::read(package).context("package")?;
    let pipeline = cat
        .create_pipeline(cat::CreatePipelineRequest {
            filename: "bench.tar.gz".into(),
            size: bytes.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let message = cat::WriteUploadRequest {
        upload_id: pipeline.id.clone(),
        offset: 0,
        data: bytes.into(),
        ..Default::default()
    };
    cat.write_upload(tokio_stream::iter([message])).await?;
    let installed = loop {
        let p = cat
            .get_pipeline(cat::GetPipelineRequest {
                id: pipeline.id.clone(),
            })
            .await?
            .into_inner();
        match cat::PipelineStatus::try_from(p.status)? {
            cat::PipelineStatus::Ready => break p,
            cat::PipelineStatus::Error => bail!("install failed: {}", p.error_message),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    println!("image {}", installed.image_sha256);

    let submit = |name: String| run::SubmitRunRequest {
        pipeline_id: installed.id.clone(),
        name,
        config_json: "{}".into(),
        ..Default::default()
    };
    // A first run imports the image into LXD; it is not counted.
    let warm = runner
        .submit_run(submit("warm-up".into()))
        .await?
        .into_inner();
    until_done(&mut runner, &warm.id).await?;
    for i in 0..sequential {
        let started = Instant::now();
        let r = runner
            .submit_run(submit(format!("latency {i}")))
            .await?
            .into_inner();
        until_done(&mut runner, &r.id).await?;
        println!("latency {:.3}", started.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..batch {
        ids.push(
            runner
                .submit_run(submit(format!("batch {i}")))
                .await?
                .into_inner()
                .id,
        );
    }
    for id in ids {
        until_done(&mut runner, &id).await?;
    }
    println!("batch {batch} {:.3}", started.elapsed().as_secs_f64());

    if let Ok(tes) = std::env::var("PIRUS_BENCH_TES") {
        let name = installed.name.clone();
        for i in 0..sequential {
            let started = Instant::now();
            tes_task(&tes, &name).await?;
            println!("tes {:.3}", started.elapsed().as_secs_f64());
            let started = Instant::now();
            let r = runner
                .submit_run(submit(format!("grpc {i}")))
                .await?
                .into_inner();
            until_done(&mut runner, &r.id).await?;
            println!("grpc {:.3}", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Submits a trivial TES task to the runner at `base` and polls it (every 20 ms) until it ends.
async fn tes_task(base: &str, image: &str) -> Result<()> {
    let http = pirus_tests::http::Http::anonymous();
    let token = std::env::var("PIRUS_BENCH_TOKEN").unwrap_or_default();
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let body = serde_json::json!({
        "name": "bench",
        "executors": [{"image": image, "command": ["sh", "-c",
            "echo hello from tes; mkdir -p /out; echo hello, world > /out/greeting.txt"]}],
        "outputs": [{"path": "/out/greeting.txt", "url": "pirus://files/"}],
    });
    let created = http
        .send(
            "POST",
            &format!("{base}/ga4gh/tes/v1/tasks"),
            &headers,
            body.to_string(),
        )
        .await?;
    if created.status != 200 {
        bail!("create: {} {}", created.status, created.body);
    }
    let id = serde_json::from_str::<serde_json::Value>(&created.body)?["id"]
        .as_str()
        .context("no id")?
        .to_owned();
    loop {
        let got = http
            .send(
                "GET",
                &format!("{base}/ga4gh/tes/v1/tasks/{id}"),
                &headers,
                Vec::new(),
            )
            .await?;
        let state = serde_json::from_str::<serde_json::Value>(&got.body)?["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match state.as_str() {
            "COMPLETE" => return Ok(()),
            "EXECUTOR_ERROR" | "SYSTEM_ERROR" | "CANCELED" => bail!("task {id} ended {state}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
