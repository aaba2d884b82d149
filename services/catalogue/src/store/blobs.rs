//! Content-addressed blobs: reference counts, and collecting those nothing references.

use sea_orm::{ConnectionTrait, TransactionTrait};

use super::{Store, stmt};
use crate::domain::{Error, Result};

impl Store {
    /// Removes an unreferenced blob: the file goes while its row is locked, so a concurrent
    /// upload of the same content (which increments the same row) waits and then stores it
    /// anew. A crash between the two leaves a row at zero, collected again later.
    pub(crate) async fn collect_blob<F>(&self, sha256: &str, remove_file: F) -> Result<bool>
    where
        F: FnOnce() -> std::io::Result<()> + Send + 'static,
    {
        let txn = self.db.begin().await?;
        let row = txn
            .query_one_raw(stmt(
                "SELECT ref_count FROM blobs WHERE sha256 = $1 FOR UPDATE",
                [sha256.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(false) };
        let count: i64 = row.try_get("", "ref_count")?;
        if count > 0 {
            return Ok(false);
        }
        tokio::task::spawn_blocking(remove_file)
            .await
            .map_err(Error::internal)??;
        txn.execute_raw(stmt("DELETE FROM blobs WHERE sha256 = $1", [sha256.into()]))
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Blobs nobody references, oldest first.
    pub(crate) async fn unreferenced_blobs(&self, limit: u64) -> Result<Vec<String>> {
        let rows = self
            .db
            .query_all_raw(stmt(
                &format!(
                    "SELECT sha256 FROM blobs WHERE ref_count = 0 ORDER BY created_at LIMIT {limit}"
                ),
                [],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get("", "sha256").map_err(Into::into))
            .collect()
    }
}
