//! Upload URLs remembered per local file (its path, size and modification time, and the
//! catalogue it goes to) in the user's cache folder, so the same command, run again after
//! Ctrl-C or a cut connection, resumes the same upload from the server's offset.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// An upload begun for a local file.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Entry {
    pub id: String,
    pub url: String,
}

pub(crate) struct Remembered {
    file: PathBuf,
}

/// A local file to upload: its absolute path, size, and the key it is remembered by.
pub(crate) struct Local {
    pub path: PathBuf,
    pub size: u64,
    pub key: String,
}

impl Local {
    pub(crate) fn of(path: &Path, kind: &str, catalogue: &str) -> Result<Self> {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let meta = std::fs::metadata(&path)?;
        anyhow::ensure!(meta.is_file(), "{} is not a file", path.display());
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let key = format!(
            "{kind} {catalogue} {} {} {modified}",
            path.display(),
            meta.len()
        );
        Ok(Self {
            path,
            size: meta.len(),
            key,
        })
    }

    /// The name the file gets in the catalogue: its base name.
    pub(crate) fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".to_owned())
    }
}

impl Remembered {
    pub(crate) fn new(cache_dir: &Path) -> Self {
        Self {
            file: cache_dir.join("uploads.json"),
        }
    }

    fn load(&self) -> BTreeMap<String, Entry> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn store(&self, entries: &BTreeMap<String, Entry>) -> Result<()> {
        let dir = self.file.parent().context("the cache file has no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let temporary = self
            .file
            .with_extension(format!("json.{}", std::process::id()));
        std::fs::write(&temporary, serde_json::to_vec_pretty(entries)?)?;
        std::fs::rename(&temporary, &self.file)
            .with_context(|| format!("cannot write {}", self.file.display()))?;
        Ok(())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        self.load().get(key).cloned()
    }

    pub(crate) fn put(&self, key: &str, entry: Entry) -> Result<()> {
        let mut entries = self.load();
        entries.insert(key.to_owned(), entry);
        self.store(&entries)
    }

    pub(crate) fn forget(&self, key: &str) -> Result<()> {
        let mut entries = self.load();
        if entries.remove(key).is_some() {
            self.store(&entries)?;
        }
        Ok(())
    }
}
