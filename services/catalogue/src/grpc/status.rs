//! The domain's errors as gRPC statuses, in one exhaustive place: INVALID_ARGUMENT names the
//! field, internal details are logged once and never reach a client.

use crate::domain::Error;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) | Error::Gone(_) => Status::not_found(e.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::OffsetMismatch { .. } | Error::Locked => Status::aborted(e.to_string()),
            Error::ChecksumMismatch => Status::data_loss(e.to_string()),
            Error::TooLarge(_) | Error::QuotaExceeded(_) | Error::StorageFull => {
                Status::resource_exhausted(e.to_string())
            }
            Error::Unavailable(_) => Status::unavailable(e.to_string()),
            Error::Busy(_) => pirus_auth::admission::exhausted(e.to_string()),
            Error::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
