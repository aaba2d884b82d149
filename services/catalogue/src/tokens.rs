//! The token use cases (AccessService): making, listing and revoking tokens and reading the
//! audit trail, for admins; WhoAmI for any valid token. Secrets are answered once, at
//! creation; the database keeps only their SHA-256.

use chrono::{DateTime, Utc};
use pirus_auth::{
    Caller, Role,
    audit::{Audit, AuditEvent},
    policy::Action,
    store::{NewToken, TokenInfo, TokenStore},
};
use uuid::Uuid;

use crate::{
    access,
    domain::{Error, Page, Result},
};

#[derive(Clone)]
pub(crate) struct Tokens {
    store: TokenStore,
    audit: Audit,
}

/// A token to make, as asked.
pub(crate) struct TokenRequest {
    pub name: String,
    pub role: Option<Role>,
    pub node: String,
    pub ttl: Option<chrono::Duration>,
}

/// A checked request: every problem named by its field.
fn check(request: TokenRequest, creator: Uuid) -> Result<NewToken> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid("name", "must be 1 to 200 characters"));
    }
    let role = request.role.ok_or_else(|| {
        Error::invalid(
            "role",
            "is required (ROLE_ADMIN, ROLE_OPERATOR, ROLE_USER or ROLE_RUNNER)",
        )
    })?;
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
        role,
        node,
        expires_at,
        created_by: Some(creator),
    })
}

impl Tokens {
    pub(crate) fn new(store: TokenStore, audit: Audit) -> Self {
        Self { store, audit }
    }

    /// Makes a token: answered with its secret, this once.
    pub(crate) async fn create(
        &self,
        caller: &Caller,
        request: TokenRequest,
    ) -> Result<(TokenInfo, String)> {
        access::require(caller, Action::ManageTokens)?;
        let new = check(request, caller.accessor)?;
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
