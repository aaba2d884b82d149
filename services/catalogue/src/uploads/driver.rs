//! The one driver of a transfer, for both protocols: a tus PATCH body and a WriteUpload stream
//! are each a stream of pieces fed to [`drive`], which applies the same rules to both. A
//! transfer that receives nothing for [`IDLE`], or less than its [`Pace`] asks over a window,
//! is cut off (a client trickling bytes cannot keep a transfer slot); a piece at the wrong
//! offset ends it
//! with the real one; a failed stream (a broken connection) keeps what arrived and pauses the
//! upload. The driver runs in a task of its own, so a client that goes away still leaves a
//! durable offset and a paused upload behind, even if its handler's future is dropped.

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tokio_stream::{Stream, StreamExt};

use super::Transfer;
use crate::domain::{Error, UploadState};

/// A transfer that receives nothing for this long is cut off (and the upload paused).
pub(crate) const IDLE: Duration = Duration::from_secs(30);

/// The slowest a transfer may go: at least `min_rate` bytes a second on average over every
/// `window` (`--min-transfer-rate`, `--transfer-rate-window`); either 0 for no bound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    pub min_rate: u64,
    pub window: Duration,
}

impl Pace {
    /// Whether there is a bound at all (a zero rate or a zero window is none: a zero window
    /// would have the driver wake without pause).
    fn bounds(self) -> bool {
        self.min_rate > 0 && !self.window.is_zero()
    }
}

/// The bytes of the current window of a transfer, against its [`Pace`].
struct Window {
    pace: Pace,
    ends: Instant,
    bytes: u64,
}

impl Window {
    fn new(pace: Pace) -> Self {
        Self {
            pace,
            ends: Instant::now() + pace.window,
            bytes: 0,
        }
    }

    /// At the window's end: fine (the next window starts) or too slow (what arrived).
    fn check(&mut self, now: Instant) -> Result<(), u64> {
        if !self.pace.bounds() || now < self.ends {
            return Ok(());
        }
        let needed = (self.pace.min_rate as f64 * self.pace.window.as_secs_f64()) as u64;
        if self.bytes < needed {
            return Err(self.bytes);
        }
        self.ends = now + self.pace.window;
        self.bytes = 0;
        Ok(())
    }

    fn too_slow(&self, got: u64) -> String {
        format!(
            "{got} bytes arrived in {:?}, fewer than the {} bytes a second this server asks (--min-transfer-rate)",
            self.pace.window, self.pace.min_rate
        )
    }
}

/// Bytes of a transfer, with the offset they claim to be at when the protocol says (gRPC).
pub(crate) struct Piece {
    pub offset: Option<u64>,
    pub data: Bytes,
    /// The upload ends with this piece (gRPC's `finish_write`): an upload of deferred length
    /// takes its length here; one of known length must end exactly here.
    pub last: bool,
}

/// Why a transfer ended before its source did.
#[derive(Debug)]
pub(crate) enum Stop<E> {
    /// Nothing arrived for [`IDLE`].
    Idle,
    /// Less arrived over a window than the [`Pace`] asks; says how much.
    Slow(String),
    /// The source failed (a broken connection, a bad message): its own error.
    Cut(E),
    /// The transfer refused the data, or could not finish.
    Refused(Error),
}

/// Feeds `pieces` into `transfer` until the source ends or fails; answers the upload's state.
pub(crate) async fn drive<S, E>(transfer: Transfer, pieces: S) -> Result<UploadState, Stop<E>>
where
    S: Stream<Item = Result<Piece, E>> + Send + Unpin + 'static,
    E: Send + 'static,
{
    tokio::spawn(run(transfer, pieces))
        .await
        .map_err(|e| Stop::Refused(Error::internal(e)))?
}

async fn run<S, E>(mut transfer: Transfer, mut pieces: S) -> Result<UploadState, Stop<E>>
where
    S: Stream<Item = Result<Piece, E>> + Unpin,
{
    let mut window = Window::new(transfer.pace());
    let mut last = Instant::now();
    loop {
        let idle_at = last + IDLE;
        let wake = if !window.pace.bounds() {
            idle_at
        } else {
            idle_at.min(window.ends)
        };
        let next = tokio::time::timeout_at(wake, pieces.next()).await;
        let now = Instant::now();
        if let Err(got) = window.check(now) {
            let why = window.too_slow(got);
            transfer.abort("it arrived too slowly").await;
            return Err(Stop::Slow(why));
        }
        match next {
            Err(_) if now >= idle_at => {
                transfer.abort("nothing arrived for 30 s").await;
                return Err(Stop::Idle);
            }
            // A window ended, and enough had arrived in it.
            Err(_) => continue,
            Ok(None) => return transfer.finish().await.map_err(Stop::Refused),
            Ok(Some(Err(e))) => {
                transfer.abort("the transfer was cut off").await;
                return Err(Stop::Cut(e));
            }
            Ok(Some(Ok(piece))) => {
                last = now;
                window.bytes += piece.data.len() as u64;
                if let Some(offset) = piece.offset
                    && offset != transfer.position()
                {
                    let state = transfer.abort("a piece was at the wrong offset").await;
                    return Err(Stop::Refused(Error::OffsetMismatch {
                        actual: state.offset,
                    }));
                }
                if let Err(e) = transfer.write(piece.data).await {
                    transfer.abort("the data was refused").await;
                    return Err(Stop::Refused(e));
                }
                if piece.last {
                    if let Err(e) = transfer.ends_here().await {
                        transfer.abort("the end was refused").await;
                        return Err(Stop::Refused(e));
                    }
                    return transfer.finish().await.map_err(Stop::Refused);
                }
            }
        }
    }
}
