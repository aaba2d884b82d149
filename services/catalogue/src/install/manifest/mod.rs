//! Manifests of the three package formats (CONTRACT §4), read into one normalised form with
//! defaults applied. Every problem is collected, named by file and field, never just the first.

use std::collections::BTreeMap;

use pirus_server::options::{parse_duration, parse_size};
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum PackageFormat {
    /// An archive with `manifest.json` (pirus_api 2) and an embedded image.
    V2,
    /// A legacy zip: `manifest.json` with `job`, and `lxc_image.tar.gz`.
    LegacyZip,
    /// A legacy LXD image tarball whose `metadata.yaml` has a `pirus` section.
    LegacyImage,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(super) struct Resources {
    pub cpu: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u32>,
    pub disk_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Manifest {
    pub format: PackageFormat,
    pub pirus_api: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub license: String,
    pub developers: Vec<String>,
    /// Path of the image in the package; `None` when the package is the image.
    pub image: Option<String>,
    pub run: String,
    pub inputs: String,
    pub outputs: String,
    pub logs: String,
    pub databases: String,
    /// Paths of the documents, by document name (form, icon, help, readme, license). In a
    /// legacy image package they are in-container paths, read from `rootfs/`.
    pub documents: BTreeMap<String, String>,
    pub resources: Resources,
    pub network: bool,
    pub timeout_seconds: Option<u64>,
    /// Labels a node must have to run the pipeline (each key with that value); a run's own
    /// selector adds to it. Their syntax is the runner's to check, at submission.
    pub node_selector: BTreeMap<String, String>,
}

/// `node_selector`: an object of at most 64 string values.
fn node_selector(obj: &Map<String, Value>, p: &mut Problems) -> BTreeMap<String, String> {
    let Some(value) = obj.get("node_selector") else {
        return BTreeMap::new();
    };
    let Some(map) = value.as_object() else {
        p.add(
            "node_selector",
            "must be an object of labels (\"disk\": \"ssd\")",
        );
        return BTreeMap::new();
    };
    if map.len() > 64 {
        p.add("node_selector", format!("{} labels; at most 64", map.len()));
    }
    let mut selector = BTreeMap::new();
    for (key, value) in map {
        match value.as_str() {
            Some(v) if key.len() <= 317 && v.len() <= 63 => {
                selector.insert(key.clone(), v.to_owned());
            }
            Some(_) => p.add(
                &format!("node_selector.{key}"),
                "a key is at most 317 bytes and a value 63",
            ),
            None => p.add(&format!("node_selector.{key}"), "must be a string"),
        }
    }
    selector
}

/// Problems found so far, each prefixed with where it was found.
pub(super) struct Problems<'a> {
    pub file: &'a str,
    pub list: Vec<String>,
}

impl Problems<'_> {
    pub(super) fn add(&mut self, field: &str, message: impl std::fmt::Display) {
        self.list.push(format!("{}: {field}: {message}", self.file));
    }
}

const DOCUMENTS: &[&str] = &["help", "readme", "license"];

fn string(obj: &Map<String, Value>, key: &str, p: &mut Problems, required: bool) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            if required {
                p.add(key, "is required");
            }
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() && required => {
            p.add(key, "must not be empty");
            None
        }
        Some(Value::String(s)) if s.len() > 4096 || s.chars().any(char::is_control) => {
            p.add(
                key,
                "must be at most 4096 characters, without control characters",
            );
            None
        }
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(Value::Number(n)) if !required || key == "version" || key == "pirus_api" => {
            Some(n.to_string())
        }
        Some(_) => {
            p.add(key, "must be a string");
            None
        }
    }
}

/// A path inside the package: relative, without `..`.
fn package_path(value: &str, field: &str, p: &mut Problems) -> Option<String> {
    let v = value.trim_start_matches("./");
    if v.is_empty() || v.starts_with('/') || v.split('/').any(|s| s == "..") {
        p.add(
            field,
            format!("'{value}' must be a relative path inside the package, without '..'"),
        );
        None
    } else {
        Some(v.to_owned())
    }
}

/// A path inside the container: absolute, without `..`.
fn container_path(obj: &Map<String, Value>, key: &str, default: &str, p: &mut Problems) -> String {
    let Some(value) = string(obj, key, p, false) else {
        return default.to_owned();
    };
    if !value.starts_with('/') || value == "/" || value.split('/').any(|s| s == "..") {
        p.add(
            key,
            format!("'{value}' must be an absolute path other than '/', without '..'"),
        );
        return default.to_owned();
    }
    value.trim_end_matches('/').to_owned()
}

