//! Principals in the shared database: who owns files, uploads and runs, and whose quotas
//! apply. A token is one credential of one principal; its role is the principal's. Usage is
//! kept by the database's triggers (migration 10) in the transaction of what it counts; this
//! module only reads it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pirus_db::stmt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, TransactionTrait};
use uuid::Uuid;

use crate::Role;

/// A person or a service account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    Person,
    Service,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Person, Self::Service]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A principal's limits; 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_stored_bytes: u64,
    pub max_files: u64,
    pub max_queued_runs: u64,
    pub max_running_runs: u64,
    pub max_reserved_cpus: u64,
    pub max_reserved_memory_bytes: u64,
}

impl Quota {
    fn values(&self) -> [sea_orm::Value; 6] {
        let v = |n: u64| sea_orm::Value::from(i64::try_from(n).unwrap_or(i64::MAX));
        [
            v(self.max_stored_bytes),
            v(self.max_files),
            v(self.max_queued_runs),
            v(self.max_running_runs),
            v(self.max_reserved_cpus),
            v(self.max_reserved_memory_bytes),
        ]
    }
}

/// What a principal uses now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromQueryResult)]
pub struct Usage {
    pub stored_bytes: i64,
    pub files: i64,
    pub queued_runs: i64,
    pub running_runs: i64,
    pub reserved_cpus: i64,
    pub reserved_memory_bytes: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub id: Uuid,
    pub name: String,
    pub kind: PrincipalKind,
    pub role: Role,
    pub weight: u32,
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(FromQueryResult)]
struct Row {
    id: Uuid,
    name: String,
    kind: String,
    role: String,
    weight: i32,
    max_stored_bytes: i64,
    max_files: i64,
    max_queued_runs: i64,
    max_running_runs: i64,
    max_reserved_cpus: i64,
    max_reserved_memory_bytes: i64,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for Principal {
    type Error = DbErr;

    fn try_from(r: Row) -> Result<Self, DbErr> {
        let n = |v: i64| v.max(0) as u64;
        Ok(Self {
            kind: PrincipalKind::parse(&r.kind)
                .ok_or_else(|| DbErr::Custom(format!("unknown principal kind '{}'", r.kind)))?,
            role: Role::parse(&r.role)
                .ok_or_else(|| DbErr::Custom(format!("unknown role '{}'", r.role)))?,
            id: r.id,
            name: r.name,
            weight: r.weight.max(1) as u32,
            quota: Quota {
                max_stored_bytes: n(r.max_stored_bytes),
                max_files: n(r.max_files),
                max_queued_runs: n(r.max_queued_runs),
                max_running_runs: n(r.max_running_runs),
                max_reserved_cpus: n(r.max_reserved_cpus),
                max_reserved_memory_bytes: n(r.max_reserved_memory_bytes),
            },
            created_at: r.created_at,
            disabled_at: r.disabled_at,
        })
    }
}

const COLUMNS: &str = "id, name, kind, role, weight, max_stored_bytes, max_files, \
                       max_queued_runs, max_running_runs, max_reserved_cpus, \
                       max_reserved_memory_bytes, created_at, disabled_at";

/// A principal to make.
#[derive(Clone, Debug)]
pub struct NewPrincipal {
    pub name: String,
    pub kind: PrincipalKind,
    pub role: Role,
    pub weight: u32,
    pub quota: Quota,
}

/// What UpdatePrincipal changes; `None` keeps it.
#[derive(Clone, Debug, Default)]
pub struct PrincipalChange {
    pub role: Option<Role>,
    pub weight: Option<u32>,
    pub quota: Option<Quota>,
    pub disabled: Option<bool>,
}

/// A principal whose counters differ from a recount of the rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub principal: Uuid,
    pub counted: Usage,
    pub recounted: Usage,
}

#[derive(Debug, Clone)]
pub struct PrincipalStore {
    db: DatabaseConnection,
}

/// A weight as stored: at least 1, at most what the column holds (a larger one is that).
fn weight_value(weight: u32) -> i32 {
    i32::try_from(weight.max(1)).unwrap_or(i32::MAX)
}

/// Whether a principal name is valid: 1 to 100 of `[a-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Makes a principal named after `wanted` (made valid and unique by `pirus_principal_name`),
/// one such naming at a time across processes; answers its id.
pub(crate) async fn insert_named_after(
    db: &impl ConnectionTrait,
    wanted: &str,
    kind: PrincipalKind,
    role: Role,
    quota: &Quota,
) -> Result<Uuid, DbErr> {
    db.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock(hashtext('pirus_principal_name'))",
        [],
    ))
    .await?;
    let id = Uuid::now_v7();
    let mut values = vec![
        id.into(),
        wanted.into(),
        kind.as_str().into(),
        role.as_str().into(),
    ];
    values.extend(quota.values());
    db.execute_raw(stmt(
        "INSERT INTO principals (id, name, kind, role, max_stored_bytes, max_files,
                                 max_queued_runs, max_running_runs, max_reserved_cpus,
                                 max_reserved_memory_bytes)
         VALUES ($1, pirus_principal_name($2), $3, $4, $5, $6, $7, $8, $9, $10)",
        values,
    ))
    .await?;
    Ok(id)
}

