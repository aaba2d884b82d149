//! tus creation (POST): an upload of a file, a package, a partial upload or a final one of
//! parts, described by `Upload-Length` / `Upload-Defer-Length` and `Upload-Metadata`, checked
//! as CreateFile and CreatePipeline check theirs, with the first bytes in the body when the
//! client sends them (creation-with-upload).

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use pirus_auth::Caller;
use uuid::Uuid;

use super::{
    Tus, describe,
    headers::{self, Concat, OFFSET_OCTET_STREAM},
    run_transfer, set, tus_empty,
};
use crate::{
    domain::{
        Endpoint, Error, NewFile, Result, check_filename, check_tags, parse_sha256, request_id,
        upload_url,
    },
    store::NewPackage,
};

pub(super) async fn create(
    tus: &Tus,
    caller: &Caller,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let concat = headers::concat(headers, endpoint)?;
    let length = creation_length(tus, headers, &concat)?;
    let (raw_metadata, metadata) = headers::metadata(headers)?;
    let mut state = if concat == Some(Concat::Partial) {
        tus.uploads
            .create_partial(caller, endpoint, length, raw_metadata)
            .await?
    } else {
        let new = new_file(&metadata, length, raw_metadata)?;
        let upload_id = open(tus, caller, endpoint, concat, new).await?;
        tus.uploads.state_for(caller, upload_id, None).await?
    };
    // creation-with-upload: the body carries the first bytes.
    let carries_data = headers.get("content-type").map(|v| v.as_bytes())
        == Some(OFFSET_OCTET_STREAM.as_bytes())
        && !state.complete;
    if carries_data {
        let checksum = headers::checksum(headers)?;
        let transfer = tus
            .uploads
            .begin(caller, state.id, Some(endpoint), 0, None, checksum)
            .await?;
        state = run_transfer(transfer, body).await?;
    }
    let mut r = tus_empty(StatusCode::CREATED);
    set(
        &mut r,
        "location",
        upload_url(&tus.public_url, endpoint, state.id),
    );
    describe(&mut r, &state);
    Ok(r)
}

/// The length a creation announces: exactly one of Upload-Length and Upload-Defer-Length (a
/// final upload's is its parts'), within the size limit.
fn creation_length(tus: &Tus, headers: &HeaderMap, concat: &Option<Concat>) -> Result<Option<u64>> {
    let length = headers::number(headers, "Upload-Length")?;
    let deferred = match headers.get("upload-defer-length").map(|v| v.as_bytes()) {
        None => false,
        Some(b"1") => true,
        Some(_) => return Err(Error::invalid("Upload-Defer-Length", "must be 1")),
    };
    if let Some(Concat::Final(_)) = concat {
        if length.is_some() || deferred {
            return Err(Error::invalid(
                "Upload-Length",
                "a final upload's length is its parts'",
            ));
        }
    } else if length.is_some() == deferred {
        return Err(Error::invalid(
            "Upload-Length",
            "send exactly one of Upload-Length and Upload-Defer-Length: 1",
        ));
    }
    if let Some(length) = length
        && length > tus.uploads.max_size()
    {
        return Err(Error::TooLarge(format!(
            "Upload-Length: {length} bytes is over the limit of {} bytes",
            tus.uploads.max_size()
        )));
    }
    Ok(length)
}

/// The file a creation describes in its Upload-Metadata.
fn new_file(
    metadata: &[(String, Option<String>)],
    length: Option<u64>,
    raw_metadata: String,
) -> Result<NewFile> {
    let value = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    let name = check_filename(
        "Upload-Metadata filename",
        &value("filename")
            .ok_or_else(|| Error::invalid("Upload-Metadata", "the key 'filename' is required"))?,
    )?;
    let sha256 = parse_sha256(
        "Upload-Metadata sha256",
        &value("sha256").unwrap_or_default(),
    )?;
    let tags: Vec<String> = value("tags")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // The same checks as CreateFile's.
    check_tags("Upload-Metadata tags", &tags)?;
    let request_id = request_id(
        "Upload-Metadata request_id",
        &value("request_id").unwrap_or_default(),
    )?;
    Ok(NewFile {
        name,
        size: length,
        sha256,
        request_id,
        tags,
        kind: None,
        source_run_id: None,
        metadata: raw_metadata,
        owner: None,
    })
}

/// Opens the upload a creation asks for: a file, a final upload of parts, or a package.
/// Each through its use case, which decides what the caller may create.
async fn open(
    tus: &Tus,
    caller: &Caller,
    endpoint: Endpoint,
    concat: Option<Concat>,
    new: NewFile,
) -> Result<Uuid> {
    Ok(match (endpoint, concat) {
        (Endpoint::Files, Some(Concat::Final(parts))) => {
            tus.uploads.create_final(caller, new, parts).await?.id
        }
        (Endpoint::Files, _) => tus.files.create(caller, new).await?.id,
        (Endpoint::Pipelines, Some(Concat::Final(_))) => {
            return Err(Error::invalid(
                "Upload-Concat",
                "upload a package whole (or in PATCH chunks); concatenation is for files",
            ));
        }
        (Endpoint::Pipelines, _) => {
            let package = NewPackage {
                filename: new.name,
                size: new.size,
                sha256: new.sha256,
                request_id: new.request_id,
                metadata: new.metadata,
                owner: None,
            };
            tus.pipelines.create(caller, package).await?.id
        }
    })
}
