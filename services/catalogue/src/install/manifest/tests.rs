//! Manifests of every format, read and refused.

use super::*;

fn problems() -> Problems<'static> {
    Problems {
        file: "manifest.json",
        list: Vec::new(),
    }
}

#[test]
fn v2_defaults_and_fields() {
    let mut p = problems();
    let m = parse_manifest_json(
        br#"{"pirus_api": "2", "name": "hello", "version": "1.0.0", "image": "./image.tar.gz",
             "run": "/pipeline/run.sh", "form": "form.json",
             "documents": {"readme": "README.md"},
             "resources": {"cpu": 2, "memory": "512MiB", "processes": 100, "disk": "1GiB"},
             "timeout": "12h"}"#,
        &mut p,
    )
    .unwrap();
    assert!(p.list.is_empty(), "{:?}", p.list);
    assert_eq!(m.format, PackageFormat::V2);
    assert_eq!(m.image.as_deref(), Some("image.tar.gz"));
    assert_eq!(m.inputs, "/pipeline/inputs");
    assert_eq!(m.documents["form"], "form.json");
    assert_eq!(
        m.resources,
        Resources {
            cpu: Some(2),
            memory_bytes: Some(512 << 20),
            processes: Some(100),
            disk_bytes: Some(1 << 30),
        }
    );
    assert_eq!(m.timeout_seconds, Some(12 * 3600));
    assert!(!m.network);
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let mut p = problems();
    parse_manifest_json(
        br#"{"pirus_api": "7", "version": "1 0", "image": "../escape.tar.gz",
             "outputs": "relative", "logs": "/pipeline/inputs", "network": "yes",
             "resources": {"cpu": 0, "memory": "lots", "processes": 1, "disk": "-"},
             "timeout": "soon",
             "documents": {"secrets": "x"}}"#,
        &mut p,
    )
    .unwrap();
    let text = p.list.join("\n");
    for field in [
        "name: is required",
        "run: is required",
        "pirus_api",
        "version",
        "image",
        "outputs",
        "logs",
        "network",
        "resources.cpu",
        "resources.memory",
        "resources.processes",
        "resources.disk",
        "timeout",
        "documents.secrets",
    ] {
        assert!(text.contains(field), "{field} not reported in:\n{text}");
    }
}

#[test]
fn invalid_json_is_one_clear_problem() {
    let mut p = problems();
    assert!(parse_manifest_json(b"{name: hello", &mut p).is_none());
    assert!(
        p.list[0].starts_with("manifest.json: is not valid JSON"),
        "{:?}",
        p.list
    );
}

#[test]
fn legacy_zip_manifest() {
    let mut p = problems();
    let m = parse_manifest_json(
        br#"{"name": "Old", "version": "1.8", "type": "lxd", "job": "/pipeline/job/run.sh",
             "developpers": [["Ann", "ann@example.org"]],
             "documents": {"form": "form.json", "presentation": "doc/prez.html"}}"#,
        &mut p,
    )
    .unwrap();
    assert!(p.list.is_empty(), "{:?}", p.list);
    assert_eq!(m.format, PackageFormat::LegacyZip);
    assert_eq!(m.run, "/pipeline/job/run.sh");
    assert_eq!(m.image.as_deref(), Some("lxc_image.tar.gz"));
    assert_eq!(m.developers, vec!["Ann <ann@example.org>"]);
    assert_eq!(m.documents.keys().collect::<Vec<_>>(), vec!["form"]);
}

#[test]
fn legacy_image_metadata() {
    let mut p = Problems {
        file: "metadata.yaml",
        list: Vec::new(),
    };
    let m = parse_legacy_metadata(
        br#"architecture: x86_64
"pirus": {"name":"Pirus Test","version":"1.0.0","job":"/pipeline/job/run.sh",
      "databases":"/pipeline/db","documents":["/pipeline/form.json","pipeline/icon.png"]}
"#,
        &mut p,
    )
    .unwrap();
    assert!(p.list.is_empty(), "{:?}", p.list);
    assert_eq!(m.format, PackageFormat::LegacyImage);
    assert_eq!(m.databases, "/pipeline/db");
    assert_eq!(m.documents["form"], "rootfs/pipeline/form.json");
    assert_eq!(m.documents["icon"], "rootfs/pipeline/icon.png");
    let mut p = Problems {
        file: "metadata.yaml",
        list: Vec::new(),
    };
    assert!(parse_legacy_metadata(b"architecture: x86_64\n", &mut p).is_none());
    assert!(p.list[0].contains("no 'pirus' section"));
}
