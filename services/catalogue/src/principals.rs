//! The principal use cases (AccessService): making, listing and changing principals, for
//! admins; reading a principal's usage, for the principal itself and for those who read
//! everything. Usage is counted by the database (migration 10), never here.

use pirus_auth::{
    Caller, Role,
    policy::{self, Action},
    principals::{
        NewPrincipal, Principal, PrincipalChange, PrincipalKind, PrincipalStore, Quota, Usage,
        valid_name,
    },
};

use crate::{
    access,
    domain::{Error, Result},
};

#[derive(Clone)]
pub(crate) struct Principals {
    store: PrincipalStore,
    /// The quota of a principal made without one.
    default_quota: Quota,
}

/// A principal to make, as asked.
pub(crate) struct PrincipalRequest {
    pub name: String,
    pub kind: Option<PrincipalKind>,
    pub role: Option<Role>,
    pub weight: u32,
    pub quota: Option<Quota>,
}

/// A principal's usage and limits.
#[derive(Debug)]
pub(crate) struct UsageReport {
    pub principal: String,
    pub usage: Usage,
    pub quota: Quota,
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!("'{name}' is not 1 to 100 of a-z, 0-9, '.', '_' and '-'"),
        ))
    }
}

impl Principals {
    pub(crate) fn new(db: sea_orm::DatabaseConnection, default_quota: Quota) -> Self {
        Self {
            store: PrincipalStore::new(db),
            default_quota,
        }
    }

    pub(crate) async fn create(
        &self,
        caller: &Caller,
        request: PrincipalRequest,
    ) -> Result<Principal> {
        access::require(caller, Action::ManageTokens)?;
        check_name(&request.name)?;
        let kind = request.kind.ok_or_else(|| {
            Error::invalid(
                "kind",
                "is required (PRINCIPAL_KIND_PERSON or PRINCIPAL_KIND_SERVICE)",
            )
        })?;
        let role = request.role.ok_or_else(|| {
            Error::invalid(
                "role",
                "is required (ROLE_ADMIN, ROLE_OPERATOR, ROLE_USER or ROLE_RUNNER)",
            )
        })?;
        let name = request.name.clone();
        let new = NewPrincipal {
            name: request.name,
            kind,
            role,
            weight: request.weight.max(1),
            quota: request.quota.unwrap_or(self.default_quota),
        };
        self.store
            .create(new)
            .await?
            .ok_or_else(|| Error::AlreadyExists(format!("a principal named '{name}' exists")))
    }

    pub(crate) async fn list(&self, caller: &Caller) -> Result<Vec<Principal>> {
        access::require(caller, Action::ManageTokens)?;
        Ok(self.store.list().await?)
    }

    pub(crate) async fn update(
        &self,
        caller: &Caller,
        name: &str,
        change: PrincipalChange,
    ) -> Result<Principal> {
        access::require(caller, Action::ManageTokens)?;
        let current = self
            .store
            .by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("principal '{name}'")))?;
        // A runner's tokens each name their node: a role cannot be made or unmade runner.
        if let Some(role) = change.role
            && (role == Role::Runner) != (current.role == Role::Runner)
        {
            return Err(Error::invalid(
                "role",
                format!(
                    "cannot change from {} to {}: runner principals stay runners, and others \
                     never become one (make a runner token instead)",
                    current.role.as_str(),
                    role.as_str()
                ),
            ));
        }
        self.store
            .update(name, change)
            .await?
            .ok_or_else(|| Error::NotFound(format!("principal '{name}'")))
    }

    /// The usage of the principal named `name` (empty: the caller's own).
    pub(crate) async fn usage(&self, caller: &Caller, name: &str) -> Result<UsageReport> {
        let name = if name.is_empty() {
            caller.principal_name.as_str()
        } else {
            name
        };
        policy::scope(caller).may_list_owner(caller, name)?;
        let principal = self
            .store
            .by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("principal '{name}'")))?;
        Ok(UsageReport {
            usage: self.store.usage(principal.id).await?,
            principal: principal.name,
            quota: principal.quota,
        })
    }
}
