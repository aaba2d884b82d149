//! Benchmark client: unary RPC throughput and latency against a running catalogue, each RPC
//! driven by CONCURRENCY tasks over four HTTP/2 connections for SECONDS, beside the gRPC health
//! check measured the same way (the same server, transport and client, no database: the
//! baseline). Calls carry the token in `PIRUS_BENCH_TOKEN`. Given the address of a second
//! catalogue on the same database started with `--auth none`, GetFile is measured on both,
//! alternately, to give the cost of the token check; given also the `https://` URL of a third
//! one serving TLS (its CA in `PIRUS_BENCH_TLS_CA`), GetFile with a token over TLS joins the
//! rotation. Used by bench/rpc.sh.
//!
//! With `PIRUS_BENCH_SERVER_PIDS` (the pids of the catalogues measured, in the order of their
//! addresses), each row also gives the server's CPU time per call.
//!
//! Usage: pirus-bench-rpc GRPC_ADDR [CONCURRENCY] [SECONDS] [NO_AUTH_GRPC_ADDR [TLS_GRPC_URL]]

// A command-line tool: its report goes to stdout.
#![allow(clippy::print_stdout)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use pirus_tests::{
    Channel,
    identity::with_token,
    load::{Outcome, drive},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CONNECTIONS: usize = 4;
const FILES: usize = 1000;
/// Rounds of GetFile with and without tokens, alternately.
const ROUNDS: usize = 3;

/// The server measured now: an index into `PIRUS_BENCH_SERVER_PIDS` (the catalogue at
/// GRPC_ADDR, then the one without tokens, then the one with TLS).
static SERVER: AtomicUsize = AtomicUsize::new(0);

/// CPU time (user and system) so far of the server measured now, if its pid was given. CPU
/// per call is steadier than calls per second on a host the client and the database share.
fn server_cpu() -> Option<Duration> {
    let pids = std::env::var("PIRUS_BENCH_SERVER_PIDS").ok()?;
    let pid = pids
        .split(',')
        .nth(SERVER.load(Ordering::Relaxed))?
        .trim()
        .to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CONNECTIONS connections to `addr` (an `https://` URL: TLS, trusting `PIRUS_BENCH_TLS_CA`),
/// their calls carrying `token`.
async fn connect(addr: &str, token: Option<&str>) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let endpoint = match addr.strip_prefix("https://") {
            Some(_) => {
                let ca = std::env::var("PIRUS_BENCH_TLS_CA").context("PIRUS_BENCH_TLS_CA")?;
                let ca = tonic::transport::Certificate::from_pem(std::fs::read(ca)?);
                tonic::transport::Channel::from_shared(addr.to_owned())?
                    .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca))?
            }
            None => tonic::transport::Channel::from_shared(format!("http://{addr}"))?,
        };
        channels.push(with_token(endpoint.connect().await?, token));
    }
    Ok(channels)
}

/// GetFile of the ids in turn, over `channels`.
async fn get_files(
    channels: &[Channel],
    ids: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: u64,
) -> Result<Outcome> {
    let ids = std::sync::Arc::clone(ids);
    drive(
        channels,
        concurrency,
        seconds,
        server_cpu,
        move |channel, n| {
            let id = ids[n % ids.len()].clone();
            async move {
                CatalogueServiceClient::new(channel)
                    .get_file(pb::GetFileRequest { id })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// Outcomes of several rounds as one.
fn merged(rounds: Vec<Outcome>) -> Outcome {
    let mut all = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        server_cpu: Some(Duration::ZERO),
    };
    for r in rounds {
        all.calls += r.calls;
        all.errors += r.errors;
        all.elapsed += r.elapsed;
        all.latencies.extend(r.latencies);
        all.server_cpu = all.server_cpu.zip(r.server_cpu).map(|(a, b)| a + b);
    }
    all.latencies.sort_unstable();
    all
}

/// GetFile on each variant in turn, [`ROUNDS`] times: a row per variant.
async fn alternately<'a>(
    variants: Vec<(&'a str, Vec<Channel>)>,
    ids: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: u64,
) -> Result<Vec<(&'a str, Outcome)>> {
    let mut rounds: Vec<Vec<Outcome>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, channels)) in variants.iter().enumerate() {
            SERVER.store(i, Ordering::Relaxed);
            rounds[i].push(get_files(channels, ids, concurrency, seconds).await?);
        }
        SERVER.store(0, Ordering::Relaxed);
    }
    Ok(variants
        .into_iter()
        .zip(rounds)
        .map(|((name, _), r)| (name, merged(r)))
        .collect())
}