/// The id of the principal named `name`, read through the `principal_names` view (which a
/// runner may read).
pub async fn id_of(db: &impl ConnectionTrait, name: &str) -> Result<Option<Uuid>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT id FROM principal_names WHERE name = $1",
            [name.into()],
        ))
        .await?;
    row.map(|r| r.try_get::<Uuid>("", "id")).transpose()
}

/// Principals' names by id, read once per process: a principal's name never changes and a
/// principal is never deleted, so an entry never goes stale. An id without a principal (the
/// nil owner of `--auth none`) is remembered as such: ids of new principals are new. What
/// shows an owner (File.owner, Run.owner) reads it here rather than joining every row it
/// answers with `principals`.
#[derive(Clone, Debug)]
pub struct Names {
    db: DatabaseConnection,
    cache: std::sync::Arc<std::sync::Mutex<HashMap<Uuid, Option<std::sync::Arc<str>>>>>,
}

/// Names kept at most; beyond, the cache starts again (a deployment has far fewer principals).
const NAMES_KEPT: usize = 100_000;

impl Names {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            cache: Default::default(),
        }
    }

    /// The names of the principals among `ids` (an id with no principal has none).
    pub async fn of(
        &self,
        ids: impl IntoIterator<Item = Uuid>,
    ) -> Result<HashMap<Uuid, std::sync::Arc<str>>, DbErr> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match cache.get(&id) {
                    Some(Some(name)) => {
                        found.insert(id, std::sync::Arc::clone(name));
                    }
                    Some(None) => {}
                    None if !missing.contains(&id) => missing.push(id),
                    None => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT id, name FROM principal_names WHERE id = ANY($1)",
                [missing.clone().into()],
            ))
            .await?;
        let mut named = HashMap::new();
        for row in rows {
            let name: std::sync::Arc<str> = row.try_get::<String>("", "name")?.into();
            named.insert(row.try_get::<Uuid>("", "id")?, name);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() + missing.len() > NAMES_KEPT {
            cache.clear();
        }
        for id in missing {
            let name = named.remove(&id);
            if let Some(name) = &name {
                found.insert(id, std::sync::Arc::clone(name));
            }
            cache.insert(id, name);
        }
        Ok(found)
    }
}

impl PrincipalStore {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Makes a principal; `Ok(None)` when the name is taken.
    pub async fn create(&self, new: NewPrincipal) -> Result<Option<Principal>, DbErr> {
        let mut values = vec![
            Uuid::now_v7().into(),
            new.name.into(),
            new.kind.as_str().into(),
            new.role.as_str().into(),
            weight_value(new.weight).into(),
        ];
        values.extend(new.quota.values());
        let sql = format!(
            "INSERT INTO principals (id, name, kind, role, weight, max_stored_bytes, max_files,
                                     max_queued_runs, max_running_runs, max_reserved_cpus,
                                     max_reserved_memory_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
        );
        Row::find_by_statement(stmt(&sql, values))
            .one(&self.db)
            .await?
            .map(Principal::try_from)
            .transpose()
    }

