//! The LXD image inside a package: copied out bounded by the image size limit while hashed,
//! then walked to its end (every runner unpacks it) within the same limit.

use std::{
    io::{self, Read, Write},
    path::Path,
};

use super::archive::{self, EntryKind, Format, Limits, Visit, WalkError};

/// Entries of an image's own tarball (a root file system) at most.
pub(super) const MAX_IMAGE_ENTRIES: usize = 5_000_000;

/// Copies all of `reader` into `out`, fsyncs it, and answers its SHA-256 and size; `None`
/// as soon as it passes `max` bytes.
pub(super) fn copy_hashing(
    reader: &mut impl Read,
    out: &mut std::fs::File,
    max: u64,
) -> io::Result<Option<(String, u64)>> {
    let copied = pirus_server::digest::sha256_copy(reader, |block| out.write_all(block), max)?;
    if copied.is_some() {
        out.sync_all()?;
    }
    Ok(copied)
}

/// An LXD unified image tarball holds `metadata.yaml` and `rootfs/`. Its content is otherwise
/// LXD's business (links and all), but every runner unpacks it: it is walked to its end, and
/// refused if it unpacks to more than `max` bytes (an image bomb would fill every runner).
pub(super) fn check_image(path: &Path, name: Option<&str>, max: u64) -> Vec<String> {
    let name = name.unwrap_or("image");
    let format = match Format::sniff(path) {
        Ok(Some(f @ (Format::TarGz | Format::TarXz))) => f,
        _ => {
            return vec![format!(
                "image: '{name}' is not a .tar.gz or .tar.xz LXD image"
            )];
        }
    };
    let (mut metadata, mut rootfs) = (false, false);
    let bounded = Limits {
        max_entries: MAX_IMAGE_ENTRIES,
        max_inflated: max,
    };
    let walked = archive::walk(path, format, bounded, |entry, _| {
        metadata |= entry.name == "metadata.yaml" && entry.kind == EntryKind::File;
        rootfs |= entry.name == "rootfs" || entry.name.starts_with("rootfs/");
        Ok(Visit::Continue)
    });
    let mut problems = Vec::new();
    match walked {
        Ok(()) => {}
        Err(WalkError::TooMuchInflation(_)) => {
            problems.push(format!(
                "image: '{name}' unpacks to more than {} (the catalogue's image size limit)",
                pirus_server::options::format_size(max)
            ));
            return problems;
        }
        Err(WalkError::TooManyEntries(n)) => {
            problems.push(format!("image: '{name}' has more than {n} entries"));
            return problems;
        }
        Err(e) => problems.push(format!("image: '{name}' cannot be read: {e}")),
    }
    if !metadata {
        problems.push(format!(
            "image: '{name}' has no metadata.yaml: not an LXD image"
        ));
    }
    if !rootfs {
        problems.push(format!(
            "image: '{name}' has no rootfs/ folder: not an LXD image"
        ));
    }
    problems
}
