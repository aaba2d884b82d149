//! Progress of a transfer on stderr: a bar (bytes, rate, ETA) on a terminal, a plain line
//! every few seconds otherwise (logs, CI), and one closing line. The task moving the bytes
//! reports through a [`Handle`].

use std::{
    io::IsTerminal,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::size;

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

struct Shared {
    label: String,
    total: u64,
    start: u64,
    position: AtomicU64,
    began: Instant,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

/// Reports a transfer's position, from any task.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Shared>);

pub(crate) struct Progress(Handle);

impl Progress {
    /// A transfer of `total` bytes named `label`, already at `start` (a resumed one).
    pub(crate) fn new(label: &str, total: u64, start: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            bar.set_position(start);
            bar.reset_eta();
            bar
        });
        if bar.is_none() && start > 0 {
            eprintln!(
                "{label}: resuming at {} of {}",
                size(start as i64),
                size(total as i64)
            );
        }
        Self(Handle(Arc::new(Shared {
            label: label.to_owned(),
            total,
            start,
            position: AtomicU64::new(start),
            began: Instant::now(),
            bar,
            last_line: Mutex::new(Instant::now()),
        })))
    }

    pub(crate) fn handle(&self) -> Handle {
        self.0.clone()
    }

    pub(crate) fn set(&mut self, position: u64) {
        self.0.set(position);
    }

    /// The transfer ended (complete or not): clears the bar and writes one line.
    pub(crate) fn finish(self, what: &str) {
        let shared = &self.0.0;
        if let Some(bar) = &shared.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}: {what}, {}", shared.label, self.0.summary());
    }
}

impl Handle {
    pub(crate) fn set(&self, position: u64) {
        let shared = &self.0;
        shared.position.store(position, Ordering::Relaxed);
        match &shared.bar {
            Some(bar) => bar.set_position(position),
            None => {
                let mut last = shared.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    eprintln!("{}: {}", shared.label, self.summary());
                }
            }
        }
    }

    fn summary(&self) -> String {
        let shared = &self.0;
        let position = shared.position.load(Ordering::Relaxed);
        let moved = position.saturating_sub(shared.start);
        let secs = shared.began.elapsed().as_secs_f64().max(1e-3);
        let percent = if shared.total == 0 {
            100.0
        } else {
            position as f64 * 100.0 / shared.total as f64
        };
        format!(
            "{} of {} ({percent:.0}%), {}/s",
            size(position as i64),
            size(shared.total as i64),
            size((moved as f64 / secs) as i64)
        )
    }
}
