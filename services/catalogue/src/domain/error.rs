//! The catalogue's one error enum. Nothing here knows of gRPC, HTTP or SQL: the store maps
//! database errors into it (`store/mod.rs`), and gRPC (`grpc/status.rs`) and tus each map it
//! out in one place, where internal details (SQL, paths) are logged and never sent to clients.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` names it.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// Known once, gone since (an expired upload).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The client's offset is not the upload's; `actual` is the durable one.
    #[error("offset mismatch: the upload is at offset {actual}")]
    OffsetMismatch { actual: u64 },
    /// Another transfer holds the upload.
    #[error("another transfer is writing this upload; retry when it ends")]
    Locked,
    /// The chunk's checksum did not match; the chunk was discarded.
    #[error("checksum mismatch: the chunk was discarded")]
    ChecksumMismatch,
    #[error("{0}")]
    TooLarge(String),
    /// A quota of the owner would be passed (RESOURCE_EXHAUSTED, HTTP 413); the message names
    /// the quota, what is used, what was asked and the limit. Nothing stored is lost.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The data folder is full (or over quota): nothing past the durable offset was kept, and
    /// the upload resumes once space is freed.
    #[error(
        "the catalogue's storage is full; the upload keeps its durable bytes and resumes once space is freed"
    )]
    StorageFull,
    /// The caller's role may not do this (PERMISSION_DENIED, HTTP 403).
    #[error("{0}")]
    PermissionDenied(String),
    /// Temporarily unable to serve (database down, too many transfers).
    #[error("{0}")]
    Unavailable(String),
    /// Every slot of a process-wide bound is taken (file readers): RESOURCE_EXHAUSTED with a
    /// retry hint.
    #[error("{0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<pirus_server::paging::FieldError> for Error {
    fn from(e: pirus_server::paging::FieldError) -> Self {
        Self::InvalidArgument {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<pirus_auth::policy::Forbidden> for Error {
    fn from(e: pirus_auth::policy::Forbidden) -> Self {
        Self::PermissionDenied(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                tracing::error!(error = %e, "the data folder is full");
                Self::StorageFull
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}
