//! Catalogue uploads and files, black-box: tus 1.0 over HTTP (raw requests and the stock tuspy
//! client), the gRPC twins, resumption across protocols, one writer at a time across processes,
//! durability across kill -9, expiry, and content-addressed storage.

use std::time::Duration;

use anyhow::{Context, Result};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use pirus_tests::Channel;
use pirus_tests::{
    Kind, Launch, Process, TestDb, eventually,
    http::{Http, b64, held_patch},
    tempdir,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn catalogue(db: &str) -> Launch {
    Launch::new(Kind::Catalogue, db)
}

/// A catalogue keeping its data in `data_dir` (for tests that look at the files), with
/// `extra` options.
fn catalogue_on(db: &str, data_dir: &std::path::Path, extra: &[&str]) -> Launch {
    catalogue(db)
        .args(["--data-dir", data_dir.to_str().expect("a UTF-8 path")])
        .args(extra.iter().copied())
}

use pirus_tests::random_bytes as data;

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn files_url(p: &Process) -> String {
    p.http_url("/uploads/files/")
}

async fn client(p: &Process) -> Result<CatalogueServiceClient<Channel>> {
    Ok(CatalogueServiceClient::new(p.channel().await?))
}

/// tus POST of a file upload; answers its Location.
async fn create(http: &Http, p: &Process, length: u64, name: &str) -> Result<String> {
    let metadata = format!("filename {}", b64(name.as_bytes()));
    let length = length.to_string();
    let r = http
        .tus(
            "POST",
            &files_url(p),
            &[("upload-length", &length), ("upload-metadata", &metadata)],
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    Ok(r.header("location").expect("Location").to_owned())
}

/// A tus creation with Upload-Defer-Length; answers its Location.
async fn create_deferred(http: &Http, p: &Process, name: &str) -> Result<String> {
    let meta = format!("filename {}", b64(name.as_bytes()));
    let r = http
        .tus(
            "POST",
            &files_url(p),
            &[("upload-defer-length", "1"), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(r.status, 201);
    Ok(r.header("location").context("Location")?.to_owned())
}

fn id_of(location: &str) -> String {
    location.rsplit('/').next().unwrap().to_owned()
}

async fn get_file(
    c: &mut CatalogueServiceClient<Channel>,
    id: &str,
) -> Result<pb::File, tonic::Status> {
    c.get_file(pb::GetFileRequest { id: id.to_owned() })
        .await
        .map(|r| r.into_inner())
}

async fn read_all(
    c: &mut CatalogueServiceClient<Channel>,
    id: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>> {
    let mut stream = c
        .read_file(pb::ReadFileRequest {
            file_id: id.to_owned(),
            offset,
            limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert_eq!(
            chunk.offset,
            offset + out.len() as i64,
            "chunk offsets are contiguous"
        );
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// WriteUpload of `data` at `offset`, in messages of `chunk` bytes.
async fn write_upload(
    c: &mut CatalogueServiceClient<Channel>,
    id: &str,
    offset: u64,
    data: &[u8],
    chunk: usize,
) -> Result<pb::UploadStatus, tonic::Status> {
    let messages: Vec<pb::WriteUploadRequest> = data
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, part)| pb::WriteUploadRequest {
            upload_id: if i == 0 { id.to_owned() } else { String::new() },
            offset: (offset + (i * chunk) as u64) as i64,
            data: part.to_vec().into(),
            finish_write: false,
        })
        .collect();
    c.write_upload(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

fn status_of(file: &pb::File) -> pb::FileStatus {
    pb::FileStatus::try_from(file.status).unwrap()
}

#[tokio::test]
async fn tus_answers_every_status_code_of_the_contract() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url)
        .args(["--max-upload-size", "64MiB"])
        .start()
        .await?;
    let http = Http::default();
    let mut c = client(&p).await?;

    let r = http
        .send("OPTIONS", &files_url(&p), &[], Vec::new())
        .await?;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("tus-version"), Some("1.0.0"));
    let extensions = r.header("tus-extension").unwrap_or_default().to_owned();
    for ext in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    ] {
        assert!(
            extensions.split(',').any(|e| e == ext),
            "{ext} missing from {extensions}"
        );
    }
    // The pipelines endpoint advertises what works there: a package is uploaded whole (or in
    // PATCH chunks), never concatenated.
    let r = http
        .send(
            "OPTIONS",
            &files_url(&p).replace("/uploads/files/", "/uploads/pipelines/"),
            &[],
            Vec::new(),
        )
        .await?;
    assert_eq!(r.status, 204);
    let pipeline_extensions = r.header("tus-extension").unwrap_or_default().to_owned();
    assert!(pipeline_extensions.split(',').any(|e| e == "creation"));
    assert!(
        !pipeline_extensions.split(',').any(|e| e == "concatenation"),
        "{pipeline_extensions}"
    );
    let algorithms = r
        .header("tus-checksum-algorithm")
        .unwrap_or_default()
        .to_owned();
    for algo in ["sha1", "sha256", "md5"] {
        assert!(algorithms.split(',').any(|a| a == algo), "{algo} missing");
    }
    assert_eq!(
        r.header("tus-max-size"),
        Some((64 * MIB).to_string().as_str())
    );

    // 412: no or another Tus-Resumable.
    let r = http
        .send(
            "POST",
            &files_url(&p),
            &[("upload-length", "10")],
            Vec::new(),
        )
        .await?;
    assert_eq!(r.status, 412);
    assert_eq!(r.header("tus-version"), Some("1.0.0"));
    let r = http
        .send(
            "POST",
            &files_url(&p),
            &[("tus-resumable", "0.2.2"), ("upload-length", "1")],
            Vec::new(),
        )
        .await?;
    assert_eq!(r.status, 412);

    // 400: the metadata key filename is required; length and defer-length are exclusive.
    let r = http
        .tus("POST", &files_url(&p), &[("upload-length", "10")])
        .await?;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("filename"), "{}", r.body);
    let meta = format!("filename {}", b64(b"x"));
    let r = http
        .tus(
            "POST",
            &files_url(&p),
            &[
                ("upload-length", "1"),
                ("upload-defer-length", "1"),
                ("upload-metadata", &meta),
            ],
        )
        .await?;
    assert_eq!(r.status, 400);
    // 413: over --max-upload-size.
    let too_big = (64 * MIB + 1).to_string();
    let r = http
        .tus(
            "POST",
            &files_url(&p),
            &[("upload-length", &too_big), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(r.status, 413);

    // 201 with an absolute Location under the public URL (default: the bound address).
    let location = create(&http, &p, 10, "digits.txt").await?;
    assert!(location.starts_with(&files_url(&p)), "{location}");
    let id = id_of(&location);

    let r = http.tus("HEAD", &location, &[]).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.offset(), 0);
    assert_eq!(r.header("upload-length"), Some("10"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("upload-expires").is_some());
    assert_eq!(
        r.header("upload-metadata"),
        Some(format!("filename {}", b64(b"digits.txt")).as_str())
    );
    assert_eq!(
        http.send("HEAD", &location, &[], Vec::new()).await?.status,
        412
    );

    // 415: a PATCH must carry application/offset+octet-stream.
    let r = http
        .send(
            "PATCH",
            &location,
            &[
                ("tus-resumable", "1.0.0"),
                ("upload-offset", "0"),
                ("content-type", "text/plain"),
            ],
            "0123",
        )
        .await?;
    assert_eq!(r.status, 415);
    // 409: the offset is not the upload's.
    assert_eq!(http.patch(&location, 3, "3456", &[]).await?.status, 409);
    // 204 and the new offset.
    let r = http.patch(&location, 0, "01234", &[]).await?;
    assert_eq!((r.status, r.offset()), (204, 5));
    // 460: a checksum mismatch discards the chunk.
    let wrong = format!("sha1 {}", b64(&sha1::Sha1::digest(b"nope")));
    let r = http
        .patch(&location, 5, "56789", &[("upload-checksum", &wrong)])
        .await?;
    assert_eq!(r.status, 460, "{}", r.body);
    assert_eq!(http.tus("HEAD", &location, &[]).await?.offset(), 5);
    // 400 on the PATCH that completes an upload whose bytes do not match the announced
    // sha256 (the file is then ERROR).
    let meta = format!(
        "filename {},sha256 {}",
        b64(b"announced"),
        b64(sha256(b"abcd").as_bytes())
    );
    let created = http
        .tus(
            "POST",
            &files_url(&p),
            &[("upload-length", "4"), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let announced = created.header("location").expect("Location").to_owned();
    let r = http.patch(&announced, 0, "abce", &[]).await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("sha256 mismatch"), "{}", r.body);
    // 400: an algorithm we do not offer.
    let r = http
        .patch(
            &location,
            5,
            "56789",
            &[("upload-checksum", "crc32 AAAAAA==")],
        )
        .await?;
    assert_eq!(r.status, 400);
    // 413: past the upload's length.
    let r = http.patch(&location, 5, "5678901", &[]).await?;
    assert_eq!(r.status, 413);
    assert_eq!(http.tus("HEAD", &location, &[]).await?.offset(), 5);
    // The right checksum (md5) is accepted and completes the upload.
    let right = format!("md5 {}", b64(&md5::Md5::digest(b"56789")));
    let r = http
        .patch(&location, 5, "56789", &[("upload-checksum", &right)])
        .await?;
    assert_eq!((r.status, r.offset()), (204, 10));
    let file = get_file(&mut c, &id).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    assert_eq!(file.sha256, sha256(b"0123456789"));
    assert_eq!(file.upload_url, location);
    // Writing to a complete upload: past its length (413), or at a stale offset (409); an
    // empty PATCH at its end answers like the one that completed it.
    assert_eq!(http.patch(&location, 10, "x", &[]).await?.status, 413);
    assert_eq!(http.patch(&location, 5, "56789", &[]).await?.status, 409);
    let r = http.patch(&location, 10, "", &[]).await?;
    assert_eq!((r.status, r.offset()), (204, 10));

    // 404: unknown, malformed, or addressed through the other endpoint.
    let unknown = format!("{}{}", files_url(&p), uuid::Uuid::now_v7());
    assert_eq!(http.tus("HEAD", &unknown, &[]).await?.status, 404);
    assert_eq!(
        http.tus("HEAD", &format!("{}not-an-id", files_url(&p)), &[])
            .await?
            .status,
        404
    );
    let via_pipelines = p.http_url(&format!("/uploads/pipelines/{id}"));
    assert_eq!(http.tus("HEAD", &via_pipelines, &[]).await?.status, 404);
    assert_eq!(
        http.tus("HEAD", &p.http_url("/uploads/nothing/x"), &[])
            .await?
            .status,
        404
    );

    // 204 on termination, then 404.
    let other = create(&http, &p, 4, "gone.txt").await?;
    assert_eq!(http.patch(&other, 0, "ab", &[]).await?.status, 204);
    assert_eq!(http.tus("DELETE", &other, &[]).await?.status, 204);
    assert_eq!(http.tus("HEAD", &other, &[]).await?.status, 404);
    assert_eq!(
        get_file(&mut c, &id_of(&other)).await.unwrap_err().code(),
        Code::NotFound
    );
    // A complete upload's termination deletes its file.
    assert_eq!(http.tus("DELETE", &location, &[]).await?.status, 204);
    assert_eq!(
        get_file(&mut c, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    Ok(())
}

/// WriteUpload ends an upload of deferred length with `finish_write` (as ByteStream does):
/// the length is where the message ends, the file completes with its digest. On an upload of
/// known length it must end exactly there, and is refused, naming the field, anywhere else.
#[tokio::test]
async fn write_upload_finishes_a_deferred_length_upload() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let id = id_of(&create_deferred(&http, &p, "streamed.bin").await?);
    let content = data(300_000, 7);

    // Two transfers: the first leaves the length open, the second ends it.
    let status = write_upload(&mut c, &id, 0, &content[..100_000], 64 << 10).await?;
    assert_eq!(
        (status.offset, status.size, status.complete),
        (100_000, 0, false)
    );
    let message = |offset: usize, end: usize, finish_write: bool| pb::WriteUploadRequest {
        upload_id: id.clone(),
        offset: offset as i64,
        data: content[offset..end].to_vec().into(),
        finish_write,
    };
    let messages = vec![
        message(100_000, 200_000, false),
        message(200_000, 300_000, true),
    ];
    let status = c
        .write_upload(tokio_stream::iter(messages))
        .await?
        .into_inner();
    assert_eq!(
        (status.offset, status.size, status.complete),
        (300_000, 300_000, true)
    );
    let file = get_file(&mut c, &id).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    assert_eq!(
        (file.size, file.sha256.as_str()),
        (300_000, sha256(&content).as_str())
    );
    let head = http
        .tus("HEAD", &p.http_url(&format!("/uploads/files/{id}")), &[])
        .await?;
    assert_eq!(head.header("upload-length"), Some("300000"));

    // Known length: finish_write short of it is refused (the bytes before it kept), at it
    // completes.
    let file = c
        .create_file(pb::CreateFileRequest {
            filename: "known.bin".into(),
            size: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    let early = pb::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: b"abcd".to_vec().into(),
        finish_write: true,
    };
    let e = c
        .write_upload(tokio_stream::iter(vec![early]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("finish_write") && e.message().contains("10 bytes"),
        "{}",
        e.message()
    );
    let status = c
        .get_upload_status(pb::GetUploadStatusRequest {
            upload_id: file.id.clone(),
        })
        .await?
        .into_inner();
    let kept = status.offset as usize;
    let rest = pb::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: kept as i64,
        data: b"abcdefghij"[kept..].to_vec().into(),
        finish_write: true,
    };
    let status = c
        .write_upload(tokio_stream::iter(vec![rest]))
        .await?
        .into_inner();
    assert!(status.complete);
    let file = get_file(&mut c, &file.id).await?;
    assert_eq!(file.sha256, sha256(b"abcdefghij"));
    Ok(())
}

#[tokio::test]
async fn tus_creation_with_upload_deferred_length_and_concatenation() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;

    // creation-with-upload.
    let meta = format!("filename {},tags {}", b64(b"hello.txt"), b64(b"a,b"));
    let r = http
        .send(
            "POST",
            &files_url(&p),
            &[
                ("tus-resumable", "1.0.0"),
                ("upload-length", "5"),
                ("upload-metadata", &meta),
                ("content-type", "application/offset+octet-stream"),
            ],
            "hello",
        )
        .await?;
    assert_eq!((r.status, r.offset()), (201, 5), "{}", r.body);
    let file = get_file(&mut c, &id_of(r.header("location").unwrap())).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    assert_eq!(file.tags, vec!["a", "b"]);
    assert_eq!(file.name, "hello.txt");

    // creation-defer-length: the length comes with a later PATCH.
    let location = create_deferred(&http, &p, "later.txt").await?;
    let head = http.tus("HEAD", &location, &[]).await?;
    assert_eq!(head.header("upload-defer-length"), Some("1"));
    assert!(head.header("upload-length").is_none());
    let r = http
        .patch(&location, 0, "abc", &[("upload-length", "6")])
        .await?;
    assert_eq!((r.status, r.offset()), (204, 3));
    assert_eq!(
        http.tus("HEAD", &location, &[])
            .await?
            .header("upload-length"),
        Some("6")
    );
    assert_eq!(
        http.patch(&location, 3, "def", &[("upload-length", "7")])
            .await?
            .status,
        400
    );
    assert_eq!(http.patch(&location, 3, "def", &[]).await?.status, 204);
    assert_eq!(read_all(&mut c, &id_of(&location), 0, 0).await?, b"abcdef");

    // concatenation: two partial uploads, then a final one made of them.
    let mut parts = Vec::new();
    for piece in ["foo", "barbaz"] {
        let len = piece.len().to_string();
        let r = http
            .tus(
                "POST",
                &files_url(&p),
                &[("upload-length", &len), ("upload-concat", "partial")],
            )
            .await?;
        assert_eq!(r.status, 201, "{}", r.body);
        let part = r.header("location").unwrap().to_owned();
        assert_eq!(
            http.tus("HEAD", &part, &[]).await?.header("upload-concat"),
            Some("partial")
        );
        assert_eq!(
            http.patch(&part, 0, piece.to_owned(), &[]).await?.status,
            204
        );
        parts.push(part);
    }
    let unfinished = http
        .tus(
            "POST",
            &files_url(&p),
            &[("upload-length", "9"), ("upload-concat", "partial")],
        )
        .await?;
    let unfinished = unfinished.header("location").unwrap().to_owned();
    let meta = format!("filename {}", b64(b"joined.txt"));
    let bad = format!("final;{} {unfinished}", parts[0]);
    let r = http
        .tus(
            "POST",
            &files_url(&p),
            &[("upload-concat", &bad), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    let concat = format!("final;{} {}", parts[0], parts[1]);
    let r = http
        .tus(
            "POST",
            &files_url(&p),
            &[("upload-concat", &concat), ("upload-metadata", &meta)],
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").unwrap().to_owned();
    let head = http.tus("HEAD", &location, &[]).await?;
    assert_eq!(
        (head.offset(), head.header("upload-length")),
        (9, Some("9"))
    );
    assert!(head.header("upload-concat").unwrap().starts_with("final;"));
    assert_eq!(http.patch(&location, 9, "x", &[]).await?.status, 403);
    let file = get_file(&mut c, &id_of(&location)).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    assert_eq!(file.sha256, sha256(b"foobarbaz"));
    assert_eq!(read_all(&mut c, &file.id, 0, 0).await?, b"foobarbaz");
    Ok(())
}

/// A final upload that repeats a part, names a part of the other endpoint or too many parts is
/// refused at once (400 naming Upload-Concat), and the catalogue keeps serving.
#[tokio::test]
async fn hostile_concatenations_are_refused_at_once() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let meta = format!("filename {}", b64(b"joined.txt"));
    let partial = |url: String| {
        let http = &http;
        async move {
            let r = http
                .tus(
                    "POST",
                    &url,
                    &[("upload-length", "3"), ("upload-concat", "partial")],
                )
                .await?;
            assert_eq!(r.status, 201, "{}", r.body);
            let part = r.header("location").unwrap().to_owned();
            assert_eq!(http.patch(&part, 0, "abc", &[]).await?.status, 204);
            anyhow::Ok(part)
        }
    };
    let part = partial(files_url(&p)).await?;
    let other = partial(p.http_url("/uploads/pipelines/")).await?;
    let other_id = other.rsplit('/').next().unwrap().to_owned();
    let many = vec![part.as_str(); 1000].join(" ");
    let cases = [
        (format!("final;{many}"), "at most 256"),
        (format!("final;{part} {part}"), "listed more than once"),
        (
            format!("final;{part} {}", files_url(&p) + &other_id),
            "not of /uploads/files/",
        ),
    ];
    for (header, why) in cases {
        let started = std::time::Instant::now();
        let r = http
            .tus(
                "POST",
                &files_url(&p),
                &[("upload-concat", &header), ("upload-metadata", &meta)],
            )
            .await?;
        assert_eq!(r.status, 400, "{why}: {}", r.body);
        assert!(
            r.body.contains("Upload-Concat") && r.body.contains(why),
            "{}",
            r.body
        );
        eprintln!("refused ({why}) in {:?}", started.elapsed());
    }
    // Nothing was created, and a good final upload still works.
    let r = http
        .tus(
            "POST",
            &files_url(&p),
            &[
                ("upload-concat", &format!("final;{part}")),
                ("upload-metadata", &meta),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    Ok(())
}

#[tokio::test]
async fn grpc_files_api_uploads_reads_lists_and_deletes() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url)
        .args(["--max-upload-size", "64MiB"])
        .start()
        .await?;
    let mut c = client(&p).await?;

    // Every bad field is INVALID_ARGUMENT naming it.
    let base = pb::CreateFileRequest {
        filename: "a.txt".into(),
        size: 3,
        ..Default::default()
    };
    for (request, field) in [
        (
            pb::CreateFileRequest {
                filename: String::new(),
                ..base.clone()
            },
            "filename",
        ),
        (
            pb::CreateFileRequest {
                size: -1,
                ..base.clone()
            },
            "size",
        ),
        (
            pb::CreateFileRequest {
                sha256: "xyz".into(),
                ..base.clone()
            },
            "sha256",
        ),
        (
            pb::CreateFileRequest {
                kind: pb::FileKind::Image as i32,
                ..base.clone()
            },
            "kind",
        ),
        (
            pb::CreateFileRequest {
                kind: 99,
                ..base.clone()
            },
            "kind",
        ),
        (
            pb::CreateFileRequest {
                kind: pb::FileKind::Output as i32,
                ..base.clone()
            },
            "source_run_id",
        ),
        (
            pb::CreateFileRequest {
                source_run_id: "run-1".into(),
                ..base.clone()
            },
            "source_run_id",
        ),
        (
            pb::CreateFileRequest {
                tags: vec![String::new()],
                ..base.clone()
            },
            "tags",
        ),
    ] {
        let status = c.create_file(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = c
        .create_file(pb::CreateFileRequest {
            size: (64 * MIB + 1) as i64,
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    for (id, code) in [
        ("nope", Code::InvalidArgument),
        ("0190b0c8-0000-7000-8000-000000000000", Code::NotFound),
    ] {
        let status = get_file(&mut c, id).await.unwrap_err();
        assert_eq!(status.code(), code);
        if code == Code::InvalidArgument {
            assert!(status.message().starts_with("id"), "{}", status.message());
        }
    }

    // A 3 MiB file over WriteUpload, verified against its announced digest.
    let content = data(3 * MIB as usize + 17, 1);
    let file = c
        .create_file(pb::CreateFileRequest {
            filename: "reads.fq".into(),
            size: content.len() as i64,
            sha256: sha256(&content),
            tags: vec!["sample-1".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(status_of(&file), pb::FileStatus::Uploading);
    assert_eq!(file.upload_url, format!("{}{}", files_url(&p), file.id));
    let status = write_upload(&mut c, &file.id, 0, &content[..MIB as usize], 256 << 10).await?;
    assert_eq!((status.offset, status.complete), (MIB as i64, false));
    let got = c
        .get_upload_status(pb::GetUploadStatusRequest {
            upload_id: file.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!((got.offset, got.size), (MIB as i64, content.len() as i64));
    // A message at the wrong offset: ABORTED with the real offset.
    let status = write_upload(&mut c, &file.id, 5, b"zz", 2)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert!(
        status.message().contains(&format!("offset {MIB}")),
        "{}",
        status.message()
    );
    let status = write_upload(
        &mut c,
        &file.id,
        MIB,
        &content[MIB as usize..],
        MIB as usize,
    )
    .await?;
    assert!(status.complete);
    let ready = get_file(&mut c, &file.id).await?;
    assert_eq!(status_of(&ready), pb::FileStatus::Ready);
    assert_eq!(ready.sha256, sha256(&content));
    assert_eq!(ready.upload_offset, content.len() as i64);
    // Writing to a complete upload: ABORTED.
    let status = write_upload(&mut c, &file.id, content.len() as u64, b"more", 4)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);

    // ReadFile: whole, ranged, and past the end.
    assert_eq!(read_all(&mut c, &file.id, 0, 0).await?, content);
    assert_eq!(
        read_all(&mut c, &file.id, 1000, 5000).await?,
        &content[1000..6000]
    );
    assert_eq!(
        read_all(&mut c, &file.id, (content.len() - 3) as i64, 100).await?,
        &content[content.len() - 3..]
    );
    let status = read_all(&mut c, &file.id, content.len() as i64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(
        status.downcast_ref::<tonic::Status>().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );

    // An announced digest that does not match ends in error, with the reason: the call that
    // completes the upload says so, and the file is ERROR.
    let wrong = c
        .create_file(pb::CreateFileRequest {
            filename: "w".into(),
            size: 4,
            sha256: sha256(b"abcd"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let refused = write_upload(&mut c, &wrong.id, 0, b"abce", 4)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("sha256 mismatch"),
        "{}",
        refused.message()
    );
    let failed = get_file(&mut c, &wrong.id).await?;
    assert_eq!(status_of(&failed), pb::FileStatus::Error);
    assert!(
        failed.error_message.contains("sha256 mismatch"),
        "{}",
        failed.error_message
    );
    let status = read_all(&mut c, &wrong.id, 0, 0).await.unwrap_err();
    assert_eq!(
        status.downcast_ref::<tonic::Status>().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );

    // An empty file is ready at once.
    let empty = c
        .create_file(pb::CreateFileRequest {
            filename: "empty".into(),
            size: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(status_of(&empty), pb::FileStatus::Ready);
    assert_eq!(empty.sha256, sha256(b""));
    assert_eq!(read_all(&mut c, &empty.id, 0, 0).await?, b"");

    // The same request_id returns the same file.
    let once = pb::CreateFileRequest {
        filename: "once".into(),
        size: 1,
        request_id: "req-1".into(),
        ..Default::default()
    };
    let a = c.create_file(once.clone()).await?.into_inner();
    let b = c.create_file(once.clone()).await?.into_inner();
    assert_eq!(a.id, b.id);
    // The same key for another file: ALREADY_EXISTS, naming the key and what differs.
    let reused = c
        .create_file(pb::CreateFileRequest { size: 2, ..once })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert!(
        reused.message().contains("req-1") && reused.message().contains("size"),
        "{}",
        reused.message()
    );

    // Paging: every file exactly once, in creation order, and a last page that is exactly
    // full carries no token (no empty page after it); filters.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_files(pb::ListFilesRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        sizes.push(page.files.len());
        seen.extend(page.files.into_iter().map(|f| f.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec![
            file.id.clone(),
            wrong.id.clone(),
            empty.id.clone(),
            a.id.clone()
        ]
    );
    assert_eq!(sizes, [2, 2], "four files in pages of two");
    let ready_files = c
        .list_files(pb::ListFilesRequest {
            status: pb::FileStatus::Ready as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        ready_files
            .files
            .iter()
            .map(|f| f.id.clone())
            .collect::<Vec<_>>(),
        vec![file.id.clone(), empty.id.clone()]
    );
    let status = c
        .list_files(pb::ListFilesRequest {
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("page_token"),
        "{}",
        status.message()
    );

    // Delete, then gone.
    let deleted = c
        .delete_file(pb::DeleteFileRequest {
            id: file.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(deleted.id, file.id);
    assert_eq!(
        get_file(&mut c, &file.id).await.unwrap_err().code(),
        Code::NotFound
    );
    Ok(())
}

#[tokio::test]
async fn an_upload_resumes_across_protocols() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let content = data(2 * MIB as usize, 7);
    let half = MIB as usize;

    // tus first, gRPC after.
    let location = create(&http, &p, content.len() as u64, "a.bin").await?;
    assert_eq!(
        http.patch(&location, 0, content[..half].to_vec(), &[])
            .await?
            .offset(),
        half as u64
    );
    let id = id_of(&location);
    let status = c
        .get_upload_status(pb::GetUploadStatusRequest {
            upload_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status.offset, half as i64);
    assert!(
        write_upload(&mut c, &id, half as u64, &content[half..], 300_000)
            .await?
            .complete
    );
    assert_eq!(read_all(&mut c, &id, 0, 0).await?, content);

    // gRPC first, tus after.
    let file = c
        .create_file(pb::CreateFileRequest {
            filename: "b.bin".into(),
            size: content.len() as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    write_upload(&mut c, &file.id, 0, &content[..half], 100_000).await?;
    let head = http.tus("HEAD", &file.upload_url, &[]).await?;
    assert_eq!(head.offset(), half as u64);
    let r = http
        .patch(&file.upload_url, half as u64, content[half..].to_vec(), &[])
        .await?;
    assert_eq!((r.status, r.offset()), (204, content.len() as u64));
    assert_eq!(get_file(&mut c, &file.id).await?.sha256, sha256(&content));
    Ok(())
}

#[tokio::test]
async fn identical_files_share_one_blob_and_deleting_one_keeps_the_other() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    let p = catalogue_on(&db.url, &data_dir, &[]).start().await?;
    let mut c = client(&p).await?;
    let content = data(100_000, 3);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let f = c
            .create_file(pb::CreateFileRequest {
                filename: name.into(),
                size: content.len() as i64,
                ..Default::default()
            })
            .await?
            .into_inner();
        write_upload(&mut c, &f.id, 0, &content, 64 << 10).await?;
        ids.push(f.id);
    }
    let blob = data_dir
        .join("blobs")
        .join(&sha256(&content)[..2])
        .join(sha256(&content));
    assert!(blob.exists(), "{} missing", blob.display());
    let blobs: usize = walk_files(&data_dir.join("blobs"));
    assert_eq!(blobs, 1, "identical content is stored once");

    c.delete_file(pb::DeleteFileRequest { id: ids[0].clone() })
        .await?;
    assert_eq!(read_all(&mut c, &ids[1], 0, 0).await?, content);
    assert!(blob.exists());
    c.delete_file(pb::DeleteFileRequest { id: ids[1].clone() })
        .await?;
    eventually(
        Duration::from_secs(10),
        "the blob is removed with its last file",
        || {
            let blob = blob.clone();
            async move { !blob.exists() }
        },
    )
    .await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    if e.path().is_dir() {
                        walk_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Opens a PATCH by hand and sends its headers, announcing `length` body bytes.
async fn raw_patch(
    p: &Process,
    path: &str,
    offset: u64,
    length: u64,
) -> Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(p.addrs().http).await?;
    let request = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n\
         Content-Length: {length}\r\nAuthorization: Bearer {}\r\n\r\n",
        p.addrs().http,
        p.token.as_deref().unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

fn path_of(location: &str) -> String {
    let start = location.find("/uploads/").unwrap();
    location[start..].to_owned()
}

#[tokio::test]
async fn a_cut_off_transfer_keeps_what_arrived_and_shows_pause() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let content = data(8 * MIB as usize, 11);
    let location = create(&http, &p, content.len() as u64, "cut.bin").await?;
    let id = id_of(&location);

    let mut stream = raw_patch(&p, &path_of(&location), 0, content.len() as u64).await?;
    stream.write_all(&content[..5 * MIB as usize]).await?;
    stream.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    eventually(
        Duration::from_secs(10),
        "the cut-off transfer shows PAUSE",
        || {
            let mut c = c.clone();
            let id = id.clone();
            async move {
                get_file(&mut c, &id)
                    .await
                    .map(|f| status_of(&f) == pb::FileStatus::Pause)
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    let offset = http.tus("HEAD", &location, &[]).await?.offset();
    assert_eq!(offset, 5 * MIB, "every byte that arrived is kept");
    let r = http
        .patch(&location, offset, content[offset as usize..].to_vec(), &[])
        .await?;
    assert_eq!(r.status, 204);
    let file = get_file(&mut c, &id).await?;
    assert_eq!(
        (status_of(&file), file.sha256),
        (pb::FileStatus::Ready, sha256(&content))
    );
    Ok(())
}

/// A sender slower than a block per commit interval still has its bytes made durable every
/// few seconds, not only at 4 MiB boundaries or at the end of the transfer.
#[tokio::test]
async fn a_slow_transfer_is_committed_while_it_runs() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let content = data(3 * MIB as usize, 17);
    let location = create(&http, &p, content.len() as u64, "slow.bin").await?;
    let id = id_of(&location);

    let mut stream = raw_patch(&p, &path_of(&location), 0, content.len() as u64).await?;
    stream.write_all(&content[..MIB as usize]).await?;
    stream.flush().await?;
    // Past the 5 s commit interval, a little more arrives: the transfer commits all of it.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let sent = MIB + 1000;
    stream
        .write_all(&content[MIB as usize..sent as usize])
        .await?;
    stream.flush().await?;
    eventually(
        Duration::from_secs(5),
        "HEAD reports the bytes of the running transfer",
        || {
            let (http, location) = (http.clone(), location.clone());
            async move {
                http.tus("HEAD", &location, &[])
                    .await
                    .is_ok_and(|r| r.offset() == sent)
            }
        },
    )
    .await?;
    stream.write_all(&content[sent as usize..]).await?;
    stream.flush().await?;
    let mut response = vec![0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut response).await?;
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    let file = get_file(&mut c, &id).await?;
    assert_eq!(
        (status_of(&file), file.sha256),
        (pb::FileStatus::Ready, sha256(&content))
    );
    Ok(())
}

/// A tmpfs mounted for one test (tests run as root); unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let options = format!("size={size}");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(path)
            .status()?;
        anyhow::ensure!(status.success(), "mount tmpfs on {}", path.display());
        Ok(Self(path.to_owned()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        let options = format!("remount,size={size}");
        let status = std::process::Command::new("mount")
            .args(["-o", &options])
            .arg(&self.0)
            .status()?;
        anyhow::ensure!(status.success(), "remount {}", self.0.display());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A data folder that fills up mid-upload: the client is told so (507 / RESOURCE_EXHAUSTED),
/// the upload keeps its durable bytes, other RPCs are served meanwhile, and the upload
/// completes intact once space is freed.
#[tokio::test]
async fn a_full_data_folder_keeps_the_durable_bytes_and_the_upload_resumes() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    // Room for 3.5 MiB.
    let mount = Tmpfs::mount(&data_dir, "3584k")?;
    let p = catalogue_on(&db.url, &data_dir, &[]).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let content = data(6 * MIB as usize, 23);
    let location = create(&http, &p, content.len() as u64, "full.bin").await?;
    let id = id_of(&location);

    // 1 MiB per PATCH until the folder is full.
    let mut offset = 0u64;
    let refused = loop {
        let chunk = content[offset as usize..(offset + MIB) as usize].to_vec();
        let r = http.patch(&location, offset, chunk, &[]).await?;
        if r.status != 204 {
            break r;
        }
        offset = r.offset();
        assert!(offset < content.len() as u64, "the folder never filled");
    };
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(refused.body.contains("storage is full"), "{}", refused.body);
    assert_eq!(offset, 3 * MIB, "three whole chunks fitted");
    assert_eq!(
        http.tus("HEAD", &location, &[]).await?.offset(),
        offset,
        "the durable bytes stay"
    );

    // The gRPC twin says it too; the catalogue keeps answering.
    let other = c
        .create_file(pb::CreateFileRequest {
            filename: "other.bin".into(),
            size: MIB as i64,
            ..Default::default()
        })
        .await?
        .into_inner();
    let status = write_upload(&mut c, &other.id, 0, &content[..MIB as usize], 256 << 10)
        .await
        .expect_err("no room for another upload");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status_of(&get_file(&mut c, &id).await?),
        pb::FileStatus::Pause
    );

    // Space freed: the upload resumes where it stopped and completes intact.
    mount.resize("64m")?;
    let r = http
        .patch(&location, offset, content[offset as usize..].to_vec(), &[])
        .await?;
    assert_eq!(r.status, 204, "{}", r.body);
    let file = get_file(&mut c, &id).await?;
    assert_eq!(
        (status_of(&file), file.sha256),
        (pb::FileStatus::Ready, sha256(&content))
    );
    drop(p);
    Ok(())
}

/// Transfers beyond --max-transfers (each holds a database connection of its own) are told to
/// retry, 503 / UNAVAILABLE, rather than queued or failed; the one running is unaffected, and
/// once it ends the next is taken.
#[tokio::test]
async fn transfers_beyond_the_limit_are_told_to_retry() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    let p = catalogue_on(&db.url, &data_dir, &["--max-transfers", "1"])
        .start()
        .await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    let first = data(2 * MIB as usize, 29);
    let running = create(&http, &p, first.len() as u64, "running.bin").await?;

    let mut stream = raw_patch(&p, &path_of(&running), 0, first.len() as u64).await?;
    stream.write_all(&first[..MIB as usize]).await?;
    stream.flush().await?;
    // Its first block on disk: the running transfer holds the one slot (trying earlier could
    // take the slot from under it).
    let partial = data_dir
        .join("uploads")
        .join(format!("{}.part", id_of(&running)));
    eventually(
        Duration::from_secs(10),
        "the running transfer writes its first block",
        || {
            let partial = partial.clone();
            async move { std::fs::metadata(&partial).is_ok_and(|m| m.len() >= MIB) }
        },
    )
    .await?;
    let waiting = create(&http, &p, 5, "waiting.txt").await?;
    let r = http.patch(&waiting, 0, "hello", &[]).await?;
    assert_eq!(r.status, 503, "{}", r.body);
    let other = c
        .create_file(pb::CreateFileRequest {
            filename: "grpc.bin".into(),
            size: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    let status = write_upload(&mut c, &other.id, 0, b"hello", 5)
        .await
        .expect_err("no slot for a WriteUpload either");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    stream.write_all(&first[MIB as usize..]).await?;
    let mut response = vec![0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut response).await?;
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    let next = create(&http, &p, 5, "next.txt").await?;
    let r = http.patch(&next, 0, "hello", &[]).await?;
    assert_eq!(r.status, 204, "the slot is free again: {}", r.body);
    assert_eq!(
        status_of(&get_file(&mut c, &id_of(&running)).await?),
        pb::FileStatus::Ready
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn two_catalogues_on_one_data_folder_let_one_writer_at_a_time() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("shared");
    let shared = ["--data-dir", data_dir.to_str().unwrap()];
    let a = catalogue(&db.url).args(shared).start().await?;
    let b = catalogue(&db.url).args(shared).start().await?;
    let http = Http::default();
    let mut cb = client(&b).await?;
    let content = data(2 * MIB as usize, 5);
    let location = create(&http, &a, content.len() as u64, "contended.bin").await?;
    let id = id_of(&location);

    // A transfer on A, mid-body.
    let mut stream = raw_patch(&a, &path_of(&location), 0, content.len() as u64).await?;
    stream.write_all(&content[..MIB as usize]).await?;
    stream.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B refuses a second writer, on both protocols; the upload's address works on B too.
    let on_b = location.replace(&a.addrs().http.to_string(), &b.addrs().http.to_string());
    let r = http.patch(&on_b, 0, content[..10].to_vec(), &[]).await?;
    assert_eq!(r.status, 423, "{}", r.body);
    let status = write_upload(&mut cb, &id, 0, &content[..10], 10)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let r = http
        .patch(&location, 0, content[..10].to_vec(), &[])
        .await?;
    assert_eq!(r.status, 423);

    // A finishes; B sees the whole file, bytes in order.
    stream.write_all(&content[MIB as usize..]).await?;
    let mut response = vec![0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut response).await?;
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");
    assert_eq!(read_all(&mut cb, &id, 0, 0).await?, content);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// kill -9 at a random moment of a large PATCH: after a restart, HEAD never reports more than
/// is on disk, and the resumed upload's digest is right.
#[tokio::test]
async fn kill_9_during_a_large_patch_loses_no_acknowledged_byte() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    let args = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--max-upload-size",
        "1GiB",
    ];
    let content = data(192 * MIB as usize, 13);
    let http = Http::default();

    let p = catalogue(&db.url).args(args).start().await?;
    let location = create(&http, &p, content.len() as u64, "big.bin").await?;
    let id = id_of(&location);
    let mut stream = raw_patch(&p, &path_of(&location), 0, content.len() as u64).await?;
    let body = content.clone();
    // Paced at about 200 MiB/s at most, so that the transfer lasts about a second.
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(MIB as usize) {
            if stream.write_all(chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // A moment that falls somewhere in the transfer (the nanoseconds of the clock are random
    // enough for this).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let delay = Duration::from_millis(50 + u64::from(nanos % 800));
    tokio::time::sleep(delay).await;
    p.signal("KILL")?;
    let _ = writer.await;
    drop(p);

    let p = catalogue(&db.url).args(args).start().await?;
    let head = http
        .tus("HEAD", &p.http_url(&path_of(&location)), &[])
        .await?;
    assert_eq!(head.status, 200);
    let offset = head.offset();
    let partial = data_dir.join("uploads").join(format!("{id}.part"));
    let blob = data_dir
        .join("blobs")
        .join(&sha256(&content)[..2])
        .join(sha256(&content));
    let on_disk = std::fs::metadata(&partial)
        .or_else(|_| std::fs::metadata(&blob))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        offset <= on_disk,
        "HEAD says {offset} but only {on_disk} bytes are on disk"
    );
    eprintln!("killed after {delay:?}: {offset} bytes durable, {on_disk} on disk");

    if offset < content.len() as u64 {
        let r = http
            .patch(
                &p.http_url(&path_of(&location)),
                offset,
                content[offset as usize..].to_vec(),
                &[],
            )
            .await?;
        assert_eq!(
            (r.status, r.offset()),
            (204, content.len() as u64),
            "{}",
            r.body
        );
    }
    let file = get_file(&mut client(&p).await?, &id).await?;
    assert_eq!(file.sha256, sha256(&content));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn expired_uploads_answer_410_then_are_removed() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    let options = ["--upload-expiry", "1s", "--upload-sweep-interval", "4s"];
    let p = catalogue_on(&db.url, &data_dir, &options).start().await?;
    let http = Http::default();
    let mut c = client(&p).await?;
    // The first sweep runs at start-up; the next one 4 s later.
    let location = create(&http, &p, 10, "stale.txt").await?;
    assert_eq!(http.patch(&location, 0, "01234", &[]).await?.status, 204);
    let partial = data_dir
        .join("uploads")
        .join(format!("{}.part", id_of(&location)));
    assert!(partial.exists());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http.tus("HEAD", &location, &[]).await?;
    assert_eq!(r.status, 410, "expired, not yet swept: {}", r.body);
    assert_eq!(http.patch(&location, 5, "56789", &[]).await?.status, 410);

    eventually(
        Duration::from_secs(10),
        "the sweeper removes the expired upload",
        || {
            let http = http.clone();
            let location = location.clone();
            async move {
                http.tus("HEAD", &location, &[])
                    .await
                    .map(|r| r.status == 404)
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    assert!(!partial.exists(), "partial bytes removed");
    assert_eq!(
        get_file(&mut c, &id_of(&location))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// A partial file that belongs to no upload (left by a process that died while extracting an
/// image) is removed once older than the expiry; a live upload's is kept.
#[tokio::test]
async fn stray_partial_files_are_removed() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let data_dir = dir.join("data");
    let options = ["--upload-expiry", "2s", "--upload-sweep-interval", "500ms"];
    let p = catalogue_on(&db.url, &data_dir, &options).start().await?;
    let http = Http::default();
    let stray = data_dir
        .join("uploads")
        .join(format!("{}.part", uuid::Uuid::now_v7()));
    std::fs::write(&stray, b"half an image")?;
    // Older than the expiry, as a file left by a process that died long ago.
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&stray)
        .status()?;
    assert!(touched.success());
    let location = create(&http, &p, 10, "live.txt").await?;
    assert_eq!(http.patch(&location, 0, "01234", &[]).await?.status, 204);
    let live = data_dir
        .join("uploads")
        .join(format!("{}.part", id_of(&location)));
    // Just as old: only its upload row tells it apart from a stray.
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&live)
        .status()?;
    assert!(touched.success());
    eventually(
        Duration::from_secs(15),
        "the stray partial file is removed",
        || {
            let stray = stray.clone();
            async move { !stray.exists() }
        },
    )
    .await?;
    // A live upload's partial file stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(live.exists(), "a live upload's bytes are kept");
    assert_eq!(http.tus("HEAD", &location, &[]).await?.offset(), 5);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn a_restart_keeps_every_file_and_upload() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let args = ["--data-dir", dir.to_str().unwrap()];
    let http = Http::default();
    let mut p = catalogue(&db.url).args(args).start().await?;
    let done = create(&http, &p, 6, "done.txt").await?;
    http.patch(&done, 0, "finish", &[]).await?;
    let half = create(&http, &p, 6, "half.txt").await?;
    http.patch(&half, 0, "hal", &[]).await?;
    p.signal("TERM")?;
    assert!(p.wait_exit(Duration::from_secs(10)).await?.success());

    let p = catalogue(&db.url).args(args).start().await?;
    let mut c = client(&p).await?;
    assert_eq!(read_all(&mut c, &id_of(&done), 0, 0).await?, b"finish");
    let half_here = p.http_url(&path_of(&half));
    assert_eq!(http.tus("HEAD", &half_here, &[]).await?.offset(), 3);
    assert_eq!(http.patch(&half_here, 3, "f!!", &[]).await?.status, 204);
    assert_eq!(read_all(&mut c, &id_of(&half), 0, 0).await?, b"half!!");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The stock Python tus client (tuspy, from PyPI), with per-chunk checksums.
#[tokio::test]
async fn tuspy_uploads_a_file_in_chunks_with_checksums() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let dir = tempdir()?;
    let content = data(3 * MIB as usize + 123, 21);
    let path = dir.join("sample.bin");
    std::fs::write(&path, &content)?;
    let script = r#"
import sys
from tusclient import client
c = client.TusClient(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[4]})
u = c.uploader(sys.argv[2], chunk_size=1048576, metadata={"filename": "sample.bin", "sha256": sys.argv[3]}, upload_checksum=True)
u.upload()
print(u.url)
"#;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &files_url(&p),
            path.to_str().unwrap(),
            &sha256(&content),
            p.token.as_deref().unwrap(),
        ])
        .output()?;
    assert!(
        output.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = String::from_utf8(output.stdout)?.trim().to_owned();
    let mut c = client(&p).await?;
    let file = get_file(&mut c, &id_of(&url)).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    assert_eq!(file.sha256, sha256(&content));
    assert_eq!(file.name, "sample.bin");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// grpcurl (from PyPI) creates a file and reads its status; tus fills it.
#[tokio::test]
async fn grpcurl_creates_and_gets_a_file() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url).start().await?;
    let addr = p.addrs().grpc.to_string();
    let bearer = format!("authorization: Bearer {}", p.token.as_deref().unwrap());
    let grpcurl = |args: &[&str]| -> Result<serde_json::Value> {
        let output = std::process::Command::new("grpcurl")
            .args(["-H", &bearer])
            .args(args)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "grpcurl: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let created = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"filename": "g.txt", "size": "3"}"#,
        &addr,
        "pirus.catalogue.v1.CatalogueService/CreateFile",
    ])?;
    assert_eq!(created["status"], "FILE_STATUS_UPLOADING");
    let url = created["uploadUrl"].as_str().unwrap().to_owned();
    assert_eq!(
        Http::default().patch(&url, 0, "abc", &[]).await?.status,
        204
    );
    let id = created["id"].as_str().unwrap();
    let got = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"id": "{id}"}}"#),
        &addr,
        "pirus.catalogue.v1.CatalogueService/GetFile",
    ])?;
    assert_eq!(got["status"], "FILE_STATUS_READY");
    assert_eq!(got["sha256"], sha256(b"abc"));
    Ok(())
}

/// Transfers count against their caller's budget of streams (`--max-streams-per-caller`,
/// shared with gRPC streams): one past it is 429 with `Retry-After`, before any byte is read;
/// once a transfer ends, the next is taken. Another caller is not held up.
#[tokio::test]
async fn a_caller_past_its_budget_of_transfers_is_answered_429_and_another_is_not() -> Result<()> {
    let db = TestDb::create().await?;
    let p = catalogue(&db.url)
        .args(["--max-streams-per-caller", "2"])
        .start()
        .await?;
    let ann =
        pirus_tests::identity::mint(&db.url, "ann", pirus_auth::Role::User, None, None).await?;
    let bob =
        pirus_tests::identity::mint(&db.url, "bob", pirus_auth::Role::User, None, None).await?;
    let bearer = |t: &str| format!("Bearer {t}");
    let as_user = |token: &str| {
        let auth = bearer(token);
        let p = &p;
        async move {
            let metadata = format!("filename {}", b64(b"x.bin"));
            let r = Http::anonymous()
                .tus(
                    "POST",
                    &files_url(p),
                    &[
                        ("upload-length", "1000"),
                        ("upload-metadata", &metadata),
                        ("authorization", &auth),
                    ],
                )
                .await?;
            anyhow::ensure!(r.status == 201, "{} {}", r.status, r.body);
            Ok::<_, anyhow::Error>(r.header("location").expect("Location").to_owned())
        }
    };
    let uploads = [
        as_user(&ann).await?,
        as_user(&ann).await?,
        as_user(&ann).await?,
    ];
    let mut first = held_patch(p.addrs().http, &uploads[0], &ann, 1000, 10).await?;
    let _second = held_patch(p.addrs().http, &uploads[1], &ann, 1000, 10).await?;
    // Both held transfers are admitted before the third is tried.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patch = |location: String, token: String| async move {
        Http::anonymous()
            .patch(
                &location,
                0,
                vec![b'y'; 1000],
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
    };
    let refused = patch(uploads[2].clone(), ann.clone()).await?;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Another caller's transfer goes through meanwhile.
    let bobs = as_user(&bob).await?;
    assert_eq!(patch(bobs, bob.clone()).await?.status, 204);
    // The first held transfer ends: the third is taken.
    first.write_all(&vec![b'x'; 990]).await?;
    let mut answer = vec![0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut first, &mut answer).await?;
    assert_eq!(&answer, b"HTTP/1.1 204");
    pirus_tests::eventually(
        Duration::from_secs(5),
        "the third transfer is taken",
        || {
            let (location, token) = (uploads[2].clone(), ann.clone());
            async move { patch(location, token).await.is_ok_and(|r| r.status == 204) }
        },
    )
    .await?;
    Ok(())
}

/// A client trickling a PATCH body (here 200 bytes a second, under a bound of 64 KiB a second
/// over 2 s) is cut off with a 400 naming the bound instead of holding the one transfer slot;
/// what arrived is kept, so the upload resumes, and the slot serves the next transfer.
#[tokio::test]
async fn a_trickling_transfer_is_cut_off_and_keeps_what_arrived() -> Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir()?;
    let p = catalogue_on(
        &db.url,
        &dir.join("data"),
        &[
            "--max-transfers",
            "1",
            "--min-transfer-rate",
            "64KiB",
            "--transfer-rate-window",
            "2s",
        ],
    )
    .start()
    .await?;
    let http = Http::default();
    let content = data(MIB as usize, 41);
    let slow = create(&http, &p, content.len() as u64, "slow.bin").await?;
    let mut stream = raw_patch(&p, &path_of(&slow), 0, content.len() as u64).await?;
    let started = std::time::Instant::now();
    let mut sent = 0;
    let answer = loop {
        // A trickle, each piece well within the 30 s idle limit.
        if stream.write_all(&content[sent..sent + 100]).await.is_ok() {
            let _ = stream.flush().await;
            sent += 100;
        }
        let mut response = vec![0u8; 1024];
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::AsyncReadExt::read(&mut stream, &mut response),
        )
        .await
        {
            Ok(Ok(n)) => break String::from_utf8_lossy(&response[..n]).into_owned(),
            Ok(Err(e)) => anyhow::bail!("the connection failed without an answer: {e}"),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {}
            Err(_) => anyhow::bail!("a trickle of {sent} bytes still held its transfer after 20 s"),
        }
    };
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("--min-transfer-rate"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut after {:?}",
        started.elapsed()
    );
    // The slot serves the next transfer.
    let next = create(&http, &p, 5, "next.txt").await?;
    let r = http.patch(&next, 0, "hello", &[]).await?;
    assert_eq!(r.status, 204, "the slot is free again: {}", r.body);
    // What arrived of the trickle is kept: the upload resumes from its offset and completes.
    let head = http.tus("HEAD", &slow, &[]).await?;
    let offset = head.offset();
    assert!(
        offset > 0 && offset <= sent as u64,
        "offset {offset} of {sent} sent"
    );
    let r = http
        .patch(&slow, offset, content[offset as usize..].to_vec(), &[])
        .await?;
    assert_eq!(r.status, 204, "{}", r.body);
    let mut c = client(&p).await?;
    let file = get_file(&mut c, &id_of(&slow)).await?;
    assert_eq!(status_of(&file), pb::FileStatus::Ready);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
