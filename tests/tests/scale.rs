//! The control plane under load, against a real runner, PostgreSQL and LXD: request traffic
//! never holds up the node's liveness (its lease, its claims, its runs' own progress).

use std::time::{Duration, Instant};

use anyhow::Result;
use pirus_proto::runner::v1::{self as run, runner_service_client::RunnerServiceClient};
use pirus_tests::stack::{stack_with, status};
use tokio_stream::StreamExt;

/// Concurrent followers and readers in the flood.
const FLOOD: usize = 4000;

/// The tests here that time a node's lease or count a service's queries take the host one at
/// a time: on two cores, one flood beside another starves the whole machine (PostgreSQL and
/// every process's timers included), which is not what they measure: that a service's own
/// request traffic does not hold up its liveness or multiply its queries.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A runner whose request pool is small is flooded with log followers and watchers of a
/// running run (each follower reads the run every 200 ms): its node stays ONLINE with a
/// fresh heartbeat throughout, and its runs still finish DONE at their first attempt.
#[tokio::test]
async fn a_runner_flooded_with_followers_keeps_its_lease_and_finishes_its_runs() -> Result<()> {
    let _alone = ALONE.lock().await;
    let mut s = stack_with(
        2,
        &[],
        &[
            "--node-lease",
            "2s",
            "--database-max-connections",
            "2",
            "--database-read-connections",
            "2",
            "--max-streams-per-caller",
            "1000",
        ],
    )
    .await?;
    let (pipeline, input) = s.ready().await?;
    let sleeping = |seconds: u32| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: format!(r#"{{"sleep": {seconds}}}"#),
        input_file_ids: vec![input.clone()],
        ..Default::default()
    };
    let first = s.submit(sleeping(10)).await?;
    s.wait_running(&first.id).await?;

    let mut flood = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..FLOOD / 100 {
        channels.push(s.runner.channel().await?);
    }
    for i in 0..FLOOD {
        let mut client = RunnerServiceClient::new(channels[i % channels.len()].clone());
        let id = first.id.clone();
        flood.push(tokio::spawn(async move {
            loop {
                let ended = if i % 2 == 0 {
                    let request = run::StreamRunLogsRequest {
                        run_id: id.clone(),
                        stream: "stdout".into(),
                        offset: 0,
                        follow: true,
                    };
                    match client.stream_run_logs(request).await {
                        Ok(r) => drain(r.into_inner()).await,
                        Err(_) => false,
                    }
                } else {
                    let request = run::GetRunRequest { id: id.clone() };
                    client.get_run(request).await.is_ok_and(|r| {
                        pirus_tests::stack::status(r.into_inner().status) == run::RunStatus::Done
                    })
                };
                if ended {
                    return;
                }
            }
        }));
    }
    // A second run submitted under the flood must be claimed and finish too.
    let second = s.submit(sleeping(1)).await?;

    let owner = s.db.client().await?;
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut statuses = Vec::new();
    loop {
        let row = owner
            .query_one(
                "SELECT status, extract(epoch FROM now() - heartbeat_at)::float8 FROM nodes
                 WHERE name = $1",
                &[&s.node],
            )
            .await?;
        let (node_status, age): (String, f64) = (row.get(0), row.get(1));
        worst = worst.max(Duration::from_secs_f64(age.max(0.0)));
        statuses.push(node_status);
        let done: i64 = owner
            .query_one(
                "SELECT count(*) FROM runs WHERE id::text = ANY($1)
                 AND status IN ('done', 'error', 'canceled')",
                &[&vec![first.id.clone(), second.id.clone()]],
            )
            .await?
            .get(0);
        if done == 2 || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("worst heartbeat age under the flood: {worst:?}");
    for task in flood {
        task.abort();
    }
    assert!(
        statuses.iter().all(|s| s == "online"),
        "the node left ONLINE under the flood: {statuses:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "a heartbeat was {worst:?} old (lease 2 s)"
    );
    for r in [&first, &second] {
        let run = s.get(&r.id).await?;
        assert_eq!(
            status(run.status),
            run::RunStatus::Done,
            "{}",
            run.error_message
        );
        assert_eq!(run.attempt, 1, "the run was not retried elsewhere");
    }
    Ok(())
}

/// Reads a stream to its end; whether it ended without an error.
async fn drain<T>(mut stream: tonic::Streaming<T>) -> bool {
    loop {
        match stream.next().await {
            None => return true,
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
        }
    }
}

/// How long a backend may keep its statistics before they reach the shared counters: at
/// most once a second while busy, and up to 10 s after it goes idle (PostgreSQL 15).
const STATS_LAG: Duration = Duration::from_secs(11);

/// Transactions the database has committed (each query of the services is one), as
/// PostgreSQL's statistics count them.
async fn commits(db: &tokio_postgres::Client) -> Result<i64> {
    Ok(db
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0))
}

