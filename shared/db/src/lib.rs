//! The PostgreSQL side shared by both Pirus services: connecting with bounded timeouts, applying
//! the schema migrations (serialised across processes), and checking that the database answers.
//!
//! This crate knows nothing of gRPC, HTTP or LXD.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-proto, pirus-server, pirus-lxd,
//! pirus-catalogue, pirus-runner.

pub mod batch;
pub mod filter;
pub mod listen;
mod migrations;
pub mod row;
pub mod views;

/// How many migrations the schema has (each recorded once in `seaql_migrations`).
pub const MIGRATIONS: usize = migrations::COUNT;

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use sea_orm_migration::MigratorTrait;

pub use sea_orm;

/// A PostgreSQL statement with positional values (`$1`, `$2`...): the one way every Pirus
/// store writes SQL.
pub fn stmt(sql: &str, values: impl IntoIterator<Item = sea_orm::Value>) -> sea_orm::Statement {
    sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, sql, values)
}

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

/// A pooled connection idle at least this long is checked (a round trip) before it is used.
const CHECKOUT_PING_AFTER_IDLE: Duration = Duration::from_secs(1);

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
    /// Sessions plan each prepared statement once, for any parameters
    /// (`plan_cache_mode = force_generic_plan`), for a pool that runs a few statements whose
    /// best plan does not depend on their parameters: PostgreSQL otherwise re-plans a
    /// statement whose cost estimate varies with them (`id = ANY($1)` with a short array) on
    /// every execution, which costs more than executing it.
    pub generic_plans: bool,
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            generic_plans: false,
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
        // sqlx pings a connection on every checkout by default: a round trip per query on
        // top of the query, a third of a GetRun's database work (bench/load.sh). Only a
        // connection idle this long is pinged now; one that went bad sooner (the database
        // restarted within the last second) fails its query like any query during the
        // restart would, and sqlx's ping on release then drops it.
        .test_before_acquire_if_idle_for(CHECKOUT_PING_AFTER_IDLE)
        .sqlx_logging(false)
        // A process frozen or cut off inside a transaction (SIGSTOP, a partition) must not
        // hold its locks forever: a runner mid-claim would keep its node row locked and so
        // unexpirable. Our transactions are short; PostgreSQL ends one idle this long.
        .map_sqlx_postgres_opts({
            let generic_plans = config.generic_plans;
            move |o| {
                let o = o.options([(
                    "idle_in_transaction_session_timeout",
                    IDLE_IN_TRANSACTION_TIMEOUT,
                )]);
                if generic_plans {
                    o.options([("plan_cache_mode", "force_generic_plan")])
                } else {
                    o
                }
            }
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

/// How long a process whose database role may not change the schema (a runner's) waits for
/// one that may (the catalogue) to bring it up to date.
const SCHEMA_WAIT: Duration = Duration::from_secs(60);

/// Applies every pending migration. Safe when several processes start at once: the first takes
/// a transaction-scoped advisory lock and migrates, the others wait on the lock and then find
/// nothing left to do. The lock is held by a transaction on one pooled connection while the
/// migrator runs on others, so the pool needs at least two connections.
///
/// A schema already current is left alone without touching it (the migrator would first create
/// its own table, which needs the right to create tables), so a role without that right, as a
/// runner's is, starts on a migrated database. On one that is not, such a role waits up to
/// [`SCHEMA_WAIT`] for another process to migrate it.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    let deadline = tokio::time::Instant::now() + SCHEMA_WAIT;
    let mut said = false;
    loop {
        match migrate_once(db).await {
            Err(DbError::Migrate(e)) if is_insufficient_privilege(&e) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(DbError::Migrate(sea_orm::DbErr::Custom(format!(
                        "the schema is not up to date and this database role may not change \
                         it ({e}); start pirus-catalogue (its role owns the schema) first"
                    ))));
                }
                if !said {
                    tracing::info!(
                        "the schema is not up to date and this database role may not change it: \
                         waiting for a process that may (pirus-catalogue)"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

async fn migrate_once(db: &DatabaseConnection) -> Result<(), DbError> {
    if is_migrated(db).await? {
        return Ok(());
    }
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
    // Another process may have migrated while this one waited for the lock.
    let result = match is_migrated(db).await {
        Ok(true) => Ok(()),
        Ok(false) => migrations::Migrator::up(db, None)
            .await
            .map_err(DbError::Migrate),
        Err(e) => Err(e),
    };
    // Releasing the lock: commit or rollback both end the transaction.
    lock.commit().await.map_err(DbError::Migrate)?;
    result
}

/// Whether every migration this build knows is applied, read from `seaql_migrations` alone
/// (no table yet, or one this role may not read yet, as the runner's role before the migration
/// that grants it: no).
pub async fn is_migrated(db: &DatabaseConnection) -> Result<bool, DbError> {
    let statement = sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) AS n FROM seaql_migrations WHERE version = ANY($1)",
        [migrations::names().into()],
    );
    match db.query_one_raw(statement).await {
        Ok(row) => {
            let applied: i64 = match row {
                Some(row) => row.try_get("", "n")?,
                None => 0,
            };
            Ok(applied == migrations::COUNT as i64)
        }
        Err(e) if matches!(sqlstate(&e).as_deref(), Some("42P01" | "42501")) => Ok(false),
        Err(e) => Err(DbError::Query(e)),
    }
}

/// The SQLSTATE of a failed statement, when the database answered one.
fn sqlstate(e: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            match &**s {
                Sqlx::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a statement was refused for want of a privilege (SQLSTATE 42501).
pub fn is_insufficient_privilege(e: &sea_orm::DbErr) -> bool {
    sqlstate(e).as_deref() == Some("42501") || e.to_string().contains("permission denied")
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

/// SQLSTATE of a refused quota: raised by the usage triggers (migration 10) with a message
/// naming the quota, the principal, what is used, what was asked and the limit.
pub const QUOTA_EXCEEDED: &str = "PQ001";

/// The refusal's message when `e` is a quota refusal ([`QUOTA_EXCEEDED`]).
pub fn quota_exceeded(e: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            sqlx_quota_exceeded(s)
        }
        _ => None,
    }
}

/// [`quota_exceeded`] for a bare sqlx error.
pub fn sqlx_quota_exceeded(e: &sea_orm::sqlx::Error) -> Option<String> {
    match e {
        sea_orm::sqlx::Error::Database(db) if db.code().as_deref() == Some(QUOTA_EXCEEDED) => {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}

/// One round trip to the database, bounded by `timeout`.
pub async fn ping(db: &DatabaseConnection, timeout: Duration) -> Result<(), DbError> {
    tokio::time::timeout(timeout, db.execute_unprepared("SELECT 1"))
        .await
        .map_err(|_| DbError::Timeout(timeout))??;
    Ok(())
}
