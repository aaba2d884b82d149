//! How a failure reaches the user: one line naming what failed and why (the server's own
//! message for a refused call), never a debug dump; and the exit code it means.

/// A run could not be queued (`run submit` exits 2 for it).
#[derive(Debug)]
pub(crate) struct NotQueued;

impl std::fmt::Display for NotQueued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the run was not queued")
    }
}

impl std::error::Error for NotQueued {}

/// What to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub line: String,
    pub code: u8,
}

impl Failure {
    pub fn of(e: &anyhow::Error) -> Self {
        let mut parts: Vec<String> = Vec::new();
        let code = if e.downcast_ref::<NotQueued>().is_some() {
            2
        } else {
            1
        };
        for cause in e.chain() {
            let text = match cause.downcast_ref::<tonic::Status>() {
                Some(status) => status_text(status),
                None => cause.to_string(),
            };
            // A cause that repeats what its context said adds nothing.
            if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
        }
        let line = parts.join(": ").replace(['\n', '\r'], "; ");
        Self { line, code }
    }
}

/// A refused call as people read it: `not found: file 01a2... not found`.
fn status_text(status: &tonic::Status) -> String {
    use tonic::Code;
    let code = match status.code() {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    };
    let message = status.message();
    if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_refused_call_is_one_line_with_the_server_s_message() {
        let e = Err::<(), _>(tonic::Status::not_found("file 42 not found\nreally"))
            .context("reading file 42")
            .unwrap_err();
        let f = Failure::of(&e);
        assert_eq!(
            f.line,
            "reading file 42: not found: file 42 not found; really"
        );
        assert_eq!(f.code, 1);
        let e = Err::<(), _>(tonic::Status::invalid_argument(
            "config_json.threads: 0 < 1",
        ))
        .context(NotQueued)
        .unwrap_err();
        let f = Failure::of(&e);
        assert_eq!(f.code, 2);
        assert_eq!(
            f.line,
            "the run was not queued: invalid argument: config_json.threads: 0 < 1"
        );
    }
}
