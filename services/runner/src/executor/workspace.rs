//! A run's folders on the host, and the only code that touches them.
//!
//! ```text
//! <work>/runs/<run>-<attempt>/inputs    the runner's: hard links to cached inputs and
//!                                       config.json, mounted read-only
//! <data>/outputs  <data>/logs           the container's (owned by its mapped root): what it
//! <data>/control                        writes, and the wrapper and exit status (at /.pirus)
//! ```
//!
//! `<data>` is a custom volume of the run's storage pool when the pool keeps volumes as host
//! folders with quotas (btrfs): the volume's size is the run's disk limit, so a run can never
//! fill the runner's disk. On other pools `<data>` is the run folder itself and the monitor
//! watches its size instead ([`Workspace::disk_usage`]).
//!
//! Everything under `<data>` is written by a hostile container and read through [`SafeDir`].

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use tokio::sync::OnceCell;

use super::safedir::{Listing, Regular, SafeDir, WalkLimits};
use crate::domain::{Error, Result};

/// Bytes of the exit status file read at most.
const MAX_EXIT_STATUS: u64 = 64;
/// Bytes of the progress file read at most: progress is a small JSON object.
const MAX_PROGRESS: u64 = 4096;
const LXD_TIMEOUT: Duration = Duration::from_secs(120);

/// The run command's wrapper: its output into the log files, its exit status into the control
/// folder (atomically), whatever happens to the runner meanwhile.
const WRAPPER: &str = r#"#!/bin/sh
# Pirus run wrapper: runs its arguments (the plan's command, exactly as given) with their
# output in the log files, then records the exit status for the runner (LXD forgets finished
# commands within seconds).
cd "$PIRUS_OUTPUTS" 2>/dev/null || cd /
"$@" >> "$PIRUS_LOGS/out.log" 2>> "$PIRUS_LOGS/err.log" < /dev/null
status=$?
echo "$status" > /.pirus/exit_status.tmp && mv /.pirus/exit_status.tmp /.pirus/exit_status
# Also the exec's own status, which the runner reads from LXD when the file cannot be written
# (a run whose folders are full).
exit "$status"
"#;

/// The writable folders of a run's container, relative to `<data>`.
pub(super) const WRITABLE: [&str; 3] = ["outputs", "logs", "control"];

/// What the run's storage pool can bound, learnt from LXD once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PoolCaps {
    /// The pool keeps custom volumes as host folders with a size limit (btrfs).
    pub volumes: bool,
    /// A root disk `size` is enforced.
    pub root_quota: bool,
}

/// The storage pool run containers use, and how run folders are bounded on it.
pub(super) struct Storage {
    lxd: pirus_lxd::Client,
    pool: String,
    caps: OnceCell<PoolCaps>,
}

impl Storage {
    pub(super) fn new(lxd: pirus_lxd::Client, pool: String) -> Self {
        Self {
            lxd,
            pool,
            caps: OnceCell::new(),
        }
    }

    pub(super) fn pool(&self) -> &str {
        &self.pool
    }

    /// What the pool bounds (asked of LXD once it answers).
    pub(super) async fn caps(&self) -> Result<PoolCaps> {
        self.caps
            .get_or_try_init(|| async {
                let driver = self
                    .lxd
                    .storage_pool_driver(&self.pool)
                    .await
                    .map_err(|e| Error::Unavailable(format!("LXD storage pool: {e}")))?;
                let caps = PoolCaps {
                    volumes: driver == "btrfs",
                    root_quota: matches!(driver.as_str(), "btrfs" | "zfs" | "lvm" | "ceph"),
                };
                if !caps.volumes {
                    tracing::warn!(pool = %self.pool, %driver,
                        "this storage pool cannot bound a run's outputs and logs; they are watched instead (use a btrfs pool for a hard bound)");
                }
                Ok(caps)
            })
            .await
            .copied()
    }

    /// The custom volumes of this pool that belong to `node`, by name.
    pub(super) async fn node_volumes(&self, node: &str) -> Result<Vec<String>> {
        if !self.caps().await?.volumes {
            return Ok(Vec::new());
        }
        let volumes = self
            .lxd
            .volumes(&self.pool)
            .await
            .map_err(Error::internal)?;
        Ok(volumes
            .into_iter()
            .filter(|v| v.config.get("user.pirus.node").map(String::as_str) == Some(node))
            .map(|v| v.name)
            .collect())
    }

    pub(super) async fn delete_volume(&self, name: &str) -> Result<()> {
        self.lxd
            .delete_volume(&self.pool, name, LXD_TIMEOUT)
            .await
            .map_err(Error::internal)
    }
}

/// One attempt's folders.
pub(super) struct Workspace {
    /// `<work>/runs`, the runner's own.
    runs: SafeDir,
    /// `<run>-<attempt>`: the run folder's name, and the name of its volume.
    name: String,
    /// `<work>/runs/<name>`.
    root: SafeDir,
    /// Where the container writes.
    data: SafeDir,
    volume: Option<String>,
}

/// Names of an attempt's folder and volume: `<run>-<attempt>` and `pirus-<run>-<attempt>`.
pub(super) fn folder_name(run: uuid::Uuid, attempt: i32) -> String {
    format!("{run}-{attempt}")
}

