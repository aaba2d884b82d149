//! Identity for both Pirus services. Every call carries `authorization: Bearer <token>`; the
//! one authorization layer ([`layer`]) authenticates it through the [`Verifier`] (tokens in the
//! shared database, kept only as SHA-256 digests, cached for at most [`verifier::CACHE`] so a
//! revocation is seen everywhere within seconds) and puts the [`Caller`] in the request's
//! extensions. Use cases then ask [`policy`] what that caller may do; no handler makes a check
//! of its own.
//!
//! Depends on (within Pirus): pirus-db. Never on: pirus-proto, pirus-server, pirus-lxd,
//! pirus-catalogue, pirus-runner.

pub mod admission;
pub mod audit;
pub mod client;
pub mod layer;
pub mod policy;
pub mod principals;
pub mod revocation;
pub mod store;
pub mod token;
pub mod verifier;

use uuid::Uuid;

pub use client::Credential;
pub use verifier::Verifier;

/// What a token may do (CONTRACT §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, tokens and pipelines included.
    Admin,
    /// Reads everything, controls any run, drains nodes, reads metrics.
    Operator,
    /// Its own files and runs, and every READY pipeline.
    User,
    /// What a runner needs of the catalogue and of other runners, for its node only.
    Runner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::User, Role::Runner];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::User => "user",
            Self::Runner => "runner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who makes a call, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's public id.
    pub accessor: Uuid,
    /// The token's name.
    pub name: String,
    /// Whom the token acts for: the owner of what the caller makes, and whose quotas it uses.
    pub principal: Uuid,
    /// The principal's name.
    pub principal_name: String,
    pub role: Role,
    /// The node a runner token acts for.
    pub node: Option<String>,
    /// What it presented, to pass on when a service calls another on its behalf (a runner
    /// reading a run's logs from the catalogue for the run's owner).
    pub credential: Credential,
    /// The caller of a service run with `--auth none`: every action of every role is open to
    /// it, a runner's included (registering any unfinished run's results), so that a
    /// development deployment runs pipelines end to end without tokens.
    pub unrestricted: bool,
}

impl Caller {
    /// The caller of a service run with `--auth none` (development on loopback only): treated
    /// as an admin, with the nil accessor and the nil principal.
    pub fn unauthenticated_admin() -> Self {
        Self {
            accessor: Uuid::nil(),
            name: "anonymous (--auth none)".to_owned(),
            principal: Uuid::nil(),
            principal_name: "anonymous".to_owned(),
            role: Role::Admin,
            node: None,
            credential: Credential::default(),
            unrestricted: true,
        }
    }
}

/// Why a call is refused before any use case sees it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token: send 'authorization: Bearer <token>'")]
    Missing,
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the token is unknown or its secret is wrong")]
    Unknown,
    #[error("the token expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
    #[error("the token's principal is disabled")]
    Disabled,
    #[error("the database is unavailable; retry later")]
    Unavailable,
}

/// Whether a service checks tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every call needs a valid token (the default).
    Token,
    /// Every caller is an admin: development on loopback only.
    None,
}
