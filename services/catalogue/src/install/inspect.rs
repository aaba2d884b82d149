//! Inspecting a package: two passes over the archive, blocking, in bounded time and memory.
//!
//! Pass 1 lists every entry (checking names, links and the inflation bound) and reads the
//! manifest. Pass 2 reads the documents the manifest names and streams the embedded image into
//! the data folder while hashing it; the image is then checked to be an LXD unified tarball
//! (`metadata.yaml` and `rootfs/`). Every problem found is reported, not just the first.

use std::{
    collections::BTreeMap,
    io::{self, Read},
    path::Path,
};

use serde_json::Value;
use uuid::Uuid;

use super::{
    archive::{self, EntryKind, Format, Limits, Visit, WalkError},
    form,
    image::{check_image, copy_hashing},
    manifest::{self, Manifest, PackageFormat, Problems},
};
use crate::datadir::DataDir;

pub(super) const MAX_ENTRIES: usize = 10_000;
pub(super) const MAX_MANIFEST: u64 = 1 << 20;
pub(super) const MAX_FORM: u64 = 1 << 20;
pub(super) const MAX_DOCUMENT: u64 = 16 << 20;
/// Bytes that may be inflated outside the image, per byte of package (with a 1 MiB floor, so a
/// tiny package holding a few small files is never mistaken for a bomb).
pub(super) const INFLATION_RATIO: u64 = 100;

/// Where the pipeline's image is.
#[derive(Debug)]
pub(super) enum Image {
    /// Extracted from the package into the data folder's partial file `temp`.
    Extracted {
        temp: Uuid,
        sha256: String,
        size: u64,
    },
    /// The package itself is the image (legacy LXD image packages).
    Package,
}

#[derive(Debug)]
pub(super) struct Document {
    pub name: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct Inspected {
    pub manifest: Manifest,
    pub form: Value,
    pub documents: Vec<Document>,
    pub image: Image,
}

struct Listed {
    kind: EntryKind,
    raw: String,
}

/// Reads `reader` into memory, at most `limit` bytes; `None` if there is more.
fn read_bounded(reader: &mut impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(limit + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

fn walk_problem(e: WalkError) -> String {
    e.to_string()
}

/// Every entry of a package (pass 1), and the manifest candidates read on the way.
struct Listing {
    entries: BTreeMap<String, Listed>,
    candidates: BTreeMap<String, Result<Vec<u8>, String>>,
}

/// Where the manifest is: the root, or a single top-level folder (`prefix`).
struct Located<'a> {
    prefix: String,
    manifest: Option<&'a Result<Vec<u8>, String>>,
    /// A legacy LXD image package: no manifest.json, a metadata.yaml at the root.
    legacy_image: bool,
}

/// The documents (in memory) and the image (in the data folder) of a package: pass 2.
struct Extracted {
    temp: Uuid,
    contents: BTreeMap<String, Vec<u8>>,
    image: Option<(String, u64)>,
}

/// Inspects the package at `path` (`size` bytes). On success the image, when extracted, is in
/// `storage` under a temporary partial id the caller promotes or removes. The image may
/// inflate to `max_image` bytes, as the package holds it and unpacked.
pub(super) fn inspect(
    path: &Path,
    size: u64,
    storage: &DataDir,
    max_image: u64,
) -> Result<Inspected, Vec<String>> {
    let Some(format) =
        Format::sniff(path).map_err(|e| vec![format!("the package cannot be read: {e}")])?
    else {
        return Err(vec![
            "the package is not a .zip, .tar.gz or .tar.xz archive".to_owned(),
        ]);
    };
    // A legacy image package is all image: the image limit bounds it too.
    let limits = Limits {
        max_entries: MAX_ENTRIES,
        max_inflated: (size.saturating_mul(INFLATION_RATIO))
            .max(1 << 20)
            .min(max_image.max(1 << 20)),
    };
    let listing = list(path, format, limits)?;
    let located = locate(&listing);
    let mut problems = check_names(&listing, located.legacy_image);
    let Some(manifest) = read_manifest(&listing, &located, &mut problems) else {
        return Err(problems);
    };
    let wanted = named_entries(&manifest, &located.prefix, &listing, &mut problems);
    let extracted = match extract(
        path,
        format,
        limits,
        &wanted,
        storage,
        max_image,
        &mut problems,
    ) {
        Ok(extracted) => extracted,
        Err(()) => return Err(problems),
    };
    assemble(manifest, extracted, storage, max_image, problems)
}

/// Pass 1: every entry's name and kind; the manifest candidates.
fn list(path: &Path, format: Format, limits: Limits) -> Result<Listing, Vec<String>> {
    let mut entries: BTreeMap<String, Listed> = BTreeMap::new();
    let mut candidates: BTreeMap<String, Result<Vec<u8>, String>> = BTreeMap::new();
    let pass1 = archive::walk(path, format, limits, |entry, reader| {
        let base = entry.name.rsplit('/').next().unwrap_or_default();
        let depth = entry.name.matches('/').count();
        if entry.kind == EntryKind::File
            && depth <= 1
            && (base == "manifest.json" || (depth == 0 && base == "metadata.yaml"))
        {
            let content = read_bounded(reader, MAX_MANIFEST)?
                .ok_or_else(|| format!("{}: is larger than 1 MiB", entry.name));
            candidates.insert(entry.name.clone(), content);
        }
        entries.insert(
            entry.name.clone(),
            Listed {
                kind: entry.kind,
                raw: entry.raw.clone(),
            },
        );
        Ok(Visit::Continue)
    });
    match pass1 {
        Ok(()) => Ok(Listing {
            entries,
            candidates,
        }),
        Err(e) => Err(vec![walk_problem(e)]),
    }
}

fn locate(listing: &Listing) -> Located<'_> {
    let top_folders: std::collections::BTreeSet<&str> = listing
        .entries
        .keys()
        .map(|n| n.split('/').next().unwrap_or_default())
        .collect();
    let (prefix, manifest) = if let Some(found) = listing.candidates.get("manifest.json") {
        (String::new(), Some(found))
    } else if let (1, Some(folder)) = (top_folders.len(), top_folders.iter().next()) {
        let name = format!("{folder}/manifest.json");
        match listing.candidates.get(&name) {
            Some(found) => (format!("{folder}/"), Some(found)),
            None => (String::new(), None),
        }
    } else {
        (String::new(), None)
    };
    Located {
        legacy_image: manifest.is_none() && listing.candidates.contains_key("metadata.yaml"),
        prefix,
        manifest,
    }
}

/// Names and links: the package itself is checked; a legacy image's rootfs/ and templates/
/// are LXD's business and may hold links.
fn check_names(listing: &Listing, legacy_image: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, listed) in &listing.entries {
        let in_image =
            legacy_image && (name.starts_with("rootfs/") || name.starts_with("templates/"));
        let probe = archive::Entry {
            name: name.clone(),
            raw: listed.raw.clone(),
            kind: listed.kind,
        };
        if let Some(why) = archive::unsafe_name(&probe) {
            problems.push(format!("entry '{}': {why}", listed.raw));
        } else if !in_image && listed.kind == EntryKind::Link {
            problems.push(format!(
                "entry '{}': is a link; packages may not hold links",
                listed.raw
            ));
        } else if !in_image && listed.kind == EntryKind::Other {
            problems.push(format!(
                "entry '{}': is not a regular file or folder",
                listed.raw
            ));
        }
    }
    problems
}

