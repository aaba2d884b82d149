//! Domain types of the catalogue: files, pipelines and uploads, their states, and the errors
//! use cases return. Nothing here knows of gRPC, HTTP or SQL.

mod error;

pub(crate) use error::Error;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum $name { $($variant),+ }

        impl $name {
            /// The spelling stored in the database.
            pub(crate) fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub(crate) fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// What a file is for.
    FileKind { Data = "data", Package = "package", Image = "image", Output = "output", Log = "log" }
);
text_enum!(
    /// Upload and content state of a file.
    FileStatus { Uploading = "uploading", Pause = "pause", Ready = "ready", Error = "error" }
);
text_enum!(
    /// Package upload and install state of a pipeline.
    PipelineStatus {
        Uploading = "uploading",
        Pause = "pause",
        Installing = "installing",
        Ready = "ready",
        Error = "error",
    }
);
text_enum!(
    /// Which tus endpoint addresses an upload.
    Endpoint { Files = "files", Pipelines = "pipelines" }
);

/// The absolute tus URL of an upload: what both edges answer for it (gRPC's `upload_url`,
/// tus's `Location`), so either protocol resumes what the other started.
pub(crate) fn upload_url(public_url: &str, endpoint: Endpoint, id: Uuid) -> String {
    format!("{public_url}/uploads/{endpoint}/{id}")
}

/// A file as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct File {
    pub id: Uuid,
    pub name: String,
    pub kind: FileKind,
    pub status: FileStatus,
    /// `None` while the length is deferred.
    pub size: Option<u64>,
    pub upload_offset: u64,
    /// The verified digest once ready, else the announced one (if any).
    pub sha256: Option<String>,
    pub source_run_id: Option<Uuid>,
    pub tags: Vec<String>,
    pub error_message: String,
    pub created_at: DateTime<Utc>,
    /// The upload that fills this file (its id is the file id, or a pipeline id).
    pub upload_id: Option<Uuid>,
    pub upload_endpoint: Option<Endpoint>,
    /// The principal that owns it (a run's outputs and logs: the run's owner).
    pub owner: Option<Uuid>,
    /// That principal's name.
    pub owner_name: Option<String>,
}

/// A pipeline as clients see it: its package upload, then what its install found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pipeline {
    pub id: Uuid,
    pub status: PipelineStatus,
    pub name: String,
    pub version: String,
    pub description: String,
    pub license: String,
    pub developers: Vec<String>,
    pub pirus_api: String,
    /// Of the package.
    pub size: Option<u64>,
    pub upload_offset: u64,
    /// The package upload, while there is one to address (CreatePipeline, tus).
    pub upload_id: Option<Uuid>,
    pub sha256: Option<String>,
    pub package_file_id: Option<Uuid>,
    pub image_file_id: Option<Uuid>,
    pub image_sha256: Option<String>,
    /// The normalised form, once installed.
    pub form: Option<serde_json::Value>,
    pub error_message: String,
    pub created_at: DateTime<Utc>,
    pub installed_at: Option<DateTime<Utc>>,
}

/// Filters of ListPipelines.
#[derive(Clone, Debug, Default)]
pub(crate) struct PipelineFilter {
    pub status: Option<PipelineStatus>,
    pub name: Option<String>,
}

/// The documents a pipeline may have.
pub(crate) const DOCUMENT_NAMES: &[&str] =
    &["form", "icon", "help", "readme", "license", "manifest"];

/// A file to create: what CreateFile and tus POST on /uploads/files/ ask for.
#[derive(Clone, Debug, Default)]
pub(crate) struct NewFile {
    pub name: String,
    /// `None`: deferred length (tus creation-defer-length).
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub request_id: Option<String>,
    pub tags: Vec<String>,
    pub kind: Option<FileKind>,
    pub source_run_id: Option<Uuid>,
    /// tus Upload-Metadata as sent, echoed by HEAD.
    pub metadata: String,
    /// Who will own it: the creator, or a run's owner for its outputs and logs.
    pub owner: Option<Uuid>,
}

/// The durable state of an upload, as HEAD and GetUploadStatus report it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UploadState {
    pub id: Uuid,
    pub endpoint: Endpoint,
    pub file_id: Option<Uuid>,
    pub pipeline_id: Option<Uuid>,
    pub size: Option<u64>,
    pub offset: u64,
    pub metadata: String,
    pub is_partial: bool,
    pub parts: Vec<Uuid>,
    pub complete: bool,
    pub expires_at: DateTime<Utc>,
    /// The accessor that made it: only it (or an admin) may write, read or end it.
    pub owner: Option<Uuid>,
}

