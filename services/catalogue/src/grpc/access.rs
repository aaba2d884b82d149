//! gRPC edge of identity (AccessService): principals, tokens, the audit trail. Convert, call
//! the use case, convert.

use pirus_auth::{
    Role,
    audit::AuditEvent,
    layer::{AuditTarget, caller},
    principals::{Principal, PrincipalChange, PrincipalKind, Quota},
    store::TokenInfo,
};
use pirus_proto::catalogue::v1::{self as pb, access_service_server::AccessService};
use tonic::{Request, Response, Status};

use super::convert::{self, parse_id, timestamp};
use crate::{
    domain::Error,
    principals::{PrincipalRequest, Principals, UsageReport},
    tokens::{TokenRequest, Tokens},
};

pub(crate) struct Access {
    pub tokens: Tokens,
    pub principals: Principals,
}

fn kind(value: i32) -> Result<Option<PrincipalKind>, Error> {
    match pb::PrincipalKind::try_from(value) {
        Ok(pb::PrincipalKind::Unspecified) => Ok(None),
        Ok(pb::PrincipalKind::Person) => Ok(Some(PrincipalKind::Person)),
        Ok(pb::PrincipalKind::Service) => Ok(Some(PrincipalKind::Service)),
        Err(_) => Err(Error::invalid(
            "kind",
            format!("{value} is not a PrincipalKind"),
        )),
    }
}

fn quota(q: pb::Quota) -> Quota {
    Quota {
        max_stored_bytes: q.max_stored_bytes,
        max_files: q.max_files,
        max_queued_runs: q.max_queued_runs,
        max_running_runs: q.max_running_runs,
        max_reserved_cpus: q.max_reserved_cpus,
        max_reserved_memory_bytes: q.max_reserved_memory_bytes,
    }
}

fn quota_to_proto(q: Quota) -> pb::Quota {
    pb::Quota {
        max_stored_bytes: q.max_stored_bytes,
        max_files: q.max_files,
        max_queued_runs: q.max_queued_runs,
        max_running_runs: q.max_running_runs,
        max_reserved_cpus: q.max_reserved_cpus,
        max_reserved_memory_bytes: q.max_reserved_memory_bytes,
    }
}

fn principal_to_proto(p: Principal) -> pb::Principal {
    pb::Principal {
        id: p.id.to_string(),
        name: p.name,
        kind: match p.kind {
            PrincipalKind::Person => pb::PrincipalKind::Person,
            PrincipalKind::Service => pb::PrincipalKind::Service,
        } as i32,
        role: role_to_proto(p.role) as i32,
        weight: p.weight,
        quota: Some(quota_to_proto(p.quota)),
        created_at: Some(timestamp(p.created_at)),
        disabled_at: p.disabled_at.map(timestamp),
    }
}

fn usage_to_proto(r: UsageReport) -> pb::Usage {
    let u = r.usage;
    pb::Usage {
        principal: r.principal,
        stored_bytes: u.stored_bytes,
        files: u.files,
        queued_runs: u.queued_runs,
        running_runs: u.running_runs,
        reserved: Some(pirus_proto::runner::v1::Resources {
            cpu: u.reserved_cpus.clamp(0, u32::MAX.into()) as u32,
            memory_bytes: u.reserved_memory_bytes,
            processes: 0,
            disk_bytes: 0,
        }),
        quota: Some(quota_to_proto(r.quota)),
    }
}

fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::Operator => pb::Role::Operator,
        Role::User => pb::Role::User,
        Role::Runner => pb::Role::Runner,
    }
}

fn role(value: i32) -> Result<Option<Role>, Error> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Unspecified) => Ok(None),
        Ok(pb::Role::Admin) => Ok(Some(Role::Admin)),
        Ok(pb::Role::Operator) => Ok(Some(Role::Operator)),
        Ok(pb::Role::User) => Ok(Some(Role::User)),
        Ok(pb::Role::Runner) => Ok(Some(Role::Runner)),
        Err(_) => Err(Error::invalid("role", format!("{value} is not a Role"))),
    }
}

fn token_to_proto(t: TokenInfo) -> pb::Token {
    pb::Token {
        accessor_id: t.accessor.to_string(),
        name: t.name,
        role: role_to_proto(t.role) as i32,
        node: t.node.unwrap_or_default(),
        expires_at: t.expires_at.map(timestamp),
        created_at: Some(timestamp(t.created_at)),
        revoked_at: t.revoked_at.map(timestamp),
        principal: t.principal_name,
    }
}

fn event_to_proto(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id.to_string(),
        at: Some(timestamp(e.at)),
        accessor_id: e.accessor_id.map(|a| a.to_string()).unwrap_or_default(),
        service: e.service,
        action: e.action,
        target: e.target,
        outcome: e.outcome,
        peer: e.peer,
        principal: e.principal,
    }
}

#[tonic::async_trait]
impl AccessService for Access {
    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let request = request.into_inner();
        let asked = PrincipalRequest {
            name: request.name,
            kind: kind(request.kind)?,
            role: role(request.role)?,
            weight: request.weight,
            quota: request.quota.map(quota),
        };
        let principal = self.principals.create(&caller, asked).await?;
        audit.set(principal.id);
        Ok(Response::new(principal_to_proto(principal)))
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        let caller = caller(&request)?;
        let principals = self.principals.list(&caller).await?;
        Ok(Response::new(pb::ListPrincipalsResponse {
            principals: principals.into_iter().map(principal_to_proto).collect(),
        }))
    }

    async fn update_principal(
        &self,
        request: Request<pb::UpdatePrincipalRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let request = request.into_inner();
        let change = PrincipalChange {
            role: match request.role {
                Some(r) => Some(role(r)?.ok_or_else(|| {
                    Error::invalid("role", "ROLE_UNSPECIFIED is not a role to set")
                })?),
                None => None,
            },
            weight: request.weight,
            quota: request.quota.map(quota),
            disabled: request.disabled,
        };
        let principal = self
            .principals
            .update(&caller, &request.name, change)
            .await?;
        audit.set(principal.id);
        Ok(Response::new(principal_to_proto(principal)))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::Usage>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().principal;
        let report = self.principals.usage(&caller, name.trim()).await?;
        Ok(Response::new(usage_to_proto(report)))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let request = request.into_inner();
        let ttl = match request.ttl {
            None => None,
            Some(d) => Some(
                chrono::Duration::try_seconds(d.seconds)
                    .and_then(|s| s.checked_add(&chrono::Duration::nanoseconds(d.nanos.into())))
                    .ok_or_else(|| Error::invalid("ttl", "is out of range"))?,
            ),
        };
        let asked = TokenRequest {
            name: request.name,
            role: role(request.role)?,
            node: request.node,
            ttl,
            principal: request.principal,
        };
        let (token, secret) = self.tokens.create(&caller, asked).await?;
        audit.set(token.accessor);
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_proto(token)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        let tokens = self.tokens.list(&caller).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_to_proto).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&request)?;
        let audit = AuditTarget::of(&request);
        let accessor = parse_id("accessor_id", &request.into_inner().accessor_id)?;
        audit.set(accessor);
        let token = self.tokens.revoke(&caller, accessor).await?;
        Ok(Response::new(token_to_proto(token)))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(token_to_proto(
            self.tokens.who_am_i(&caller).await?,
        )))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let page = convert::page(request.page_size, &request.page_token)?;
        let events = self.tokens.audit(&caller, page).await?;
        let (events, next_page_token) = convert::paged(page, events, |e| e.id);
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
            next_page_token,
        }))
    }
}
