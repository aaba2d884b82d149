//! Tokens in the shared database: made (the catalogue's AccessService and the bootstrap
//! command), listed, revoked, and read by the [`crate::Verifier`].

use chrono::{DateTime, Utc};
use pirus_db::stmt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use crate::{Role, token};

/// A token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub accessor: Uuid,
    pub name: String,
    /// The principal's role: a token acts with its principal's.
    pub role: Role,
    pub principal: Uuid,
    pub principal_name: String,
    /// When the token's principal was disabled (its tokens are then all refused).
    pub disabled_at: Option<DateTime<Utc>>,
    pub node: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct Row {
    accessor_id: Uuid,
    name: String,
    role: String,
    node: Option<String>,
    secret_hash: Vec<u8>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    principal_id: Uuid,
    principal_name: String,
    disabled_at: Option<DateTime<Utc>>,
}

impl Row {
    fn split(self) -> Result<(TokenInfo, Vec<u8>), DbErr> {
        let role = Role::parse(&self.role)
            .ok_or_else(|| DbErr::Custom(format!("unknown role '{}'", self.role)))?;
        Ok((
            TokenInfo {
                accessor: self.accessor_id,
                name: self.name,
                role,
                principal: self.principal_id,
                principal_name: self.principal_name,
                disabled_at: self.disabled_at,
                node: self.node,
                expires_at: self.expires_at,
                revoked_at: self.revoked_at,
                created_at: self.created_at,
            },
            self.secret_hash,
        ))
    }
}

const COLUMNS: &str = "accessor_id, name, role, node, secret_hash, expires_at, revoked_at, \
                       created_at, principal_id, principal_name, disabled_at";

/// [`COLUMNS`] from the tables (what `pirus_token()` answers for one token).
const JOINED: &str = "SELECT t.accessor_id, t.name, p.role, t.node, t.secret_hash, t.expires_at, \
                      t.revoked_at, t.created_at, p.id AS principal_id, p.name AS principal_name, \
                      p.disabled_at FROM tokens t JOIN principals p ON p.id = t.principal_id";

/// Whom a new token acts for.
#[derive(Clone, Debug)]
pub enum TokenPrincipal {
    /// An existing principal, by id: the token takes its role.
    Existing(Uuid),
    /// A principal of its own, named after the token (made valid and unique), with this role
    /// and these quotas: what CreateToken without a principal has always meant.
    New {
        role: Role,
        quota: crate::principals::Quota,
    },
}

/// A token to make.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub name: String,
    pub principal: TokenPrincipal,
    pub node: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct TokenStore {
    db: DatabaseConnection,
}

impl TokenStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// A token and its stored digest. Read through `pirus_token()`, the one read of tokens a
    /// runner's database role may make (it cannot read the table).
    pub async fn find(&self, accessor: Uuid) -> Result<Option<(TokenInfo, Vec<u8>)>, DbErr> {
        let sql = format!("SELECT {COLUMNS} FROM pirus_token($1)");
        Row::find_by_statement(stmt(&sql, [accessor.into()]))
            .one(&self.db)
            .await?
            .map(Row::split)
            .transpose()
    }

    /// Makes a token (and its principal, when it gets one of its own) in one transaction;
    /// answers it and its secret (the whole token), shown this once.
    pub async fn create(&self, new: NewToken) -> Result<(TokenInfo, String), DbErr> {
        let txn = self.db.begin().await?;
        let made = create(&txn, new).await?;
        txn.commit().await?;
        Ok(made)
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, DbErr> {
        let sql = format!("{JOINED} ORDER BY t.created_at, t.accessor_id");
        Row::find_by_statement(stmt(&sql, []))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| r.split().map(|(info, _)| info))
            .collect()
    }

    /// Revokes a token (once); answers it, or `None` when there is no such token.
    pub async fn revoke(&self, accessor: Uuid) -> Result<Option<TokenInfo>, DbErr> {
        self.db
            .execute_raw(stmt(
                "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE accessor_id = $1",
                [accessor.into()],
            ))
            .await?;
        Ok(self.find(accessor).await?.map(|(info, _)| info))
    }

    /// Makes the first admin token when there is none, and gives it every row older than
    /// identity (files, uploads and runs without an owner). `None` when a token exists already.
    pub async fn bootstrap(&self, name: &str) -> Result<Option<(TokenInfo, String)>, DbErr> {
        let txn = self.db.begin().await?;
        // One bootstrap at a time, across processes.
        txn.execute_raw(stmt("LOCK TABLE tokens IN EXCLUSIVE MODE", []))
            .await?;
        let any = txn
            .query_one_raw(stmt("SELECT 1 AS one FROM tokens LIMIT 1", []))
            .await?;
        if any.is_some() {
            return Ok(None);
        }
        let (info, secret) = create(
            &txn,
            NewToken {
                name: name.to_owned(),
                principal: TokenPrincipal::New {
                    role: Role::Admin,
                    quota: crate::principals::Quota::default(),
                },
                node: None,
                expires_at: None,
                created_by: None,
            },
        )
        .await?;
        for table in ["files", "uploads", "runs"] {
            txn.execute_raw(stmt(
                // Also those made under `--auth none` (the nil accessor).
                &format!(
                    "UPDATE {table} SET owner = $1
                     WHERE owner IS NULL OR owner = '00000000-0000-0000-0000-000000000000'"
                ),
                [info.principal.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(Some((info, secret)))
    }
}

async fn create(db: &impl ConnectionTrait, new: NewToken) -> Result<(TokenInfo, String), DbErr> {
    let principal = match new.principal {
        TokenPrincipal::Existing(id) => id,
        TokenPrincipal::New { role, quota } => {
            let kind = if role == Role::Runner {
                crate::principals::PrincipalKind::Service
            } else {
                crate::principals::PrincipalKind::Person
            };
            crate::principals::insert_named_after(db, &new.name, kind, role, &quota).await?
        }
    };
    let minted = token::mint();
    db.execute_raw(stmt(
        "INSERT INTO tokens (accessor_id, name, role, node, secret_hash, expires_at, created_by,
                             principal_id)
         SELECT $1, $2, p.role, $3, $4, $5, $6, p.id FROM principals p WHERE p.id = $7",
        [
            minted.accessor.into(),
            new.name.into(),
            new.node.into(),
            minted.digest.to_vec().into(),
            new.expires_at.into(),
            new.created_by.into(),
            principal.into(),
        ],
    ))
    .await?;
    let sql = format!("{JOINED} WHERE t.accessor_id = $1");
    let (info, _) = Row::find_by_statement(stmt(&sql, [minted.accessor.into()]))
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("principal {principal}")))?
        .split()?;
    Ok((info, minted.token))
}
