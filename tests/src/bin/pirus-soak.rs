//! Soak client (bench/soak.sh): for MINUTES, submits a run of PIPELINE_ID every 3 s (each
//! with its own request id, so a submission retried across a runner restart is never a
//! second run) while 4 readers call GetRun and ListRuns without pause; errors while the runner
//! is down are counted and retried, never fatal. Then it waits (up to 10 minutes) for every
//! submitted run to end and checks that each request id made exactly one run, and how each
//! ended. Prints `submitted N`, `runs N`, `duplicates N`, one `ended STATUS N` per status (and
//! `not_done ID STATUS attempt N: why` for each run that did not end DONE),
//! `retried N` (runs that needed more than one attempt), `read_calls N`, `read_errors N`.
//!
//! Usage: pirus-soak RUNNER_ADDR PIPELINE_ID MINUTES

// A command-line tool: its answers go to stdout.
#![allow(clippy::print_stdout)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pirus_proto::runner::v1::{self as run, runner_service_client::RunnerServiceClient};
use pirus_tests::{Channel, identity::with_token};

async fn connect(addr: &str) -> Result<Channel> {
    let token = std::env::var("PIRUS_BENCH_TOKEN").ok();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    Ok(with_token(channel, token.as_deref()))
}

/// Submits with `request_id` until the runner answers (a restart in between is retried).
async fn submit(client: &mut RunnerServiceClient<Channel>, pipeline: &str, n: usize) -> String {
    loop {
        let request = run::SubmitRunRequest {
            pipeline_id: pipeline.to_owned(),
            name: format!("soak {n}"),
            request_id: format!("soak-{n}"),
            ..Default::default()
        };
        match client.submit_run(request).await {
            Ok(r) => return r.into_inner().id,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [runner, pipeline, minutes] = args.as_slice() else {
        bail!("usage: pirus-soak RUNNER_ADDR PIPELINE_ID MINUTES");
    };
    let minutes: f64 = minutes.parse().context("MINUTES")?;
    let channel = connect(runner).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut client = RunnerServiceClient::new(channel.clone());
        let (stop, calls, errors) = (
            std::sync::Arc::clone(&stop),
            std::sync::Arc::clone(&calls),
            std::sync::Arc::clone(&errors),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let listed = client
                    .list_runs(run::ListRunsRequest {
                        page_size: 50,
                        ..Default::default()
                    })
                    .await;
                let ok = match listed {
                    Ok(page) => match page.into_inner().runs.first() {
                        Some(r) => client
                            .get_run(run::GetRunRequest { id: r.id.clone() })
                            .await
                            .is_ok(),
                        None => true,
                    },
                    Err(_) => false,
                };
                if ok {
                    calls.fetch_add(2, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }

    let mut client = RunnerServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut ids = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline {
        let next = Instant::now() + Duration::from_secs(3);
        ids.push(submit(&mut client, pipeline, n).await);
        n += 1;
        tokio::time::sleep_until(next.into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await?;
    }

    // Every submitted run ends; each request id made one run.
    let settle = Instant::now() + Duration::from_secs(600);
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    for id in &ids {
        loop {
            match client.get_run(run::GetRunRequest { id: id.clone() }).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let status = run::RunStatus::try_from(r.status)?;
                    let terminal = matches!(
                        status,
                        run::RunStatus::Done | run::RunStatus::Error | run::RunStatus::Canceled
                    );
                    if terminal || Instant::now() > settle {
                        *ended.entry(status.as_str_name().to_owned()).or_default() += 1;
                        if status != run::RunStatus::Done {
                            println!(
                                "not_done {id} {} attempt {}: {}",
                                status.as_str_name(),
                                r.attempt,
                                r.error_message
                            );
                        }
                        if r.attempt > 1 {
                            retried += 1;
                        }
                        break;
                    }
                }
                Err(e) if Instant::now() > settle => bail!("run {id}: {e}"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The runs the soak made, as the runner lists them (by name).
    let named = pirus_tests::list_runs(&mut client, usize::MAX)
        .await?
        .iter()
        .filter(|r| r.name.starts_with("soak "))
        .count();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    println!("submitted {}", ids.len());
    println!("runs {named}");
    println!(
        "duplicates {}",
        ids.len() - unique.len() + named.saturating_sub(ids.len())
    );
    for (status, count) in ended {
        println!("ended {status} {count}");
    }
    println!("retried {retried}");
    println!("read_calls {}", calls.load(Ordering::Relaxed));
    println!("read_errors {}", errors.load(Ordering::Relaxed));
    Ok(())
}
