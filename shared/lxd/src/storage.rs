//! Storage pools and their custom volumes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::json;

use crate::{Client, LxdError, Result};

/// A custom storage volume as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Client {
    /// The driver of a storage pool (`dir`, `btrfs`, `zfs`, `lvm`...).
    pub async fn storage_pool_driver(&self, pool: &str) -> Result<String> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/storage-pools/{pool}"),
                None,
            )
            .await?;
        v["driver"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LxdError::Decode(format!("storage pool {pool} has no driver")))
    }

    /// The size of a storage pool in bytes (its space's total, as LXD reports it).
    pub async fn storage_pool_size(&self, pool: &str) -> Result<u64> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/storage-pools/{pool}/resources"),
                None,
            )
            .await?;
        v["space"]["total"]
            .as_u64()
            .ok_or_else(|| LxdError::Decode(format!("storage pool {pool} has no size")))
    }

    /// Creates a custom volume of `pool` with `config` (`size`, `user.*`...).
    pub async fn create_volume(
        &self,
        pool: &str,
        name: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<()> {
        let body =
            json!({"name": name, "type": "custom", "content_type": "filesystem", "config": config});
        let path = format!("/1.0/storage-pools/{pool}/volumes/custom");
        let envelope = self.request(http::Method::POST, &path, Some(body)).await?;
        if envelope.operation.is_empty() {
            return Ok(());
        }
        self.wait(&envelope.operation, timeout).await.map(drop)
    }

    /// Deletes a custom volume of `pool`; one that does not exist is fine.
    pub async fn delete_volume(&self, pool: &str, name: &str, timeout: Duration) -> Result<()> {
        let path = format!("/1.0/storage-pools/{pool}/volumes/custom/{name}");
        match self.request(http::Method::DELETE, &path, None).await {
            Ok(envelope) if envelope.operation.is_empty() => Ok(()),
            Ok(envelope) => self.wait(&envelope.operation, timeout).await.map(drop),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The custom volumes of `pool` in this project, with their config.
    pub async fn volumes(&self, pool: &str) -> Result<Vec<Volume>> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/storage-pools/{pool}/volumes/custom?recursion=1"),
                None,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| LxdError::Decode(e.to_string()))
    }

    /// Where the content of a custom volume of a pool that keeps volumes as host folders
    /// (`btrfs`, `dir`) is on this host, once created: LXD's folder (beside its socket),
    /// `storage-pools/<pool>/custom/<project>_<volume>`. A snap-packaged LXD keeps its mounts
    /// in a namespace of its own, so callers check that the folder exists.
    pub fn volume_host_path(&self, pool: &str, name: &str) -> PathBuf {
        let lxd_dir = self.socket.parent().unwrap_or(Path::new("/var/lib/lxd"));
        lxd_dir
            .join("storage-pools")
            .join(pool)
            .join("custom")
            .join(format!("{}_{name}", self.project))
    }
}
