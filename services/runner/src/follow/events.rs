//! One reader of a run's events per process, shared by all its WatchRun subscribers.
//!
//! A subscriber first reads what it missed from the table itself (its catch-up: one query),
//! then follows the run's feed: batches of new events that the run's single reader finds when
//! a NOTIFY for the run arrives, when the listener reconnects, or every few seconds. So a
//! thousand watchers of a run cost one query per change (and one each to join), not a
//! thousand. The feed is a bounded broadcast: a subscriber that falls behind reads the table
//! again from its last seq, and a subscriber whose feed ended (its reader stopped when the
//! last subscriber left) joins a new one; events are deduplicated by seq, so nothing is sent
//! twice or skipped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use pirus_db::listen::Notice;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::{
    domain::{Result, RunEvent},
    store::{EVENTS_CHANNEL, RunStore},
};

/// How often a run's reader looks again without a hint (a lost NOTIFY costs at most this).
const REREAD: Duration = Duration::from_secs(5);
/// Batches a slow subscriber may be behind before it reads the table again.
const BACKLOG: usize = 256;

type Batch = Arc<[RunEvent]>;

#[derive(Clone)]
pub(crate) struct Feeds {
    inner: Arc<Inner>,
}

struct Inner {
    runs: RunStore,
    notices: broadcast::Sender<Notice>,
    feeds: Mutex<HashMap<Uuid, broadcast::Sender<Batch>>>,
}

impl Feeds {
    pub(crate) fn new(runs: RunStore, notices: broadcast::Sender<Notice>) -> Self {
        Self {
            inner: Arc::new(Inner {
                runs,
                notices,
                feeds: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The live feed of run `id`, starting its reader if it has none. A new reader starts
    /// from `after`, the subscriber's own position: whatever it has not read from the table
    /// yet, the reader broadcasts (a reader starting from the run's latest seq could skip
    /// events committed between the subscriber's read and its own).
    fn subscribe(&self, id: Uuid, after: i64) -> broadcast::Receiver<Batch> {
        let mut feeds = self.inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&id) {
            return feed.subscribe();
        }
        let (feed, receiver) = broadcast::channel(BACKLOG);
        feeds.insert(id, feed.clone());
        // Subscribed to the hints before the reader looks at the table: nothing committed
        // after its first read can pass unnoticed.
        let notices = self.inner.notices.subscribe();
        tokio::spawn(read(
            std::sync::Arc::clone(&self.inner),
            id,
            after,
            feed,
            notices,
        ));
        receiver
    }

    /// Sends the events of run `id` after `after` into `tx`, then live ones, until the
    /// terminal event (or, when `ended`, until what the table holds now).
    pub(crate) async fn watch(
        &self,
        id: Uuid,
        mut after: i64,
        ended: bool,
        tx: mpsc::Sender<Result<RunEvent>>,
    ) {
        let mut feed = (!ended).then(|| self.subscribe(id, after));
        // Catch-up: what this subscriber missed, from the table.
        let mut catch_up = true;
        loop {
            if catch_up {
                catch_up = false;
                match self.inner.runs.events_after(id, after).await {
                    Ok(events) => {
                        if send(&tx, &events, &mut after).await != Sent::More {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "watch could not read events; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        catch_up = true;
                        continue;
                    }
                }
            }
            let Some(live) = feed.as_mut() else {
                return;
            };
            tokio::select! {
                () = tx.closed() => return,
                batch = live.recv() => match batch {
                    // Seqs have no gaps: a batch starting past the next one means events this
                    // subscriber has not seen are in the table only.
                    // (They are committed, so the table read covers this batch too.)
                    Ok(batch) if batch.first().is_some_and(|e| e.seq > after + 1) => {
                        catch_up = true;
                    }
                    Ok(batch) => {
                        if send(&tx, &batch, &mut after).await != Sent::More {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The reader stopped (its run ended, or it had no subscriber for a
                        // moment): read the table, and follow a new feed.
                        feed = Some(self.subscribe(id, after));
                        catch_up = true;
                    }
                },
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Sent {
    More,
    /// The terminal event was sent, or the subscriber went away.
    Done,
}

/// Sends the events after `after`, moving it; stops after the terminal event.
async fn send(tx: &mpsc::Sender<Result<RunEvent>>, events: &[RunEvent], after: &mut i64) -> Sent {
    for event in events {
        if event.seq <= *after {
            continue;
        }
        *after = event.seq;
        let terminal = event.status.is_terminal();
        if tx.send(Ok(event.clone())).await.is_err() || terminal {
            return Sent::Done;
        }
    }
    Sent::More
}

/// The one reader of a run: reads new events on each hint and broadcasts them; stops after
/// the terminal event, or once no subscriber is left.
async fn read(
    inner: Arc<Inner>,
    id: Uuid,
    mut after: i64,
    feed: broadcast::Sender<Batch>,
    mut notices: broadcast::Receiver<Notice>,
) {
    let payload = id.to_string();
    loop {
        if !hint(&mut notices, &payload).await || feed.receiver_count() == 0 {
            break;
        }
        let events = match inner.runs.events_after(id, after).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(run = %id, error = %e, "run feed could not read events; retrying");
                continue;
            }
        };
        let Some(last) = events.last() else {
            continue;
        };
        after = last.seq;
        let terminal = events.iter().any(|e| e.status.is_terminal());
        let _ = feed.send(events.into());
        if terminal {
            break;
        }
    }
    forget(&inner, id, &feed);
}

/// Removes this reader's feed (not a newer one) from the map.
fn forget(inner: &Inner, id: Uuid, feed: &broadcast::Sender<Batch>) {
    let mut feeds = inner.feeds.lock().unwrap_or_else(|e| e.into_inner());
    if feeds.get(&id).is_some_and(|f| f.same_channel(feed)) {
        feeds.remove(&id);
    }
}

/// Waits for a reason to look again: a NOTIFY for the run, a reconnected or lagging listener,
/// or [`REREAD`]; false when the listener is gone.
async fn hint(notices: &mut broadcast::Receiver<Notice>, payload: &str) -> bool {
    let deadline = tokio::time::sleep(REREAD);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            notice = notices.recv() => match notice {
                Ok(Notice::Notification { channel, payload: p })
                    if channel == EVENTS_CHANNEL && p == payload => return true,
                Ok(Notice::Notification { .. }) => {}
                Ok(Notice::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
        }
    }
}
