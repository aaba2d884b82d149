//! The one way into a folder that a container can write to.
//!
//! A run's container owns its outputs, logs and control folders, and the runner (root, or a user
//! that can read every file) reads them. Whatever the container leaves there is hostile: a
//! symbolic link to `/etc/shadow`, a FIFO that blocks a reader for ever, `/dev/zero` behind a
//! link, a file swapped for a link between a check and a use. So every access below such a
//! folder goes through [`SafeDir`]:
//!
//! - the folder is held open as a directory handle, and names are resolved beneath it with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`:
//!   no link is ever followed (in the last component or any other), nothing resolves outside
//!   the folder, and no mount point is crossed. The kernel enforces it, so there is no window
//!   between a check and the open;
//! - files are opened `O_NONBLOCK | O_NOCTTY` and accepted only if the open handle is a
//!   regular file (`fstat` on the handle, not on the name), so a FIFO, socket or device is
//!   refused without ever blocking;
//! - every read is bounded by the caller (a few KiB for control files, the run's budget for
//!   logs and outputs), and listings are bounded in entries and depth;
//! - removal walks with the same handles and unlinks entries by name in their parent, never
//!   following a link, so a link to a host folder is removed, not what it points to.
//!
//! Nothing here is async: callers run the heavier calls (walks, removal) on the blocking pool.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, fstat, mkdirat, openat2, statat, unlinkat,
};

/// Resolution rules for every name below a [`SafeDir`].
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Flags of every open below a [`SafeDir`]: never blocks, never becomes a controlling terminal,
/// never follows a final link, never leaks into a child process.
const OPEN: OFlags = OFlags::NONBLOCK
    .union(OFlags::NOCTTY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A folder held open; every name is resolved beneath it without following links.
#[derive(Clone, Debug)]
pub struct SafeDir {
    fd: Arc<OwnedFd>,
    /// Where it was opened, for messages and for LXD device sources; never used to reach files.
    path: PathBuf,
}

/// A regular file opened below a [`SafeDir`], with its size when opened.
#[derive(Debug)]
pub struct Regular {
    pub file: File,
    pub size: u64,
}

/// What a listing found that is not a regular file or a folder, and was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Path relative to the listed folder (lossy if the name is not UTF-8).
    pub name: String,
    pub why: &'static str,
}

/// The regular files below a folder, and what was skipped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Relative path (`sub/lines.txt`) and size, sorted by path.
    pub files: Vec<(String, u64)>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }
}

/// Bounds of a walk: a container may create millions of entries or a deep chain of folders.
#[derive(Clone, Copy, Debug)]
pub struct WalkLimits {
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

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a folder",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown kind",
    }
}

/// Why a name below a [`SafeDir`] was refused: it is, or its path goes through, something
/// other than a regular file or folder.
#[derive(Debug, thiserror::Error)]
#[error("{name}: is {kind}, not a regular file")]
pub struct Refused {
    pub name: String,
    pub kind: &'static str,
}

fn not_regular(name: &str, t: FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        Refused {
            name: name.to_owned(),
            kind: kind_name(t),
        },
    )
}

/// What a refused open met, if the error is a refusal (a link, a FIFO, a device...).
pub fn refusal(e: &io::Error) -> Option<&'static str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
        .map(|r| r.kind)
}

/// Relative names only: `..`, empty and absolute names are refused before the kernel is asked
/// (which would refuse them too), so that messages say why.
fn check_relative(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.split('/').any(|part| part == "..");
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a relative path below the folder"),
        ));
    }
    Ok(())
}

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

