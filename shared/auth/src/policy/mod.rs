//! What a caller may do: the table of CONTRACT §6, in one place. Use cases ask [`check`] for
//! the action and [`scope`] for whose resources a caller sees; a resource outside its scope is
//! NOT_FOUND to it (no existence oracle), an action its role lacks is PERMISSION_DENIED.

use uuid::Uuid;

use crate::{Caller, Role};

/// Everything a caller may be refused, by kind of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// CreateToken, ListTokens, RevokeToken.
    ManageTokens,
    /// ListAuditEvents.
    ReadAudit,
    /// CreatePipeline, InstallPipeline, the pipelines tus endpoint.
    InstallPipelines,
    DeletePipelines,
    /// Every READY pipeline and its documents.
    ReadReadyPipelines,
    /// Pipelines in any status.
    ReadAllPipelines,
    /// CreateFile of a data file, the files tus endpoint.
    CreateFiles,
    /// GetFile, ListFiles, ReadFile (within the caller's scope).
    ReadFiles,
    DeleteFiles,
    /// CreateFile of an OUTPUT or LOG and its upload, for a run the runner's node holds.
    RegisterRunResults,
    SubmitRuns,
    /// GetRun, ListRuns, WatchRun, StreamRunLogs, GetRunMonitoring (within the scope).
    ReadRuns,
    /// PauseRun, ResumeRun, CancelRun (within the scope).
    ControlRuns,
    DeleteRuns,
    ReadNodes,
    /// DrainNode, UndrainNode.
    DrainNodes,
    /// `/metrics`.
    ReadMetrics,
    /// Live reads another runner forwards (logs, monitoring) of any run.
    ForwardedReads,
}

/// Whether a role may take an action at all.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => action != ForwardedReads && action != RegisterRunResults,
        Role::Operator => matches!(
            action,
            ReadReadyPipelines
                | ReadAllPipelines
                | ReadFiles
                | ReadRuns
                | ControlRuns
                | ReadNodes
                | DrainNodes
                | ReadMetrics
        ),
        Role::User => matches!(
            action,
            ReadReadyPipelines
                | CreateFiles
                | ReadFiles
                | DeleteFiles
                | SubmitRuns
                | ReadRuns
                | ControlRuns
                | DeleteRuns
        ),
        Role::Runner => matches!(action, ReadFiles | RegisterRunResults | ForwardedReads),
    }
}

/// Refused: the role lacks the action (PERMISSION_DENIED).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {role} token may not {action}")]
pub struct Forbidden {
    pub role: &'static str,
    pub action: &'static str,
}

fn describe(action: Action) -> &'static str {
    use Action::*;
    match action {
        ManageTokens => "manage tokens or principals",
        ReadAudit => "read the audit trail",
        InstallPipelines => "install pipelines",
        DeletePipelines => "delete pipelines",
        ReadReadyPipelines | ReadAllPipelines => "read pipelines",
        CreateFiles => "create files",
        ReadFiles => "read files",
        DeleteFiles => "delete files",
        RegisterRunResults => "register a run's outputs and logs",
        SubmitRuns => "submit runs",
        ReadRuns => "read runs",
        ControlRuns => "control runs",
        DeleteRuns => "delete runs",
        ReadNodes => "read nodes",
        DrainNodes => "drain or undrain nodes",
        ReadMetrics => "read metrics",
        ForwardedReads => "make forwarded reads",
    }
}

/// Whether this caller may take `action`: its role allows it, or it is the unrestricted
/// caller of `--auth none`.
pub fn permits(caller: &Caller, action: Action) -> bool {
    caller.unrestricted || allows(caller.role, action)
}

/// The caller may take `action`, or why not.
pub fn check(caller: &Caller, action: Action) -> Result<(), Forbidden> {
    if permits(caller, action) {
        Ok(())
    } else {
        Err(Forbidden {
            role: caller.role.as_str(),
            action: describe(action),
        })
    }
}

/// Whose resources (files, uploads, runs) a caller sees and acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everyone's (admins; operators, for reading and run control).
    All,
    /// Its own: those whose owner is this principal (users).
    Own(Uuid),
    /// Those of the runs this node holds (runners).
    Node(String),
}

pub fn scope(caller: &Caller) -> Scope {
    match caller.role {
        Role::Admin | Role::Operator => Scope::All,
        Role::User => Scope::Own(caller.principal),
        Role::Runner => Scope::Node(caller.node.clone().unwrap_or_default()),
    }
}

impl Scope {
    /// Whether a resource owned by `owner` is within the scope (by owner alone; a node's
    /// scope is decided by the runs it holds, which the caller checks).
    pub fn owns(&self, owner: Option<Uuid>) -> bool {
        match self {
            Scope::All => true,
            Scope::Own(me) => owner == Some(*me),
            Scope::Node(_) => false,
        }
    }

    /// Whether the caller may read what the principal named `name` owns (a list filtered by
    /// owner, its usage): operators and admins anyone's, others only their own.
    pub fn may_list_owner(&self, caller: &Caller, name: &str) -> Result<(), Forbidden> {
        match self {
            Scope::All => Ok(()),
            _ if name == caller.principal_name => Ok(()),
            _ => Err(Forbidden {
                role: caller.role.as_str(),
                action: "read another principal's files, runs or usage",
            }),
        }
    }

    /// The owner a list is filtered by, if any.
    pub fn owner_filter(&self) -> Option<Uuid> {
        match self {
            Scope::Own(me) => Some(*me),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
