//! The catalogue's data folder: partial uploads and content-addressed blobs.
//!
//! ```text
//! <data-dir>/uploads/<upload-id>.part     bytes of an upload in progress
//! <data-dir>/blobs/<aa>/<sha256>          finished content, named by its SHA-256
//! ```
//!
//! Everything here is blocking file-system work; callers run it on the blocking pool. Several
//! catalogue processes may share the folder: every change is a create, a write past the durable
//! offset of a file only its upload's lock holder writes, or an atomic rename.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Seek, SeekFrom},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use uuid::Uuid;

#[derive(Clone, Debug)]
pub(crate) struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the folder layout if needed.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        for sub in ["uploads", "blobs"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn partial_path(&self, upload: Uuid) -> PathBuf {
        self.root.join("uploads").join(format!("{upload}.part"))
    }

    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(&sha256[..2]).join(sha256)
    }

    /// Opens an upload's partial file positioned at `offset`, the durable offset. Bytes past
    /// it were written by a transfer that never committed them (a crash between write and
    /// commit): they are cut off, since nothing vouches for them.
    pub(crate) fn open_partial(&self, upload: Uuid, offset: u64) -> io::Result<File> {
        let path = self.partial_path(upload);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len < offset {
            return Err(io::Error::other(format!(
                "partial file {} holds {len} bytes, less than the committed offset {offset}",
                path.display()
            )));
        }
        if len > offset {
            file.set_len(offset)?;
        }
        if offset == 0 {
            // A new file's directory entry must be durable too.
            sync_dir(path.parent().expect("partial files live in a folder"))?;
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    }

    /// [`Self::open_partial`] for a transfer: positioned writes, with direct I/O for whole
    /// aligned blocks where the file system takes it.
    pub(crate) fn open_transfer(&self, upload: Uuid, offset: u64) -> io::Result<PartialFile> {
        let file = self.open_partial(upload, offset)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(self.partial_path(upload))
            .ok();
        Ok(PartialFile {
            file,
            direct: Mutex::new(direct),
        })
    }

    /// Moves a finished upload's bytes into the blob store under its digest. Identical content
    /// already stored is kept and the partial file dropped. Callers hold the blob's database row
    /// lock, so this never races the collector removing the same blob.
    pub(crate) fn promote(&self, upload: Uuid, sha256: &str) -> io::Result<()> {
        let partial = self.partial_path(upload);
        let blob = self.blob_path(sha256);
        let folder = blob.parent().expect("blobs live in a folder");
        fs::create_dir_all(folder)?;
        if blob.exists() {
            remove_if_exists(&partial)?;
        } else {
            fs::rename(&partial, &blob)?;
            sync_dir(folder)?;
        }
        sync_dir(partial.parent().expect("partial files live in a folder"))?;
        Ok(())
    }

    /// Copies the content of several finished partial uploads, in order, into `upload`'s
    /// partial file (tus concatenation), and makes it durable.
    pub(crate) fn concatenate(&self, upload: Uuid, parts: &[Uuid]) -> io::Result<u64> {
        let target_path = self.partial_path(upload);
        let mut target = File::create(&target_path)?;
        let mut total = 0;
        for part in parts {
            let mut source = File::open(self.partial_path(*part))?;
            total += io::copy(&mut source, &mut target)?;
        }
        target.sync_all()?;
        sync_dir(
            target_path
                .parent()
                .expect("partial files live in a folder"),
        )?;
        Ok(total)
    }

    /// Partial files not modified for `age`, by the id in their name.
    pub(crate) fn stale_partials(&self, age: std::time::Duration) -> io::Result<Vec<Uuid>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join("uploads"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".part"))
                .and_then(|n| Uuid::try_parse(n).ok())
            else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            if modified.elapsed().is_ok_and(|elapsed| elapsed > age) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub(crate) fn remove_partial(&self, upload: Uuid) -> io::Result<()> {
        remove_if_exists(&self.partial_path(upload))
    }

    pub(crate) fn remove_blob(&self, sha256: &str) -> io::Result<()> {
        remove_if_exists(&self.blob_path(sha256))
    }
}

/// Memory and file alignment direct I/O asks for (the logical block size of every common
/// disk, and the page size).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The partial file of an upload being written by a transfer.
///
/// Whole 4 KiB-aligned runs of a block go through a second descriptor opened with `O_DIRECT`:
/// no copy into the page cache and no write-back later, so the `fdatasync` of a commit only
/// flushes the device's cache and the file size. On this project's machines that is three times
/// the buffered rate for about half the CPU (docs/benchmarks.md). The unaligned head and tail of
/// a transfer go through the page cache, as does everything on a file system that refuses
/// direct I/O (the descriptor fails to open, or a write answers `EINVAL`: then it is dropped
/// for good). Writes are positioned, so a retried range lands where it belongs.
pub(crate) struct PartialFile {
    file: File,
    direct: Mutex<Option<File>>,
}

