//! The node's caches: pipeline images (fetched from the catalogue, imported into LXD once per
//! fingerprint) and input files (fetched once per SHA-256, hard-linked into each run's inputs
//! folder). Both live in the runner's work folder, which no container can write to.
//!
//! The hard links say which cached inputs are in use: a file with one name left (the cache's
//! own) is linked into no run folder. Such unused inputs are kept for later runs up to
//! `--input-cache-size`, the least recently used going first; an input in use is never removed.
//! "Recently used" is the file's ctime, which every link made or removed (a run starting or
//! ending with it) sets, so it needs no record of its own and survives restarts.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::Mutex;
use uuid::Uuid;

use super::safedir::SafeDir;
use crate::catalogue::Catalogue;
use crate::{
    domain::{Error, Result, Run},
    inputs::input_names,
};

const LXD_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) struct Artifacts {
    lxd: pirus_lxd::Client,
    catalogue: Catalogue,
    db: pirus_db::sea_orm::DatabaseConnection,
    cache: PathBuf,
    /// Bytes of unused inputs kept.
    keep_unused: u64,
    /// One trim at a time.
    trimming: Mutex<()>,
    /// One import at a time per image fingerprint; per input SHA-256, one holder at a time of
    /// its fetch and link or its removal: runs starting together on one input fetch it once,
    /// and an input is never removed between a run finding it and linking it.
    locks: KeyedLocks,
}

/// A lock per key, held only while someone holds or awaits it.
#[derive(Default)]
struct KeyedLocks(std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        self.of(key).lock_owned().await
    }

    /// The lock of `key` if nobody holds it.
    fn try_lock(&self, key: String) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.of(key).try_lock_owned().ok()
    }

    fn of(&self, key: String) -> Arc<Mutex<()>> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A lock only the map holds is free and awaited by nobody: forget it.
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        std::sync::Arc::clone(map.entry(key).or_default())
    }
}

/// A cached input no run folder links.
struct Unused {
    sha256: String,
    bytes: u64,
    /// When a run last linked or unlinked it (seconds, nanoseconds).
    used: (i64, i64),
}

/// Whether `name` is a cache entry's (a SHA-256 in hex), not a fetch's temporary file.
fn is_entry(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The entries of a cache folder; none before its first fetch made it.
fn entries(folder: &Path) -> std::io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(folder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        entries => entries?.collect(),
    }
}

/// The unused inputs of the cache folder `inputs`, least recently used first.
fn unused_inputs(inputs: &Path) -> std::io::Result<Vec<Unused>> {
    let mut unused = Vec::new();
    for entry in entries(inputs)? {
        let Some(name) = entry
            .file_name()
            .to_str()
            .filter(|n| is_entry(n))
            .map(str::to_owned)
        else {
            continue;
        };
        let meta = match entry.metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            meta => meta?,
        };
        if meta.is_file() && meta.nlink() == 1 {
            unused.push(Unused {
                sha256: name,
                bytes: meta.len(),
                used: (meta.ctime(), meta.ctime_nsec()),
            });
        }
    }
    unused.sort_by_key(|u| u.used);
    Ok(unused)
}

/// Which of `unused` (least recently used first) go so that at most `keep` bytes stay.
fn beyond(unused: &[Unused], keep: u64) -> usize {
    let mut total: u64 = unused.iter().map(|u| u.bytes).sum();
    let mut count = 0;
    for u in unused {
        if total <= keep {
            break;
        }
        total -= u.bytes;
        count += 1;
    }
    count
}

impl Artifacts {
    pub(super) fn new(
        lxd: pirus_lxd::Client,
        catalogue: Catalogue,
        db: pirus_db::sea_orm::DatabaseConnection,
        cache: PathBuf,
        keep_unused: u64,
    ) -> Self {
        Self {
            lxd,
            catalogue,
            db,
            cache,
            keep_unused,
            trimming: Mutex::new(()),
            locks: KeyedLocks::default(),
        }
    }

