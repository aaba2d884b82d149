//! Pipeline packages, black-box: every format installs by itself once uploaded (tus or gRPC),
//! legacy formats too; documents are served; duplicates and hostile packages end in ERROR
//! listing every problem, in bounded time, while the catalogue keeps serving.

use std::time::Duration;

use anyhow::Result;
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use pirus_tests::Channel;
use pirus_tests::{
    Kind, Launch, Process, SERVING, TestDb, health_status,
    http::{Http, b64},
    packages::{self, Format, Item},
};
use sha2::{Digest, Sha256};
use tonic::Code;

type Client = CatalogueServiceClient<Channel>;

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn start(db: &TestDb) -> Result<(Process, Client)> {
    let p = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let c = CatalogueServiceClient::new(p.channel().await?);
    Ok((p, c))
}

/// Uploads `package` with CreatePipeline + WriteUpload; answers the pipeline id.
async fn upload_package(c: &mut Client, name: &str, package: &[u8]) -> Result<String> {
    let pipeline = c
        .create_pipeline(pb::CreatePipelineRequest {
            filename: name.to_owned(),
            size: package.len() as i64,
            sha256: sha256(package),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert!(
        pipeline
            .upload_url
            .ends_with(&format!("/uploads/pipelines/{}", pipeline.id))
    );
    if package.is_empty() {
        // Complete at creation: installing already.
        assert_eq!(
            pb::PipelineStatus::try_from(pipeline.status)?,
            pb::PipelineStatus::Installing
        );
        return Ok(pipeline.id);
    }
    assert_eq!(
        pb::PipelineStatus::try_from(pipeline.status)?,
        pb::PipelineStatus::Uploading
    );
    let messages: Vec<pb::WriteUploadRequest> = package
        .chunks(256 << 10)
        .enumerate()
        .map(|(i, chunk)| pb::WriteUploadRequest {
            upload_id: pipeline.id.clone(),
            offset: (i * (256 << 10)) as i64,
            data: chunk.to_vec().into(),
            ..Default::default()
        })
        .collect();
    let status = c
        .write_upload(tokio_stream::iter(messages))
        .await?
        .into_inner();
    assert!(status.complete);
    Ok(pipeline.id)
}

/// Waits for the install to end; answers the pipeline.
async fn installed(c: &mut Client, id: &str) -> Result<pb::Pipeline> {
    pirus_tests::install_ended(c, id).await
}

fn status(p: &pb::Pipeline) -> pb::PipelineStatus {
    pb::PipelineStatus::try_from(p.status).unwrap()
}

async fn document(
    c: &mut Client,
    id: &str,
    name: &str,
) -> Result<pb::PipelineDocument, tonic::Status> {
    c.get_pipeline_document(pb::GetPipelineDocumentRequest {
        pipeline_id: id.to_owned(),
        name: name.to_owned(),
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_package_uploaded_with_tus_installs_by_itself() -> Result<()> {
    let db = TestDb::create().await?;
    let (p, mut c) = start(&db).await?;
    let image = packages::image()?;
    let package = packages::package(Format::TarGz, "hello", "1.0.0", &image)?;

    let http = Http::default();
    let meta = format!(
        "filename {},sha256 {}",
        b64(b"hello.tar.gz"),
        b64(sha256(&package).as_bytes())
    );
    let length = package.len().to_string();
    let r = http
        .tus(
            "POST",
            &p.http_url("/uploads/pipelines/"),
            &[("upload-length", &length), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let before = c
        .get_pipeline(pb::GetPipelineRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(status(&before), pb::PipelineStatus::Uploading);
    let half = package.len() / 2;
    assert_eq!(
        http.patch(&location, 0, package[..half].to_vec(), &[])
            .await?
            .status,
        204
    );
    assert_eq!(
        http.patch(&location, half as u64, package[half..].to_vec(), &[])
            .await?
            .status,
        204
    );

    let pipeline = installed(&mut c, &id).await?;
    assert_eq!(
        status(&pipeline),
        pb::PipelineStatus::Ready,
        "{}",
        pipeline.error_message
    );
    assert_eq!(
        (pipeline.name.as_str(), pipeline.version.as_str()),
        ("hello", "1.0.0")
    );
    assert_eq!(pipeline.description, "says hello");
    assert_eq!(pipeline.developers, vec!["Ann Example <ann@example.org>"]);
    assert_eq!(pipeline.pirus_api, "2");
    assert_eq!(pipeline.sha256, sha256(&package));
    assert_eq!(pipeline.size, package.len() as i64);
    assert_eq!(pipeline.upload_offset, package.len() as i64);
    assert!(pipeline.installed_at.is_some());

    // The form, normalised from draft-03.
    let form: serde_json::Value = serde_json::from_str(&pipeline.form_json)?;
    assert_eq!(
        form["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(form["required"], serde_json::json!(["threads"]));
    assert_eq!(form["properties"]["reference"]["x-pirus-enum"], "databases");

    // The image: a READY file of kind IMAGE holding exactly the embedded tarball.
    assert_eq!(pipeline.image_sha256, sha256(&image));
    let image_file = c
        .get_file(pb::GetFileRequest {
            id: pipeline.image_file_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        pb::FileKind::try_from(image_file.kind)?,
        pb::FileKind::Image
    );
    assert_eq!(
        pb::FileStatus::try_from(image_file.status)?,
        pb::FileStatus::Ready
    );
    assert_eq!(
        pirus_tests::read_file(&mut c, &pipeline.image_file_id).await?,
        image
    );
    let package_file = c
        .get_file(pb::GetFileRequest {
            id: pipeline.package_file_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        pb::FileKind::try_from(package_file.kind)?,
        pb::FileKind::Package
    );

    // Documents.
    for (name, content_type, content) in [
        ("icon", "image/png", packages::PNG.to_vec()),
        (
            "help",
            "text/html; charset=utf-8",
            b"<h1>Help</h1>".to_vec(),
        ),
        (
            "readme",
            "text/markdown; charset=utf-8",
            b"# Hello\n".to_vec(),
        ),
        (
            "license",
            "text/plain; charset=utf-8",
            b"MIT License\n".to_vec(),
        ),
    ] {
        let d = document(&mut c, &id, name).await?;
        assert_eq!(
            (d.content_type.as_str(), d.content.to_vec()),
            (content_type, content),
            "{name}"
        );
    }
    let form_doc = document(&mut c, &id, "form").await?;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&form_doc.content)?,
        form
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&document(&mut c, &id, "manifest").await?.content)?;
    assert_eq!(manifest["run"], "/pipeline/run.sh");
    assert_eq!(manifest["resources"]["memory_bytes"], 256 << 20);
    let status_ = document(&mut c, &id, "secrets").await.unwrap_err();
    assert_eq!(status_.code(), Code::InvalidArgument);
    assert!(status_.message().starts_with("name"));

    // Listing, with filters.
    let list = c
        .list_pipelines(pb::ListPipelinesRequest {
            name: "hello".into(),
            status: pb::PipelineStatus::Ready as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        list.pipelines
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let none = c
        .list_pipelines(pb::ListPipelinesRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(none.pipelines.is_empty());
    Ok(())
}

#[tokio::test]
async fn every_format_installs_and_a_repeated_name_and_version_fails() -> Result<()> {
    let db = TestDb::create().await?;
    let (_p, mut c) = start(&db).await?;
    let image = packages::image()?;
    for (format, version) in [
        (Format::Zip, "1.0.0"),
        (Format::TarGz, "2.0.0"),
        (Format::TarXz, "3.0.0"),
    ] {
        let package = packages::package(format, "multi", version, &image)?;
        let id = upload_package(&mut c, "pkg", &package).await?;
        let p = installed(&mut c, &id).await?;
        assert_eq!(
            status(&p),
            pb::PipelineStatus::Ready,
            "{format:?}: {}",
            p.error_message
        );
        // The same image is stored once: every pipeline's image has one digest.
        assert_eq!(p.image_sha256, sha256(&image));
    }
    // A package whose entries sit in a single top-level folder, named with ./ prefixes.
    let nested = packages::archive(
        Format::TarGz,
        &[
            ("./multi-4/", Item::Dir),
            (
                "./multi-4/manifest.json",
                Item::File(
                    packages::manifest("multi", "4.0.0")
                        .replace(r#""form": "form.json","#, "")
                        .into_bytes(),
                ),
            ),
            ("./multi-4/image.tar.gz", Item::File(image.clone())),
            ("./multi-4/icon.png", Item::File(packages::PNG.to_vec())),
            ("./multi-4/doc/help.html", Item::File(b"h".to_vec())),
            ("./multi-4/README.md", Item::File(b"r".to_vec())),
            ("./multi-4/LICENSE", Item::File(b"l".to_vec())),
        ],
    )?;
    let id = upload_package(&mut c, "nested.tar.gz", &nested).await?;
    let p = installed(&mut c, &id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);
    // No form: no parameters.
    let form: serde_json::Value = serde_json::from_str(&p.form_json)?;
    assert_eq!(form["properties"], serde_json::json!({}));

    let again = packages::package(Format::Zip, "multi", "1.0.0", &image)?;
    let id = upload_package(&mut c, "again", &again).await?;
    let p = installed(&mut c, &id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Error);
    assert!(
        p.error_message.contains("already exists"),
        "{}",
        p.error_message
    );
    Ok(())
}

#[tokio::test]
async fn install_pipeline_installs_a_file_uploaded_earlier() -> Result<()> {
    let db = TestDb::create().await?;
    let (_p, mut c) = start(&db).await?;
    let package = packages::package(Format::Zip, "from-file", "1", &packages::image()?)?;
    let file = c
        .create_file(pb::CreateFileRequest {
            filename: "p.zip".into(),
            size: package.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let early = c
        .install_pipeline(pb::InstallPipelineRequest {
            file_id: file.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    c.write_upload(tokio_stream::iter([pb::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: package.clone().into(),
        ..Default::default()
    }]))
    .await?;
    let p = c
        .install_pipeline(pb::InstallPipelineRequest {
            file_id: file.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status(&p), pb::PipelineStatus::Installing);
    assert_eq!(p.package_file_id, file.id);
    let p = installed(&mut c, &p.id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);
    // The file is the pipeline's now: it cannot be deleted while the pipeline exists.
    let busy = c
        .delete_file(pb::DeleteFileRequest {
            id: file.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    for (id, code) in [
        ("bad", Code::InvalidArgument),
        ("0190b0c8-0000-7000-8000-000000000000", Code::NotFound),
    ] {
        let s = c
            .install_pipeline(pb::InstallPipelineRequest { file_id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(s.code(), code);
    }
    Ok(())
}

#[tokio::test]
async fn legacy_packages_install() -> Result<()> {
    let db = TestDb::create().await?;
    let (_p, mut c) = start(&db).await?;

    // Gen-1/2: the LXD image itself, with a `pirus` section and documents in rootfs/.
    let metadata = packages::metadata_yaml(
        r#""pirus": {"name": "Legacy Image", "version": "1.0.0", "pirus_api": "1.0.0", "license": "AGPL",
          "developers": ["Olivier"], "job": "/pipeline/job/run.sh", "databases": "/pipeline/db",
          "documents": ["/pipeline/form.json", "pipeline/icon.png", "/pipeline/help.html"]}
"#,
    );
    let form = br#"{"type": "object", "properties": {"file": {"type": "string", "enum": "__PIRUS_INPUT_FILES__", "required": true}}}"#;
    let entries = packages::image_entries(
        metadata,
        &[
            ("rootfs/pipeline/form.json", Item::File(form.to_vec())),
            (
                "rootfs/pipeline/icon.png",
                Item::File(packages::PNG.to_vec()),
            ),
            (
                "rootfs/pipeline/help.html",
                Item::File(b"<p>old</p>".to_vec()),
            ),
        ],
    )?;
    let refs: Vec<(&str, Item)> = entries
        .iter()
        .map(|(n, i)| (n.as_str(), i.clone()))
        .collect();
    let legacy_image = packages::archive(Format::TarXz, &refs)?;
    let id = upload_package(&mut c, "legacy.tar.xz", &legacy_image).await?;
    let p = installed(&mut c, &id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);
    assert_eq!(
        (p.name.as_str(), p.pirus_api.as_str()),
        ("Legacy Image", "1.0.0")
    );
    // The package is the image.
    assert_eq!(p.image_sha256, sha256(&legacy_image));
    let form: serde_json::Value = serde_json::from_str(&p.form_json)?;
    assert_eq!(form["required"], serde_json::json!(["file"]));
    assert_eq!(form["properties"]["file"]["x-pirus-enum"], "input_files");
    assert_eq!(
        document(&mut c, &id, "help").await?.content.as_ref(),
        b"<p>old</p>"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&document(&mut c, &id, "manifest").await?.content)?;
    assert_eq!(
        (manifest["run"].as_str(), manifest["databases"].as_str()),
        (Some("/pipeline/job/run.sh"), Some("/pipeline/db"))
    );

    // Gen-3: a zip with manifest.json (job) and lxc_image.tar.gz.
    let zip = packages::archive(
        Format::Zip,
        &[
            ("manifest.json", Item::File(br#"{"name": "Legacy Zip", "version": "1.8", "type": "lxd", "job": "/pipeline/run.sh",
                "developpers": [["Ann", "ann@example.org"]],
                "documents": {"form": "form.json", "help": "doc/help.html", "presentation": "doc/prez.html"}}"#.to_vec())),
            ("lxc_image.tar.gz", Item::File(packages::image()?)),
            ("form.json", Item::File(b" ".to_vec())),
            ("doc/help.html", Item::File(b"help".to_vec())),
            ("doc/prez.html", Item::File(b"prez".to_vec())),
        ],
    )?;
    let id = upload_package(&mut c, "legacy.zip", &zip).await?;
    let p = installed(&mut c, &id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);
    assert_eq!(p.developers, vec!["Ann <ann@example.org>"]);
    assert_eq!(p.image_sha256, sha256(&packages::image()?));
    Ok(())
}

#[tokio::test]
async fn hostile_packages_end_in_error_listing_every_problem() -> Result<()> {
    let db = TestDb::create().await?;
    let (p, mut c) = start(&db).await?;
    let image = packages::image()?;
    let manifest = packages::manifest("bad", "1").replace(r#""form": "form.json","#, "").replace(r#""icon": "icon.png","#, "").replace(r#""documents": {"help": "doc/help.html", "readme": "README.md", "license": "LICENSE"},"#, "");
    let good = |extra: Vec<(&'static str, Item)>| -> Vec<(&'static str, Item)> {
        let mut entries = vec![
            ("manifest.json", Item::File(manifest.clone().into_bytes())),
            ("image.tar.gz", Item::File(image.clone())),
        ];
        entries.extend(extra);
        entries
    };
    let zeros = vec![0u8; 64 << 20];
    let mut truncated = packages::package(Format::TarGz, "cut", "1", &image)?;
    truncated.truncate(truncated.len() / 2);
    let many: Vec<(String, Item)> = (0..10_001)
        .map(|i| (format!("f{i}"), Item::File(Vec::new())))
        .collect();
    let many_refs: Vec<(&str, Item)> = many.iter().map(|(n, i)| (n.as_str(), i.clone())).collect();
    let not_lxd = packages::archive(Format::TarGz, &[("hello.txt", Item::File(b"hi".to_vec()))])?;
    // Incompressible padding, so that it is the manifest bound that trips, not the bomb one.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..600 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big_manifest = format!(r#"{{"name": "x", "pad": "{}"}}"#, hex::encode(noise));
    let legacy_link_doc = {
        let entries = packages::image_entries(
            packages::metadata_yaml(
                "\"pirus\": {\"name\": \"l\", \"job\": \"/run\", \"documents\": [\"/pipeline/form.json\"]}\n",
            ),
            &[(
                "rootfs/pipeline/form.json",
                Item::Symlink("/etc/passwd".into()),
            )],
        )?;
        let refs: Vec<(&str, Item)> = entries
            .iter()
            .map(|(n, i)| (n.as_str(), i.clone()))
            .collect();
        packages::archive(Format::TarGz, &refs)?
    };

    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("path traversal", packages::archive(Format::TarGz, &good(vec![("../evil.sh", Item::File(b"x".to_vec()))]))?, vec!["entry '../evil.sh': goes up"]),
        ("absolute path", packages::archive(Format::TarGz, &good(vec![("/etc/cron.d/x", Item::File(b"x".to_vec()))]))?, vec!["entry '/etc/cron.d/x': is an absolute path"]),
        ("symlink", packages::archive(Format::TarGz, &good(vec![("link", Item::Symlink("/etc/shadow".into()))]))?, vec!["entry 'link': is a link"]),
        ("hard link", packages::archive(Format::TarGz, &good(vec![("hard", Item::HardLink("manifest.json".into()))]))?, vec!["entry 'hard': is a link"]),
        ("zip symlink", packages::archive(Format::Zip, &good(vec![("zlink", Item::Symlink("../../x".into()))]))?, vec!["entry 'zlink': is a link"]),
        // 64 MiB of zeros compress about 1000:1; the bound is 100:1 outside the image.
        ("zip bomb", packages::archive(Format::Zip, &[("manifest.json", Item::File(manifest.clone().into_bytes())), ("zeros", Item::File(zeros.clone()))])?, vec!["inflates to more than"]),
        ("tar.gz bomb", packages::archive(Format::TarGz, &[("manifest.json", Item::File(manifest.clone().into_bytes())), ("zeros", Item::File(zeros.clone()))])?, vec!["inflates to more than"]),
        ("tar.xz bomb", packages::archive(Format::TarXz, &[("zeros", Item::File(zeros.clone()))])?, vec!["inflates to more than"]),
        ("truncated", truncated, vec!["not a readable archive"]),
        ("not an archive", b"just some text, not a package".to_vec(), vec!["not a .zip, .tar.gz or .tar.xz archive"]),
        ("empty", Vec::new(), vec!["not a .zip, .tar.gz or .tar.xz archive"]),
        ("invalid JSON", packages::archive(Format::Zip, &[("manifest.json", Item::File(b"{\"name\": ".to_vec()))])?, vec!["manifest.json: is not valid JSON"]),
        ("no manifest", packages::archive(Format::Zip, &[("readme.txt", Item::File(b"hi".to_vec()))])?, vec!["no manifest.json"]),
        ("many bad fields", packages::archive(Format::Zip, &[("manifest.json", Item::File(br#"{"pirus_api": "2", "outputs": "out", "network": 1, "resources": {"cpu": -1}}"#.to_vec()))])?,
            vec!["name: is required", "version: is required", "image: is required", "run: is required", "outputs", "network", "resources.cpu"]),
        ("oversized manifest", packages::archive(Format::Zip, &[("manifest.json", Item::File(big_manifest.clone().into_bytes()))])?, vec!["manifest.json: is larger than 1 MiB"]),
        ("missing image", packages::archive(Format::Zip, &[("manifest.json", Item::File(manifest.clone().into_bytes()))])?, vec!["image: 'image.tar.gz' is not in the package"]),
        ("image not LXD", packages::archive(Format::Zip, &[("manifest.json", Item::File(manifest.clone().into_bytes())), ("image.tar.gz", Item::File(not_lxd))])?, vec!["has no metadata.yaml", "has no rootfs/"]),
        ("image not a tarball", packages::archive(Format::Zip, &[("manifest.json", Item::File(manifest.clone().into_bytes())), ("image.tar.gz", Item::File(b"text".to_vec()))])?, vec!["is not a .tar.gz or .tar.xz LXD image"]),
        ("invalid form", packages::archive(Format::Zip, &[
            ("manifest.json", Item::File(packages::manifest("f", "1").replace(r#""icon": "icon.png","#, "").replace(r#""documents": {"help": "doc/help.html", "readme": "README.md", "license": "LICENSE"},"#, "").into_bytes())),
            ("image.tar.gz", Item::File(image.clone())),
            ("form.json", Item::File(br#"{"properties": {"n": {"type": "integr"}}}"#.to_vec())),
        ])?, vec!["form.json: /properties/n"]),
        ("too many entries", packages::archive(Format::TarGz, &many_refs)?, vec!["more than 10000 entries"]),
        ("legacy document is a link", legacy_link_doc, vec!["form: 'rootfs/pipeline/form.json' is not a regular file"]),
        ("several problems at once", packages::archive(Format::TarGz, &[
            ("manifest.json", Item::File(br#"{"pirus_api": "2", "version": "1", "image": "image.tar.gz", "run": "x"}"#.to_vec())),
            ("image.tar.gz", Item::File(image.clone())),
            ("../up", Item::File(b"x".to_vec())),
            ("ln", Item::Symlink("x".into())),
        ])?, vec!["name: is required", "entry '../up': goes up", "entry 'ln': is a link"]),
    ];

    for (what, package, expected) in cases {
        let started = std::time::Instant::now();
        let id = upload_package(&mut c, what, &package).await?;
        let pipeline = installed(&mut c, &id).await?;
        assert_eq!(
            status(&pipeline),
            pb::PipelineStatus::Error,
            "{what} was accepted"
        );
        for needle in expected {
            assert!(
                pipeline.error_message.contains(needle),
                "{what}: '{needle}' not in:\n{}",
                pipeline.error_message
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} took {:?}",
            started.elapsed()
        );
        assert!(pipeline.image_file_id.is_empty(), "{what}: no image stored");
    }
    assert_eq!(health_status(p.channel().await?, "").await?, SERVING);
    // Nothing of the refused images is left in the data folder.
    let uploads = std::fs::read_dir(p.dir.join("data/uploads"))?.count();
    assert_eq!(uploads, 0, "partial files left behind");
    Ok(())
}

/// An image is counted on bytes actually inflated, as the package holds it and unpacked (what
/// every runner's LXD would write): a small package that inflates past `--max-image-size` ends
/// ERROR naming the limit, leaves nothing behind, and a normal package still installs.
#[tokio::test]
async fn images_that_inflate_past_the_image_limit_are_refused() -> Result<()> {
    let db = TestDb::create().await?;
    let p = Launch::new(Kind::Catalogue, &db.url)
        .args(["--max-image-size", "8MiB"])
        .start()
        .await?;
    let mut c = CatalogueServiceClient::new(p.channel().await?);
    let zeros = vec![0u8; 64 << 20];
    let entries = packages::image_entries(
        packages::metadata_yaml(""),
        &[("rootfs/zeros", Item::File(zeros.clone()))],
    )?;
    let refs: Vec<(&str, Item)> = entries
        .iter()
        .map(|(n, i)| (n.as_str(), i.clone()))
        .collect();
    let unpacks_big = packages::archive(Format::TarGz, &refs)?;
    let manifest = packages::manifest("bomb", "1")
        .replace(r#""form": "form.json","#, "")
        .replace(r#""icon": "icon.png","#, "")
        .replace(
            r#""documents": {"help": "doc/help.html", "readme": "README.md", "license": "LICENSE"},"#,
            "",
        );
    let cases = [
        (
            "an image that unpacks past the limit",
            packages::archive(
                Format::TarGz,
                &[
                    ("manifest.json", Item::File(manifest.clone().into_bytes())),
                    ("image.tar.gz", Item::File(unpacks_big)),
                ],
            )?,
            "unpacks to more than 8MiB",
        ),
        (
            "an image entry that inflates past the limit",
            packages::archive(
                Format::Zip,
                &[
                    ("manifest.json", Item::File(manifest.clone().into_bytes())),
                    ("image.tar.gz", Item::File(zeros)),
                ],
            )?,
            // Refused while the archive is listed, before the image is looked at.
            "inflates to more than",
        ),
    ];
    for (what, package, expected) in cases {
        assert!(package.len() < 4 << 20, "{what}: a small package");
        let id = upload_package(&mut c, what, &package).await?;
        let pipeline = installed(&mut c, &id).await?;
        assert_eq!(status(&pipeline), pb::PipelineStatus::Error, "{what}");
        assert!(
            pipeline.error_message.contains(expected),
            "{what}: {}",
            pipeline.error_message
        );
        assert!(pipeline.image_file_id.is_empty(), "{what}: no image stored");
    }
    let uploads = std::fs::read_dir(p.dir.join("data/uploads"))?.count();
    assert_eq!(uploads, 0, "partial files left behind");
    let good = packages::package(Format::TarGz, "fine", "1", &packages::image()?)?;
    let id = upload_package(&mut c, "fine", &good).await?;
    let pipeline = installed(&mut c, &id).await?;
    assert_eq!(
        status(&pipeline),
        pb::PipelineStatus::Ready,
        "{}",
        pipeline.error_message
    );
    assert_eq!(health_status(p.channel().await?, "").await?, SERVING);
    Ok(())
}

#[tokio::test]
async fn delete_pipeline_uninstalls_unless_runs_are_unfinished() -> Result<()> {
    let db = TestDb::create().await?;
    let (_p, mut c) = start(&db).await?;
    let package = packages::package(Format::TarGz, "del", "1", &packages::image()?)?;
    let id = upload_package(&mut c, "del.tar.gz", &package).await?;
    let p = installed(&mut c, &id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);

    // A run of it that has not finished (the runner service writes these rows).
    let sql = db.client().await?;
    let run = uuid::Uuid::now_v7().to_string();
    sql.execute(
        "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, image_sha256, name, status, config)
         VALUES ($1::text::uuid, $2::text::uuid, 'del', '1', $3, 'r', 'waiting', '{}')",
        &[&run, &id, &p.image_sha256],
    )
    .await?;
    let busy = c
        .delete_pipeline(pb::DeletePipelineRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(
        busy.message().contains("unfinished runs"),
        "{}",
        busy.message()
    );
    sql.execute(
        "UPDATE runs SET status = 'done' WHERE id = $1::text::uuid",
        &[&run],
    )
    .await?;

    let deleted = c
        .delete_pipeline(pb::DeletePipelineRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(deleted.id, id);
    assert_eq!(
        c.get_pipeline(pb::GetPipelineRequest { id: id.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for file in [p.image_file_id, p.package_file_id] {
        let gone = c
            .get_file(pb::GetFileRequest { id: file })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    assert_eq!(
        document(&mut c, &id, "form").await.unwrap_err().code(),
        Code::NotFound
    );
    // Once uninstalled, the same name and version installs again.
    let id = upload_package(&mut c, "del.tar.gz", &package).await?;
    assert_eq!(
        status(&installed(&mut c, &id).await?),
        pb::PipelineStatus::Ready
    );
    Ok(())
}

/// A restart keeps installed pipelines and their documents; an install a dead process left
/// INSTALLING is resumed by the next catalogue (here the row is put back to INSTALLING, as a
/// crash between the package's completion and the install's end leaves it).
#[tokio::test]
async fn a_restart_keeps_pipelines_and_resumes_unfinished_installs() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = pirus_tests::tempdir()?;
    let args = ["--data-dir", dir.to_str().unwrap()];
    let mut p = Launch::new(Kind::Catalogue, &db.url)
        .args(args)
        .start()
        .await?;
    let mut c = CatalogueServiceClient::new(p.channel().await?);
    let image = packages::image()?;
    let kept = upload_package(
        &mut c,
        "kept",
        &packages::package(Format::Zip, "kept", "1", &image)?,
    )
    .await?;
    assert_eq!(
        status(&installed(&mut c, &kept).await?),
        pb::PipelineStatus::Ready
    );
    let redo = upload_package(
        &mut c,
        "redo",
        &packages::package(Format::Zip, "redo", "1", &image)?,
    )
    .await?;
    assert_eq!(
        status(&installed(&mut c, &redo).await?),
        pb::PipelineStatus::Ready
    );
    p.signal("TERM")?;
    assert!(p.wait_exit(Duration::from_secs(10)).await?.success());

    let sql = db.client().await?;
    sql.execute(
        "UPDATE pipelines SET status = 'installing', image_file_id = NULL WHERE id = $1::text::uuid",
        &[&redo],
    )
    .await?;
    sql.execute(
        "DELETE FROM files WHERE kind = 'image' AND name = 'redo-1.image'",
        &[],
    )
    .await?;

    let p = Launch::new(Kind::Catalogue, &db.url)
        .args(args)
        .start()
        .await?;
    let mut c = CatalogueServiceClient::new(p.channel().await?);
    let kept = c
        .get_pipeline(pb::GetPipelineRequest { id: kept })
        .await?
        .into_inner();
    assert_eq!(status(&kept), pb::PipelineStatus::Ready);
    assert_eq!(
        document(&mut c, &kept.id, "icon").await?.content.as_ref(),
        packages::PNG
    );
    assert_eq!(
        pirus_tests::read_file(&mut c, &kept.image_file_id).await?,
        image
    );
    let redone = installed(&mut c, &redo).await?;
    assert_eq!(
        status(&redone),
        pb::PipelineStatus::Ready,
        "{}",
        redone.error_message
    );
    assert_eq!(
        pirus_tests::read_file(&mut c, &redone.image_file_id).await?,
        image
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Installs have slots of their own: with every transfer slot held by an upload in progress
/// (`--max-transfers 1`, a PATCH whose body is held back), a package still installs, at once.
#[tokio::test]
async fn an_install_runs_while_uploads_hold_every_transfer_slot() -> Result<()> {
    let db = TestDb::create().await?;
    let p = Launch::new(Kind::Catalogue, &db.url)
        .args(["--max-transfers", "1"])
        .start()
        .await?;
    let mut c = CatalogueServiceClient::new(p.channel().await?);
    let package = packages::package(Format::TarGz, "slots", "1", &packages::image()?)?;
    let file = c
        .create_file(pb::CreateFileRequest {
            filename: "p.tar.gz".into(),
            size: package.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    c.write_upload(tokio_stream::iter([pb::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: package.into(),
        ..Default::default()
    }]))
    .await?;
    // An upload in progress takes the one transfer slot, and keeps it.
    let metadata = format!("filename {}", b64(b"big.bin"));
    let created = Http::default()
        .tus(
            "POST",
            &p.http_url("/uploads/files/"),
            &[("upload-length", "1000"), ("upload-metadata", &metadata)],
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let token = pirus_tests::identity::recall(&db.url).unwrap_or_default();
    let location = created.header("location").unwrap_or_default().to_owned();
    let _held = pirus_tests::http::held_patch(p.addrs().http, &location, &token, 1000, 10).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let another = Http::default()
        .patch(&location, 0, vec![b'y'; 10], &[])
        .await?;
    assert_eq!(
        another.status, 503,
        "the transfer slot is not taken: {}",
        another.body
    );

    let started = std::time::Instant::now();
    let installing = c
        .install_pipeline(pb::InstallPipelineRequest { file_id: file.id })
        .await?
        .into_inner();
    let p = installed(&mut c, &installing.id).await?;
    assert_eq!(status(&p), pb::PipelineStatus::Ready, "{}", p.error_message);
    // Not after the held upload gave up its slot (an idle transfer is cut after 30 s).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the install waited {:?} for a transfer slot",
        started.elapsed()
    );
    Ok(())
}
