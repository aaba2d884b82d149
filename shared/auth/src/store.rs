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
    pub role: Role,
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
                node: self.node,
                expires_at: self.expires_at,
                revoked_at: self.revoked_at,
                created_at: self.created_at,
            },
            self.secret_hash,
        ))
    }
}

const COLUMNS: &str =
    "accessor_id, name, role, node, secret_hash, expires_at, revoked_at, created_at";

/// A token to make.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
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

    /// Makes a token; answers it and its secret (the whole token), shown this once.
    pub async fn create(&self, new: NewToken) -> Result<(TokenInfo, String), DbErr> {
        create(&self.db, new).await
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, DbErr> {
        let sql = format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, accessor_id");
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
                role: Role::Admin,
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
                [info.accessor.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(Some((info, secret)))
    }
}

async fn create(db: &impl ConnectionTrait, new: NewToken) -> Result<(TokenInfo, String), DbErr> {
    let minted = token::mint();
    db.execute_raw(stmt(
        "INSERT INTO tokens (accessor_id, name, role, node, secret_hash, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            minted.accessor.into(),
            new.name.into(),
            new.role.as_str().into(),
            new.node.into(),
            minted.digest.to_vec().into(),
            new.expires_at.into(),
            new.created_by.into(),
        ],
    ))
    .await?;
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE accessor_id = $1");
    let (info, _) = Row::find_by_statement(stmt(&sql, [minted.accessor.into()]))
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the token just made".into()))?
        .split()?;
    Ok((info, minted.token))
}
