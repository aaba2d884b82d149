//! One writer per upload, across every catalogue process sharing the database: a transfer holds
//! a PostgreSQL session advisory lock on a connection of its own for as long as it runs.
//!
//! Why connections of their own rather than the service's pool: a lock's lifetime is its
//! session's, so a crashed or killed process releases it the moment PostgreSQL sees the socket
//! close; and transfers also do their offset commits on that connection, so thousands of slow
//! uploads never starve the pool that serves other RPCs. The lock connections form a pool of
//! their own, bounded by `--max-transfers` plus `--max-installs` (semaphores make one more
//! transfer fail at once rather than wait): a connection goes back to it only after its lock was released, and is
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

/// Why an install did not start: every install slot is taken (it is tried again).
pub const NO_INSTALL_SLOT: &str = "every install slot is taken";

#[derive(Clone)]
pub struct LockConnector {
    pool: PgPool,
    permits: Arc<Semaphore>,
    /// Installs have slots of their own: a crowd of uploads (slow ones included) never holds
    /// up an install, nor installs the uploads.
    installs: Arc<Semaphore>,
}

/// One of the `--max-transfers` slots, taken before a transfer's work starts and freed when
/// dropped.
pub struct TransferSlot {
    _permit: OwnedSemaphorePermit,
}

/// A held upload lock and the connection that holds it.
pub struct UploadLock {
    /// None once released.
    connection: Option<PoolConnection<Postgres>>,
    key: i64,
    _slot: TransferSlot,
}

/// The advisory lock key of an upload: its UUID folded to 64 bits. Two uploads colliding would
/// only make one wait for the other.
fn key(id: Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low) as i64
}

impl LockConnector {
    pub fn new(database_url: &str, max_transfers: usize, max_installs: usize) -> Result<Self> {
        let options: PgConnectOptions = database_url
            .parse()
            .map_err(|e: sqlx::Error| Error::internal(format!("database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections((max_transfers + max_installs).max(1) as u32)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            // Idle lock connections are closed after a while; a burst of uploads reopens them.
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            permits: Arc::new(Semaphore::new(max_transfers)),
            installs: Arc::new(Semaphore::new(max_installs)),
        })
    }

    /// A transfer slot, or [`Error::Unavailable`] at once when every slot is taken.
    pub fn slot(&self) -> Result<TransferSlot> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map(|permit| TransferSlot { _permit: permit })
            .map_err(|_| {
                Error::Unavailable("too many uploads in progress; retry shortly".to_owned())
            })
    }

    /// Takes the lock of `upload`, or fails at once with [`Error::Locked`] if another transfer
    /// holds it.
    pub async fn lock(&self, upload: Uuid) -> Result<UploadLock> {
        self.lock_in(self.slot()?, upload).await
    }

    /// Takes the lock of `upload` in a slot taken earlier.
    pub async fn lock_in(&self, slot: TransferSlot, upload: Uuid) -> Result<UploadLock> {
        self.lock_key(slot, key(upload)).await
    }

    /// Takes the install lock of a pipeline (a key apart from its package upload's), in one
    /// of the install slots; [`Error::Unavailable`] when every one is taken (the install is
    /// tried again on the next pass).
    pub async fn lock_install(&self, pipeline: Uuid) -> Result<UploadLock> {
        const INSTALL: i64 = 0x5049_5255_535f_494e; // "PIRUS_IN"
        let slot = self
            .installs
            .clone()
            .try_acquire_owned()
            .map(|permit| TransferSlot { _permit: permit })
            .map_err(|_| Error::Unavailable(NO_INSTALL_SLOT.to_owned()))?;
        self.lock_key(slot, key(pipeline) ^ INSTALL).await
    }

    async fn lock_key(&self, slot: TransferSlot, key: i64) -> Result<UploadLock> {
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
    pub async fn release(mut self) {
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
