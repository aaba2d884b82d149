//! Load generator for the control plane (bench/load.sh): against a runner and a catalogue on a
//! seeded database (bench/seed.sql), drives each RPC from CONCURRENCY tasks over four HTTP/2
//! connections for SECONDS, beside the runner's gRPC health check through the same client
//! (the floor: same server, transport and client, no database), and measures the WatchRun
//! fan-out: WATCHERS streams on one run, the time from a status change (CancelRun sent; its
//! commit comes before its answer) to every watcher receiving it, over five changes.
//!
//! Calls carry `PIRUS_BENCH_TOKEN` (an admin: sees every run); ListRuns is also measured as
//! the user in `PIRUS_LOAD_USER_TOKEN`, whose runs are one in ten. Prints one row per
//! measurement with calls/s, p50 and p99, and the target beside it.
//!
//! ListRuns is measured three ways: CONCURRENCY callers and 4 callers each calling again as
//! soon as answered (closed loops: throughput, and latency where the host is not saturated),
//! and at a fixed offered rate (`PIRUS_LOAD_LIST_RATE`, default 1,000 pages a second: an open
//! loop, latency counted from when each call was due, queueing included).
//!
//! `PIRUS_LOAD_ONLY` (a comma-separated list of GetRun, ListRuns, ListFiles, SubmitRun and
//! fan-out) measures only those, beside the floor: for profiling one of them.
//!
//! Usage: pirus-load RUNNER_ADDR CATALOGUE_ADDR PIPELINE_ID [CONCURRENCY] [SECONDS] [WATCHERS]

// A command-line tool: its answers go to stdout.
#![allow(clippy::print_stdout)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pirus_proto::{
    catalogue::v1::{self as cat, catalogue_service_client::CatalogueServiceClient},
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use pirus_tests::{
    Channel,
    identity::with_token,
    load::{Outcome, drive, drive_at_rate, percentile},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CONNECTIONS: usize = 4;

async fn connect(addr: &str, token: Option<&str>) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        channels.push(with_token(channel, token));
    }
    Ok(channels)
}

/// Up to `n` run ids (the first pages of ListRuns), to read at random.
async fn sample_runs(channel: Channel, n: usize) -> Result<Vec<String>> {
    let mut client = RunnerServiceClient::new(channel);
    let runs = pirus_tests::list_runs(&mut client, n).await?;
    Ok(runs.into_iter().map(|r| r.id).collect())
}

