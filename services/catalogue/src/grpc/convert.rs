//! Conversions between the generated proto types and the domain, in one place. Request fields
//! that fail to convert are INVALID_ARGUMENT naming the field.

use pirus_proto::catalogue::v1 as pb;
use uuid::Uuid;

use crate::domain::{
    Endpoint, Error, File, FileKind, FileStatus, Page, Pipeline, PipelineStatus, Result,
    UploadState, upload_url,
};

pub(super) use pirus_server::paging::{paged, timestamp};

/// A required UUID field.
pub(super) fn parse_id(field: &str, value: &str) -> Result<Uuid> {
    Ok(pirus_server::paging::parse_id(field, value)?)
}

/// An optional UUID field (empty means none).
pub(super) fn parse_optional_id(field: &str, value: &str) -> Result<Option<Uuid>> {
    Ok(pirus_server::paging::parse_optional_id(field, value)?)
}

/// Page size and token of a List request.
pub(super) fn page(page_size: i32, page_token: &str) -> Result<Page> {
    Ok(pirus_server::paging::page(page_size, page_token)?)
}

pub(super) fn file_kind(value: i32) -> Result<Option<FileKind>> {
    match pb::FileKind::try_from(value) {
        Ok(pb::FileKind::Unspecified) => Ok(None),
        Ok(pb::FileKind::Data) => Ok(Some(FileKind::Data)),
        Ok(pb::FileKind::Package) => Ok(Some(FileKind::Package)),
        Ok(pb::FileKind::Image) => Ok(Some(FileKind::Image)),
        Ok(pb::FileKind::Output) => Ok(Some(FileKind::Output)),
        Ok(pb::FileKind::Log) => Ok(Some(FileKind::Log)),
        Err(_) => Err(Error::invalid("kind", format!("{value} is not a FileKind"))),
    }
}

pub(super) fn file_status(value: i32) -> Result<Option<FileStatus>> {
    match pb::FileStatus::try_from(value) {
        Ok(pb::FileStatus::Unspecified) => Ok(None),
        Ok(pb::FileStatus::Uploading) => Ok(Some(FileStatus::Uploading)),
        Ok(pb::FileStatus::Pause) => Ok(Some(FileStatus::Pause)),
        Ok(pb::FileStatus::Ready) => Ok(Some(FileStatus::Ready)),
        Ok(pb::FileStatus::Error) => Ok(Some(FileStatus::Error)),
        Err(_) => Err(Error::invalid(
            "status",
            format!("{value} is not a FileStatus"),
        )),
    }
}

fn kind_to_proto(kind: FileKind) -> pb::FileKind {
    match kind {
        FileKind::Data => pb::FileKind::Data,
        FileKind::Package => pb::FileKind::Package,
        FileKind::Image => pb::FileKind::Image,
        FileKind::Output => pb::FileKind::Output,
        FileKind::Log => pb::FileKind::Log,
    }
}

fn status_to_proto(status: FileStatus) -> pb::FileStatus {
    match status {
        FileStatus::Uploading => pb::FileStatus::Uploading,
        FileStatus::Pause => pb::FileStatus::Pause,
        FileStatus::Ready => pb::FileStatus::Ready,
        FileStatus::Error => pb::FileStatus::Error,
    }
}

pub(super) fn file_to_proto(file: File, public_url: &str) -> pb::File {
    let upload_url = match (file.upload_id, file.upload_endpoint) {
        (Some(id), Some(endpoint)) => upload_url(public_url, endpoint, id),
        _ => String::new(),
    };
    pb::File {
        id: file.id.to_string(),
        name: file.name,
        kind: kind_to_proto(file.kind) as i32,
        size: file.size.unwrap_or(0) as i64,
        upload_offset: file.upload_offset as i64,
        upload_url,
        status: status_to_proto(file.status) as i32,
        sha256: file.sha256.unwrap_or_default(),
        source_run_id: file
            .source_run_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        created_at: Some(timestamp(file.created_at)),
        tags: file.tags,
        error_message: file.error_message,
        owner: file.owner_name.unwrap_or_default(),
    }
}

pub(super) fn pipeline_status(value: i32) -> Result<Option<PipelineStatus>> {
    match pb::PipelineStatus::try_from(value) {
        Ok(pb::PipelineStatus::Unspecified) => Ok(None),
        Ok(pb::PipelineStatus::Uploading) => Ok(Some(PipelineStatus::Uploading)),
        Ok(pb::PipelineStatus::Pause) => Ok(Some(PipelineStatus::Pause)),
        Ok(pb::PipelineStatus::Installing) => Ok(Some(PipelineStatus::Installing)),
        Ok(pb::PipelineStatus::Ready) => Ok(Some(PipelineStatus::Ready)),
        Ok(pb::PipelineStatus::Error) => Ok(Some(PipelineStatus::Error)),
        Err(_) => Err(Error::invalid(
            "status",
            format!("{value} is not a PipelineStatus"),
        )),
    }
}

fn pipeline_status_to_proto(status: PipelineStatus) -> pb::PipelineStatus {
    match status {
        PipelineStatus::Uploading => pb::PipelineStatus::Uploading,
        PipelineStatus::Pause => pb::PipelineStatus::Pause,
        PipelineStatus::Installing => pb::PipelineStatus::Installing,
        PipelineStatus::Ready => pb::PipelineStatus::Ready,
        PipelineStatus::Error => pb::PipelineStatus::Error,
    }
}

pub(super) fn pipeline_to_proto(p: Pipeline, public_url: &str) -> pb::Pipeline {
    let id_text = |id: Option<Uuid>| id.map(|i| i.to_string()).unwrap_or_default();
    pb::Pipeline {
        id: p.id.to_string(),
        name: p.name,
        version: p.version,
        description: p.description,
        license: p.license,
        developers: p.developers,
        pirus_api: p.pirus_api,
        status: pipeline_status_to_proto(p.status) as i32,
        size: p.size.unwrap_or(0) as i64,
        upload_offset: p.upload_offset as i64,
        upload_url: p
            .upload_id
            .map(|id| upload_url(public_url, Endpoint::Pipelines, id))
            .unwrap_or_default(),
        sha256: p.sha256.unwrap_or_default(),
        package_file_id: id_text(p.package_file_id),
        image_file_id: id_text(p.image_file_id),
        image_sha256: p.image_sha256.unwrap_or_default(),
        form_json: p.form.map(|f| f.to_string()).unwrap_or_default(),
        error_message: p.error_message,
        created_at: Some(timestamp(p.created_at)),
        installed_at: p.installed_at.map(timestamp),
    }
}

pub(super) fn upload_status(state: &UploadState) -> pb::UploadStatus {
    pb::UploadStatus {
        id: state.id.to_string(),
        offset: state.offset as i64,
        size: state.size.unwrap_or(0) as i64,
        complete: state.complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_become_invalid_arguments() {
        assert!(
            parse_id("file_id", "nope")
                .unwrap_err()
                .to_string()
                .starts_with("file_id:")
        );
        assert!(
            page(-1, "")
                .unwrap_err()
                .to_string()
                .starts_with("page_size:")
        );
    }
}
