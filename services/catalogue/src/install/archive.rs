//! Walking an untrusted archive (`.zip`, `.tar.gz`, `.tar.xz`) entry by entry, within bounds
//! counted on bytes actually inflated, never on sizes headers declare.
//!
//! The format is told by magic bytes, not by the file name. A walk gives each entry's
//! normalised name and kind, and a reader over its data; bytes the visitor reads of an
//! "exempt" entry (the embedded LXD image) do not count against the inflation bound.

use std::{
    cell::Cell,
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
    rc::Rc,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Zip,
    TarGz,
    TarXz,
}

impl Format {
    /// Tells the format from the first bytes of a file.
    pub(super) fn sniff(path: &Path) -> io::Result<Option<Format>> {
        let mut magic = [0u8; 6];
        let mut file = File::open(path)?;
        let n = read_up_to(&mut file, &mut magic)?;
        let magic = &magic[..n];
        Ok(
            if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
                Some(Format::Zip)
            } else if magic.starts_with(&[0x1f, 0x8b]) {
                Some(Format::TarGz)
            } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
                Some(Format::TarXz)
            } else {
                None
            },
        )
    }
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EntryKind {
    File,
    Dir,
    /// A symbolic or hard link.
    Link,
    /// Devices, FIFOs and the like.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// The name with any leading `./` removed and no trailing `/`.
    pub name: String,
    /// The name as the archive holds it (for messages).
    pub raw: String,
    pub kind: EntryKind,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_entries: usize,
    /// Bytes that may be inflated outside exempt entries.
    pub max_inflated: u64,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WalkError {
    #[error("the package is not a readable archive: {0}")]
    Corrupt(String),
    #[error("the package has more than {0} entries")]
    TooManyEntries(usize),
    #[error("the package inflates to more than {0} bytes (a zip bomb?)")]
    TooMuchInflation(u64),
    /// The visitor asked to stop early; not an error of the archive.
    #[error("stopped")]
    Stopped,
}

/// What a visitor decides after an entry.
pub(super) enum Visit {
    Continue,
    Stop,
}

/// Counts inflated bytes and refuses to go past the bound.
struct Counting<R> {
    inner: R,
    counters: Rc<Counters>,
}

struct Counters {
    total: Cell<u64>,
    exempt: Cell<u64>,
    limit: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let c = &self.counters;
        c.total.set(c.total.get() + n as u64);
        if c.total.get().saturating_sub(c.exempt.get()) > c.limit {
            return Err(io::Error::other(InflationExceeded));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct InflationExceeded;

impl std::fmt::Display for InflationExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inflation limit exceeded")
    }
}

impl std::error::Error for InflationExceeded {}

/// A reader over one entry's data; marks what it reads as exempt when asked.
pub(super) struct EntryReader<'a> {
    inner: &'a mut dyn Read,
    counters: Rc<Counters>,
    exempt: bool,
}

impl EntryReader<'_> {
    /// Bytes read from here on do not count against the inflation bound.
    pub(super) fn exempt(&mut self) {
        self.exempt = true;
    }
}

impl Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.exempt {
            return self.inner.read(buf);
        }
        // Reserve the exemption before reading: the counting reader underneath checks the
        // bound as the bytes pass through it.
        let c = &self.counters;
        c.exempt.set(c.exempt.get() + buf.len() as u64);
        let result = self.inner.read(buf);
        let n = *result.as_ref().unwrap_or(&0);
        c.exempt.set(c.exempt.get() - (buf.len() - n) as u64);
        result
    }
}

fn normalise(raw: &str) -> String {
    let mut name = raw;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name.trim_end_matches('/').to_owned()
}

fn map_io(e: io::Error, limit: u64) -> WalkError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<InflationExceeded>())
    {
        WalkError::TooMuchInflation(limit)
    } else {
        WalkError::Corrupt(e.to_string())
    }
}