impl SafeDir {
    /// Opens a folder the runner made itself: the path up to it is the runner's own, so only
    /// its last component must not be a link.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OPEN,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(io_err(e).kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` (and its missing parents) if needed, then opens it.
    pub fn create(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_beneath(&self, name: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        check_relative(name)?;
        openat2(self.fd.as_fd(), name, flags | OPEN, mode, RESOLVE).map_err(|e| match e {
            // A link in any component (RESOLVE_NO_SYMLINKS, O_NOFOLLOW).
            rustix::io::Errno::LOOP => io::Error::new(
                io::ErrorKind::InvalidInput,
                Refused {
                    name: name.to_owned(),
                    kind: "a symbolic link (or below one)",
                },
            ),
            // Leaving the folder, or crossing a mount.
            rustix::io::Errno::XDEV => io::Error::new(
                io::ErrorKind::InvalidInput,
                Refused {
                    name: name.to_owned(),
                    kind: "outside the folder",
                },
            ),
            e => io::Error::new(io_err(e).kind(), format!("{name}: {e}")),
        })
    }

    /// The folder `name` below this one.
    pub fn subdir(&self, name: &str) -> io::Result<SafeDir> {
        let fd = self.open_beneath(name, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?;
        Ok(SafeDir {
            fd: Arc::new(fd),
            path: self.path.join(name),
        })
    }

    /// Splits `name` into the folder holding it (opened beneath this one) and its last part.
    fn parent_of<'a>(&self, name: &'a str) -> io::Result<(SafeDir, &'a str)> {
        check_relative(name)?;
        match name.rsplit_once('/') {
            Some((parent, last)) if !last.is_empty() => Ok((self.subdir(parent)?, last)),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{name}' ends with '/'"),
            )),
            None => Ok((self.clone(), name)),
        }
    }

    /// Makes the folder `name` (its parent must exist) with exactly `mode` (whatever the
    /// process's umask: a container must be able to read what it is given); an existing
    /// folder is fine.
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<()> {
        let (parent, last) = self.parent_of(name)?;
        match mkdirat(parent.fd.as_fd(), last, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                let dir = self.subdir(name)?;
                rustix::fs::fchmod(dir.fd.as_fd(), Mode::from_raw_mode(mode)).map_err(io_err)
            }
            Err(rustix::io::Errno::EXIST) => self.subdir(name).map(drop),
            Err(e) => Err(io::Error::new(io_err(e).kind(), format!("{name}: {e}"))),
        }
    }

    /// Writes a new file `name` (which must not exist) with `bytes`, with exactly `mode`.
    pub fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        let fd = self.open_beneath(
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY,
            Mode::from_raw_mode(mode),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io_err)?;
        let mut file = File::from(fd);
        file.write_all(bytes)
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))
    }

    /// Opens `name` for reading if it is a regular file; `None` if it does not exist. Anything
    /// else (a link anywhere on the way, a FIFO, a device, a folder) is an error naming it.
    pub fn open_regular(&self, name: &str) -> io::Result<Option<Regular>> {
        let fd = match self.open_beneath(name, OFlags::RDONLY, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let stat = fstat(&fd).map_err(io_err)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(not_regular(name, kind));
        }
        Ok(Some(Regular {
            file: File::from(fd),
            size: stat.st_size as u64,
        }))
    }

    /// The whole of a small file (a control or progress file), if it is a regular file of at
    /// most `max` bytes; `None` if it does not exist.
    pub fn read_small(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(Regular { file, size }) = self.open_regular(name)? else {
            return Ok(None);
        };
        if size > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: {size} bytes, more than the {max} allowed"),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: grew past the {max} bytes allowed"),
            ));
        }
        Ok(Some(bytes))
    }

    /// Up to `max` bytes of a regular file from `offset` (a live log).
    pub fn read_range(&self, name: &str, offset: u64, max: u64) -> io::Result<Vec<u8>> {
        let Some(Regular { mut file, .. }) = self.open_regular(name)? else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.take(max).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Every regular file below the folder `name`, recursively, named by its path relative to
    /// it. Links, FIFOs, sockets and devices are listed as skipped and never opened; a name
    /// that is not UTF-8 is skipped too (files are named by text). More than
    /// `limits.max_entries` entries or folders deeper than `limits.max_depth` are an error.
    pub fn list(&self, name: &str, limits: WalkLimits) -> io::Result<Listing> {
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
    pub fn disk_usage(&self, max_entries: usize) -> io::Result<u64> {
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
    pub fn chown_tree(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
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
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
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
    pub fn remove_contents(&self) -> io::Result<()> {
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
    pub fn subfolders(&self) -> io::Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch() -> PathBuf {
        let path = std::env::temp_dir().join(format!("pirus-safedir-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    #[test]
    fn links_are_never_followed_anywhere_on_the_path() {
        let root = scratch();
        let outside = scratch();
        std::fs::write(outside.join("secret"), b"host secret").unwrap();
        std::fs::create_dir(root.join("logs")).unwrap();
        symlink(outside.join("secret"), root.join("logs/out.log")).unwrap();
        symlink(&outside, root.join("up")).unwrap();
        symlink("../../", root.join("logs/rel")).unwrap();
        let dir = SafeDir::open(&root).unwrap();
        for name in ["logs/out.log", "up/secret", "logs/rel/etc/passwd"] {
            let e = dir.open_regular(name).unwrap_err();
            assert_eq!(
                refusal(&e),
                Some("a symbolic link (or below one)"),
                "{name}: {e}"
            );
            assert!(dir.read_small(name, 1024).is_err(), "{name}");
            assert!(dir.read_range(name, 0, 1024).is_err(), "{name}");
        }
        for name in ["../secret", "/etc/passwd", "logs/../../x", ""] {
            assert!(dir.open_regular(name).is_err(), "{name}");
        }
        assert!(dir.open_regular("logs/none").unwrap().is_none());
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let root = scratch();
        let status = std::process::Command::new("mkfifo")
            .arg(root.join("exit_status"))
            .status()
            .unwrap();
        assert!(status.success());
        symlink("/dev/zero", root.join("zero")).unwrap();
        let dir = SafeDir::open(&root).unwrap();
        // Would block for ever (no writer) if opened without O_NONBLOCK or read.
        let e = dir.read_small("exit_status", 64).unwrap_err();
        assert_eq!(refusal(&e), Some("a FIFO"), "{e}");
        assert!(dir.read_small("zero", 64).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        let root = scratch();
        std::fs::write(root.join("big"), vec![b'x'; 10_000]).unwrap();
        let dir = SafeDir::open(&root).unwrap();
        assert!(dir.read_small("big", 4096).is_err());
        assert_eq!(
            dir.read_small("big", 10_000).unwrap().unwrap().len(),
            10_000
        );
        assert_eq!(dir.read_range("big", 9_000, 4096).unwrap().len(), 1_000);
        assert_eq!(dir.read_range("big", 0, 100).unwrap().len(), 100);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn listings_skip_what_is_not_a_regular_file_and_are_bounded() {
        let root = scratch();
        let out = root.join("outputs");
        std::fs::create_dir_all(out.join("sub/deeper")).unwrap();
        std::fs::write(out.join("a.txt"), b"a").unwrap();
        std::fs::write(out.join("sub/deeper/b.txt"), b"bb").unwrap();
        symlink("/etc", out.join("etc")).unwrap();
        symlink("/etc/shadow", out.join("sub/shadow")).unwrap();
        std::process::Command::new("mkfifo")
            .arg(out.join("pipe"))
            .status()
            .unwrap();
        let dir = SafeDir::open(&root).unwrap();
        let listing = dir.list("outputs", WalkLimits::default()).unwrap();
        assert_eq!(
            listing.files,
            vec![("a.txt".into(), 1), ("sub/deeper/b.txt".into(), 2)]
        );
        let skipped: Vec<(&str, &str)> = listing
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.why))
            .collect();
        assert_eq!(
            skipped,
            vec![
                ("etc", "a symbolic link"),
                ("pipe", "a FIFO"),
                ("sub/shadow", "a symbolic link")
            ]
        );
        assert_eq!(listing.total_size(), 3);
        let tight = WalkLimits {
            max_entries: 3,
            max_depth: 64,
        };
        assert!(dir.list("outputs", tight).is_err());
        let shallow = WalkLimits {
            max_entries: 100,
            max_depth: 2,
        };
        assert!(dir.list("outputs", shallow).is_err());
        assert!(dir.disk_usage(100).unwrap() > 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn removal_removes_links_not_what_they_point_to() {
        let root = scratch();
        let outside = scratch();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let run = root.join("run");
        std::fs::create_dir_all(run.join("outputs/sub")).unwrap();
        std::fs::write(run.join("outputs/sub/x"), b"x").unwrap();
        symlink(&outside, run.join("outputs/host")).unwrap();
        symlink(&outside, run.join("outputs/sub/host")).unwrap();
        let dir = SafeDir::open(&root).unwrap();
        dir.remove_tree("run").unwrap();
        assert!(!run.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        dir.remove_tree("run").unwrap();
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn files_and_folders_are_made_beneath_only() {
        let root = scratch();
        let outside = scratch();
        symlink(&outside, root.join("link")).unwrap();
        let dir = SafeDir::open(&root).unwrap();
        dir.create_dir("inputs", 0o755).unwrap();
        dir.create_dir("inputs", 0o755).unwrap();
        dir.write_new("inputs/config.json", b"{}", 0o644).unwrap();
        assert!(dir.write_new("inputs/config.json", b"{}", 0o644).is_err());
        assert!(dir.write_new("link/planted", b"x", 0o644).is_err());
        assert!(dir.create_dir("link/sub", 0o755).is_err());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        dir.chown_tree("inputs", 12345, 12345).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(root.join("inputs/config.json")).unwrap();
        if rustix::process::geteuid().is_root() {
            assert_eq!(meta.uid(), 12345);
        }
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }
}