impl PartialFile {
    /// Writes `data` at `offset`.
    pub(crate) fn write_at(&self, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
            && data.as_ptr().addr().is_multiple_of(DIRECT_ALIGN)
            && data.len() >= DIRECT_ALIGN;
        if aligned {
            let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(file) = direct.as_ref() {
                let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
                match file.write_all_at(&data[..whole], offset) {
                    Ok(()) => {
                        data = &data[whole..];
                        offset += whole as u64;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!(error = %e, "direct I/O refused; writing through the page cache");
                        *direct = None;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(data, offset)
    }

    /// Makes every byte written so far durable (through either descriptor: the data and the
    /// size are the inode's).
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Whether whole blocks still go through direct I/O.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// fsync of a folder, so that a create or rename in it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn storage() -> (DataDir, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pirus-storage-{}", Uuid::new_v4()));
        (DataDir::open(&dir).unwrap(), dir)
    }

    #[test]
    fn uncommitted_tail_is_cut_and_missing_bytes_are_an_error() {
        let (storage, dir) = storage();
        let id = Uuid::new_v4();
        let mut file = storage.open_partial(id, 0).unwrap();
        file.write_all(b"0123456789").unwrap();
        drop(file);
        // Committed 4: the 6 bytes after were never vouched for.
        let mut file = storage.open_partial(id, 4).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4);
        file.write_all(b"ab").unwrap();
        assert_eq!(fs::read(storage.partial_path(id)).unwrap(), b"0123ab");
        assert!(storage.open_partial(id, 8).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A 4 KiB-aligned buffer of `len` bytes holding a pattern that starts at `seed`.
    fn aligned(len: usize, seed: u8) -> (Vec<u8>, usize) {
        let mut buf = vec![0u8; len + DIRECT_ALIGN];
        let pad = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
        for (i, b) in buf[pad..pad + len].iter_mut().enumerate() {
            *b = seed.wrapping_add((i % 251) as u8);
        }
        (buf, pad)
    }

    #[test]
    fn transfer_writes_mix_direct_and_buffered_ranges_in_place() {
        let (storage, dir) = storage();
        let id = Uuid::new_v4();
        let mut expected = Vec::new();
        // An unaligned head, a whole aligned block, an aligned run with a tail, then a resumed
        // transfer at the unaligned end.
        let file = storage.open_transfer(id, 0).unwrap();
        let direct_at_open = file.is_direct();
        file.write_at(b"head", 0).unwrap();
        expected.extend_from_slice(b"head");
        let head_end = DIRECT_ALIGN as u64;
        file.write_at(&vec![7u8; DIRECT_ALIGN - 4], 4).unwrap();
        expected.extend(std::iter::repeat_n(7u8, DIRECT_ALIGN - 4));
        let (block, pad) = aligned(4 * DIRECT_ALIGN, 1);
        file.write_at(&block[pad..pad + 4 * DIRECT_ALIGN], head_end)
            .unwrap();
        expected.extend_from_slice(&block[pad..pad + 4 * DIRECT_ALIGN]);
        let (run, pad) = aligned(2 * DIRECT_ALIGN + 100, 9);
        file.write_at(
            &run[pad..pad + 2 * DIRECT_ALIGN + 100],
            expected.len() as u64,
        )
        .unwrap();
        expected.extend_from_slice(&run[pad..pad + 2 * DIRECT_ALIGN + 100]);
        file.sync_data().unwrap();
        // Aligned writes never made direct I/O fall back (where the file system offers it).
        assert_eq!(file.is_direct(), direct_at_open);
        drop(file);
        let resumed = storage.open_transfer(id, expected.len() as u64).unwrap();
        resumed.write_at(b"more", expected.len() as u64).unwrap();
        expected.extend_from_slice(b"more");
        drop(resumed);
        assert_eq!(fs::read(storage.partial_path(id)).unwrap(), expected);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn promote_keeps_one_copy_of_identical_content() {
        let (storage, dir) = storage();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [a, b] {
            storage
                .open_partial(id, 0)
                .unwrap()
                .write_all(b"same")
                .unwrap();
        }
        let digest = "ab".repeat(32);
        storage.promote(a, &digest).unwrap();
        storage.promote(b, &digest).unwrap();
        assert_eq!(fs::read(storage.blob_path(&digest)).unwrap(), b"same");
        assert!(!storage.partial_path(a).exists() && !storage.partial_path(b).exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
