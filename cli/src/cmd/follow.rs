//! Following a run: WatchRun for its status and progress (a bar on a terminal, lines
//! otherwise, JSON lines with --json) and StreamRunLogs for its output (the run's stdout to
//! stdout, its stderr to stderr). Both survive a dropped connection or a restarted runner:
//! events resume after the last seq received, logs at the last offset written, so nothing
//! is shown twice or skipped.

use std::{
    io::{IsTerminal, Write},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pirus_proto::runner::v1::{
    GetRunRequest, RunEvent, RunStatus, StreamRunLogsRequest, WatchRunRequest,
    runner_service_client::RunnerServiceClient,
};
use tonic::Code;

use crate::{
    config::Settings,
    connect::Channel,
    output::{print_json, short, to_json},
};

type Runner = RunnerServiceClient<Channel>;

/// How long a follower keeps trying to get back a lost connection.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// Whether a failed call is worth trying again: the connection, not the request.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

fn terminal(status: i32) -> bool {
    matches!(
        RunStatus::try_from(status),
        Ok(RunStatus::Done | RunStatus::Error | RunStatus::Canceled)
    )
}

/// Backs off between attempts to get a connection back, and gives up after
/// [`RECONNECT_FOR`] without success.
struct Retry {
    since: Option<Instant>,
    pause: Duration,
}

impl Retry {
    fn new() -> Self {
        Self {
            since: None,
            pause: Duration::from_millis(200),
        }
    }

    fn succeeded(&mut self) {
        self.since = None;
        self.pause = Duration::from_millis(200);
    }

    async fn again(&mut self, e: tonic::Status, what: &str) -> Result<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if !transient(&e) || since.elapsed() > RECONNECT_FOR {
            return Err(e).context(what.to_owned());
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// Where the run's status goes.
struct Display {
    json: bool,
    bar: Option<ProgressBar>,
}

impl Display {
    fn new(json: bool) -> Arc<Self> {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{msg:30} [{bar:30}] {percent:>3}%")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Arc::new(Self { json, bar })
    }

    fn event(&self, e: &RunEvent) -> Result<()> {
        if self.json {
            print_json(&to_json(e, "pirus.runner.v1.RunEvent")?);
            return Ok(());
        }
        let status = RunStatus::try_from(e.status)
            .map_or("?".to_owned(), |s| short(s.as_str_name(), "RUN_STATUS_"));
        let progress = e.progress.as_ref();
        let line = format!(
            "#{} {status} {}{}",
            e.seq,
            progress.map_or(String::new(), |p| format!("{:.0}% ", p.value * 100.0)),
            e.message
        );
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                let label = progress.map_or("", |p| p.label.as_str());
                bar.set_message(format!("{status} {label}"));
                bar.set_position(progress.map_or(0, |p| (p.value.clamp(0.0, 1.0) * 1000.0) as u64));
            }
            None => eprintln!("{line}"),
        }
        Ok(())
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.json => eprintln!("{text}"),
            None => {}
        }
    }

    /// Writes log bytes without tearing the bar.
    fn out(&self, data: &[u8], to_stderr: bool) {
        let write = || {
            if to_stderr {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(data).and_then(|()| e.flush());
            } else {
                crate::output::write_stdout(data);
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Follows run `id` until it ends; answers the exit code it means: 0 DONE, the command's own
/// code on ERROR (1 when there is none), 1 CANCELED.
pub(crate) async fn follow(
    settings: &Settings,
    mut runner: Runner,
    id: &str,
    with_logs: bool,
) -> Result<u8> {
    let display = Display::new(settings.json);
    let mut logs = Vec::new();
    if with_logs && !settings.json {
        for (stream, to_stderr) in [("stdout", false), ("stderr", true)] {
            let (runner, id, display) = (
                runner.clone(),
                id.to_owned(),
                std::sync::Arc::clone(&display),
            );
            logs.push(tokio::spawn(async move {
                tail(runner, &id, stream, true, |data| {
                    display.out(data, to_stderr)
                })
                .await
            }));
        }
    }
    watch_to_end(&mut runner, id, &display).await?;
    for log in logs {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(30), log).await {
            display.note(&format!("logs: {e:#}"));
        }
    }
    display.finish();
    report_end(settings, &mut runner, id).await
}

/// Shows run `id`'s events until its terminal one, resuming after the last event shown when
/// a connection drops or a stream ends early (a runner shutting down).
async fn watch_to_end(runner: &mut Runner, id: &str, display: &Display) -> Result<()> {
    let mut after = 0;
    let mut retry = Retry::new();
    'watch: loop {
        let request = WatchRunRequest {
            run_id: id.to_owned(),
            after_seq: after,
        };
        let mut events = match runner.watch_run(request).await {
            Ok(events) => events.into_inner(),
            Err(e) => {
                retry.again(e, &format!("watching run {id}")).await?;
                continue;
            }
        };
        loop {
            match events.message().await {
                Ok(Some(event)) => {
                    retry.succeeded();
                    after = event.seq;
                    display.event(&event)?;
                    if terminal(event.status) {
                        break 'watch;
                    }
                }
                // The stream ended before the run did (a runner shutting down): resume.
                Ok(None) => continue 'watch,
                Err(e) => {
                    display.note(&format!("connection lost; resuming after event #{after}"));
                    retry.again(e, &format!("watching run {id}")).await?;
                    continue 'watch;
                }
            }
        }
    }
    Ok(())
}

/// Says how run `id` ended (unless `--json`); answers the exit code that means.
async fn report_end(settings: &Settings, runner: &mut Runner, id: &str) -> Result<u8> {
    let run = runner
        .get_run(GetRunRequest { id: id.to_owned() })
        .await
        .with_context(|| format!("run {id}"))?
        .into_inner();
    let status = RunStatus::try_from(run.status).unwrap_or(RunStatus::Unspecified);
    if !settings.json {
        let mut line = format!("run {id} {}", short(status.as_str_name(), "RUN_STATUS_"));
        if let Some(code) = run.exit_code {
            line.push_str(&format!(" (exit code {code})"));
        }
        if !run.error_message.is_empty() {
            line.push_str(&format!(": {}", run.error_message));
        }
        eprintln!("{line}");
    }
    Ok(match status {
        RunStatus::Done => 0,
        RunStatus::Error => run.exit_code.filter(|c| (1..=255).contains(c)).unwrap_or(1) as u8,
        _ => 1,
    })
}

/// Streams one of a run's logs into `write` from its start: with `follow`, until the run has
/// ended and every byte was sent, resuming at the last offset written when a connection drops.
async fn tail(
    mut runner: Runner,
    id: &str,
    stream: &str,
    follow: bool,
    mut write: impl FnMut(&[u8]),
) -> Result<()> {
    let mut offset: i64 = 0;
    let mut retry = Retry::new();
    let what = format!("reading the {stream} of run {id}");
    loop {
        let request = StreamRunLogsRequest {
            run_id: id.to_owned(),
            stream: stream.to_owned(),
            offset,
            follow,
        };
        let mut chunks = match runner.stream_run_logs(request).await {
            Ok(chunks) => chunks.into_inner(),
            Err(e) => {
                retry.again(e, &what).await?;
                continue;
            }
        };
        loop {
            match chunks.message().await {
                Ok(Some(chunk)) => {
                    retry.succeeded();
                    let end = chunk.offset + chunk.data.len() as i64;
                    if end > offset {
                        let skip = (offset - chunk.offset).max(0) as usize;
                        write(&chunk.data[skip.min(chunk.data.len())..]);
                        offset = end;
                    }
                }
                Ok(None) => {
                    if !follow || ended(&mut runner, id).await? {
                        return Ok(());
                    }
                    break;
                }
                Err(e) => {
                    retry.again(e, &what).await?;
                    break;
                }
            }
        }
    }
}

async fn ended(runner: &mut Runner, id: &str) -> Result<bool> {
    let run = runner
        .get_run(GetRunRequest { id: id.to_owned() })
        .await
        .with_context(|| format!("run {id}"))?
        .into_inner();
    Ok(terminal(run.status))
}

/// `pirus run logs`: one log, to stdout (with --json, one object per chunk: the stream's name
/// and its bytes as text).
pub(crate) async fn logs(
    settings: &Settings,
    runner: Runner,
    id: &str,
    stream: &str,
    follow: bool,
) -> Result<()> {
    if settings.json {
        return tail(runner, id, stream, follow, |data| {
            let chunk =
                serde_json::json!({"stream": stream, "data": String::from_utf8_lossy(data)});
            print_json(&chunk);
        })
        .await;
    }
    let display = Display::new(true);
    tail(runner, id, stream, follow, |data| display.out(data, false)).await
}
