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
        if let Some(refusal) = pirus_db::quota_exceeded(&e) {
            return crate::domain::Error::QuotaExceeded(refusal);
        }
        database_error(pirus_db::is_unavailable(&e), e)
    }
}

impl From<sea_orm::sqlx::Error> for crate::domain::Error {
    fn from(e: sea_orm::sqlx::Error) -> Self {
        if let Some(refusal) = pirus_db::sqlx_quota_exceeded(&e) {
            return crate::domain::Error::QuotaExceeded(refusal);
        }
        database_error(pirus_db::sqlx_is_unavailable(&e), e)
    }
}

pub(crate) use pipelines::{InstallRecord, NewPackage};

#[derive(Clone)]
pub(crate) struct Store {
    db: DatabaseConnection,
    names: pirus_auth::principals::Names,
}

pub(crate) fn expiry_deadline(expiry: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(expiry).unwrap_or(chrono::Duration::days(1))
}

impl Store {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            names: pirus_auth::principals::Names::new(db.clone()),
            db,
        }
    }

    /// `files` with their owners' names.
    pub(crate) async fn with_owner_names(
        &self,
        mut files: Vec<crate::domain::File>,
    ) -> crate::domain::Result<Vec<crate::domain::File>> {
        let names = self.names.of(files.iter().filter_map(|f| f.owner)).await?;
        for file in &mut files {
            file.owner_name = file
                .owner
                .and_then(|o| names.get(&o))
                .map(|n| n.to_string());
        }
        Ok(files)
    }

    /// What `owner` stores and its max_stored_bytes, when it has that quota.
    pub(crate) async fn stored_bytes_quota(
        &self,
        owner: uuid::Uuid,
    ) -> crate::domain::Result<Option<(u64, u64)>> {
        use sea_orm::ConnectionTrait;
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT coalesce(u.stored_bytes, 0) AS used, p.max_stored_bytes AS max
                 FROM principals p LEFT JOIN principal_usage_totals u ON u.principal_id = p.id
                 WHERE p.id = $1 AND p.max_stored_bytes > 0",
                [owner.into()],
            ))
            .await?;
        Ok(match row {
            Some(r) => {
                let used: i64 = r.try_get("", "used")?;
                let max: i64 = r.try_get("", "max")?;
                Some((used.max(0) as u64, max.max(0) as u64))
            }
            None => None,
        })
    }

    /// The id of the principal named `name`, if there is one.
    pub(crate) async fn principal_id(
        &self,
        name: &str,
    ) -> crate::domain::Result<Option<uuid::Uuid>> {
        Ok(pirus_auth::principals::id_of(&self.db, name).await?)
    }
}
