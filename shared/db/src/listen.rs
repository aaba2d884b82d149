//! LISTEN/NOTIFY: one dedicated connection per process, reconnecting with back-off and
//! re-issuing LISTEN. It is sqlx's `PgListener` rather than a tokio-postgres connection so that
//! it connects exactly as the pool does: the same URL parsing, and the same TLS (`sslmode`
//! `require`, `verify-ca`, `verify-full` with `sslrootcert`), with no second TLS set-up to
//! keep in step. A notification is only a
//! hint: subscribers re-read the tables, and are told [`Notice::Reconnected`] after every
//! (re)connection, since notifications sent while disconnected are lost.

use std::time::Duration;

use sea_orm::sqlx::{self, postgres::PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Notification {
        channel: String,
        payload: String,
    },
    /// The listener (re)connected: whatever happened meanwhile was not announced.
    Reconnected,
}

/// Starts the listener; subscribe to the answer for notices.
pub fn spawn_listener(
    url: String,
    channels: Vec<&'static str>,
    shutdown: CancellationToken,
) -> broadcast::Sender<Notice> {
    let (tx, _) = broadcast::channel(1024);
    let sender = tx.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = listen_once(&url, &channels, &sender, &shutdown);
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = session => {
                    match result {
                        Ok(()) => tracing::warn!("LISTEN connection closed; reconnecting"),
                        Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; reconnecting"),
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    tx
}

async fn listen_once(
    url: &str,
    channels: &[&'static str],
    tx: &broadcast::Sender<Notice>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // A lost connection ends this session (and the caller reconnects, announcing it), rather
    // than being re-established silently inside the listener.
    listener.eager_reconnect(false);
    listener.listen_all(channels.iter().copied()).await?;
    let _ = tx.send(Notice::Reconnected);
    tracing::info!(?channels, "listening for notifications");
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = listener.try_recv() => received?,
        };
        let Some(n) = received else {
            return Ok(());
        };
        let _ = tx.send(Notice::Notification {
            channel: n.channel().to_owned(),
            payload: n.payload().to_owned(),
        });
    }
}
