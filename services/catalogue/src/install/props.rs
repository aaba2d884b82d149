//! Property tests of what a package author controls: the manifest (JSON and legacy YAML), the
//! form, and the archive itself (tar.gz and zip, well-formed, hostile or corrupt). Whatever
//! the bytes, reading answers a value or problems, never panics, and stays within its bounds:
//! no more entries than allowed, no more bytes inflated than allowed, every unsafe name
//! caught; a normalised form normalises to itself.

use std::io::{Read, Write};

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{
    archive::{self, Entry, EntryKind, Format, Limits, Visit, WalkError},
    form,
    manifest::{self, Problems},
};

/// JSON values up to a few levels deep, with keys a manifest or form uses among others.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            Just("name".to_owned()),
            Just("version".to_owned()),
            Just("image".to_owned()),
            Just("run".to_owned()),
            Just("job".to_owned()),
            Just("form".to_owned()),
            Just("resources".to_owned()),
            Just("memory".to_owned()),
            Just("timeout".to_owned()),
            Just("documents".to_owned()),
            Just("developers".to_owned()),
            Just("type".to_owned()),
            Just("properties".to_owned()),
            Just("required".to_owned()),
            Just("enum".to_owned()),
            Just("default".to_owned()),
            Just("divisibleBy".to_owned()),
            Just("pattern".to_owned()),
            "[a-z_$]{1,10}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn problems() -> Problems<'static> {
    Problems {
        file: "manifest.json",
        list: Vec::new(),
    }
}

/// One entry of a generated archive: its raw name, kind and bytes.
#[derive(Clone, Debug)]
struct Generated {
    name: String,
    kind: EntryKind,
    data: Vec<u8>,
}

fn entry() -> impl Strategy<Value = Generated> {
    let name = prop_oneof![
        "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
        "(\\./)?[a-z]{1,8}\\.(json|png|md)",
        Just("../../etc/passwd".to_owned()),
        Just("/etc/shadow".to_owned()),
        Just("a/../../b".to_owned()),
        Just("manifest.json".to_owned()),
        Just("./x/manifest.json".to_owned()),
    ];
    let kind = prop_oneof![
        4 => Just(EntryKind::File),
        1 => Just(EntryKind::Dir),
        1 => Just(EntryKind::Link),
        1 => Just(EntryKind::Other),
    ];
    (name, kind, proptest::collection::vec(any::<u8>(), 0..3000))
        .prop_map(|(name, kind, data)| Generated { name, kind, data })
}

/// A tar.gz of `entries`, names written as given (`..` and absolute ones included).
fn tar_gz(entries: &[Generated]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        let (kind, data): (_, &[u8]) = match e.kind {
            EntryKind::File => (tar::EntryType::Regular, &e.data),
            EntryKind::Dir => (tar::EntryType::Directory, &[]),
            EntryKind::Link => (tar::EntryType::Symlink, &[]),
            EntryKind::Other => (tar::EntryType::Fifo, &[]),
        };
        header.set_entry_type(kind);
        if e.kind == EntryKind::Link {
            header.set_link_name("/etc/shadow").expect("a short link");
        }
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).expect("in memory");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("in memory")
}

/// A zip of the file entries among `entries`.
fn zip(entries: &[Generated]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (i, e) in entries.iter().enumerate() {
        // Zip names repeat at the writer's peril: make them unique.
        let name = format!("{i}-{}", e.name);
        match e.kind {
            EntryKind::Dir => writer.add_directory(name, options).expect("in memory"),
            _ => {
                writer.start_file(name, options).expect("in memory");
                writer.write_all(&e.data).expect("in memory");
            }
        }
    }
    writer.finish().expect("in memory").into_inner()
}

/// Walks `bytes` as `format` under `limits`, reading every entry whole: the entries seen, the
/// bytes read, and how the walk ended.
fn walk(bytes: &[u8], format: Format, limits: Limits) -> (Vec<Entry>, u64, Result<(), WalkError>) {
    let dir = std::env::temp_dir().join(format!("pirus-props-{}", uuid::Uuid::new_v4()));
    std::fs::write(&dir, bytes).expect("a temporary file");
    let mut seen = Vec::new();
    let mut read = 0u64;
    let ended = archive::walk(&dir, format, limits, |entry, reader| {
        seen.push(entry.clone());
        let mut sink = Vec::new();
        read += reader.read_to_end(&mut sink)? as u64;
        Ok(Visit::Continue)
    });
    let _ = std::fs::remove_file(&dir);
    (seen, read, ended)
}

