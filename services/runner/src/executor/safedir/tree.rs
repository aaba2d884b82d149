//! Walks below a [`SafeDir`]: listing regular files, weighing, handing a tree to another
//! owner, removing a tree. Every entry is looked at with `lstat` in its parent's handle, and
//! folders are entered with the same link-refusing opens as everything else.

use std::{io, os::fd::AsFd, sync::Arc};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, openat2, statat, unlinkat};

use super::{OPEN, RESOLVE, SafeDir, io_err, kind_name};

/// What a listing found that is not a regular file or a folder, and was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// Path relative to the listed folder (lossy if the name is not UTF-8).
    pub name: String,
    pub why: &'static str,
}

/// The regular files below a folder, and what was skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Relative path (`sub/lines.txt`) and size, sorted by path.
    pub files: Vec<(String, u64)>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    pub(crate) fn total_size(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// Bounds of a walk: a container may create millions of entries or a deep chain of folders.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalkLimits {
    pub max_entries: usize,
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_depth: 64,
        }
    }
}

impl SafeDir {
    /// Every regular file below the folder `name`, recursively, named by its path relative to
    /// it. Links, FIFOs, sockets and devices are listed as skipped and never opened; a name
    /// that is not UTF-8 is skipped too (files are named by text). More than
    /// `limits.max_entries` entries or folders deeper than `limits.max_depth` are an error.
    pub(crate) fn list(&self, name: &str, limits: WalkLimits) -> io::Result<Listing> {
        let root = self.subdir(name)?;
        let mut listing = Listing::default();
        let mut seen = 0usize;
        let mut pending = vec![(root, String::new(), 0usize)];
        while let Some((dir, prefix, depth)) = pending.pop() {
            for (entry, stat) in dir.entries()? {
                seen += 1;
                if seen > limits.max_entries {
                    return Err(io::Error::other(format!(
                        "{name}: more than {} entries",
                        limits.max_entries
                    )));
                }
                let Some(text) = entry.to_str() else {
                    listing.skipped.push(Skipped {
                        name: format!("{prefix}{}", entry.to_string_lossy()),
                        why: "its name is not valid UTF-8",
                    });
                    continue;
                };
                let relative = format!("{prefix}{text}");
                match FileType::from_raw_mode(stat.st_mode) {
                    FileType::RegularFile => listing.files.push((relative, stat.st_size as u64)),
                    FileType::Directory if depth + 1 >= limits.max_depth => {
                        return Err(io::Error::other(format!(
                            "{name}: folders nested deeper than {}",
                            limits.max_depth
                        )));
                    }
                    FileType::Directory => {
                        let sub = dir.subdir(text)?;
                        pending.push((sub, format!("{relative}/"), depth + 1));
                    }
                    other => listing.skipped.push(Skipped {
                        name: relative,
                        why: kind_name(other),
                    }),
                }
            }
        }
        listing.files.sort();
        listing.skipped.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listing)
    }

    /// Bytes of disk the folder's content uses (allocated blocks, links and all), counting at
    /// most `max_entries` entries.
    pub(crate) fn disk_usage(&self, max_entries: usize) -> io::Result<u64> {
        let mut used = 0u64;
        let mut seen = 0usize;
        let mut pending = vec![self.clone()];
        while let Some(dir) = pending.pop() {
            for (entry, stat) in dir.entries()? {
                seen += 1;
                if seen > max_entries {
                    return Err(io::Error::other(format!("more than {max_entries} entries")));
                }
                used += stat.st_blocks as u64 * 512;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                    && let Some(text) = entry.to_str()
                {
                    pending.push(dir.subdir(text)?);
                }
            }
        }
        Ok(used)
    }

    /// Changes the owner of the folder `name` and everything below it, never following links.
    /// Used only on folders the runner just made, before a container can see them.
    pub(crate) fn chown_tree(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
        let owner = Some(rustix::fs::Uid::from_raw(uid));
        let group = Some(rustix::fs::Gid::from_raw(gid));
        let root = self.subdir(name)?;
        rustix::fs::fchown(root.fd.as_fd(), owner, group).map_err(io_err)?;
        let mut pending = vec![root];
        while let Some(dir) = pending.pop() {
            for (entry, stat) in dir.entries()? {
                rustix::fs::chownat(
                    dir.fd.as_fd(),
                    entry.as_c_str(),
                    owner,
                    group,
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err)?;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                    && let Some(text) = entry.to_str()
                {
                    pending.push(dir.subdir(text)?);
                }
            }
        }
        Ok(())
    }

    /// Removes `name` and everything below it. Links are removed, never followed; a missing
    /// `name` is fine.
    pub(crate) fn remove_tree(&self, name: &str) -> io::Result<()> {
        let (parent, last) = self.parent_of(name)?;
        let stat = match statat(parent.fd.as_fd(), last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let dir = parent.subdir(last)?;
            for (entry, stat) in dir.entries()? {
                match (
                    FileType::from_raw_mode(stat.st_mode),
                    entry.to_str().map(str::to_owned),
                ) {
                    (FileType::Directory, Some(text)) => dir.remove_tree(&text)?,
                    (FileType::Directory, None) => {
                        // A folder whose name is not UTF-8: emptied through its own handle.
                        let sub = openat2(
                            dir.fd.as_fd(),
                            entry.as_c_str(),
                            OFlags::DIRECTORY | OFlags::RDONLY | OPEN,
                            Mode::empty(),
                            RESOLVE,
                        )
                        .map_err(io_err)?;
                        let sub = SafeDir {
                            fd: Arc::new(sub),
                            path: dir.path.join(entry.to_string_lossy().as_ref()),
                        };
                        sub.remove_contents()?;
                        unlinkat(dir.fd.as_fd(), entry.as_c_str(), AtFlags::REMOVEDIR)
                            .map_err(io_err)?;
                    }
                    _ => unlinkat(dir.fd.as_fd(), entry.as_c_str(), AtFlags::empty())
                        .map_err(io_err)?,
                }
            }
            unlinkat(parent.fd.as_fd(), last, AtFlags::REMOVEDIR).map_err(io_err)
        } else {
            unlinkat(parent.fd.as_fd(), last, AtFlags::empty()).map_err(io_err)
        }
    }

    /// Removes everything below this folder, keeping the folder.
    pub(crate) fn remove_contents(&self) -> io::Result<()> {
        for (entry, _) in self.entries()? {
            match entry.to_str() {
                Some(text) => self.remove_tree(text)?,
                None => {
                    let name = entry.to_string_lossy().into_owned();
                    // Names that are not UTF-8 only come from a container; unlink or recurse.
                    match unlinkat(self.fd.as_fd(), entry.as_c_str(), AtFlags::empty()) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::ISDIR) => {
                            return Err(io::Error::other(format!(
                                "{name}: a folder whose name is not UTF-8 below another such folder"
                            )));
                        }
                        Err(e) => return Err(io_err(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// The names of the folder's entries (without `.` and `..`), each with its own `lstat`.
    fn entries(&self) -> io::Result<Vec<(std::ffi::CString, Stat)>> {
        let dir = rustix::fs::Dir::read_from(self.fd.as_fd()).map_err(io_err)?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            match statat(self.fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => out.push((name.to_owned(), stat)),
                // Gone meanwhile.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(out)
    }

    /// Names of the folder's entries that are themselves folders (not links to one).
    pub(crate) fn subfolders(&self) -> io::Result<Vec<String>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, stat)| FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
            .filter_map(|(name, _)| name.into_string().ok())
            .collect())
    }
}

trait ToStr {
    fn to_str(&self) -> Option<&str>;
}

impl ToStr for std::ffi::CString {
    fn to_str(&self) -> Option<&str> {
        self.as_c_str().to_str().ok()
    }
}
