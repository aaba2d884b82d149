//! The token use cases (AccessService): making, listing and revoking tokens and reading the
//! audit trail, for admins; WhoAmI for any valid token. Secrets are answered once, at
//! creation; the database keeps only their SHA-256. A token acts for a principal
//! (`crate::principals`): one named, or one of its own made with it.

use chrono::{DateTime, Utc};
use pirus_auth::{
    Caller, Role,
    audit::{Audit, AuditEvent},
    policy::Action,
    principals::{PrincipalStore, Quota},
    store::{NewToken, TokenInfo, TokenPrincipal, TokenStore},
};
use uuid::Uuid;

use crate::{
    access,
    domain::{Error, Page, Result},
};

#[derive(Clone)]
pub(crate) struct Tokens {
    store: TokenStore,
    principals: PrincipalStore,
    audit: Audit,
    /// The quota of a principal made with a token.
    default_quota: Quota,
}

/// A token to make, as asked.
pub(crate) struct TokenRequest {
    pub name: String,
    pub role: Option<Role>,
    pub node: String,
    pub ttl: Option<chrono::Duration>,
    /// A principal's name; empty: a principal of the token's own.
    pub principal: String,
}

/// A checked request: every problem named by its field. `existing` is the principal named
/// (its id and role), if one was.
fn check(
    request: TokenRequest,
    existing: Option<(Uuid, Role)>,
    default_quota: Quota,
    creator: Uuid,
) -> Result<NewToken> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid("name", "must be 1 to 200 characters"));
    }
    let (role, principal) = match (existing, request.role) {
        (Some((id, role)), None) => (role, TokenPrincipal::Existing(id)),
        (Some((id, role)), Some(asked)) if asked == role => (role, TokenPrincipal::Existing(id)),
        (Some((_, role)), Some(asked)) => {
            return Err(Error::invalid(
                "role",
                format!(
                    "is {}, but principal '{}' is {}: a token has its principal's role (leave \
                     role unset)",
                    asked.as_str(),
                    request.principal,
                    role.as_str()
                ),
            ));
        }
        (None, Some(role)) => (
            role,
            TokenPrincipal::New {
                role,
                quota: default_quota,
            },
        ),
        (None, None) => {
            return Err(Error::invalid(
                "role",
                "is required without a principal (ROLE_ADMIN, ROLE_OPERATOR, ROLE_USER or \
                 ROLE_RUNNER)",
            ));
        }
    };
    let node = match (role, request.node.trim()) {
        (Role::Runner, "") => return Err(Error::invalid("node", "is required for a runner token")),
        (Role::Runner, node) if node.len() > 253 => {
            return Err(Error::invalid("node", "is longer than 253 bytes"));
        }
        (Role::Runner, node) => Some(node.to_owned()),
        (_, "") => None,
        (_, _) => return Err(Error::invalid("node", "is only for runner tokens")),
    };
    let expires_at: Option<DateTime<Utc>> = match request.ttl {
        None => None,
        Some(ttl) if ttl <= chrono::Duration::zero() => {
            return Err(Error::invalid("ttl", "must be positive"));
        }
        Some(ttl) => Some(
            Utc::now()
                .checked_add_signed(ttl)
                .ok_or_else(|| Error::invalid("ttl", "is too long"))?,
        ),
    };
    Ok(NewToken {
        name: name.to_owned(),
        principal,
        node,
        expires_at,
        created_by: Some(creator),
    })
}

impl Tokens {
    pub(crate) fn new(db: sea_orm::DatabaseConnection, audit: Audit, default_quota: Quota) -> Self {
        Self {
            store: TokenStore::new(db.clone()),
            principals: PrincipalStore::new(db),
            audit,
            default_quota,
        }
    }

    /// Makes a token: answered with its secret, this once.
    pub(crate) async fn create(
        &self,
        caller: &Caller,
        request: TokenRequest,
    ) -> Result<(TokenInfo, String)> {
        access::require(caller, Action::ManageTokens)?;
        let existing = match request.principal.trim() {
            "" => None,
            name => {
                let principal = self.principals.by_name(name).await?.ok_or_else(|| {
                    Error::invalid("principal", format!("there is no principal named '{name}'"))
                })?;
                Some((principal.id, principal.role))
            }
        };
        let new = check(request, existing, self.default_quota, caller.accessor)?;
        Ok(self.store.create(new).await?)
    }

    pub(crate) async fn list(&self, caller: &Caller) -> Result<Vec<TokenInfo>> {
        access::require(caller, Action::ManageTokens)?;
        Ok(self.store.list().await?)
    }

    pub(crate) async fn revoke(&self, caller: &Caller, accessor: Uuid) -> Result<TokenInfo> {
        access::require(caller, Action::ManageTokens)?;
        self.store
            .revoke(accessor)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {accessor}")))
    }

    /// The caller's own token (with `--auth none`, a stand-in admin).
    pub(crate) async fn who_am_i(&self, caller: &Caller) -> Result<TokenInfo> {
        if let Some((info, _)) = self.store.find(caller.accessor).await? {
            return Ok(info);
        }
        Ok(TokenInfo {
            accessor: caller.accessor,
            name: caller.name.clone(),
            principal: caller.principal,
            principal_name: caller.principal_name.clone(),
            disabled_at: None,
            role: caller.role,
            node: caller.node.clone(),
            expires_at: None,
            revoked_at: None,
            created_at: Utc::now(),
        })
    }

    pub(crate) async fn audit(&self, caller: &Caller, page: Page) -> Result<Vec<AuditEvent>> {
        access::require(caller, Action::ReadAudit)?;
        Ok(self.audit.list(page.after, page.fetch()).await?)
    }
}
