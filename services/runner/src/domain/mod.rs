//! Domain types of the runner: runs, their events, nodes, and the errors use cases return.
//! Nothing here knows of gRPC, SQL or LXD.

pub(crate) mod plan;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub(crate) use crate::limits::Requested;
pub(crate) use plan::Plan;

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RunStatus {
    Waiting,
    Initializing,
    Running,
    Pause,
    Finishing,
    Done,
    Error,
    Canceled,
}

impl RunStatus {
    pub(crate) const ALL: [RunStatus; 8] = [
        Self::Waiting,
        Self::Initializing,
        Self::Running,
        Self::Pause,
        Self::Finishing,
        Self::Done,
        Self::Error,
        Self::Canceled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Initializing => "initializing",
            Self::Running => "running",
            Self::Pause => "pause",
            Self::Finishing => "finishing",
            Self::Done => "done",
            Self::Error => "error",
            Self::Canceled => "canceled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Error | Self::Canceled)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Progress {
    pub value: f64,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Run {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_version: String,
    pub image_sha256: String,
    pub name: String,
    pub status: RunStatus,
    pub config: serde_json::Value,
    pub input_file_ids: Vec<Uuid>,
    pub output_file_ids: Vec<Uuid>,
    pub log_file_ids: Vec<Uuid>,
    pub progress: Progress,
    pub node: Option<String>,
    pub attempt: i32,
    pub exit_code: Option<i32>,
    pub error_message: String,
    pub priority: i32,
    pub max_attempts: i32,
    /// The limits the run asked for (itself or through its pipeline); the rest are the
    /// claiming node's defaults.
    pub requested: Requested,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The principal that submitted it; its outputs and logs are that principal's files.
    pub owner: Option<Uuid>,
    /// The owning principal's name.
    pub owner_name: Option<String>,
    /// The labels a node must have to take it.
    pub node_selector: crate::placement::Labels,
    /// Why it waits, while it is WAITING (worked out when it is read).
    pub pending: Option<crate::pending::Pending>,
    /// A GA4GH TES task's own fields (executors, inputs, outputs, tags, ...), validated and
    /// normalised at submission; `None` for a run submitted over gRPC.
    pub tes: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RunEvent {
    pub run_id: Uuid,
    pub seq: i64,
    pub attempt: i32,
    pub status: RunStatus,
    pub progress: Progress,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A run to queue, as SubmitRun asks for it (validated by the submit use case).
#[derive(Clone, Debug, Default)]
pub(crate) struct NewRun {
    pub pipeline_id: Uuid,
    pub name: String,
    pub config_json: String,
    pub input_file_ids: Vec<Uuid>,
    pub priority: i32,
    pub request_id: Option<String>,
    /// Limits asked for; `None` keeps the pipeline's, then the node's default.
    pub requested: Requested,
    pub max_attempts: Option<u32>,
    /// Who submits it (set by the submit use case from the caller).
    pub owner: Option<Uuid>,
    /// Labels a node must have to take it, over its pipeline's.
    pub node_selector: crate::placement::Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeStatus {
    Online,
    Draining,
    Offline,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub name: String,
    pub address: String,
    pub status: NodeStatus,
    pub max_runs: i32,
    pub active_runs: i32,
    pub heartbeat_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub lxd_version: Option<String>,
    pub lxd_available: bool,
    /// What it has to give its runs (0s: a runner older than placement declared nothing).
    pub capacity: crate::placement::Capacity,
    /// What the runs it holds reserve.
    pub reserved: crate::placement::Reserved,
    pub labels: crate::placement::Labels,
}

/// One of a run's two logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`, as StreamRunLogs names them.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    /// The log's file, in the run folder and in the catalogue.
    pub(crate) fn file(self) -> &'static str {
        match self {
            Self::Stdout => "out.log",
            Self::Stderr => "err.log",
        }
    }
}

/// A piece of a log, at its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogChunk {
    pub offset: u64,
    pub data: bytes::Bytes,
}

/// Live figures of a run's container.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Monitoring {
    pub cpu_seconds: f64,
    pub memory_bytes: i64,
    pub memory_peak_bytes: i64,
    pub processes: i64,
    pub container_status: String,
    pub disk_bytes: i64,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RunFilter {
    pub status: Option<RunStatus>,
    pub pipeline_id: Option<Uuid>,
    pub node: Option<String>,
    /// Only this principal's runs (a user's list, or the `owner` asked for).
    pub owner: Option<Uuid>,
    /// Only the runs of the principal of this name (what a client asks for; resolved to
    /// `owner` by the use case).
    pub owner_name: Option<String>,
    /// Only TES tasks, filtered as ListTasks asks.
    pub tasks: Option<TaskFilter>,
}

/// What ListTasks filters on (all of it must hold).
#[derive(Clone, Debug, Default)]
pub(crate) struct TaskFilter {
    /// The task's TES name starts with this.
    pub name_prefix: Option<String>,
    /// Tags the task has: a key with this value, or with any value (`None`).
    pub tags: Vec<(String, Option<String>)>,
    /// The run is in one of these statuses (none: any).
    pub statuses: Vec<RunStatus>,
    /// For ERROR runs: only those whose command failed (`Some(true)`, TES EXECUTOR_ERROR) or
    /// only the others (`Some(false)`, SYSTEM_ERROR).
    pub command_failed: Option<bool>,
}

pub(crate) use pirus_server::paging::Page;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// An idempotency key already used for something else.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A position past the end of what exists (a log offset past an ended run's log).
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unavailable(String),
    /// A quota of the owner would be passed; the message names the quota, what is used, what
    /// was asked and the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    PermissionDenied(String),
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
        Self::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_terminal_ones_are_known() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        let terminal: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![RunStatus::Done, RunStatus::Error, RunStatus::Canceled]
        );
    }
}
