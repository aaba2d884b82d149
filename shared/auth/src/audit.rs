//! The audit trail: every call that changes something, with who made it and how it ended,
//! in the shared database (both services write it; admins read it with ListAuditEvents).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement, Value,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One audited call.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub accessor_id: Option<Uuid>,
    /// The caller's principal, by name (empty when the caller could not be identified).
    pub principal: String,
    pub service: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub peer: String,
}

/// Writes the trail. Events are queued and written by one background task, many to a
/// statement and a commit: a burst of changes costs the database one commit per batch rather
/// than one per change, and never takes the pool's connections away from the calls themselves.
#[derive(Debug, Clone)]
pub struct Audit {
    db: DatabaseConnection,
    service: &'static str,
    queue: mpsc::Sender<[Value; COLUMNS]>,
    /// Anonymous refusals not recorded because the writer was behind.
    dropped: Arc<AtomicU64>,
}

const COLUMNS: usize = 8;
/// Events queued before `record` waits for the writer (in a task of its own: the call it
/// records is never held up).
const QUEUE: usize = 8192;
/// Events written by one statement at most.
const BATCH: usize = 256;

impl Audit {
    /// Starts the writer (on the current tokio runtime).
    pub fn new(db: DatabaseConnection, service: &'static str) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(db.clone(), events));
        Self {
            db,
            service,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records a call of `caller` (none: not identified) without holding it up; a failure to
    /// write is logged.
    pub fn record(
        &self,
        caller: Option<&crate::Caller>,
        action: &str,
        target: &str,
        outcome: &str,
        peer: &str,
    ) {
        let accessor = caller.map(|c| c.accessor);
        let values = [
            Uuid::now_v7().into(),
            accessor.into(),
            caller.map(|c| c.principal).into(),
            self.service.into(),
            action.to_owned().into(),
            target.to_owned().into(),
            outcome.to_owned().into(),
            peer.to_owned().into(),
        ];
        match self.queue.try_send(values) {
            // A caller's change waits for room (these are bounded by the calls in flight).
            Err(mpsc::error::TrySendError::Full(values)) if accessor.is_some() => {
                let queue = self.queue.clone();
                tokio::spawn(async move { queue.send(values).await });
            }
            // A refusal of an anonymous caller is dropped while the writer is behind: a flood
            // of them cannot grow this process's memory.
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "audit writer behind: anonymous refusals not recorded"
                    );
                }
            }
            _ => {}
        }
    }

    /// One page of events, oldest first, after `after`.
    pub async fn list(&self, after: Option<Uuid>, limit: u64) -> Result<Vec<AuditEvent>, DbErr> {
        AuditEvent::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT e.id, e.at, e.accessor_id, coalesce(p.name, '') AS principal, e.service,
                        e.action, e.target, e.outcome, e.peer
                 FROM audit_events e LEFT JOIN principals p ON p.id = e.principal_id
                 WHERE $1::uuid IS NULL OR e.id > $1 ORDER BY e.id LIMIT {limit}"
            ),
            [after.into()],
        ))
        .all(&self.db)
        .await
    }
}

/// The writer: waits for an event, takes whatever else is queued (up to [`BATCH`]), writes
/// them with one INSERT, and again, until every `Audit` is gone.
async fn write_batches(db: DatabaseConnection, mut events: mpsc::Receiver<[Value; COLUMNS]>) {
    let mut batch = Vec::with_capacity(BATCH);
    while events.recv_many(&mut batch, BATCH).await > 0 {
        let rows = batch.len();
        let placeholders: Vec<String> = (0..rows)
            .map(|r| {
                let columns: Vec<String> = (1..=COLUMNS)
                    .map(|c| format!("${}", r * COLUMNS + c))
                    .collect();
                format!("({})", columns.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_events (id, accessor_id, principal_id, service, action, target,
                                       outcome, peer)
             VALUES {}",
            placeholders.join(", ")
        );
        let values: Vec<Value> = batch.drain(..).flatten().collect();
        let written = db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, events = rows, "could not record audit events");
        }
    }
}
