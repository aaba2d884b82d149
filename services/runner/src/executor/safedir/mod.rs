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

mod tree;

pub(super) use tree::{Listing, Skipped, WalkLimits};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, mkdirat, openat2};

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
pub(super) struct SafeDir {
    fd: Arc<OwnedFd>,
    /// Where it was opened, for messages and for LXD device sources; never used to reach files.
    path: PathBuf,
}

/// A regular file opened below a [`SafeDir`], with its size when opened.
#[derive(Debug)]
pub(super) struct Regular {
    pub file: File,
    pub size: u64,
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
pub(super) struct Refused {
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
pub(super) fn refusal(e: &io::Error) -> Option<&'static str> {
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
    pub(super) fn open(path: &Path) -> io::Result<Self> {
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
    pub(super) fn create(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Self::open(path)
    }

    pub(super) fn path(&self) -> &Path {
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
    pub(super) fn subdir(&self, name: &str) -> io::Result<SafeDir> {
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
    pub(super) fn create_dir(&self, name: &str, mode: u32) -> io::Result<()> {
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
    pub(super) fn write_new(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
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

    /// Makes the folder `name` and any of its missing parents, each with `mode` (none of them
    /// may be a link).
    pub(super) fn create_dirs(&self, name: &str, mode: u32) -> io::Result<()> {
        check_relative(name)?;
        let mut made = String::new();
        for part in name.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !made.is_empty() {
                made.push('/');
            }
            made.push_str(part);
            self.create_dir(&made, mode)?;
        }
        Ok(())
    }

    /// Creates (or empties) the regular file `name` for writing, with `mode` if new; a link
    /// anywhere on the way is refused.
    pub(super) fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = self.open_beneath(
            name,
            OFlags::CREATE | OFlags::TRUNC | OFlags::WRONLY,
            Mode::from_raw_mode(mode),
        )?;
        let stat = fstat(&fd).map_err(io_err)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(not_regular(name, kind));
        }
        Ok(File::from(fd))
    }

    /// Opens `name` for reading if it is a regular file; `None` if it does not exist. Anything
    /// else (a link anywhere on the way, a FIFO, a device, a folder) is an error naming it.
    pub(super) fn open_regular(&self, name: &str) -> io::Result<Option<Regular>> {
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
    pub(super) fn read_small(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
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
    pub(super) fn read_range(&self, name: &str, offset: u64, max: u64) -> io::Result<Vec<u8>> {
        let Some(Regular { mut file, .. }) = self.open_regular(name)? else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.take(max).read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests;