fn developers(obj: &Map<String, Value>, keys: &[&str], p: &mut Problems) -> Vec<String> {
    let Some((key, value)) = keys.iter().find_map(|k| obj.get(*k).map(|v| (*k, v))) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        p.add(key, "must be a list");
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter().take(100) {
        match item {
            Value::String(s) => out.push(s.clone()),
            // Legacy [["Name", "mail"], ...].
            Value::Array(parts) if parts.iter().all(Value::is_string) => {
                let parts: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
                out.push(match parts.as_slice() {
                    [name, mail] => format!("{name} <{mail}>"),
                    other => other.join(" "),
                });
            }
            _ => p.add(key, "must list strings"),
        }
    }
    out
}

fn resources(obj: &Map<String, Value>, p: &mut Problems) -> Resources {
    let mut r = Resources::default();
    let Some(value) = obj.get("resources") else {
        return r;
    };
    let Some(map) = value.as_object() else {
        p.add("resources", "must be an object");
        return r;
    };
    match map.get("cpu") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n @ 1..=1024) => r.cpu = Some(n as u32),
            _ => p.add(
                "resources.cpu",
                "must be a whole number of CPUs from 1 to 1024",
            ),
        },
    }
    r.memory_bytes = size(map, "memory", p);
    r.disk_bytes = size(map, "disk", p);
    match map.get("processes") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n @ 16..=4_000_000) => r.processes = Some(n as u32),
            _ => p.add(
                "resources.processes",
                "must be a whole number of processes from 16 to 4000000",
            ),
        },
    }
    r
}

/// A size in bytes written like `512MiB` (or a plain positive number of bytes).
fn size(map: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<u64> {
    let field = format!("resources.{key}");
    match map.get(key) {
        None => None,
        Some(Value::String(s)) => match parse_size(s) {
            Ok(0) | Err(_) => {
                p.add(&field, format!("'{s}' is not a size like 512MiB"));
                None
            }
            Ok(bytes) => Some(bytes),
        },
        Some(Value::Number(n)) if n.as_u64().is_some_and(|b| b > 0) => n.as_u64(),
        Some(_) => {
            p.add(&field, "must be a size like 512MiB");
            None
        }
    }
}

/// The parts every format shares, from a JSON object.
fn common(
    format: PackageFormat,
    obj: &Map<String, Value>,
    run_key: &str,
    p: &mut Problems,
) -> Manifest {
    let name = string(obj, "name", p, true).unwrap_or_default();
    if name.len() > 100 {
        p.add("name", "must be at most 100 characters");
    }
    let version = string(obj, "version", p, format == PackageFormat::V2).unwrap_or_default();
    if version.len() > 64 || version.contains(char::is_whitespace) {
        p.add("version", "must be at most 64 characters, without spaces");
    }
    let inputs = container_path(obj, "inputs", "/pipeline/inputs", p);
    let outputs = container_path(obj, "outputs", "/pipeline/outputs", p);
    let logs = container_path(obj, "logs", "/pipeline/logs", p);
    let databases = container_path(obj, "databases", "/pipeline/databases", p);
    let mut seen: Vec<&str> = Vec::new();
    for (key, path) in [
        ("inputs", &inputs),
        ("outputs", &outputs),
        ("logs", &logs),
        ("databases", &databases),
    ] {
        if seen.contains(&path.as_str()) {
            p.add(key, format!("'{path}' is used for another folder too"));
        }
        seen.push(path);
    }
    let network = match obj.get("network") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.add("network", "must be true or false");
            false
        }
    };
    let timeout_seconds = string(obj, "timeout", p, false).and_then(|t| match parse_duration(&t) {
        Ok(d) => Some(d.as_secs().max(1)),
        Err(e) => {
            p.add("timeout", e);
            None
        }
    });
    Manifest {
        format,
        pirus_api: string(obj, "pirus_api", p, false).unwrap_or_else(|| match format {
            PackageFormat::V2 => "2".to_owned(),
            _ => "1".to_owned(),
        }),
        name,
        version,
        description: string(obj, "description", p, false).unwrap_or_default(),
        license: string(obj, "license", p, false).unwrap_or_default(),
        developers: developers(obj, &["developers", "developpers", "contacts"], p),
        image: None,
        run: string(obj, run_key, p, true).unwrap_or_default(),
        inputs,
        outputs,
        logs,
        databases,
        documents: BTreeMap::new(),
        resources: resources(obj, p),
        network,
        timeout_seconds,
        node_selector: node_selector(obj, p),
    }
}

/// `manifest.json`, pirus_api 2 or legacy (with `job` instead of `run`).
pub(super) fn parse_manifest_json(bytes: &[u8], p: &mut Problems) -> Option<Manifest> {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            p.list.push(format!("{}: is not valid JSON: {e}", p.file));
            return None;
        }
    };
    let Some(obj) = value.as_object() else {
        p.list.push(format!("{}: must be a JSON object", p.file));
        return None;
    };
    if obj.contains_key("job") && !obj.contains_key("run") {
        Some(legacy_zip(obj, p))
    } else {
        Some(v2(obj, p))
    }
}

