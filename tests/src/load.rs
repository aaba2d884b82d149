//! What the benchmark clients (pirus-bench-rpc, pirus-load) share: driving one call from many
//! tasks for a while, and what came of it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::Channel;

/// The calls of one measurement.
#[derive(Debug)]
pub struct Outcome {
    pub calls: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Sorted latencies of the successful calls.
    pub latencies: Vec<Duration>,
    /// CPU time the measured server spent meanwhile, when known.
    pub server_cpu: Option<Duration>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The `p` percentile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Calls `call` at a fixed `rate` a second for `seconds` whatever the answers' pace (an open
/// loop, as independent clients would), call n on connection n % the channels. A call's
/// latency runs from when it was due, not from when it was sent, so a client or a timer
/// falling behind counts against the server's figure rather than hiding its queue
/// (coordinated omission). At most `max_in_flight` calls wait at once; a call due beyond
/// that is counted as an error.
pub async fn drive_at_rate<F, Fut>(
    channels: &[Channel],
    rate: u32,
    seconds: u64,
    max_in_flight: usize,
    call: F,
) -> Result<Outcome>
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let started = tokio::time::Instant::now();
    let period = Duration::from_secs(1) / rate.max(1);
    let total = rate as usize * seconds as usize;
    let mut tasks = Vec::with_capacity(total);
    let mut refused = 0;
    for n in 0..total {
        let due = started + period * n as u32;
        tokio::time::sleep_until(due).await;
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            continue;
        };
        let (call, channel) = (
            std::sync::Arc::clone(&call),
            channels[n % channels.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let ok = call(channel, n).await;
            drop(slot);
            ok.then(|| due.elapsed())
        }));
    }
    let mut outcome = Outcome {
        calls: 0,
        errors: refused,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(total),
        server_cpu: None,
    };
    for task in tasks {
        match task.await? {
            Some(latency) => outcome.latencies.push(latency),
            None => outcome.errors += 1,
        }
    }
    outcome.calls = outcome.latencies.len();
    outcome.elapsed = started.elapsed();
    outcome.latencies.sort_unstable();
    Ok(outcome)
}

/// Runs `call` from `concurrency` tasks for `seconds`; task i uses connection i % the
/// channels and passes its call number (i, i + concurrency, ...). `server_cpu` reads the
/// measured server's CPU time so far, if it can.
pub async fn drive<F, Fut>(
    channels: &[Channel],
    concurrency: usize,
    seconds: u64,
    server_cpu: fn() -> Option<Duration>,
    call: F,
) -> Result<Outcome>
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let cpu_before = server_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (call, channel) = (
            std::sync::Arc::clone(&call),
            channels[task % channels.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut n) = (Vec::new(), 0usize, task);
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(channel.clone(), n).await {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
                n += concurrency;
            }
            (latencies, errors)
        }));
    }
    let mut outcome = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        server_cpu: None,
    };
    for task in tasks {
        let (latencies, errors) = task.await?;
        outcome.calls += latencies.len();
        outcome.errors += errors;
        outcome.latencies.extend(latencies);
    }
    outcome.elapsed = started.elapsed();
    outcome.server_cpu = cpu_before
        .zip(server_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    outcome.latencies.sort_unstable();
    Ok(outcome)
}
