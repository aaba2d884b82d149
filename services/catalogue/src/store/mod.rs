//! Database access of the catalogue: files, uploads and blob reference counts. Each public
//! method is one use case's transaction; nothing here touches the file system except through
//! the callback [`Store::complete_upload`] runs under the blob's row lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbBackend, Statement, Value};

mod blobs;
mod files;
mod holders;
mod pipelines;
pub mod session;
mod uploads;

#[cfg(test)]
mod tests;

pub use holders::RunHolder;
pub use pipelines::{InstallRecord, NewPackage};

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

pub(crate) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

pub(crate) fn expiry_deadline(expiry: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::days(1))
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}
