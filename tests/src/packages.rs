//! Builds pipeline packages and LXD images for tests: well-formed ones in every format, and
//! hostile ones (links, traversal, bombs, truncation). Images are LXD unified tarballs
//! (`metadata.yaml` + `rootfs/`) made from Debian's busybox-static; nothing is downloaded.

use std::io::Write;

use anyhow::{Context, Result};

/// One archive entry.
#[derive(Clone, Debug)]
pub enum Item {
    File(Vec<u8>),
    /// A file with the given Unix mode.
    Exec(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    TarGz,
    TarXz,
}

/// Builds an archive of `entries`, in order.
pub fn archive(format: Format, entries: &[(&str, Item)]) -> Result<Vec<u8>> {
    match format {
        Format::Zip => zip(entries),
        Format::TarGz => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar(entries)?)?;
            Ok(encoder.finish()?)
        }
        Format::TarXz => {
            let mut out = Vec::new();
            let mut writer =
                lzma_rust2::XzWriter::new(&mut out, lzma_rust2::XzOptions::with_preset(1))?;
            writer.write_all(&tar(entries)?)?;
            writer.finish()?;
            Ok(out)
        }
    }
}

/// A plain tar stream of `entries`.
pub fn tar(entries: &[(&str, Item)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, item) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        // Names are written raw (set_path refuses '..' and absolute paths, which the hostile
        // packages need).
        let bytes = name.as_bytes();
        anyhow::ensure!(bytes.len() < 100, "test entry names stay short");
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        match item {
            Item::File(data) | Item::Exec(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if matches!(item, Item::Exec(_)) {
                    0o755
                } else {
                    0o644
                });
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, data.as_slice())?;
            }
            Item::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty())?;
            }
            Item::Symlink(target) | Item::HardLink(target) => {
                header.set_entry_type(if matches!(item, Item::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_mode(0o777);
                header.set_size(0);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                header.set_cksum();
                builder.append(&header, std::io::empty())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn zip(entries: &[(&str, Item)]) -> Result<Vec<u8>> {
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, item) in entries {
        match item {
            Item::File(data) | Item::Exec(data) => {
                writer.start_file(*name, options)?;
                writer.write_all(data)?;
            }
            Item::Dir => writer.add_directory(*name, options)?,
            Item::Symlink(target) | Item::HardLink(target) => {
                writer.add_symlink(*name, target, options)?
            }
        }
    }
    Ok(writer.finish()?.into_inner())
}

/// The busybox-static binary, which every test image runs.
pub fn busybox() -> Result<Vec<u8>> {
    for path in ["/bin/busybox", "/usr/bin/busybox"] {
        if let Ok(bytes) = std::fs::read(path) {
            return Ok(bytes);
        }
    }
    anyhow::bail!("busybox-static is not installed (apt-get install busybox-static)")
}

/// `metadata.yaml` of an LXD image, with optional extra YAML (a legacy `pirus` section).
pub fn metadata_yaml(extra: &str) -> Vec<u8> {
    format!(
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: pirus test image\n  os: busybox\n{extra}"
    )
    .into_bytes()
}

/// PID 1 of a test container: stays up until LXD stops it (SIGPWR) or it is killed.
pub const INIT: &str =
    "#!/bin/sh\ntrap 'exit 0' PWR TERM INT\nwhile :; do /bin/busybox sleep 3600 & wait $!; done\n";

/// The entries of a minimal LXD image: busybox and its links, the folders a pipeline uses, and
/// `extra` files under rootfs/.
pub fn image_entries(metadata: Vec<u8>, extra: &[(&str, Item)]) -> Result<Vec<(String, Item)>> {
    let mut entries: Vec<(String, Item)> = vec![
        ("metadata.yaml".into(), Item::File(metadata)),
        ("rootfs".into(), Item::Dir),
        ("rootfs/bin".into(), Item::Dir),
        ("rootfs/bin/busybox".into(), Item::Exec(busybox()?)),
        ("rootfs/bin/sh".into(), Item::Symlink("busybox".into())),
        ("rootfs/bin/cat".into(), Item::Symlink("busybox".into())),
        ("rootfs/sbin".into(), Item::Dir),
        (
            "rootfs/sbin/init".into(),
            Item::Exec(INIT.as_bytes().to_vec()),
        ),
        ("rootfs/etc".into(), Item::Dir),
        ("rootfs/tmp".into(), Item::Dir),
        ("rootfs/pipeline".into(), Item::Dir),
    ];
    // Every applet as a link, so that a run's shell finds sed, grep, wc... on its PATH.
    let list = std::process::Command::new("busybox")
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !matches!(applet, "" | "busybox" | "sh" | "cat" | "init") && !applet.contains('/') {
            entries.push((
                format!("rootfs/bin/{applet}"),
                Item::Symlink("busybox".into()),
            ));
        }
    }
    for (name, item) in extra {
        entries.push(((*name).to_owned(), item.clone()));
    }
    Ok(entries)
}

/// A minimal LXD image as a `.tar.gz`.
pub fn image() -> Result<Vec<u8>> {
    let entries = image_entries(metadata_yaml(""), &[])?;
    let refs: Vec<(&str, Item)> = entries
        .iter()
        .map(|(n, i)| (n.as_str(), i.clone()))
        .collect();
    archive(Format::TarGz, &refs).context("image")
}

pub const DRAFT_03_FORM: &str = r#"{
  "$schema": "http://json-schema.org/draft-03/schema#",
  "type": "object",
  "properties": {
    "threads": {"type": "integer", "required": true, "minimum": 1, "maximum": 64, "default": 2},
    "reference": {"type": "string", "enum": "__GENOMES_REFS__"},
    "input": {"type": "any", "enum": "__PIRUS_INPUT_FILES__"}
  }
}"#;

/// A small PNG (a 1x1 transparent pixel).
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// The manifest of a well-formed pirus_api 2 package named `name` `version`.
pub fn manifest(name: &str, version: &str) -> String {
    format!(
        r#"{{
  "pirus_api": "2",
  "name": "{name}",
  "version": "{version}",
  "description": "says hello",
  "license": "MIT",
  "developers": ["Ann Example <ann@example.org>"],
  "image": "image.tar.gz",
  "run": "/pipeline/run.sh",
  "form": "form.json",
  "icon": "icon.png",
  "documents": {{"help": "doc/help.html", "readme": "README.md", "license": "LICENSE"}},
  "resources": {{"cpu": 1, "memory": "256MiB"}},
  "timeout": "1h"
}}"#
    )
}

/// A well-formed pirus_api 2 package in `format`, with `image` embedded.
pub fn package(format: Format, name: &str, version: &str, image: &[u8]) -> Result<Vec<u8>> {
    let manifest = manifest(name, version);
    archive(
        format,
        &[
            ("manifest.json", Item::File(manifest.into_bytes())),
            ("image.tar.gz", Item::File(image.to_vec())),
            ("form.json", Item::File(DRAFT_03_FORM.as_bytes().to_vec())),
            ("icon.png", Item::File(PNG.to_vec())),
            ("doc/", Item::Dir),
            ("doc/help.html", Item::File(b"<h1>Help</h1>".to_vec())),
            ("README.md", Item::File(b"# Hello\n".to_vec())),
            ("LICENSE", Item::File(b"MIT License\n".to_vec())),
        ],
    )
}