impl Workspace {
    /// Makes an attempt's folders afresh (anything an earlier try left is removed first), with
    /// `disk_bytes` as the bound of its writable folders where the pool can enforce it.
    pub(super) async fn create(
        storage: &Storage,
        runs: &SafeDir,
        volume_name: &str,
        labels: &BTreeMap<String, String>,
        folder: String,
        disk_bytes: u64,
    ) -> Result<Self> {
        let caps = storage.caps().await?;
        let runs = runs.clone();
        let name = folder.clone();
        let root = blocking(move || {
            runs.remove_tree(&folder)?;
            runs.create_dir(&folder, 0o711)?;
            let root = runs.subdir(&folder)?;
            root.create_dir("inputs", 0o755)?;
            Ok((runs, root))
        })
        .await?;
        let (runs, root) = root;
        let (data, volume) = if caps.volumes {
            let mut config = labels.clone();
            config.insert("size".to_owned(), disk_bytes.to_string());
            storage.delete_volume(volume_name).await?;
            storage
                .lxd
                .create_volume(&storage.pool, volume_name, &config, LXD_TIMEOUT)
                .await
                .map_err(Error::internal)?;
            let path = storage.lxd.volume_host_path(&storage.pool, volume_name);
            let data = SafeDir::open(&path).map_err(|e| {
                Error::internal(format!(
                    "the run's volume is not visible on this host ({e}); is LXD packaged as a snap?"
                ))
            })?;
            (data, Some(volume_name.to_owned()))
        } else {
            (root.clone(), None)
        };
        let workspace = Self {
            runs,
            name,
            root,
            data,
            volume,
        };
        let data = workspace.data.clone();
        blocking(move || {
            for sub in WRITABLE {
                data.create_dir(sub, 0o755)?;
            }
            data.write_new("control/run.sh", WRAPPER.as_bytes(), 0o755)?;
            data.write_new("logs/out.log", b"", 0o644)?;
            data.write_new("logs/err.log", b"", 0o644)?;
            Ok(())
        })
        .await?;
        Ok(workspace)
    }

    /// An attempt's folders as an earlier process of this node left them (re-adoption).
    pub(super) async fn open(
        storage: &Storage,
        runs: &SafeDir,
        volume_name: &str,
        folder: String,
    ) -> Result<Self> {
        let caps = storage.caps().await?;
        let root = runs.subdir(&folder).map_err(Error::from)?;
        let (data, volume) = if caps.volumes {
            let path = storage.lxd.volume_host_path(&storage.pool, volume_name);
            (SafeDir::open(&path)?, Some(volume_name.to_owned()))
        } else {
            (root.clone(), None)
        };
        Ok(Self {
            runs: runs.clone(),
            name: folder,
            root,
            data,
            volume,
        })
    }

    /// Host folders for the container's disk devices.
    pub(super) fn inputs_path(&self) -> PathBuf {
        self.root.path().join("inputs")
    }

    pub(super) fn data_path(&self, sub: &str) -> PathBuf {
        self.data.path().join(sub)
    }

    /// The inputs folder, for the runner to fill before the container starts.
    pub(super) fn inputs(&self) -> Result<SafeDir> {
        Ok(self.root.subdir("inputs")?)
    }

    /// Whether the pool bounds the writable folders (else the monitor watches them).
    pub(super) fn bounded(&self) -> bool {
        self.volume.is_some()
    }

    /// Hands the writable folders to the container's mapped root.
    pub(super) async fn give_to(&self, uid: u32) -> Result<()> {
        let data = self.data.clone();
        blocking(move || {
            for sub in WRITABLE {
                data.chown_tree(sub, uid, uid)?;
            }
            Ok(())
        })
        .await
    }

    /// The command's exit status, once the wrapper wrote it. Anything but a small regular file
    /// holding a number (a FIFO, a link, garbage) is no status.
    pub(super) fn exit_status(&self) -> Option<i32> {
        match self.data.read_small("control/exit_status", MAX_EXIT_STATUS) {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes).ok()?.trim().parse().ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable exit status");
                None
            }
        }
    }

    /// The progress file's bytes, if it is a small regular file.
    pub(super) fn progress(&self) -> Option<Vec<u8>> {
        self.data
            .read_small("logs/progress.json", MAX_PROGRESS)
            .ok()
            .flatten()
    }

    /// Up to `max` bytes of a log (`out.log` or `err.log`) from `offset`, while the run lives.
    pub(super) fn read_log(&self, file: &str, offset: u64, max: u64) -> Result<Vec<u8>> {
        Ok(self.data.read_range(&format!("logs/{file}"), offset, max)?)
    }

    /// Up to `max` bytes from the start of a file of the control folder (`control/<name>`),
    /// through the same link-refusing path; nothing if it is not a readable regular file.
    pub(super) fn read_control(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        self.data.read_range(name, 0, max).ok()
    }

    /// A log opened for collection (a regular file, or `None`; anything else is refused).
    pub(super) fn open_log(&self, file: &str) -> std::io::Result<Option<Regular>> {
        self.data.open_regular(&format!("logs/{file}"))
    }

    /// Every regular file of the outputs folder, and what was skipped.
    pub(super) async fn list_outputs(&self) -> Result<Listing> {
        let data = self.data.clone();
        blocking(move || data.list("outputs", WalkLimits::default())).await
    }

    /// An output for collection, by its relative path.
    pub(super) fn open_output(&self, relative: &str) -> std::io::Result<Option<Regular>> {
        self.data.open_regular(&format!("outputs/{relative}"))
    }

    /// Bytes the writable folders use on disk.
    pub(super) async fn disk_usage(&self) -> Result<u64> {
        let data = self.data.clone();
        let mut total = 0;
        for sub in WRITABLE {
            let dir = data.subdir(sub)?;
            total += blocking(move || dir.disk_usage(WalkLimits::default().max_entries)).await?;
        }
        Ok(total)
    }

    /// Removes the attempt's folders and volume.
    pub(super) async fn remove(self, storage: &Storage) -> Result<()> {
        if let Some(volume) = &self.volume {
            storage.delete_volume(volume).await?;
        }
        let (runs, name) = (self.runs, self.name);
        blocking(move || runs.remove_tree(&name)).await
    }
}

/// Runs filesystem work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
        .map_err(Error::from)
}
