//! The runner's use of the policy in `pirus_auth::policy`: what a caller may do with runs and
//! nodes. The use cases in `runs.rs` call these and nothing else decides. A run outside the
//! caller's scope answers exactly as a missing one does (NOT_FOUND, same message); an action
//! the caller's role lacks is PERMISSION_DENIED.
//!
//! Scopes: admins and operators see every run; a user its own. A runner token reads live
//! logs and figures of any run (forwarded reads from the node a client asked), nothing else.

use pirus_auth::{
    Caller, Role,
    policy::{self, Action},
};
use uuid::Uuid;

use crate::domain::{Error, Result, Run};

/// The role may take the action (PERMISSION_DENIED otherwise).
pub(crate) fn require(caller: &Caller, action: Action) -> Result<()> {
    policy::check(caller, action).map_err(Into::into)
}

/// The run `fetch` reads, if the caller may take `action` on it: the role is checked before
/// anything is read (a refusal never depends on what exists); a run that is not the caller's
/// is NOT_FOUND.
pub(crate) async fn allowed(
    caller: &Caller,
    action: Action,
    fetch: impl Future<Output = Result<Run>>,
) -> Result<Run> {
    require(caller, action)?;
    let run = fetch.await?;
    if policy::scope(caller).owns(run.owner) {
        Ok(run)
    } else {
        Err(Error::NotFound(format!("run {}", run.id)))
    }
}

/// Live reads (logs, monitoring): a runner forwarding a client's read may read any run (the
/// node the client asked checked the client); anyone else as [`Action::ReadRuns`] allows.
pub(crate) async fn live_readable(
    caller: &Caller,
    fetch: impl Future<Output = Result<Run>>,
) -> Result<Run> {
    if caller.role == Role::Runner {
        require(caller, Action::ForwardedReads)?;
        return fetch.await;
    }
    allowed(caller, Action::ReadRuns, fetch).await
}

/// The owner a caller's list is limited to, if any.
pub(crate) fn list_owner(caller: &Caller) -> Result<Option<Uuid>> {
    require(caller, Action::ReadRuns)?;
    Ok(policy::scope(caller).owner_filter())
}