/// The commit count once what came before has reached the statistics: after [`STATS_LAG`],
/// and then once a second passes with fewer than 50 new commits (a burst of queries, like a
/// thousand subscribers joining on a few connections, can reach the shared counters later
/// than the lag, and would otherwise be counted in the window that follows).
async fn settled_commits(db: &tokio_postgres::Client) -> Result<i64> {
    tokio::time::sleep(STATS_LAG).await;
    let mut last = commits(db).await?;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = commits(db).await?;
        if now - last < 50 {
            return Ok(now);
        }
        last = now;
    }
    anyhow::bail!("the database kept committing more than 50 transactions a second")
}

/// Database commits in a window of 8 s with one subscriber, then with a thousand: `start(i)`
/// starts subscriber `i`, which counts itself in `joined` once it has received its first
/// message. Answers both counts and the thousand subscribers.
async fn one_then_a_thousand<T>(
    owner: &tokio_postgres::Client,
    joined: &std::sync::atomic::AtomicUsize,
    mut start: impl FnMut(usize) -> tokio::task::JoinHandle<T>,
) -> Result<(i64, i64, Vec<tokio::task::JoinHandle<T>>)> {
    let window = Duration::from_secs(8);
    let mut subscribers = vec![start(0)];
    // Every window starts once the statistics of what came before it have arrived.
    let before = settled_commits(owner).await?;
    tokio::time::sleep(window).await;
    let one = commits(owner).await? - before;

    subscribers.extend((1..1000).map(&mut start));
    // Each joins with one read of what it missed; then the window.
    let deadline = Instant::now() + Duration::from_secs(120);
    while joined.load(std::sync::atomic::Ordering::Relaxed) < 1000 {
        anyhow::ensure!(Instant::now() < deadline, "not every subscriber joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = settled_commits(owner).await?;
    tokio::time::sleep(window).await;
    let thousand = commits(owner).await? - before;
    eprintln!("queries in {window:?}: one subscriber {one}, a thousand {thousand}");
    Ok((one, thousand, subscribers))
}

/// A thousand WatchRun subscribers of one run cost the database about what one costs: one
/// shared reader per run and process, instead of a re-read per subscriber. Every one of them
/// still receives every event, the terminal one (here CANCELED) last.
#[tokio::test]
async fn a_thousand_watchers_of_a_run_cost_what_one_does_in_queries() -> Result<()> {
    let _alone = ALONE.lock().await;
    // (The admin's stream budget, 4 times the per-caller setting, above a thousand.)
    let budget = ["--max-streams-per-caller", "1000"];
    let mut s = stack_with(1, &budget, &budget).await?;
    // Long enough that both windows fall while it runs quietly; canceled at the end.
    let run = s.submit_sleeping(300).await?;
    s.wait_running(&run.id).await?;
    let owner = s.db.client().await?;
    let channels = {
        let mut c = Vec::new();
        for _ in 0..10 {
            c.push(s.runner.channel().await?);
        }
        c
    };
    let joined = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = |i: usize| {
        let mut client = RunnerServiceClient::new(channels[i % channels.len()].clone());
        let id = run.id.clone();
        let joined = std::sync::Arc::clone(&joined);
        tokio::spawn(async move {
            let request = run::WatchRunRequest {
                run_id: id,
                after_seq: 0,
            };
            let mut events = client.watch_run(request).await?.into_inner();
            let mut seqs = Vec::new();
            let mut last = None;
            while let Some(event) = events.next().await {
                let event = event?;
                if seqs.is_empty() {
                    joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                seqs.push(event.seq);
                last = Some(status(event.status));
            }
            anyhow::Ok((seqs, last))
        })
    };
    let (one, thousand, watchers) = one_then_a_thousand(&owner, &joined, watch).await?;
    assert!(
        thousand <= one * 2 + 20,
        "a thousand watchers cost {thousand} queries where one cost {one}"
    );

    s.run
        .cancel_run(run::CancelRunRequest { id: run.id.clone() })
        .await?;
    for watcher in watchers {
        let (seqs, last) = watcher.await??;
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "every event once, in order");
        assert_eq!(last, Some(run::RunStatus::Canceled));
    }
    Ok(())
}

/// A thousand live followers of a run's stdout cost the database about what one does: one
/// shared tail per run and process, instead of a status query per follower every 200 ms. Each
/// follower still receives the whole log, once, ending when the run does.
#[tokio::test]
async fn a_thousand_log_followers_of_a_run_cost_what_one_does_in_queries() -> Result<()> {
    let _alone = ALONE.lock().await;
    // (The admin's stream budget, 4 times the per-caller setting, above a thousand.) The
    // catalogue reads 2 files at once at most: followers that have the whole log when the
    // run ends must not all ask it for the rest (a CI run saw them go past its bound of 64).
    let budget = ["--max-streams-per-caller", "1000"];
    let catalogue = [&budget[..], &["--max-file-readers", "2"]].concat();
    let mut s = stack_with(1, &catalogue, &budget).await?;
    let run = s.submit_sleeping(55).await?;
    s.wait_running(&run.id).await?;
    let owner = s.db.client().await?;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(s.runner.channel().await?);
    }
    let joined = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let follow = |i: usize| {
        let mut client = RunnerServiceClient::new(channels[i % channels.len()].clone());
        let id = run.id.clone();
        let joined = std::sync::Arc::clone(&joined);
        tokio::spawn(async move {
            let request = run::StreamRunLogsRequest {
                run_id: id,
                stream: "stdout".into(),
                offset: 0,
                follow: true,
            };
            let mut chunks = client.stream_run_logs(request).await?.into_inner();
            let mut log = Vec::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                anyhow::ensure!(chunk.offset as usize == log.len(), "a gap or a repeat");
                if log.is_empty() {
                    joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                log.extend_from_slice(&chunk.data);
            }
            anyhow::Ok(log)
        })
    };
    let (one, thousand, followers) = one_then_a_thousand(&owner, &joined, follow).await?;
    assert!(
        thousand <= one * 2 + 20,
        "a thousand followers cost {thousand} queries where one cost {one}"
    );

    let mut logs = Vec::new();
    for follower in followers {
        logs.push(follower.await??);
    }
    let text = String::from_utf8(logs[0].clone())?;
    assert!(
        text.starts_with(&format!("starting run {}", run.id)) && text.ends_with("done\n"),
        "the whole log: {text:?}"
    );
    assert!(
        logs.iter().all(|l| *l == logs[0]),
        "every follower got the same log"
    );
    Ok(())
}

/// `refused` is RESOURCE_EXHAUSTED saying `says`, with the 1 s retry hint.
fn assert_exhausted(refused: &tonic::Status, says: &str) {
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains(says), "{}", refused.message());
    assert_eq!(
        refused
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok()),
        Some("1000")
    );
}

