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
    /// One import at a time per image fingerprint, one download at a time per input SHA-256:
    /// runs starting together on one input fetch it once.
    locks: KeyedLocks,
}

/// A lock per key, held only while someone holds or awaits it.
#[derive(Default)]
struct KeyedLocks(std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // A lock only the map holds is free and awaited by nobody: forget it.
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
            map.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
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
            locks: KeyedLocks::default(),
        }
    }

    /// The image in LXD, fetched from the catalogue if LXD lacks it.
    pub async fn ensure_image(&self, sha256: &str, file: Option<Uuid>) -> Result<()> {
        if self.lxd.has_image(sha256).await.map_err(Error::internal)? {
            return Ok(());
        }
        let _guard = self.locks.lock(format!("image {sha256}")).await;
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
                let _guard = self.locks.lock(format!("input {sha256}")).await;
                if !tokio::fs::try_exists(&cached).await? {
                    self.catalogue.fetch(file.id, &sha256, &cached).await?;
                }
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

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::KeyedLocks;

    /// Holders of one key take turns, other keys pass, and a key nobody holds is forgotten.
    #[tokio::test]
    async fn keyed_locks_serialise_one_key_and_forget_free_ones() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _guard = locks.lock("input a".to_owned()).await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let held = locks.lock("input a".to_owned()).await;
        // Another key is not held up by the first.
        drop(
            tokio::time::timeout(Duration::from_secs(5), locks.lock("input b".to_owned()))
                .await
                .unwrap(),
        );
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        drop(locks.lock("image c".to_owned()).await);
        let map = locks.0.lock().unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["image c"]);
    }
}