    pub async fn list(&self) -> Result<Vec<Principal>, DbErr> {
        let sql = format!("SELECT {COLUMNS} FROM principals ORDER BY name");
        Row::find_by_statement(stmt(&sql, []))
            .all(&self.db)
            .await?
            .into_iter()
            .map(Principal::try_from)
            .collect()
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<Principal>, DbErr> {
        let sql = format!("SELECT {COLUMNS} FROM principals WHERE name = $1");
        Row::find_by_statement(stmt(&sql, [name.into()]))
            .one(&self.db)
            .await?
            .map(Principal::try_from)
            .transpose()
    }

    /// Changes a principal (and its tokens' recorded role with its role) in one transaction;
    /// `None` when there is no such principal.
    pub async fn update(
        &self,
        name: &str,
        change: PrincipalChange,
    ) -> Result<Option<Principal>, DbErr> {
        let quota = change.quota.map(|q| q.values());
        let q = |i: usize| quota.as_ref().map(|v| v[i].clone());
        let txn = self.db.begin().await?;
        let sql = format!(
            "UPDATE principals SET
                 role = coalesce($2, role), weight = coalesce($3, weight),
                 max_stored_bytes = coalesce($4, max_stored_bytes),
                 max_files = coalesce($5, max_files),
                 max_queued_runs = coalesce($6, max_queued_runs),
                 max_running_runs = coalesce($7, max_running_runs),
                 max_reserved_cpus = coalesce($8, max_reserved_cpus),
                 max_reserved_memory_bytes = coalesce($9, max_reserved_memory_bytes),
                 disabled_at = CASE WHEN $10::boolean IS NULL THEN disabled_at
                                    WHEN $10 THEN coalesce(disabled_at, now()) END
             WHERE name = $1 RETURNING {COLUMNS}"
        );
        let none = || sea_orm::Value::BigInt(None);
        let updated = Row::find_by_statement(stmt(
            &sql,
            [
                name.into(),
                change.role.map(|r| r.as_str().to_owned()).into(),
                change.weight.map(weight_value).into(),
                q(0).unwrap_or_else(none),
                q(1).unwrap_or_else(none),
                q(2).unwrap_or_else(none),
                q(3).unwrap_or_else(none),
                q(4).unwrap_or_else(none),
                q(5).unwrap_or_else(none),
                change.disabled.into(),
            ],
        ))
        .one(&txn)
        .await?;
        let Some(row) = updated else {
            return Ok(None);
        };
        txn.execute_raw(stmt(
            "UPDATE tokens SET role = $2 WHERE principal_id = $1 AND role <> $2",
            [row.id.into(), row.role.clone().into()],
        ))
        .await?;
        txn.commit().await?;
        Principal::try_from(row).map(Some)
    }

    /// A principal's usage: the sum of its counters.
    pub async fn usage(&self, principal: Uuid) -> Result<Usage, DbErr> {
        Ok(Usage::find_by_statement(stmt(
            "SELECT stored_bytes, files, queued_runs, running_runs, reserved_cpus,
                    reserved_memory_bytes
             FROM principal_usage_totals WHERE principal_id = $1",
            [principal.into()],
        ))
        .one(&self.db)
        .await?
        .unwrap_or_default())
    }

    /// Every principal (or nil owner) whose counters differ from a recount of the rows, read
    /// in one snapshot. Empty when the counters are right.
    pub async fn drift(&self) -> Result<Vec<Drift>, DbErr> {
        #[derive(FromQueryResult)]
        struct Pair {
            principal_id: Uuid,
            a_stored_bytes: i64,
            a_files: i64,
            a_queued_runs: i64,
            a_running_runs: i64,
            a_reserved_cpus: i64,
            a_reserved_memory_bytes: i64,
            b_stored_bytes: i64,
            b_files: i64,
            b_queued_runs: i64,
            b_running_runs: i64,
            b_reserved_cpus: i64,
            b_reserved_memory_bytes: i64,
        }
        let cols = [
            "stored_bytes",
            "files",
            "queued_runs",
            "running_runs",
            "reserved_cpus",
            "reserved_memory_bytes",
        ];
        let pick = |side: &str| {
            cols.iter()
                .map(|c| format!("coalesce({side}.{c}, 0) AS {side}_{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let differs = cols
            .iter()
            .map(|c| format!("coalesce(a.{c}, 0) <> coalesce(b.{c}, 0)"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!(
            "SELECT coalesce(a.principal_id, b.principal_id) AS principal_id, {}, {}
             FROM principal_usage_totals a
             FULL JOIN pirus_usage_recount() b ON b.principal_id = a.principal_id
             WHERE {differs}",
            pick("a"),
            pick("b")
        );
        let txn = self.db.begin().await?;
        txn.execute_raw(stmt(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
            [],
        ))
        .await?;
        let pairs = Pair::find_by_statement(stmt(&sql, [])).all(&txn).await?;
        txn.commit().await?;
        Ok(pairs
            .into_iter()
            .map(|p| Drift {
                principal: p.principal_id,
                counted: Usage {
                    stored_bytes: p.a_stored_bytes,
                    files: p.a_files,
                    queued_runs: p.a_queued_runs,
                    running_runs: p.a_running_runs,
                    reserved_cpus: p.a_reserved_cpus,
                    reserved_memory_bytes: p.a_reserved_memory_bytes,
                },
                recounted: Usage {
                    stored_bytes: p.b_stored_bytes,
                    files: p.b_files,
                    queued_runs: p.b_queued_runs,
                    running_runs: p.b_running_runs,
                    reserved_cpus: p.b_reserved_cpus,
                    reserved_memory_bytes: p.b_reserved_memory_bytes,
                },
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_the_contract_allows() {
        assert!(valid_name("alice"));
        assert!(valid_name("ci.bot-2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("alice laptop"));
        assert!(!valid_name(&"a".repeat(101)));
        assert!(valid_name(&"a".repeat(100)));
    }
}