/// The manifest: manifest.json, or a legacy image's metadata.yaml.
fn read_manifest(
    listing: &Listing,
    located: &Located<'_>,
    problems: &mut Vec<String>,
) -> Option<Manifest> {
    let parse = |file: &'static str,
                 content: &Result<Vec<u8>, String>,
                 parser: fn(&[u8], &mut Problems) -> Option<Manifest>| {
        let mut p = Problems {
            file,
            list: Vec::new(),
        };
        let m = match content {
            Ok(bytes) => parser(bytes, &mut p),
            Err(e) => {
                p.list.push(e.clone());
                None
            }
        };
        (m, p.list)
    };
    let (manifest, list) = match (located.manifest, located.legacy_image) {
        (Some(content), _) => parse("manifest.json", content, manifest::parse_manifest_json),
        (None, true) => {
            let content = &listing.candidates["metadata.yaml"];
            let (m, mut list) = parse("metadata.yaml", content, manifest::parse_legacy_metadata);
            let has_rootfs = listing
                .entries
                .keys()
                .any(|n| n == "rootfs" || n.starts_with("rootfs/"));
            if !has_rootfs {
                list.push("the image has no rootfs/ folder".to_owned());
            }
            (m, list)
        }
        (None, false) => (
            None,
            vec![
                "no manifest.json at the package root (or in its single top-level folder): \
                 not a Pirus package"
                    .to_owned(),
            ],
        ),
    };
    problems.extend(list);
    manifest
}

