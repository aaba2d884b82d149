//! One writer per upload, across every catalogue process sharing the database: a transfer holds
//! a PostgreSQL session advisory lock on a connection of its own for as long as it runs.
//!
//! Why a dedicated connection rather than the pool: the lock's lifetime is the connection's, so
//! a crashed or killed process releases it the moment PostgreSQL sees the socket close, and a
//! lock can never leak back into a pool. Transfers also do their offset commits on this
//! connection, so thousands of slow uploads never starve the pool that serves other RPCs. A
//! semaphore (`--max-transfers`) bounds how many transfers (and so connections) run at once.

use std::sync::Arc;

use sea_orm::sqlx::{
    self, Connection,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::domain::{Error, Result};

#[derive(Clone)]
pub struct LockConnector {
    options: PgConnectOptions,
    permits: Arc<Semaphore>,
}

/// A held upload lock and the connection that holds it.
pub struct UploadLock {
    pub(super) connection: PgConnection,
    key: i64,
    _permit: OwnedSemaphorePermit,
}

/// The advisory lock key of an upload: its UUID folded to 64 bits. Two uploads colliding would
/// only make one wait for the other.
fn key(id: Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low) as i64
}

impl LockConnector {
    pub fn new(database_url: &str, max_transfers: usize) -> Result<Self> {
        let options: PgConnectOptions = database_url
            .parse()
            .map_err(|e: sqlx::Error| Error::internal(format!("database URL: {e}")))?;
        Ok(Self {
            options,
            permits: Arc::new(Semaphore::new(max_transfers)),
        })
    }

    /// Takes the lock of `upload`, or fails at once with [`Error::Locked`] if another transfer
    /// holds it.
    pub async fn lock(&self, upload: Uuid) -> Result<UploadLock> {
        self.lock_key(key(upload)).await
    }

    /// Takes the install lock of a pipeline (a key apart from its package upload's).
    pub async fn lock_install(&self, pipeline: Uuid) -> Result<UploadLock> {
        const INSTALL: i64 = 0x5049_5255_535f_494e; // "PIRUS_IN"
        self.lock_key(key(pipeline) ^ INSTALL).await
    }

    async fn lock_key(&self, key: i64) -> Result<UploadLock> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::Unavailable("too many uploads in progress; retry shortly".to_owned())
        })?;
        let mut connection = PgConnection::connect_with(&self.options).await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            let _ = connection.close().await;
            return Err(Error::Locked);
        }
        Ok(UploadLock {
            connection,
            key,
            _permit: permit,
        })
    }
}

impl UploadLock {
    /// Releases the lock before closing, so that the next transfer of the same upload (often
    /// the very next request of the same client) finds it free.
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.connection)
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(error = %e, "upload unlock failed; the lock ends with its connection");
        }
        let _ = self.connection.close().await;
    }
}
