//! The node's caches: pipeline images (fetched from the catalogue, imported into LXD once per
//! fingerprint) and input files (fetched once per SHA-256, hard-linked into each run's inputs
//! folder). Both live in the runner's work folder, which no container can write to.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::Mutex;
use uuid::Uuid;

use super::{Catalogue, safedir::SafeDir};
use crate::{
    domain::{Error, Result, Run},
    inputs::input_names,
};

const LXD_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Artifacts {
    lxd: pirus_lxd::Client,
    catalogue: Catalogue,
    db: pirus_db::sea_orm::DatabaseConnection,
    cache: PathBuf,
    /// One import at a time per image fingerprint.
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Artifacts {
    pub fn new(
        lxd: pirus_lxd::Client,
        catalogue: Catalogue,
        db: pirus_db::sea_orm::DatabaseConnection,
        cache: PathBuf,
    ) -> Self {
        Self {
            lxd,
            catalogue,
            db,
            cache,
            image_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The image in LXD, fetched from the catalogue if LXD lacks it.
    pub async fn ensure_image(&self, sha256: &str, file: Option<Uuid>) -> Result<()> {
        if self.lxd.has_image(sha256).await.map_err(Error::internal)? {
            return Ok(());
        }
        let lock = self
            .image_locks
            .lock()
            .await
            .entry(sha256.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if self.lxd.has_image(sha256).await.map_err(Error::internal)? {
            return Ok(());
        }
        let file = file.ok_or_else(|| Error::internal("the pipeline has no image file"))?;
        let path = self.cache.join("images").join(format!("{sha256}.tar"));
        self.catalogue.fetch(file, sha256, &path).await?;
        let imported = self
            .lxd
            .ensure_image(&path, sha256, LXD_TIMEOUT)
            .await
            .map_err(Error::internal);
        // LXD keeps its own copy.
        let _ = tokio::fs::remove_file(&path).await;
        imported
    }

    /// The run's inputs, fetched into the cache if missing, hard-linked into `into` under their
    /// sanitised names.
    pub async fn link_inputs(&self, run: &Run, into: &SafeDir) -> Result<()> {
        let files: HashMap<Uuid, _> = pirus_db::views::files(&self.db, &run.input_file_ids)
            .await?
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        let ordered: Vec<_> = run
            .input_file_ids
            .iter()
            .map(|id| {
                files
                    .get(id)
                    .ok_or_else(|| Error::internal(format!("input {id} is gone")))
            })
            .collect::<Result<_>>()?;
        let names = input_names(&ordered.iter().map(|f| f.name.clone()).collect::<Vec<_>>());
        self.link(ordered.into_iter().zip(names), into).await
    }

    /// Links catalogue files into `into` under the names given (a TES task's inputs).
    pub async fn link_named(&self, named: &[(Uuid, String)], into: &SafeDir) -> Result<()> {
        let ids: Vec<Uuid> = named.iter().map(|(id, _)| *id).collect();
        let files: HashMap<Uuid, _> = pirus_db::views::files(&self.db, &ids)
            .await?
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        let mut pairs = Vec::with_capacity(named.len());
        for (id, name) in named {
            let file = files
                .get(id)
                .ok_or_else(|| Error::internal(format!("input {id} is gone")))?;
            pairs.push((file, name.clone()));
        }
        self.link(pairs.into_iter(), into).await
    }

    /// Fetches each file into the cache if missing, then hard-links it into `into`.
    async fn link(
        &self,
        files: impl Iterator<Item = (&pirus_db::views::FileView, String)>,
        into: &SafeDir,
    ) -> Result<()> {
        for (file, name) in files {
            let sha256 = file
                .sha256
                .clone()
                .ok_or_else(|| Error::internal(format!("input {} is not ready", file.id)))?;
            let cached = self.cache.join("inputs").join(&sha256);
            if !tokio::fs::try_exists(&cached).await? {
                self.catalogue.fetch(file.id, &sha256, &cached).await?;
            }
            let link = into.path().join(&name);
            tokio::fs::hard_link(&cached, &link).await.map_err(|e| {
                Error::internal(format!(
                    "link {} -> {}: {e}",
                    cached.display(),
                    link.display()
                ))
            })?;
        }
        Ok(())
    }
}
