//! The one driver of a transfer, for both protocols: a tus PATCH body and a WriteUpload stream
//! are each a stream of pieces fed to [`drive`], which applies the same rules to both. A
//! transfer that receives nothing for [`IDLE`] is cut off; a piece at the wrong offset ends it
//! with the real one; a failed stream (a broken connection) keeps what arrived and pauses the
//! upload. The driver runs in a task of its own, so a client that goes away still leaves a
//! durable offset and a paused upload behind, even if its handler's future is dropped.

use std::time::Duration;

use bytes::Bytes;
use tokio_stream::{Stream, StreamExt};

use super::Transfer;
use crate::domain::{Error, UploadState};

/// A transfer that receives nothing for this long is cut off (and the upload paused).
pub const IDLE: Duration = Duration::from_secs(30);

/// Bytes of a transfer, with the offset they claim to be at when the protocol says (gRPC).
pub struct Piece {
    pub offset: Option<u64>,
    pub data: Bytes,
    /// The upload ends with this piece (gRPC's `finish_write`): an upload of deferred length
    /// takes its length here; one of known length must end exactly here.
    pub last: bool,
}

/// Why a transfer ended before its source did.
#[derive(Debug)]
pub enum Stop<E> {
    /// Nothing arrived for [`IDLE`].
    Idle,
    /// The source failed (a broken connection, a bad message): its own error.
    Cut(E),
    /// The transfer refused the data, or could not finish.
    Refused(Error),
}

/// Feeds `pieces` into `transfer` until the source ends or fails; answers the upload's state.
pub async fn drive<S, E>(transfer: Transfer, pieces: S) -> Result<UploadState, Stop<E>>
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
    loop {
        match tokio::time::timeout(IDLE, pieces.next()).await {
            Err(_) => {
                transfer.abort("nothing arrived for 30 s").await;
                return Err(Stop::Idle);
            }
            Ok(None) => return transfer.finish().await.map_err(Stop::Refused),
            Ok(Some(Err(e))) => {
                transfer.abort("the transfer was cut off").await;
                return Err(Stop::Cut(e));
            }
            Ok(Some(Ok(piece))) => {
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