    /// At start-up, before any fetch: removes what fetches cut short left (temporary files)
    /// and image tarballs an import did not get to remove. (The orphan sweep before it has
    /// trimmed the inputs.)
    pub(super) async fn remove_leftovers(&self) -> Result<()> {
        let cache = self.cache.clone();
        super::workspace::blocking(move || {
            for (folder, all) in [("images", true), ("inputs", false)] {
                for entry in entries(&cache.join(folder))? {
                    let leftover = all || !entry.file_name().to_str().is_some_and(is_entry);
                    if leftover && entry.file_type()?.is_file() {
                        tracing::info!(file = %entry.path().display(), "removing a leftover of the cache");
                        std::fs::remove_file(entry.path())?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Removes unused inputs, least recently used first, until at most `--input-cache-size`
    /// bytes of them stay. One trim at a time; an input being fetched or linked is passed
    /// over (it is in use).
    pub(super) async fn trim_inputs(&self) -> Result<()> {
        let _trim = self.trimming.lock().await;
        let inputs = self.cache.join("inputs");
        let folder = inputs.clone();
        let unused = super::workspace::blocking(move || unused_inputs(&folder)).await?;
        let count = beyond(&unused, self.keep_unused);
        for input in &unused[..count] {
            let Some(_guard) = self.locks.try_lock(format!("input {}", input.sha256)) else {
                continue;
            };
            let path = inputs.join(&input.sha256);
            // Still unused: a run links an input only under its lock, held now.
            match tokio::fs::symlink_metadata(&path).await {
                Ok(meta) if meta.nlink() == 1 => {}
                _ => continue,
            }
            tracing::info!(sha256 = %input.sha256, bytes = input.bytes, "removing an unused input from the cache");
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The image in LXD, fetched from the catalogue if LXD lacks it.
    pub(super) async fn ensure_image(&self, sha256: &str, file: Option<Uuid>) -> Result<()> {
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
    pub(super) async fn link_inputs(&self, run: &Run, into: &SafeDir) -> Result<()> {
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
    pub(super) async fn link_named(&self, named: &[(Uuid, String)], into: &SafeDir) -> Result<()> {
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
        let mut fetched = false;
        for (file, name) in files {
            let sha256 = file
                .sha256
                .clone()
                .filter(|s| is_entry(s))
                .ok_or_else(|| Error::internal(format!("input {} is not ready", file.id)))?;
            let cached = self.cache.join("inputs").join(&sha256);
            let _guard = self.locks.lock(format!("input {sha256}")).await;
            if !tokio::fs::try_exists(&cached).await? {
                self.catalogue.fetch(file.id, &sha256, &cached).await?;
                fetched = true;
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
        if fetched && let Err(e) = self.trim_inputs().await {
            tracing::warn!(error = %e, "could not trim the input cache");
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

    use super::{Unused, beyond, is_entry};

    fn unused(bytes: u64, used: i64) -> Unused {
        Unused {
            sha256: format!("{used:064x}"),
            bytes,
            used: (used, 0),
        }
    }

    /// The least recently used go first, and only until what stays fits.
    #[test]
    fn trimming_removes_the_oldest_until_the_rest_fits() {
        let inputs = [unused(40, 1), unused(30, 2), unused(20, 3), unused(10, 4)];
        assert_eq!(beyond(&inputs, 100), 0);
        assert_eq!(beyond(&inputs, 60), 1);
        assert_eq!(beyond(&inputs, 30), 2);
        assert_eq!(beyond(&inputs, 29), 3);
        assert_eq!(beyond(&inputs, 0), 4);
        assert_eq!(beyond(&[], 0), 0);
    }

    #[test]
    fn only_digests_are_cache_entries() {
        assert!(is_entry(&"ab".repeat(32)));
        assert!(!is_entry(&format!("{}.part-1234", "ab".repeat(32))));
        assert!(!is_entry("../../etc/passwd"));
        assert!(!is_entry(&"zz".repeat(32)));
    }

    /// Holders of one key take turns, other keys pass, and a key nobody holds is forgotten.
    #[tokio::test]
    async fn keyed_locks_serialise_one_key_and_forget_free_ones() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, most) = (
                    std::sync::Arc::clone(&locks),
                    std::sync::Arc::clone(&inside),
                    std::sync::Arc::clone(&most),
                );
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
