//! The domain's errors as gRPC statuses, in one exhaustive place: INVALID_ARGUMENT names the
//! field, internal details are logged once and never reach a client.

use crate::domain::Error;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::OutOfRange(_) => Status::out_of_range(e.to_string()),
            Error::Unavailable(_) => Status::unavailable(e.to_string()),
            Error::QuotaExceeded(_) => Status::resource_exhausted(e.to_string()),
            Error::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_a_client() {
        let status = tonic::Status::from(Error::internal(
            "LXD: cannot reach LXD at /var/lib/lxd/unix.socket: connection refused",
        ));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
