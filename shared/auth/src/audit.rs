//! The audit trail: every call that changes something, with who made it and how it ended,
//! in the shared database (both services write it; admins read it with ListAuditEvents).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement};
use uuid::Uuid;

/// One audited call.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub accessor_id: Option<Uuid>,
    pub service: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub peer: String,
}

#[derive(Clone)]
pub struct Audit {
    db: DatabaseConnection,
    service: &'static str,
}

impl Audit {
    pub fn new(db: DatabaseConnection, service: &'static str) -> Self {
        Self { db, service }
    }

    /// Records a call without holding it up: written in the background; a failure is logged.
    pub fn record(
        &self,
        accessor: Option<Uuid>,
        action: &str,
        target: &str,
        outcome: &str,
        peer: &str,
    ) {
        let db = self.db.clone();
        let values = [
            Uuid::now_v7().into(),
            accessor.into(),
            self.service.into(),
            action.to_owned().into(),
            target.to_owned().into(),
            outcome.to_owned().into(),
            peer.to_owned().into(),
        ];
        tokio::spawn(async move {
            let written = db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO audit_events (id, accessor_id, service, action, target, outcome, peer)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    values,
                ))
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not record an audit event");
            }
        });
    }

    /// One page of events, oldest first, after `after`.
    pub async fn list(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<AuditEvent>, DbErr> {
        AuditEvent::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT id, at, accessor_id, service, action, target, outcome, peer
                 FROM audit_events WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT {limit}"
            ),
            [after.into()],
        ))
        .all(&self.db)
        .await
    }
}
