//! Database access of the catalogue: files, uploads and blob reference counts. Each public
//! method is one use case's transaction; nothing here touches the file system except through
//! the callback [`Store::complete_upload`] runs under the blob's row lock.

pub(crate) use pirus_db::stmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

mod blobs;
mod files;
mod holders;
mod pipelines;
pub(crate) mod session;
mod uploads;

#[cfg(test)]
mod tests;

pub(crate) use holders::RunHolder;

/// A database error as the domain's: UNAVAILABLE (retry later) when the database cannot serve
/// for now, INTERNAL otherwise.
fn database_error(unavailable: bool, e: impl std::fmt::Display) -> crate::domain::Error {
    use crate::domain::Error;
    if unavailable {
        tracing::warn!(error = %e, "database unavailable");
        Error::Unavailable("the database is unavailable; retry later".to_owned())
    } else {
        Error::Internal(e.to_string())
    }
}

impl From<sea_orm::DbErr> for crate::domain::Error {
    fn from(e: sea_orm::DbErr) -> Self {
        database_error(pirus_db::is_unavailable(&e), e)
    }
}

impl From<sea_orm::sqlx::Error> for crate::domain::Error {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        database_error(pirus_db::sqlx_is_unavailable(&e), e)
    }
}

pub(crate) use pipelines::{InstallRecord, NewPackage};

#[derive(Clone)]
pub(crate) struct Store {
    db: DatabaseConnection,
}

pub(crate) fn expiry_deadline(expiry: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::days(1))
}

impl Store {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}