/// `call` answered once what it was refused for (RESOURCE_EXHAUSTED) is given back, within
/// 10 s.
async fn admitted_again<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    mut call: impl FnMut() -> F,
    what: &str,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("{what} was not given back: {e:?}"),
        }
    }
}

/// Each caller holds at most its budget of streams at once (here 4 for a user, so 16 for an
/// admin): one more is RESOURCE_EXHAUSTED with a retry hint, another caller keeps a budget of
/// its own, and a stream that ends gives its place back.
#[tokio::test]
async fn each_caller_holds_at_most_its_budget_of_streams() -> Result<()> {
    let mut s = stack_with(1, &[], &["--max-streams-per-caller", "4"]).await?;
    let run = s.submit_sleeping(120).await?;
    s.wait_running(&run.id).await?;
    let watch = |client: &mut RunnerServiceClient<pirus_tests::Channel>| {
        let request = run::WatchRunRequest {
            run_id: run.id.clone(),
            after_seq: 0,
        };
        let mut client = client.clone();
        async move { client.watch_run(request).await.map(|r| r.into_inner()) }
    };
    let mut admin = RunnerServiceClient::new(s.runner.channel().await?);
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(watch(&mut admin).await?);
    }
    let refused = watch(&mut admin).await.expect_err("a 17th stream");
    assert_exhausted(&refused, "holds 16 streams");
    // Another admin token has a budget of its own.
    let other =
        pirus_tests::identity::mint(&s.db.url, "other", pirus_auth::Role::Admin, None, None)
            .await?;
    let mut second = RunnerServiceClient::new(s.runner.channel_as(&other).await?);
    let theirs = watch(&mut second).await?;
    // A stream that ends gives its place back.
    held.pop();
    held.push(admitted_again(|| watch(&mut admin), "the freed place").await?);
    drop(theirs);
    s.run
        .cancel_run(run::CancelRunRequest { id: run.id.clone() })
        .await?;
    Ok(())
}