/// tus creations (POST with Upload-Length) at `url`, over HTTP/1.1 keep-alive connections
/// of one client, with the bench token when there is one.
async fn tus_posts(
    channels: &[Channel],
    concurrency: usize,
    seconds: u64,
    url: String,
    token: Option<String>,
) -> Result<Outcome> {
    let http = pirus_tests::http::Http::anonymous();
    let auth = token.map(|t| format!("Bearer {t}"));
    let shared = Arc::new((http, url, auth));
    drive(channels, concurrency, seconds, server_cpu, move |_, n| {
        let shared = Arc::clone(&shared);
        async move {
            let (http, url, auth) = &*shared;
            let meta = format!(
                "filename {}",
                pirus_tests::http::b64(format!("tus-{n}.bin").as_bytes())
            );
            let mut headers = vec![("upload-length", "1"), ("upload-metadata", meta.as_str())];
            if let Some(auth) = auth {
                headers.push(("authorization", auth.as_str()));
            }
            http.tus("POST", url, &headers)
                .await
                .is_ok_and(|r| r.status == 201)
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pirus-bench-rpc GRPC_ADDR [CONCURRENCY] [SECONDS] [NO_AUTH_GRPC_ADDR]";
    let addr = args.next().context(usage)?;
    let concurrency: usize = args.next().map_or(Ok(32), |a| a.parse()).context(usage)?;
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse()).context(usage)?;
    let no_auth = args.next();
    let tls = args.next();
    let token = std::env::var("PIRUS_BENCH_TOKEN").ok();
    let channels = connect(&addr, token.as_deref()).await?;

    // Files to read: created, never uploaded (metadata reads do not care).
    let mut client = CatalogueServiceClient::new(channels[0].clone());
    let mut ids = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let file = client
            .create_file(pb::CreateFileRequest {
                filename: format!("bench-{i}.bin"),
                size: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.push(file.id);
    }
    let ids = Arc::new(ids);

    let mut rows: Vec<(&str, Outcome)> = Vec::new();
    let health = drive(
        &channels,
        concurrency,
        seconds,
        server_cpu,
        |channel, _| async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        },
    )
    .await?;
    rows.push(("grpc.health.v1.Health/Check (baseline)", health));
    match &no_auth {
        Some(open) => {
            let mut variants = vec![
                ("GetFile (with a token)", channels.clone()),
                ("GetFile (--auth none)", connect(open, None).await?),
            ];
            if let Some(url) = &tls {
                variants.push((
                    "GetFile (a token, over TLS)",
                    connect(url, token.as_deref()).await?,
                ));
            }
            rows.extend(alternately(variants, &ids, concurrency, seconds).await?);
        }
        None => rows.push((
            "GetFile",
            get_files(&channels, &ids, concurrency, seconds).await?,
        )),
    }
    let list = drive(
        &channels,
        concurrency,
        seconds,
        server_cpu,
        |channel, _| async move {
            CatalogueServiceClient::new(channel)
                .list_files(pb::ListFilesRequest {
                    page_size: 50,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.into_inner().files.len() == 50)
        },
    )
    .await?;
    rows.push(("ListFiles (a page of 50)", list));
    let create = drive(
        &channels,
        concurrency,
        seconds,
        server_cpu,
        |channel, n| async move {
            CatalogueServiceClient::new(channel)
                .create_file(pb::CreateFileRequest {
                    filename: format!("created-{n}.bin"),
                    size: 1,
                    ..Default::default()
                })
                .await
                .is_ok()
        },
    )
    .await?;
    rows.push(("CreateFile (a committed insert)", create));
    if let Ok(url) = std::env::var("PIRUS_BENCH_TUS_URL") {
        let tus = tus_posts(&channels, concurrency, seconds, url, token.clone()).await?;
        rows.push(("tus POST (an upload created)", tus));
    }

    let baseline = rows[0].1.rate();
    println!(
        "{concurrency} concurrent callers over {CONNECTIONS} connections, {seconds} s per RPC"
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9} {:>7} {:>12}",
        "", "calls/s", "p50 ms", "p99 ms", "vs base", "errors", "srv us/call"
    );
    for (name, outcome) in &rows {
        let cpu = outcome.server_cpu.map_or_else(
            || "-".to_owned(),
            |c| format!("{:.0}", c.as_secs_f64() * 1e6 / outcome.calls.max(1) as f64),
        );
        println!(
            "{:<40} {:>10.0} {:>9.2} {:>9.2} {:>8.2}x {:>7} {:>12}",
            name,
            outcome.rate(),
            outcome.percentile(0.5).as_secs_f64() * 1e3,
            outcome.percentile(0.99).as_secs_f64() * 1e3,
            outcome.rate() / baseline,
            outcome.errors,
            cpu
        );
    }
    // What the token check, and tokens with TLS, cost GetFile against plaintext without tokens.
    let without = |row: usize| rows[row].1.rate() / rows[2].1.rate();
    for (row, what, given) in [
        (1, "token check: GetFile with a token", no_auth.is_some()),
        (
            3,
            "token and TLS: GetFile with a token over TLS",
            tls.is_some(),
        ),
    ] {
        if given {
            println!(
                "{what} at {:.1}% of the rate without (cost {:.1}%)",
                100.0 * without(row),
                100.0 * (1.0 - without(row))
            );
        }
    }
    Ok(())
}