/// The fan-out: `watchers` WatchRun streams on a fresh queued run, then CancelRun; answers the
/// delays from the cancel's answer to each watcher seeing CANCELED.
async fn fan_out(channels: &[Channel], pipeline: &str, watchers: usize) -> Result<Vec<Duration>> {
    let mut client = RunnerServiceClient::new(channels[0].clone());
    let queued = client
        .submit_run(run::SubmitRunRequest {
            pipeline_id: pipeline.to_owned(),
            name: "fan-out".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(watchers);
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut client = RunnerServiceClient::new(channels[i % channels.len()].clone());
        let (id, ready) = (queued.id.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let started = async {
                let mut stream = client
                    .watch_run(run::WatchRunRequest {
                        run_id: id,
                        after_seq: 0,
                    })
                    .await?
                    .into_inner();
                // The first event (WAITING) says the watcher is following.
                stream.message().await?.context("no first event")?;
                Ok::<_, anyhow::Error>(stream)
            }
            .await;
            let mut stream = match started {
                Ok(stream) => {
                    let _ = ready.send(Ok(())).await;
                    stream
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string())).await;
                    return Err(e);
                }
            };
            while let Some(event) = stream.message().await? {
                if event.status == run::RunStatus::Canceled as i32 {
                    return Ok::<_, anyhow::Error>(Instant::now());
                }
            }
            bail!("the watch ended without CANCELED")
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        if let Err(e) = ready_rx.recv().await.context("a watcher vanished")? {
            bail!("a watcher failed to start: {e}");
        }
    }
    // From the moment the change is asked for: the commit happens before CancelRun answers,
    // and a watcher may see the change before the answer arrives, so this bounds the delay
    // from above (it includes the call itself).
    let committed = Instant::now();
    client
        .cancel_run(run::CancelRunRequest {
            id: queued.id.clone(),
        })
        .await?;
    let mut delays = Vec::with_capacity(watchers);
    for task in tasks {
        let seen = task.await??;
        delays.push(seen.saturating_duration_since(committed));
    }
    Ok(delays)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pirus-load RUNNER_ADDR CATALOGUE_ADDR PIPELINE_ID [CONCURRENCY] [SECONDS] [WATCHERS]";
    let (Some(runner), Some(catalogue), Some(pipeline)) = (args.first(), args.get(1), args.get(2))
    else {
        bail!(usage);
    };
    let concurrency: usize = args.get(3).map_or(Ok(32), |a| a.parse()).context(usage)?;
    let seconds: u64 = args.get(4).map_or(Ok(5), |a| a.parse()).context(usage)?;
    let watchers: usize = args.get(5).map_or(Ok(1000), |a| a.parse()).context(usage)?;
    let token = std::env::var("PIRUS_BENCH_TOKEN").ok();
    let user = std::env::var("PIRUS_LOAD_USER_TOKEN").ok();
    let runners = connect(runner, token.as_deref()).await?;
    let catalogues = connect(catalogue, token.as_deref()).await?;
    let ids = Arc::new(sample_runs(runners[0].clone(), 10_000).await?);
    if ids.is_empty() {
        bail!("no runs: seed the database first (bench/seed.sql)");
    }
    let mut rows: Vec<(String, Outcome, &str)> = Vec::new();
    // PIRUS_LOAD_ONLY=GetRun,ListRuns,... measures only those (the floor always), to profile one.
    let only = std::env::var("PIRUS_LOAD_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let list_rate: u32 = match std::env::var("PIRUS_LOAD_LIST_RATE") {
        Ok(rate) => rate
            .parse()
            .context("PIRUS_LOAD_LIST_RATE: calls a second")?,
        Err(_) => 1000,
    };

    let health = drive(
        &runners,
        concurrency,
        seconds,
        || None,
        |channel, _| async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        },
    )
    .await?;
    rows.push(("health check (the floor)".into(), health, ""));

    if wanted("GetRun") {
        let sample = std::sync::Arc::clone(&ids);
        let get = drive(
            &runners,
            concurrency,
            seconds,
            || None,
            move |channel, n| {
                let id = sample[n * 7919 % sample.len()].clone();
                async move {
                    RunnerServiceClient::new(channel)
                        .get_run(run::GetRunRequest { id })
                        .await
                        .is_ok()
                }
            },
        )
        .await?;
        rows.push(("GetRun".into(), get, ">= 10,000 calls/s"));
    }

    // A page of 50 with a filter, from a random place in the table.
    if wanted("ListRuns") {
        let sample = std::sync::Arc::clone(&ids);
        let list_call = move |channel: Channel, n: usize| {
            let after = sample[n * 104_729 % sample.len()].replace('-', "");
            async move {
                RunnerServiceClient::new(channel)
                    .list_runs(run::ListRunsRequest {
                        status: run::RunStatus::Done as i32,
                        page_size: 50,
                        page_token: after,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            }
        };
        let list = drive(&runners, concurrency, seconds, || None, list_call.clone()).await?;
        rows.push((
            "ListRuns status=DONE, page of 50 (admin)".into(),
            list,
            "p99 < 20 ms",
        ));
        // The same with 4 callers: latency where the host is not saturated (with 32 callers on
        // two cores, p99 is mostly the wait for a core).
        let list = drive(&runners, 4, seconds, || None, list_call.clone()).await?;
        rows.push((
            "ListRuns status=DONE, page of 50, 4 callers".into(),
            list,
            "p99 < 20 ms",
        ));
        // And as independent clients would call it: a fixed rate whatever the answers' pace,
        // each call's latency counted from when it was due (queueing included).
        let list = drive_at_rate(&runners, list_rate, seconds, 4096, list_call.clone()).await?;
        rows.push((
            format!("ListRuns status=DONE, page of 50, {list_rate}/s offered"),
            list,
            "p99 < 20 ms",
        ));
    }
    if wanted("ListRuns")
        && let Some(user) = &user
    {
        let mine = connect(runner, Some(user)).await?;
        let list = drive(
            &mine,
            concurrency,
            seconds,
            || None,
            |channel, _| async move {
                RunnerServiceClient::new(channel)
                    .list_runs(run::ListRunsRequest {
                        status: run::RunStatus::Done as i32,
                        page_size: 50,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            },
        )
        .await?;
        rows.push((
            "ListRuns status=DONE, page of 50 (a user)".into(),
            list,
            "p99 < 20 ms",
        ));
    }

    if wanted("ListFiles") {
        let files = drive(
            &catalogues,
            concurrency,
            seconds,
            || None,
            |channel, _| async move {
                CatalogueServiceClient::new(channel)
                    .list_files(cat::ListFilesRequest {
                        page_size: 50,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().files.len() == 50)
            },
        )
        .await?;
        rows.push(("ListFiles, page of 50".into(), files, ""));
    }

    if wanted("SubmitRun") {
        let pipeline_id = pipeline.clone();
        let submit = drive(
            &runners,
            concurrency,
            seconds,
            || None,
            move |channel, n| {
                let pipeline_id = pipeline_id.clone();
                async move {
                    RunnerServiceClient::new(channel)
                        .submit_run(run::SubmitRunRequest {
                            pipeline_id,
                            name: format!("load {n}"),
                            ..Default::default()
                        })
                        .await
                        .is_ok()
                }
            },
        )
        .await?;
        rows.push((
            "SubmitRun (a committed insert)".into(),
            submit,
            ">= 1,000 calls/s",
        ));
    }

    let floor = rows[0].1.rate();
    println!("{concurrency} concurrent callers over {CONNECTIONS} connections, {seconds} s each");
    println!(
        "{:<50} {:>10} {:>9} {:>9} {:>9} {:>7}  target",
        "", "calls/s", "p50 ms", "p99 ms", "vs floor", "errors"
    );
    for (name, outcome, target) in &rows {
        println!(
            "{:<50} {:>10.0} {:>9.2} {:>9.2} {:>8.2}x {:>7}  {target}",
            name,
            outcome.rate(),
            outcome.percentile(0.5).as_secs_f64() * 1e3,
            outcome.percentile(0.99).as_secs_f64() * 1e3,
            outcome.rate() / floor,
            outcome.errors,
        );
    }

    if wanted("fan-out") {
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.extend(fan_out(&runners, pipeline, watchers).await?);
        }
        delays.sort_unstable();
        println!(
            "WatchRun fan-out: a status change to {watchers} watchers, 5 changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  target p99 < 100 ms",
            percentile(&delays, 0.5).as_secs_f64() * 1e3,
            percentile(&delays, 0.99).as_secs_f64() * 1e3,
            percentile(&delays, 1.0).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
