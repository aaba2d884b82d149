//! LISTEN/NOTIFY: one dedicated tokio-postgres connection per process, driven by
//! `poll_message`, reconnecting with back-off and re-issuing LISTEN. A notification is only a
//! hint: subscribers re-read the tables, and are told [`Notice::Reconnected`] after every
//! (re)connection, since notifications sent while disconnected are lost.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;
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
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
    let forward = tx.clone();
    let driver = tokio::spawn(async move {
        let result = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = forward.send(Notice::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let _ = closed_tx.send(result);
    });
    let statements: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    client.batch_execute(&statements).await?;
    let _ = tx.send(Notice::Reconnected);
    tracing::info!(?channels, "listening for notifications");
    let result = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        closed = &mut closed_rx => closed.unwrap_or(Ok(())),
    };
    driver.abort();
    result
}