/// A walk of `generated` entries stayed within `limits`: no more entries seen, no more bytes
/// read than allowed, and it ended whole or for a bound it names.
fn within_bounds(
    seen: &[Entry],
    read: u64,
    ended: &Result<(), WalkError>,
    generated: usize,
    limits: Limits,
) -> Result<(), TestCaseError> {
    prop_assert!(seen.len() <= limits.max_entries);
    prop_assert!(read <= limits.max_inflated);
    match ended {
        Ok(()) => prop_assert_eq!(seen.len(), generated),
        Err(WalkError::TooManyEntries(_)) => prop_assert!(generated > limits.max_entries),
        Err(WalkError::TooMuchInflation(_)) => {}
        Err(e) => prop_assert!(false, "{}", e),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_manifest_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut p = problems();
        let parsed = manifest::parse_manifest_json(&bytes, &mut p);
        prop_assert!(parsed.is_some() || !p.list.is_empty());
        let mut p = problems();
        let parsed = manifest::parse_legacy_metadata(&bytes, &mut p);
        prop_assert!(parsed.is_some() || !p.list.is_empty());
    }

    #[test]
    fn any_manifest_json_is_read_or_refused_naming_fields(value in json()) {
        let bytes = serde_json::to_vec(&value).expect("serialisable");
        let mut p = problems();
        let parsed = manifest::parse_manifest_json(&bytes, &mut p);
        prop_assert!(parsed.is_some() || !p.list.is_empty());
        for problem in &p.list {
            prop_assert!(problem.starts_with("manifest.json: "), "{}", problem);
        }
    }

    #[test]
    fn a_normalised_form_normalises_to_itself(value in json()) {
        let bytes = serde_json::to_vec(&value).expect("serialisable");
        match form::normalise(&bytes) {
            Ok(schema) => {
                let again = form::normalise(&serde_json::to_vec(&schema).expect("serialisable"));
                prop_assert_eq!(again.ok(), Some(schema));
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                prop_assert!(problems.iter().all(|p| p.starts_with("form.json: ")));
            }
        }
    }

    #[test]
    fn any_form_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Err(problems) = form::normalise(&bytes) {
            prop_assert!(!problems.is_empty());
        }
    }

    #[test]
    fn tar_walks_stay_within_their_bounds(
        entries in proptest::collection::vec(entry(), 0..12),
        max_entries in 1usize..10,
        max_inflated in 1024u64..40_000,
    ) {
        let limits = Limits { max_entries, max_inflated };
        let (seen, read, ended) = walk(&tar_gz(&entries), Format::TarGz, limits);
        within_bounds(&seen, read, &ended, entries.len(), limits)?;
        for (seen, generated) in seen.iter().zip(&entries) {
            prop_assert_eq!(&seen.raw, &generated.name);
            prop_assert_eq!(seen.kind, generated.kind);
            let escapes = generated.name.starts_with('/')
                || generated.name.split('/').any(|c| c == "..");
            prop_assert_eq!(archive::unsafe_name(seen).is_some(), escapes, "{}", generated.name);
        }
    }

    #[test]
    fn zip_walks_stay_within_their_bounds(
        entries in proptest::collection::vec(entry(), 0..12),
        max_entries in 1usize..10,
        max_inflated in 1024u64..40_000,
    ) {
        let limits = Limits { max_entries, max_inflated };
        let (seen, read, ended) = walk(&zip(&entries), Format::Zip, limits);
        within_bounds(&seen, read, &ended, entries.len(), limits)?;
    }

    #[test]
    fn corrupt_archives_are_refused_not_followed(
        entries in proptest::collection::vec(entry(), 1..6),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let limits = Limits { max_entries: 16, max_inflated: 1 << 20 };
        for (mut bytes, format) in [(tar_gz(&entries), Format::TarGz), (zip(&entries), Format::Zip)] {
            let at = flip.index(bytes.len());
            bytes[at] ^= 0x5a;
            bytes.truncate(cut.index(bytes.len()).max(1));
            let (seen, read, _) = walk(&bytes, format, limits);
            prop_assert!(seen.len() <= 16);
            prop_assert!(read <= 1 << 20);
        }
    }
}