/// Everything the manifest names (the image, the documents) must be a regular file of the
/// package: entry name -> what it is.
fn named_entries(
    manifest: &Manifest,
    prefix: &str,
    listing: &Listing,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut wanted = BTreeMap::new();
    let named = manifest
        .image
        .iter()
        .map(|i| ("image".to_owned(), i.clone()))
        .chain(
            manifest
                .documents
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    for (what, relative) in named {
        let entry = format!("{prefix}{relative}");
        match listing.entries.get(&entry) {
            Some(Listed {
                kind: EntryKind::File,
                ..
            }) => {
                wanted.insert(entry, what);
            }
            Some(_) => problems.push(format!("{what}: '{relative}' is not a regular file")),
            None => problems.push(format!("{what}: '{relative}' is not in the package")),
        }
    }
    wanted
}

/// Pass 2: the documents in memory, the image into the data folder (bounded by `max_image`).
/// On a walk failure nothing is left behind and the problem is added.
fn extract(
    path: &Path,
    format: Format,
    limits: Limits,
    wanted: &BTreeMap<String, String>,
    storage: &DataDir,
    max_image: u64,
    problems: &mut Vec<String>,
) -> Result<Extracted, ()> {
    let temp = Uuid::now_v7();
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut image: Option<(String, u64)> = None;
    let pass2 = archive::walk(path, format, limits, |entry, reader| {
        let Some(what) = wanted.get(&entry.name) else {
            return Ok(Visit::Continue);
        };
        if what == "image" {
            reader.exempt();
            let copied = copy_hashing(reader, &mut storage.open_partial(temp, 0)?, max_image)?;
            return Ok(match copied {
                Some(found) => {
                    image = Some(found);
                    Visit::Continue
                }
                None => {
                    // Not read further: the rest of a bomb is never inflated.
                    problems.push(format!(
                        "image: '{}' inflates to more than {} (the catalogue's image size limit)",
                        entry.raw,
                        pirus_server::options::format_size(max_image)
                    ));
                    Visit::Stop
                }
            });
        }
        let limit = if what == "form" {
            MAX_FORM
        } else {
            MAX_DOCUMENT
        };
        match read_bounded(reader, limit)? {
            Some(bytes) => {
                contents.insert(what.clone(), bytes);
            }
            None => problems.push(format!("{what}: is larger than {} MiB", limit >> 20)),
        }
        Ok(Visit::Continue)
    });
    if let Err(e) = pass2 {
        let _ = storage.remove_partial(temp);
        problems.push(walk_problem(e));
        return Err(());
    }
    Ok(Extracted {
        temp,
        contents,
        image,
    })
}

/// The form normalised, the image checked, the documents typed; or every problem found (and
/// nothing left behind).
fn assemble(
    manifest: Manifest,
    mut extracted: Extracted,
    storage: &DataDir,
    max_image: u64,
    mut problems: Vec<String>,
) -> Result<Inspected, Vec<String>> {
    let temp = extracted.temp;
    let form = match extracted.contents.remove("form") {
        None => form::empty(),
        Some(bytes) => match form::normalise(&bytes) {
            Ok(form) => form,
            Err(p) => {
                problems.extend(p);
                Value::Null
            }
        },
    };
    let image = match (manifest.format, extracted.image) {
        (PackageFormat::LegacyImage, _) => Image::Package,
        (_, Some((sha256, size))) => {
            problems.extend(check_image(
                &storage.partial_path(temp),
                manifest.image.as_deref(),
                max_image,
            ));
            Image::Extracted { temp, sha256, size }
        }
        (_, None) => Image::Package, // Already reported as missing.
    };
    if !problems.is_empty() {
        let _ = storage.remove_partial(temp);
        return Err(problems);
    }
    let mut documents: Vec<Document> = extracted
        .contents
        .into_iter()
        .map(|(name, content)| Document {
            content_type: content_type(&name, &manifest, &content),
            name,
            content,
        })
        .collect();
    documents.push(Document {
        name: "form".to_owned(),
        content_type: "application/schema+json".to_owned(),
        content: serde_json::to_vec_pretty(&form).unwrap_or_default(),
    });
    documents.push(Document {
        name: "manifest".to_owned(),
        content_type: "application/json".to_owned(),
        content: serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    });
    Ok(Inspected {
        manifest,
        form,
        documents,
        image,
    })
}

/// The media type of a document, from its name in the manifest and its first bytes.
fn content_type(name: &str, manifest: &Manifest, content: &[u8]) -> String {
    let path = manifest
        .documents
        .get(name)
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_default();
    let t = match name {
        "icon" if content.starts_with(b"\x89PNG") => "image/png",
        "icon" if content.starts_with(&[0xff, 0xd8, 0xff]) => "image/jpeg",
        "icon" if content.starts_with(b"GIF8") => "image/gif",
        "icon" if path.ends_with(".svg") => "image/svg+xml",
        "icon" => "application/octet-stream",
        _ if path.ends_with(".html") || path.ends_with(".htm") => "text/html; charset=utf-8",
        _ if path.ends_with(".md") => "text/markdown; charset=utf-8",
        _ if path.ends_with(".pdf") => "application/pdf",
        _ => "text/plain; charset=utf-8",
    };
    t.to_owned()
}