/// A client may open hundreds of streams at once on one connection (a workflow engine
/// watching every run it submitted over one channel): each is served, and the connection is
/// not closed as a flood of small frames. (With HTTP/2's adaptive window the server's h2
/// allowed about 150 small request frames in flight per connection and answered more with
/// GOAWAY ENHANCE_YOUR_CALM, cutting every stream of the connection.)
#[tokio::test]
async fn hundreds_of_streams_opened_at_once_on_one_connection_are_all_served() -> Result<()> {
    const STREAMS: usize = 600;
    let budget = ["--max-streams-per-caller", "1000"];
    // No run slots: the run stays queued, and every watch stays open.
    let mut s = stack_with(0, &budget, &budget).await?;
    let queued = s.submit_ready("{}").await?;
    let channel = s.runner.channel().await?;
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(STREAMS);
    let mut watchers = Vec::new();
    for _ in 0..STREAMS {
        let mut client = RunnerServiceClient::new(channel.clone());
        let (id, ready) = (queued.id.clone(), ready_tx.clone());
        watchers.push(tokio::spawn(async move {
            let request = run::WatchRunRequest {
                run_id: id,
                after_seq: 0,
            };
            let first = async {
                let mut events = client.watch_run(request).await?.into_inner();
                let first = events.message().await?;
                anyhow::Ok((events, first))
            }
            .await;
            let _ = ready
                .send(first.as_ref().map(|_| ()).map_err(|e| e.to_string()))
                .await;
            let (mut events, _) = first?;
            let mut last = None;
            while let Some(e) = events.message().await? {
                last = Some(status(e.status));
            }
            anyhow::Ok(last)
        }));
    }
    drop(ready_tx);
    for _ in 0..STREAMS {
        let started = ready.recv().await.expect("a watcher vanished");
        assert!(started.is_ok(), "a watch failed to start: {started:?}");
    }
    s.run
        .cancel_run(run::CancelRunRequest {
            id: queued.id.clone(),
        })
        .await?;
    for watcher in watchers {
        assert_eq!(watcher.await??, Some(run::RunStatus::Canceled));
    }
    Ok(())
}