pub(crate) use pirus_server::paging::Page;

/// Filters of ListFiles.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileFilter {
    pub status: Option<FileStatus>,
    pub kind: Option<FileKind>,
    pub source_run_id: Option<Uuid>,
    /// Only this principal's files (a user's list, or the `owner` asked for).
    pub owner: Option<Uuid>,
    /// Only the files of the principal of this name (what a client asks for; resolved to
    /// `owner` by the use case).
    pub owner_name: Option<String>,
}

/// Checks a lowercase hex SHA-256, naming `field` when it is not one.
pub(crate) fn parse_sha256(field: &str, value: &str) -> Result<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let lower = value.to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(lower))
    } else {
        Err(Error::invalid(
            field,
            "must be a SHA-256 digest: 64 hexadecimal digits",
        ))
    }
}

/// Checks a file name a client gives: not empty, bounded, no path and no control characters.
pub(crate) fn check_filename(field: &str, name: &str) -> Result<String> {
    if name.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if name.len() > 1024 {
        return Err(Error::invalid(field, "is longer than 1024 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(name.to_owned())
}

/// Tags of a file at most.
pub(crate) const MAX_TAGS: usize = 100;

/// Checks a file's tags, whichever edge they came through (CreateFile's `tags`, tus's
/// `Upload-Metadata tags`): at most [`MAX_TAGS`], each 1 to 256 bytes without control
/// characters.
pub(crate) fn check_tags(field: &str, tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            field,
            format!("{} tags; a file has at most {MAX_TAGS}", tags.len()),
        ));
    }
    if let Some(tag) = tags.iter().find(|t| t.is_empty() || t.len() > 256) {
        let shown: String = tag.chars().take(64).collect();
        return Err(Error::invalid(
            field,
            format!("'{shown}' must be 1 to 256 bytes"),
        ));
    }
    if tags.iter().any(|t| t.chars().any(char::is_control)) {
        return Err(Error::invalid(field, "a tag contains control characters"));
    }
    Ok(())
}

/// An optional idempotency key, whichever edge it came through: empty is none; at most 256
/// bytes, without control characters.
pub(crate) fn request_id(field: &str, value: &str) -> Result<Option<String>> {
    match value {
        "" => Ok(None),
        id if id.len() > 256 => Err(Error::invalid(field, "is longer than 256 bytes")),
        id if id.chars().any(char::is_control) => {
            Err(Error::invalid(field, "contains control characters"))
        }
        id => Ok(Some(id.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_request_ids_are_bounded_alike_for_every_edge() {
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(check_tags("tags", &many).is_err());
        assert!(check_tags("tags", &["a".repeat(257)]).is_err());
        assert!(check_tags("tags", &["bad\u{1b}[31m".into()]).is_err());
        assert!(check_tags("tags", &["a\nb".into()]).is_err());
        assert!(check_tags("tags", &[String::new()]).is_err());
        assert!(check_tags("tags", &["sample-1".into(), "run 2".into()]).is_ok());
        assert!(request_id("request_id", &"x".repeat(5000)).is_err());
        assert!(request_id("request_id", "a\nb").is_err());
        assert_eq!(request_id("request_id", "").unwrap(), None);
        assert_eq!(
            request_id("request_id", "k1").unwrap().as_deref(),
            Some("k1")
        );
    }

    #[test]
    fn enums_round_trip() {
        for kind in [
            FileKind::Data,
            FileKind::Package,
            FileKind::Image,
            FileKind::Output,
            FileKind::Log,
        ] {
            assert_eq!(FileKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FileStatus::parse("nope"), None);
    }

    #[test]
    fn sha256_checks() {
        let good = "A".repeat(64);
        assert_eq!(parse_sha256("sha256", &good).unwrap(), Some("a".repeat(64)));
        assert_eq!(parse_sha256("sha256", "").unwrap(), None);
        let err = parse_sha256("sha256", "abc").unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        assert!(parse_sha256("sha256", &"g".repeat(64)).is_err());
    }

    #[test]
    fn filenames() {
        assert!(check_filename("filename", "reads.fastq.gz").is_ok());
        assert!(check_filename("filename", " ").is_err());
        assert!(check_filename("filename", "a\nb").is_err());
        assert!(check_filename("filename", &"x".repeat(2000)).is_err());
    }
}