/// A legacy zip's manifest.json: `job` for the command, `lxc_image.tar.gz` for the image.
fn legacy_zip(obj: &Map<String, Value>, p: &mut Problems) -> Manifest {
    if let Some(kind) = obj.get("type").and_then(Value::as_str)
        && kind != "lxd"
    {
        p.add(
            "type",
            format!("'{kind}' containers are not supported (only lxd)"),
        );
    }
    let mut m = common(PackageFormat::LegacyZip, obj, "job", p);
    m.image = Some("lxc_image.tar.gz".to_owned());
    if let Some(docs) = obj.get("documents") {
        match docs.as_object() {
            Some(docs) => {
                for (key, value) in docs {
                    // Legacy "presentation" and "about" pages have no place in Pirus 2.
                    let known = ["form", "icon", "help", "readme", "license"];
                    if let (true, Some(path)) = (known.contains(&key.as_str()), value.as_str())
                        && let Some(path) = package_path(path, &format!("documents.{key}"), p)
                    {
                        m.documents.insert(key.clone(), path);
                    }
                }
            }
            None => p.add("documents", "must be an object"),
        }
    }
    m
}

/// A pirus_api 2 manifest.json.
fn v2(obj: &Map<String, Value>, p: &mut Problems) -> Manifest {
    let mut m = common(PackageFormat::V2, obj, "run", p);
    if m.pirus_api != "2" {
        p.add(
            "pirus_api",
            format!(
                "'{}' is not supported (this catalogue reads \"2\")",
                m.pirus_api
            ),
        );
    }
    m.image = string(obj, "image", p, true).and_then(|i| package_path(&i, "image", p));
    for key in ["form", "icon"] {
        if let Some(path) = string(obj, key, p, false).and_then(|v| package_path(&v, key, p)) {
            m.documents.insert(key.to_owned(), path);
        }
    }
    if let Some(docs) = obj.get("documents") {
        match docs.as_object() {
            Some(docs) => {
                for (key, value) in docs {
                    let field = format!("documents.{key}");
                    if !DOCUMENTS.contains(&key.as_str()) {
                        p.add(
                            &field,
                            "is not a document Pirus knows (help, readme, license)",
                        );
                    } else if let Some(path) = value.as_str() {
                        if let Some(path) = package_path(path, &field, p) {
                            m.documents.insert(key.clone(), path);
                        }
                    } else {
                        p.add(&field, "must be a path");
                    }
                }
            }
            None => p.add("documents", "must be an object"),
        }
    }
    m
}

/// The `pirus` section of a legacy LXD image's `metadata.yaml` (YAML or JSON).
pub(super) fn parse_legacy_metadata(bytes: &[u8], p: &mut Problems) -> Option<Manifest> {
    let value: Value = match serde_yaml_ng::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            p.list.push(format!("{}: is not valid YAML: {e}", p.file));
            return None;
        }
    };
    let Some(obj) = value.get("pirus").and_then(Value::as_object) else {
        p.list.push(format!(
            "{}: has no 'pirus' section: this is an LXD image, not a Pirus package",
            p.file
        ));
        return None;
    };
    let mut m = common(PackageFormat::LegacyImage, obj, "job", p);
    // Documents are in-container paths, read from rootfs/.
    let mut add_document = |name: &str, path: &str, p: &mut Problems| {
        let clean = path.trim_start_matches('/');
        if clean.is_empty() || clean.split('/').any(|s| s == "..") {
            p.add(
                "documents",
                format!("'{path}' must be a path in the image without '..'"),
            );
        } else {
            m.documents
                .insert(name.to_owned(), format!("rootfs/{clean}"));
        }
    };
    for key in ["form", "icon"] {
        if let Some(path) = obj.get(key).and_then(Value::as_str) {
            add_document(key, path, p);
        }
    }
    match obj.get("documents") {
        None | Some(Value::Null) => {}
        Some(Value::Array(paths)) => {
            for path in paths.iter().filter_map(Value::as_str) {
                let base = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
                let name = match base.as_str() {
                    "form.json" => "form",
                    b if b.starts_with("icon.") => "icon",
                    b if b.starts_with("help") => "help",
                    b if b.starts_with("readme") => "readme",
                    b if b.starts_with("license") || b.starts_with("licence") => "license",
                    _ => continue,
                };
                add_document(name, path, p);
            }
        }
        Some(_) => p.add("documents", "must be a list of paths"),
    }
    Some(m)
}

#[cfg(test)]
mod tests;