/// File contents are read by at most `--max-file-readers` threads at once across callers:
/// with 2, two downloads held open by a client that stopped reading take both, a third is
/// RESOURCE_EXHAUSTED with a retry hint naming the bound, and a download that goes away gives
/// its reader back, after which the whole file reads as written.
#[tokio::test]
async fn a_catalogue_reads_at_most_its_bound_of_files_at_once() -> Result<()> {
    use pirus_proto::catalogue::v1 as cat;
    use sha2::Digest;
    let mut s = stack_with(1, &["--max-file-readers", "2"], &[]).await?;
    // Larger than the read-ahead and both HTTP/2 windows: a reader whose client stops reading
    // stays blocked, holding its slot.
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = s
        .cat
        .create_file(cat::CreateFileRequest {
            filename: "big.bin".into(),
            size: data.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let pieces: Vec<cat::WriteUploadRequest> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, piece)| cat::WriteUploadRequest {
            upload_id: file.id.clone(),
            offset: (i << 20) as i64,
            data: piece.to_vec().into(),
            ..Default::default()
        })
        .collect();
    s.cat.write_upload(tokio_stream::iter(pieces)).await?;
    let read = |client: &mut pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient<pirus_tests::Channel>| {
        let mut client = client.clone();
        let file_id = file.id.clone();
        async move {
            client
                .read_file(cat::ReadFileRequest {
                    file_id,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = read(&mut s.cat).await?;
        stream.message().await?.expect("a first chunk");
        held.push(stream);
    }
    let refused = read(&mut s.cat).await.expect_err("a third reader");
    assert_exhausted(&refused, "--max-file-readers");
    // A download that goes away gives its reader back.
    held.pop();
    let mut stream = admitted_again(|| read(&mut s.cat), "the freed reader").await?;
    let mut hash = sha2::Sha256::new();
    let mut size = 0;
    while let Some(chunk) = stream.message().await? {
        size += chunk.data.len();
        hash.update(&chunk.data);
    }
    assert_eq!(size, data.len());
    assert_eq!(hash.finalize(), sha2::Sha256::digest(&data));
    Ok(())
}

/// An LXD that stops answering (here a socket that accepts and never replies, so each probe
/// takes its whole 5 s) does not hold up the node's lease: with a 2 s lease the node stays
/// ONLINE with a heartbeat under 2 s old, reported without LXD.
#[tokio::test]
async fn a_hung_lxd_does_not_hold_up_the_node_lease() -> Result<()> {
    let _alone = ALONE.lock().await;
    let db = pirus_tests::TestDb::create().await?;
    let socket = std::env::temp_dir().join(format!("pirus-hung-lxd-{}.socket", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let _runner = pirus_tests::Launch::new(pirus_tests::Kind::Runner, &db.url)
        .args([
            "--node-lease",
            "2s",
            "--node-name",
            "hung-lxd",
            "--lxd-socket",
        ])
        .args([socket.to_str().expect("a UTF-8 path")])
        .start()
        .await?;
    let owner = db.client().await?;
    let (started, mut worst, mut seen) = (Instant::now(), Duration::ZERO, Vec::new());
    while started.elapsed() < Duration::from_secs(14) {
        let row = owner
            .query_one(
                "SELECT status, lxd_available,
                        extract(epoch FROM now() - heartbeat_at)::float8
                 FROM nodes WHERE name = 'hung-lxd'",
                &[],
            )
            .await?;
        let (status, lxd, age): (String, bool, f64) = (row.get(0), row.get(1), row.get(2));
        worst = worst.max(Duration::from_secs_f64(age.max(0.0)));
        seen.push((status, lxd));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    hung.abort();
    let _ = std::fs::remove_file(&socket);
    eprintln!("worst heartbeat age with LXD hung: {worst:?}");
    assert!(
        seen.iter().all(|(status, lxd)| status == "online" && !lxd),
        "the node was not ONLINE without LXD throughout: {seen:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "a heartbeat was {worst:?} old (lease 2 s) while LXD hung"
    );
    Ok(())
}

/// The attack on unary calls: a unary message is read whole before its handler sees it, and
/// 100 CreateFile calls, each declaring a 16,000,000-byte message and sending 15 MB of it
/// (then nothing), took the catalogue from 49 MB to 1.51 GB. Now 40 such calls at once are
/// each refused RESOURCE_EXHAUSTED within a second or so (a unary request is bounded to
/// 1 MiB, and what all of them hold at once to 64 MiB), and the catalogue's peak memory
/// grows by far less than what was sent.
#[tokio::test]
async fn partly_sent_unary_messages_are_refused_before_they_fill_memory() -> Result<()> {
    // Alone on the host: 600 MB sent at once would slow the other scale tests' services.
    let _alone = ALONE.lock().await;
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    let db = pirus_tests::TestDb::create().await?;
    let catalogue = pirus_tests::Launch::new(pirus_tests::Kind::Catalogue, &db.url)
        .start()
        .await?;
    let token = db.admin_token.clone().expect("an admin token");
    let channel = catalogue.raw_channel().await?;
    let url = format!(
        "{}/pirus.catalogue.v1.CatalogueService/CreateFile",
        catalogue.grpc_url()
    );
    let before = pirus_tests::peak_rss(catalogue.pid())?;
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (channel, url, token) = (channel.clone(), url.clone(), token.clone());
        calls.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, tonic::Status>>(2);
            tokio::spawn(async move {
                let mut prefix = vec![0u8];
                prefix.extend_from_slice(&16_000_000u32.to_be_bytes());
                let mut frames = vec![Bytes::from(prefix)];
                frames.extend((0..15).map(|_| Bytes::from(vec![0u8; 1 << 20])));
                for frame in frames {
                    if tx.send(Ok(Frame::data(frame))).await.is_err() {
                        return;
                    }
                }
                // The rest never comes.
                tx.closed().await;
            });
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ));
            let request = http::Request::builder()
                .method("POST")
                .uri(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {token}"))
                .body(body)?;
            let started = Instant::now();
            let response = tower::ServiceExt::oneshot(channel, request).await?;
            let (parts, body) = response.into_parts();
            let code = match parts.headers.get("grpc-status") {
                Some(code) => code.to_str()?.to_owned(),
                None => {
                    let trailers = body.collect().await?.trailers().cloned();
                    trailers
                        .and_then(|t| t.get("grpc-status").cloned())
                        .map(|v| v.to_str().unwrap_or_default().to_owned())
                        .unwrap_or_default()
                }
            };
            anyhow::Ok((code, started.elapsed()))
        }));
    }
    for call in calls {
        let (code, took) = tokio::time::timeout(Duration::from_secs(20), call).await???;
        assert_eq!(code, "8", "RESOURCE_EXHAUSTED, after {took:?}");
    }
    let grew = pirus_tests::peak_rss(catalogue.pid())?.saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB for 600 MB sent", grew >> 20);
    assert!(grew < 200 << 20, "peak RSS grew by {} MiB", grew >> 20);
    Ok(())
}

/// Run `id` once it ended (within `within`).
async fn run_end(
    s: &mut pirus_tests::stack::Stack,
    id: &str,
    within: Duration,
) -> Result<run::Run> {
    tokio::time::timeout(within, s.watch(id, 0))
        .await
        .map_err(|_| anyhow::anyhow!("run {id} did not end within {within:?}"))??;
    s.get(id).await
}

/// A pipeline that leaves as many one-byte outputs as its configuration says.
const MANY: &str = r#"#!/bin/sh
n=$(sed -n 's/.*"outputs": *\([0-9]*\).*/\1/p' "$PIRUS_CONFIG_FILE")
i=0
while [ "$i" -lt "$n" ]; do echo > "$PIRUS_OUTPUTS/f$i"; i=$((i + 1)); done
echo "wrote $n"
"#;

/// Collecting many small outputs (5,000 took 160 s before: 31 a second) is pushed in
/// parallel, can be canceled while it goes (it was refused: "a finishing run cannot be
/// canceled"), and is inside the run's time limit.
#[tokio::test]
async fn many_outputs_are_collected_in_parallel_and_collection_can_be_stopped() -> Result<()> {
    // Alone on the host: thousands of pushes at once take connections beside other stacks.
    let _alone = ALONE.lock().await;
    let mut s = pirus_tests::stack::stack(2).await?;
    let form = r#"{"type": "object", "properties": {"outputs": {"type": "integer"}}}"#;
    let pipeline = s.install("many", MANY, form, "").await?;
    let submit = |outputs: u32, timeout: Option<i64>| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        config_json: format!(r#"{{"outputs": {outputs}}}"#),
        timeout: timeout.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        ..Default::default()
    };
    // 2,000 outputs, all collected; the rate is printed.
    let all = s.submit(submit(2000, None)).await?;
    let events = s.watch(&all.id, 0).await?;
    let done = s.get(&all.id).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}",
        done.error_message
    );
    assert_eq!(done.output_file_ids.len(), 2000);
    let at = |wanted: run::RunStatus| {
        events
            .iter()
            .find(|e| status(e.status) == wanted)
            .and_then(|e| e.at)
            .map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
            .unwrap_or_default()
    };
    let collecting = at(run::RunStatus::Done) - at(run::RunStatus::Finishing);
    eprintln!(
        "2,000 outputs collected in {collecting:.2} s ({:.0} a second)",
        2000.0 / collecting
    );
    // Canceled while its 20,000 outputs are collected: CANCELED soon, its logs kept.
    let canceled = s.submit(submit(20_000, None)).await?;
    let mut follow = s.follow(&canceled.id, 0).await?;
    while let Some(e) = follow.next().await {
        if status(e?.status) == run::RunStatus::Finishing {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.run
        .cancel_run(run::CancelRunRequest {
            id: canceled.id.clone(),
        })
        .await?;
    let asked = Instant::now();
    let stopped = run_end(&mut s, &canceled.id, Duration::from_secs(60)).await?;
    assert_eq!(
        status(stopped.status),
        run::RunStatus::Canceled,
        "{}",
        stopped.error_message
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(stopped.output_file_ids.len() < 20_000);
    assert_eq!(stopped.log_file_ids.len(), 2, "logs kept");
    // Out of time while collecting: ERROR, naming it.
    let late = s.submit(submit(20_000, Some(8))).await?;
    let late = run_end(&mut s, &late.id, Duration::from_secs(120)).await?;
    assert_eq!(status(late.status), run::RunStatus::Error);
    assert!(
        late.error_message.contains("timed out") && late.error_message.contains("collected"),
        "{}",
        late.error_message
    );
    s.assert_clean()?;
    Ok(())
}
