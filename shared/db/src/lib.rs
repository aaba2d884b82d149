//! The PostgreSQL side shared by both Pirus services: connecting with bounded timeouts, applying
//! the schema migrations (serialised across processes), and checking that the database answers.
//!
//! This crate knows nothing of gRPC, HTTP or LXD.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-proto, pirus-server, pirus-lxd,
//! pirus-catalogue, pirus-runner.

pub mod filter;
pub mod listen;
mod migrations;
pub mod views;

/// How many migrations the schema has (each recorded once in `seaql_migrations`).
pub const MIGRATIONS: usize = migrations::COUNT;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use sea_orm_migration::MigratorTrait;

pub use sea_orm;

/// Whether a statement failed on a unique constraint (an idempotency key or a natural key
/// taken by a concurrent insert).
pub fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// How long a pooled connection may sit idle inside a transaction before PostgreSQL ends it.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "30s";

/// Key of the session advisory lock that serialises migrations across processes. Any constant
/// works as long as nothing else in the database uses it: "pirus" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x0070_6972_7573;

// Messages carry their cause inline (no `#[source]`), so that a start-up failure prints as one
// readable line rather than the same chain three times.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(sea_orm::DbErr),
    #[error("database query failed: {0}")]
    Query(#[from] sea_orm::DbErr),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub url: String,
    /// Connections in the pool. Uploads and watches hold theirs on dedicated connections, so the
    /// pool serves short queries only.
    pub max_connections: u32,
    /// How long establishing one connection may take.
    pub connect_timeout: Duration,
    /// How long a query may wait for a free pooled connection.
    pub acquire_timeout: Duration,
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens the pool and checks that the database answers, so a wrong URL or a database that is
/// down fails here, at start-up, within `connect_timeout`.
pub async fn connect(config: &DbConfig) -> Result<DatabaseConnection, DbError> {
    preflight(config).await?;
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(config.max_connections)
        .min_connections(0)
        .connect_timeout(config.connect_timeout)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .sqlx_logging(false)
        // A process frozen or cut off inside a transaction (SIGSTOP, a partition) must not
        // hold its locks forever: a runner mid-claim would keep its node row locked and so
        // unexpirable. Our transactions are short; PostgreSQL ends one idle this long.
        .map_sqlx_postgres_opts(|o| {
            o.options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )])
        });
    let deadline = config.connect_timeout + Duration::from_secs(1);
    let db = tokio::time::timeout(deadline, Database::connect(options))
        .await
        .map_err(|_| DbError::Timeout(deadline))?
        .map_err(|e| DbError::Connect(e.to_string()))?;
    Ok(db)
}

/// One plain connection before the pool: it fails at once with the real reason (refused,
/// authentication, no such database), where a pool would only report that it timed out.
async fn preflight(config: &DbConfig) -> Result<(), DbError> {
    use sea_orm::sqlx::{
        Connection as _,
        postgres::{PgConnectOptions, PgConnection},
    };
    let options: PgConnectOptions = config
        .url
        .parse()
        .map_err(|e: sea_orm::sqlx::Error| DbError::Url(e.to_string()))?;
    let connection =
        tokio::time::timeout(config.connect_timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| DbError::Timeout(config.connect_timeout))?
            .map_err(|e| DbError::Connect(e.to_string()))?;
    let _ = connection.close().await;
    Ok(())
}

/// Applies every pending migration. Safe when several processes start at once: the first takes
/// a transaction-scoped advisory lock and migrates, the others wait on the lock and then find
/// nothing left to do. The lock is held by a transaction on one pooled connection while the
/// migrator runs on others, so the pool needs at least two connections.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    let lock = db.begin().await.map_err(DbError::Migrate)?;
    // This transaction idles while the migrator works on other connections, for as long as
    // the migrations take.
    lock.execute_unprepared("SET LOCAL idle_in_transaction_session_timeout = 0")
        .await
        .map_err(DbError::Migrate)?;
    lock.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
    .await
    .map_err(DbError::Migrate)?;
    let result = migrations::Migrator::up(db, None).await;
    // Releasing the lock: commit or rollback both end the transaction.
    lock.commit().await.map_err(DbError::Migrate)?;
    result.map_err(DbError::Migrate)?;
    Ok(())
}

/// Whether every migration this build knows is applied.
pub async fn is_migrated(db: &DatabaseConnection) -> Result<bool, DbError> {
    let pending = migrations::Migrator::get_pending_migrations(db).await?;
    Ok(pending.is_empty())
}

/// Whether an error means the database could not be reached (rather than a query failing):
/// callers answer UNAVAILABLE, and retry later.
pub fn is_unavailable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            sqlx_is_unavailable(s)
        }
        _ => false,
    }
}

/// [`is_unavailable`] for a bare sqlx error: no connection (I/O, pool timed out or closed),
/// or the server refusing for a while: SQLSTATE class 08 (connection exception), class 53
/// (insufficient resources: too many connections, out of memory or disk) and 57P01 to 57P03
/// (shutting down, restarting, not yet accepting connections).
pub fn sqlx_is_unavailable(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match e {
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed => true,
        Sqlx::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// One round trip to the database, bounded by `timeout`.
pub async fn ping(db: &DatabaseConnection, timeout: Duration) -> Result<(), DbError> {
    tokio::time::timeout(timeout, db.execute_unprepared("SELECT 1"))
        .await
        .map_err(|_| DbError::Timeout(timeout))??;
    Ok(())
}
