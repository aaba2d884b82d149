//! One writer per upload, across every catalogue process sharing the database: a transfer holds
//! a PostgreSQL session advisory lock on a connection of its own for as long as it runs.
//!
//! Why connections of their own rather than the service's pool: a lock's lifetime is its
//! session's, so a crashed or killed process releases it the moment PostgreSQL sees the socket
//! close; and transfers also do their offset commits on that connection, so thousands of slow
//! uploads never starve the pool that serves other RPCs. The lock connections form a pool of
//! their own, bounded by `--max-transfers` (a semaphore makes one more transfer fail at once
//! rather than wait), plus one for the installer: a connection goes back to it only after its lock was released, and is
//! closed instead whenever that is not certain (a failed unlock, a lock dropped without
//! release). Reusing connections spares every PATCH a connection set-up and authentication,
//! which was most of the cost of a small chunk.

use std::{sync::Arc, time::Duration};

use sea_orm::sqlx::{
    self,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::{
    domain::{Error, Result},
    store::session,
};

#[derive(Clone)]
pub(crate) struct LockConnector {
    pool: PgPool,
    permits: Arc<Semaphore>,
}

/// One of the `--max-transfers` slots, taken before a transfer's work starts and freed when
/// dropped.
pub(crate) struct TransferSlot {
    _permit: OwnedSemaphorePermit,
}

/// A held upload lock and the connection that holds it.
pub(crate) struct UploadLock {
    /// None once released.
    connection: Option<PoolConnection<Postgres>>,
    key: i64,
    /// A transfer's slot (an install takes none).
    _slot: Option<TransferSlot>,
}

/// The advisory lock key of an upload: its UUID folded to 64 bits. Two uploads colliding would
/// only make one wait for the other.
fn key(id: Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low) as i64
}

impl LockConnector {
    pub(crate) fn new(database_url: &str, max_transfers: usize) -> Result<Self> {
        let options: PgConnectOptions = database_url
            .parse()
            .map_err(|e: sqlx::Error| Error::internal(format!("database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            // One more than the transfers: the installer's (it installs one package at a
            // time, outside the transfer slots, so uploads never hold an install up).
            .max_connections(max_transfers as u32 + 1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            // Idle lock connections are closed after a while; a burst of uploads reopens them.
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            permits: Arc::new(Semaphore::new(max_transfers)),
        })
    }

    /// A transfer slot, or [`Error::Unavailable`] at once when every slot is taken.
    pub(crate) fn slot(&self) -> Result<TransferSlot> {
        std::sync::Arc::clone(&self.permits)
            .try_acquire_owned()
            .map(|permit| TransferSlot { _permit: permit })
            .map_err(|_| {
                Error::Unavailable("too many uploads in progress; retry shortly".to_owned())
            })
    }

    /// Takes the lock of `upload`, or fails at once with [`Error::Locked`] if another transfer
    /// holds it.
    pub(crate) async fn lock(&self, upload: Uuid) -> Result<UploadLock> {
        self.lock_in(self.slot()?, upload).await
    }

    /// Takes the lock of `upload` in a slot taken earlier.
    pub(crate) async fn lock_in(&self, slot: TransferSlot, upload: Uuid) -> Result<UploadLock> {
        self.lock_key(Some(slot), key(upload)).await
    }

    /// Takes the install lock of a pipeline (a key apart from its package upload's). It takes
    /// no transfer slot: the installer runs one install at a time, on a connection the pool
    /// keeps for it, so uploads holding every slot never hold an install up.
    pub(crate) async fn lock_install(&self, pipeline: Uuid) -> Result<UploadLock> {
        const INSTALL: i64 = 0x5049_5255_535f_494e; // "PIRUS_IN"
        self.lock_key(None, key(pipeline) ^ INSTALL).await
    }

    async fn lock_key(&self, slot: Option<TransferSlot>, key: i64) -> Result<UploadLock> {
        let mut connection = self.pool.acquire().await?;
        if !session::try_lock(&mut connection, key).await? {
            // Nothing held: the connection can serve the next transfer.
            return Err(Error::Locked);
        }
        Ok(UploadLock {
            connection: Some(connection),
            key,
            _slot: slot,
        })
    }
}

impl UploadLock {
    /// The connection holding the lock, for the transfer's own statements.
    pub(super) fn connection(&mut self) -> &mut PgConnection {
        self.connection
            .as_mut()
            .expect("an upload lock has its connection until released")
    }

    /// Releases the lock, so that the next transfer of the same upload (often the very next
    /// request of the same client) finds it free, and hands the connection back for reuse.
    pub(crate) async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        match session::unlock(&mut connection, self.key).await {
            Ok(true) => drop(connection), // back to the pool, holding nothing
            other => {
                tracing::warn!(result = ?other, "upload unlock failed; the lock ends with its connection");
                close(connection);
            }
        }
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        // Dropped still held (a panic, a cancelled task): the connection must not go back to
        // the pool with the lock on it. Closing it ends the session and so the lock.
        if let Some(connection) = self.connection.take() {
            close(connection);
        }
    }
}

/// Takes a connection out of the pool for good and closes it (its session, and any lock it
/// holds, end with it).
fn close(connection: PoolConnection<Postgres>) {
    drop(connection.detach());
}