/// Calls `visit` for every entry, in archive order.
pub(super) fn walk<F>(
    path: &Path,
    format: Format,
    limits: Limits,
    mut visit: F,
) -> Result<(), WalkError>
where
    F: FnMut(&Entry, &mut EntryReader<'_>) -> io::Result<Visit>,
{
    let counters = Rc::new(Counters {
        total: Cell::new(0),
        exempt: Cell::new(0),
        limit: limits.max_inflated,
    });
    let file = File::open(path).map_err(|e| WalkError::Corrupt(e.to_string()))?;
    let result = match format {
        Format::Zip => walk_zip(file, limits, &counters, &mut visit),
        Format::TarGz => {
            let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
            walk_tar(decoder, limits, &counters, &mut visit)
        }
        Format::TarXz => {
            let decoder = lzma_rust2::XzReader::new(BufReader::new(file), true);
            walk_tar(decoder, limits, &counters, &mut visit)
        }
    };
    match result {
        Err(WalkError::Stopped) => Ok(()),
        other => other,
    }
}

fn walk_tar<R, F>(
    reader: R,
    limits: Limits,
    counters: &Rc<Counters>,
    visit: &mut F,
) -> Result<(), WalkError>
where
    R: Read,
    F: FnMut(&Entry, &mut EntryReader<'_>) -> io::Result<Visit>,
{
    let counting = Counting {
        inner: reader,
        counters: std::rc::Rc::clone(counters),
    };
    let mut archive = tar::Archive::new(counting);
    let entries = archive
        .entries()
        .map_err(|e| map_io(e, limits.max_inflated))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| map_io(e, limits.max_inflated))?;
        if index >= limits.max_entries {
            return Err(WalkError::TooManyEntries(limits.max_entries));
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink | tar::EntryType::Link => EntryKind::Link,
            // PAX and GNU long-name headers are folded into the next entry by the tar crate.
            _ => EntryKind::Other,
        };
        let info = Entry {
            name: normalise(&raw),
            raw,
            kind,
        };
        let mut reader = EntryReader {
            inner: &mut entry,
            counters: std::rc::Rc::clone(counters),
            exempt: false,
        };
        match visit(&info, &mut reader).map_err(|e| map_io(e, limits.max_inflated))? {
            Visit::Continue => {}
            Visit::Stop => return Err(WalkError::Stopped),
        }
    }
    Ok(())
}

fn walk_zip<F>(
    file: File,
    limits: Limits,
    counters: &Rc<Counters>,
    visit: &mut F,
) -> Result<(), WalkError>
where
    F: FnMut(&Entry, &mut EntryReader<'_>) -> io::Result<Visit>,
{
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| WalkError::Corrupt(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(WalkError::TooManyEntries(limits.max_entries));
    }
    for index in 0..archive.len() {
        let entry = archive
            .by_index(index)
            .map_err(|e| WalkError::Corrupt(e.to_string()))?;
        let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let kind = if entry.is_symlink() {
            EntryKind::Link
        } else if entry.is_dir() {
            EntryKind::Dir
        } else if entry.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        let info = Entry {
            name: normalise(&raw),
            raw,
            kind,
        };
        let mut counting = Counting {
            inner: entry,
            counters: std::rc::Rc::clone(counters),
        };
        let mut reader = EntryReader {
            inner: &mut counting,
            counters: std::rc::Rc::clone(counters),
            exempt: false,
        };
        match visit(&info, &mut reader).map_err(|e| map_io(e, limits.max_inflated))? {
            Visit::Continue => {}
            Visit::Stop => return Err(WalkError::Stopped),
        }
        // Data the visitor left unread is checked too: a truncated or corrupt entry is found
        // now, not when a runner uses it.
        io::copy(&mut counting, &mut io::sink()).map_err(|e| map_io(e, limits.max_inflated))?;
    }
    Ok(())
}

/// Why an entry name is unsafe in a package (outside its image), if it is.
pub(super) fn unsafe_name(entry: &Entry) -> Option<&'static str> {
    let raw = entry.raw.as_str();
    if raw.starts_with('/') || raw.starts_with('\\') || raw.get(1..3) == Some(":\\") {
        return Some("is an absolute path");
    }
    if raw.split(['/', '\\']).any(|part| part == "..") {
        return Some("goes up with '..'");
    }
    if raw.contains('\0') {
        return Some("contains a NUL byte");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(raw: &str) -> Entry {
        Entry {
            name: normalise(raw),
            raw: raw.to_owned(),
            kind: EntryKind::File,
        }
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise("./././manifest.json"), "manifest.json");
        assert_eq!(normalise("pkg/doc/"), "pkg/doc");
    }

    #[test]
    fn unsafe_names_are_caught() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\\..\\x",
            "C:\\x",
            "\\x",
        ] {
            assert!(unsafe_name(&entry(bad)).is_some(), "{bad}");
        }
        for good in ["manifest.json", "./doc/help.html", "a..b/c", "...", "pkg/x"] {
            assert!(unsafe_name(&entry(good)).is_none(), "{good}");
        }
    }
}
