//! The stores against a fresh, migrated PostgreSQL database each (PIRUS_TEST_DATABASE_URL, as
//! the black-box tests use): what they persist of the lifecycle's decisions, fencing, the
//! queue's bounds, and node leases.

use std::time::Duration;

use pirus_db::views::{PipelineState, PipelineView};
use uuid::Uuid;

use super::*;
use crate::{
    domain::{Error, Requested, Run, RunFilter, RunStatus},
    lifecycle::{Desired, Event, Request},
    limits::Limits,
};

const LARGE: Limits = Limits {
    cpus: 8,
    memory_bytes: 16 << 30,
    processes: 10_000,
    disk_bytes: 64 << 30,
    time: Duration::from_secs(86_400),
};

/// A node with room for anything the tests queue, and no labels.
static ROOMY: std::sync::LazyLock<crate::placement::Placement> =
    std::sync::LazyLock::new(|| crate::placement::Placement {
        capacity: crate::placement::Capacity {
            cpus: 1024,
            memory_bytes: 1 << 50,
            disk_bytes: 1 << 50,
            cpu_overcommit: 1.0,
        },
        labels: Default::default(),
    });

/// Claims for `node` with `max_runs` slots, taking runs up to `largest` (also the default
/// of what a run does not ask for), with room for anything.
async fn claim(
    queue: &QueueStore,
    node: &str,
    max_runs: u32,
    largest: &Limits,
) -> crate::domain::Result<Option<Uuid>> {
    let limits = crate::limits::NodeLimits::new(*largest, *largest);
    queue
        .claim(
            node,
            super::ClaimBounds {
                max_runs,
                limits: &limits,
                placement: &ROOMY,
            },
        )
        .await
}

fn pipeline() -> PipelineView {
    PipelineView {
        id: Uuid::now_v7(),
        name: "p".into(),
        version: "1".into(),
        state: PipelineState::Ready,
        image_sha256: Some("a".repeat(64)),
        image_file_id: None,
        manifest: None,
        form: None,
    }
}

async fn queued(stores: &Stores, requested: Requested, max_attempts: i32) -> Run {
    stores
        .runs
        .insert(RunInsert {
            id: Uuid::now_v7(),
            pipeline: pipeline(),
            name: "r".into(),
            config: serde_json::json!({}),
            input_file_ids: Vec::new(),
            priority: 0,
            request_id: None,
            owner: None,
            tes: None,
            plan: crate::domain::Plan::default(),
            requested,
            max_attempts,
            node_selector: Default::default(),
        })
        .await
        .unwrap()
}

async fn node(stores: &Stores, name: &str, lease: u64) {
    stores
        .nodes
        .register(&NodeRegistration {
            name,
            address: "127.0.0.1:1",
            max_runs: 2,
            largest: &LARGE,
            placement: &ROOMY,
            lease_seconds: lease,
            incarnation: Uuid::now_v7(),
            lxd_version: Some("5.0".into()),
        })
        .await
        .unwrap();
}

/// Stores as the runner's request side has them: pages of runs and single runs (in batches)
/// read on pools of their own that plan generically (here one for both).
async fn stores() -> (pirus_tests::TestDb, Stores) {
    let (db, pool) = pirus_tests::migrated_db().await.unwrap();
    let mut reads = pirus_db::DbConfig::new(db.url.clone());
    reads.generic_plans = true;
    let reads = pirus_db::connect(&reads).await.unwrap();
    (db, Stores::new(pool).with_read_pools(reads.clone(), reads))
}

#[tokio::test]
async fn runs_record_the_lifecycle_with_gap_free_events_fenced_by_node_and_attempt() {
    let (_db, s) = stores().await;
    node(&s, "a", 30).await;
    let run = queued(&s, Requested::default(), 1).await;
    assert_eq!(run.status, RunStatus::Waiting);
    let id = claim(&s.queue, "a", 2, &LARGE).await.unwrap().unwrap();
    assert_eq!(id, run.id);
    let claimed = s.runs.get(id).await.unwrap();
    assert_eq!(
        (claimed.status, claimed.attempt),
        (RunStatus::Initializing, 1)
    );
    // Another node, or another attempt, changes nothing.
    assert!(
        !s.runs
            .change(id, "b", 1, Change::new(Event::Started, "x"))
            .await
            .unwrap()
    );
    assert!(
        !s.runs
            .change(id, "a", 2, Change::new(Event::Started, "x"))
            .await
            .unwrap()
    );
    // What the lifecycle refuses is refused.
    let refused = s
        .runs
        .change(id, "a", 1, Change::new(Event::Exited, "x"))
        .await;
    assert!(
        matches!(refused, Err(Error::FailedPrecondition(_))),
        "{refused:?}"
    );
    for event in [
        Event::Started,
        Event::Noted,
        Event::Exited,
        Event::Collected { ok: true },
    ] {
        assert!(
            s.runs
                .change(id, "a", 1, Change::new(event, "step"))
                .await
                .unwrap()
        );
    }
    let done = s.runs.get(id).await.unwrap();
    assert_eq!(done.status, RunStatus::Done);
    assert!(done.ended_at.is_some());
    let seqs: Vec<i64> = s
        .runs
        .events_after(id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    // Ended: nothing more is recorded, and it can be deleted.
    assert!(
        !s.runs
            .change(id, "a", 1, Change::new(Event::Noted, "late"))
            .await
            .unwrap()
    );
    let (deleted, files) = s.runs.delete(id).await.unwrap();
    assert_eq!((deleted.id, files.len()), (id, 0));
    assert!(matches!(s.runs.get(id).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn client_requests_follow_the_lifecycle() {
    let (_db, s) = stores().await;
    node(&s, "a", 30).await;
    let waiting = queued(&s, Requested::default(), 1).await;
    let pause = s.runs.request(waiting.id, Request::Pause).await;
    assert!(
        matches!(pause, Err(Error::FailedPrecondition(_))),
        "{pause:?}"
    );
    let deleted = s.runs.delete(waiting.id).await;
    assert!(
        matches!(deleted, Err(Error::FailedPrecondition(_))),
        "{deleted:?}"
    );
    let canceled = s.runs.request(waiting.id, Request::Cancel).await.unwrap();
    assert_eq!(
        canceled.status,
        RunStatus::Canceled,
        "a waiting run is canceled at once"
    );

    let running = queued(&s, Requested::default(), 1).await;
    let id = claim(&s.queue, "a", 2, &LARGE).await.unwrap().unwrap();
    assert_eq!(id, running.id);
    s.runs
        .change(id, "a", 1, Change::new(Event::Started, ""))
        .await
        .unwrap();
    let asked = s.runs.request(id, Request::Pause).await.unwrap();
    assert_eq!(
        asked.status,
        RunStatus::Running,
        "the owner carries a pause out"
    );
    assert_eq!(s.queue.desired(id).await.unwrap(), Some(Desired::Pause));
    s.runs
        .change(id, "a", 1, Change::new(Event::Paused, ""))
        .await
        .unwrap();
    assert_eq!(
        s.queue.desired(id).await.unwrap(),
        None,
        "fulfilled, cleared"
    );
    s.runs.request(id, Request::Cancel).await.unwrap();
    assert_eq!(s.queue.desired(id).await.unwrap(), Some(Desired::Canceled));
}

#[tokio::test]
async fn the_queue_keeps_to_slots_drains_and_limits() {
    let (_db, s) = stores().await;
    node(&s, "a", 30).await;
    let small = Limits { cpus: 1, ..LARGE };
    let big = queued(
        &s,
        Requested {
            cpus: Some(4),
            ..Requested::default()
        },
        1,
    )
    .await;
    let one = queued(&s, Requested::default(), 1).await;
    let two = queued(&s, Requested::default(), 1).await;
    let three = queued(&s, Requested::default(), 1).await;
    // The big run is older, but too large for this node: skipped, not blocking.
    assert_eq!(claim(&s.queue, "a", 2, &small).await.unwrap(), Some(one.id));
    assert_eq!(claim(&s.queue, "a", 2, &small).await.unwrap(), Some(two.id));
    assert_eq!(
        claim(&s.queue, "a", 2, &small).await.unwrap(),
        None,
        "two slots"
    );
    let mut held = s.queue.held_by("a").await.unwrap();
    held.sort();
    assert_eq!(held, vec![(one.id, 1), (two.id, 1)]);
    assert!(s.queue.holds(one.id, "a", 1).await.unwrap());
    s.nodes.set_draining("a", true).await.unwrap();
    assert_eq!(
        claim(&s.queue, "a", 5, &LARGE).await.unwrap(),
        None,
        "draining"
    );
    s.nodes.set_draining("a", false).await.unwrap();
    assert_eq!(claim(&s.queue, "a", 5, &LARGE).await.unwrap(), Some(big.id));
    assert_eq!(
        claim(&s.queue, "a", 5, &LARGE).await.unwrap(),
        Some(three.id)
    );
}

#[tokio::test]
async fn lapsed_nodes_are_settled_once_with_retries_or_errors() {
    let (_db, s) = stores().await;
    node(&s, "lost", 1).await;
    node(&s, "other", 30).await;
    let retried = queued(&s, Requested::default(), 2).await;
    let ended = queued(&s, Requested::default(), 1).await;
    for _ in 0..2 {
        claim(&s.queue, "lost", 2, &LARGE).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.nodes.expire().await.unwrap(), vec!["lost".to_owned()]);
    assert!(s.nodes.expire().await.unwrap().is_empty(), "settled once");
    let r = s.runs.get(retried.id).await.unwrap();
    assert_eq!((r.status, r.node.as_deref()), (RunStatus::Waiting, None));
    let e = s.runs.get(ended.id).await.unwrap();
    assert_eq!(e.status, RunStatus::Error);
    assert!(
        e.error_message.contains("node lost was lost"),
        "{}",
        e.error_message
    );
    // The lost node's later changes are refused; the retry is a new attempt elsewhere.
    assert!(
        !s.runs
            .change(retried.id, "lost", 1, Change::new(Event::Started, ""))
            .await
            .unwrap()
    );
    assert_eq!(
        claim(&s.queue, "other", 2, &LARGE).await.unwrap(),
        Some(retried.id)
    );
    assert_eq!(s.runs.get(retried.id).await.unwrap().attempt, 2);
    let largest = s.nodes.largest_runs().await.unwrap();
    assert_eq!(largest, vec![LARGE, LARGE]);
}

/// The plan of `sql` with `values`, as JSON (EXPLAIN without running it): the plan for these
/// values, as a session of the work pool makes it.
async fn plan(
    db: &sea_orm::DatabaseConnection,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> serde_json::Value {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!("EXPLAIN (FORMAT JSON) {sql}"),
            values,
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "QUERY PLAN").unwrap()
}

/// The generic plan of `sql`, which takes `params` parameters, as JSON: the one plan for any
/// values a session of the request pools makes (`plan_cache_mode = force_generic_plan`).
async fn generic_plan(
    db: &sea_orm::DatabaseConnection,
    sql: &str,
    params: usize,
) -> serde_json::Value {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    txn.execute_unprepared(&format!("PREPARE hot AS {sql}"))
        .await
        .unwrap();
    // Any values do: the plan is the same for all.
    let args = match params {
        0 => String::new(),
        n => format!("({})", vec!["NULL"; n].join(", ")),
    };
    let row = txn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("EXPLAIN (FORMAT JSON) EXECUTE hot{args}"),
        ))
        .await
        .unwrap()
        .unwrap();
    let plan = row.try_get("", "QUERY PLAN").unwrap();
    txn.execute_unprepared("DEALLOCATE hot").await.unwrap();
    txn.rollback().await.unwrap();
    plan
}

/// The relations a plan reads by sequential scan.
fn seq_scans(plan: &serde_json::Value, found: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(node) => {
            if node.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                let relation = node.get("Relation Name").and_then(|r| r.as_str());
                found.push(relation.unwrap_or("?").to_owned());
            }
            node.values().for_each(|v| seq_scans(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| seq_scans(v, found)),
        _ => {}
    }
}

/// Every hot query of the runner, EXPLAINed on a database seeded as `bench/seed.sql` seeds it
/// for the load benchmark (100,000 runs, about 1,000,000 events, outputs and logs of runs),
/// reads its tables through an index: no sequential scan of runs, events, attempts or files.
/// These are the statements the stores run (the same builders): the request side's as the
/// generic plans its sessions use, the claim as planned for a node's values.
#[tokio::test]
async fn hot_queries_read_through_indexes_on_a_seeded_database() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let (_db, stores) = stores().await;
    let db = stores.db().clone();
    let user = Uuid::new_v4();
    // The seeding functions are temporary: one transaction keeps one session.
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(include_str!("../../../../bench/seed.sql"))
        .await
        .unwrap();
    txn.execute_unprepared(&format!(
        "SELECT pg_temp.pirus_seed(100000, 10, 20000, '{user}')"
    ))
    .await
    .unwrap();
    txn.commit().await.unwrap();
    let id_at = |offset: u32| {
        let db = db.clone();
        async move {
            let id: Uuid = db
                .query_one_raw(stmt(
                    &format!("SELECT id FROM runs ORDER BY id OFFSET {offset} LIMIT 1"),
                    [],
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get("", "id")
                .unwrap();
            id
        }
    };
    let id = id_at(50_000).await;
    let page = |after| crate::domain::Page { size: 50, after };
    let lists = [
        (
            "ListRuns status=done",
            RunFilter {
                status: Some(RunStatus::Done),
                ..Default::default()
            },
            page(Some(id)),
        ),
        (
            "ListRuns status=error",
            RunFilter {
                status: Some(RunStatus::Error),
                ..Default::default()
            },
            page(None),
        ),
        (
            "ListRuns of a user, status=done",
            RunFilter {
                owner: Some(user),
                status: Some(RunStatus::Done),
                ..Default::default()
            },
            page(Some(id)),
        ),
        (
            "ListRuns of a user",
            RunFilter {
                owner: Some(user),
                ..Default::default()
            },
            page(None),
        ),
        (
            "ListRuns of a pipeline's runs on a node",
            RunFilter {
                node: Some("n".into()),
                ..Default::default()
            },
            page(None),
        ),
        (
            "ListTasks of a user, tagged",
            RunFilter {
                owner: Some(user),
                tasks: Some(crate::domain::TaskFilter {
                    tags: vec![("k".into(), Some("v".into()))],
                    ..Default::default()
                }),
                ..Default::default()
            },
            page(None),
        ),
    ];
    let mut checked = Vec::new();
    for (what, filter, page) in lists {
        let statement = rows::list_statement(&filter, page);
        let params = statement.values.map(|v| v.0.len()).unwrap_or_default();
        checked.push((
            what.to_owned(),
            generic_plan(&db, &statement.sql, params).await,
        ));
    }
    checked.push((
        "GetRun (a batch of reads by id)".into(),
        generic_plan(&db, &runs::runs_by_ids_sql(), 1).await,
    ));
    checked.push((
        "WatchRun's reads".into(),
        generic_plan(&db, rows::EVENTS_AFTER_SQL, 2).await,
    ));
    checked.push((
        "task logs".into(),
        generic_plan(&db, attempts::ATTEMPT_LOGS_SQL, 1).await,
    ));
    // The output or log ids of a run not sealed yet: the function's body, as it stands.
    let body: String = db
        .query_one_raw(stmt(
            "SELECT prosrc FROM pg_proc WHERE proname = 'pirus_run_files'",
            [],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "prosrc")
        .unwrap();
    checked.push((
        "an unsealed run's files".into(),
        generic_plan(&db, &body, 2).await,
    ));
    let claim = claim::claim_sql(false);
    let claim_values: Vec<sea_orm::Value> = vec![
        "n".into(),
        4i32.into(),
        (8i64 << 30).into(),
        2048i32.into(),
        (64i64 << 30).into(),
        86_400i64.into(),
        "waiting".into(),
        "initializing".into(),
        1i32.into(),
        (1i64 << 30).into(),
        (8i64 << 30).into(),
        serde_json::json!({}).into(),
        4i64.into(),
        (8i64 << 30).into(),
        true.into(),
        (64i64 << 30).into(),
    ];
    let mut owner_values = claim_values.clone();
    owner_values.push(Uuid::now_v7().into());
    checked.push((
        "a claim of one owner's runs (fair share)".into(),
        plan(&db, &claim::claim_sql(true), owner_values).await,
    ));
    checked.push(("the claim".into(), plan(&db, &claim, claim_values).await));
    for (what, plan) in &checked {
        let mut scans = Vec::new();
        seq_scans(plan, &mut scans);
        scans.retain(|r| {
            [
                "runs",
                "run_events",
                "run_attempts",
                "files",
                "principals",
                "principal_usage",
            ]
            .contains(&r.as_str())
        });
        assert!(
            scans.is_empty(),
            "{what} scans {scans:?} sequentially: {plan:#}"
        );
    }
}

/// A file of `run` as the catalogue registers an output or a log (`kind`), on `db`.
async fn run_file(db: &impl sea_orm::ConnectionTrait, run: Uuid, kind: &str, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    db.execute_raw(stmt(
        "INSERT INTO files (id, name, kind, status, size, source_run_id)
         VALUES ($1, $2, $3, 'ready', 1, $4)",
        [id.into(), name.into(), kind.into(), run.into()],
    ))
    .await
    .unwrap();
    id
}

/// The output and log ids sealed on a run's row (None while not sealed).
async fn sealed(db: &impl sea_orm::ConnectionTrait, run: Uuid) -> Option<(Vec<Uuid>, Vec<Uuid>)> {
    let row = db
        .query_one_raw(stmt(
            "SELECT output_file_ids, log_file_ids FROM runs WHERE id = $1",
            [run.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let outputs: Option<Vec<Uuid>> = row.try_get("", "output_file_ids").unwrap();
    let logs: Option<Vec<Uuid>> = row.try_get("", "log_file_ids").unwrap();
    outputs.zip(logs)
}

/// A run claimed by node `a` whose command exited: FINISHING, registering its outputs.
async fn finishing(s: &Stores) -> Uuid {
    let run = queued(s, Requested::default(), 1).await;
    assert_eq!(claim(&s.queue, "a", 8, &LARGE).await.unwrap(), Some(run.id));
    for event in [Event::Started, Event::Exited] {
        assert!(
            s.runs
                .change(run.id, "a", 1, Change::new(event, ""))
                .await
                .unwrap()
        );
    }
    run.id
}

async fn ends(s: &Stores, run: Uuid) {
    let done = Change::new(Event::Collected { ok: true }, "");
    assert!(s.runs.change(run, "a", 1, done).await.unwrap());
}

#[tokio::test]
async fn a_runs_output_and_log_ids_are_sealed_when_it_ends_and_unsealed_by_a_change() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let (_db, s) = stores().await;
    let db = s.db().clone();
    node(&s, "a", 30).await;
    let run = finishing(&s).await;
    let other = finishing(&s).await;
    let b = run_file(&db, run, "output", "b.txt").await;
    let a = run_file(&db, run, "output", "a.txt").await;
    let log = run_file(&db, run, "log", "stdout").await;
    run_file(&db, run, "data", "not-an-output").await;
    let others = run_file(&db, other, "output", "a.txt").await;
    // Not ended: read from its files, in name order.
    assert_eq!(sealed(&db, run).await, None);
    let read = s.runs.get(run).await.unwrap();
    assert_eq!(
        (read.output_file_ids, read.log_file_ids),
        (vec![a, b], vec![log])
    );

    // Ended: sealed on the row, and every read answers the same.
    ends(&s, run).await;
    assert_eq!(sealed(&db, run).await, Some((vec![a, b], vec![log])));
    let read = s.runs.get(run).await.unwrap();
    assert_eq!(
        (read.output_file_ids, read.log_file_ids),
        (vec![a, b], vec![log])
    );
    let page = crate::domain::Page {
        size: 10,
        after: None,
    };
    let listed = s.runs.list(&RunFilter::default(), page).await.unwrap();
    let listed = listed.iter().find(|r| r.id == run).unwrap();
    assert_eq!(
        (&listed.output_file_ids, &listed.log_file_ids),
        (&vec![a, b], &vec![log])
    );
    assert_eq!(
        s.runs.get(other).await.unwrap().output_file_ids,
        vec![others]
    );

    // An output deleted (DeleteFile) clears the seal; reads follow the files.
    db.execute_raw(stmt("DELETE FROM files WHERE id = $1", [a.into()]))
        .await
        .unwrap();
    assert_eq!(sealed(&db, run).await, None);
    assert_eq!(s.runs.get(run).await.unwrap().output_file_ids, vec![b]);

    // A registration under way when the run ends: the end waits for it, and seals it in.
    let late = finishing(&s).await;
    let registering = db.begin().await.unwrap();
    let e = run_file(&registering, late, "output", "e.txt").await;
    let ending = {
        let s = s.clone();
        tokio::spawn(async move { ends(&s, late).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ending.is_finished(), "the end waits for the registration");
    registering.commit().await.unwrap();
    ending.await.unwrap();
    assert_eq!(sealed(&db, late).await, Some((vec![e], vec![])));

    // An end under way when a file is registered: the registration waits for it, then clears
    // the seal it would otherwise miss.
    let racing = finishing(&s).await;
    let ending = db.begin().await.unwrap();
    ending
        .execute_raw(stmt(
            "UPDATE runs SET status = 'done' WHERE id = $1",
            [racing.into()],
        ))
        .await
        .unwrap();
    let registering = {
        let db = db.clone();
        tokio::spawn(async move { run_file(&db, racing, "log", "stderr").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !registering.is_finished(),
        "the registration waits for the end"
    );
    ending.commit().await.unwrap();
    let f = registering.await.unwrap();
    assert_eq!(sealed(&db, racing).await, None);
    assert_eq!(s.runs.get(racing).await.unwrap().log_file_ids, vec![f]);
}

/// Rows read by position: every column's type is checked on a result's first row, NULL or
/// not, so a reader out of step with its query is an error, never a wrong value; the other
/// rows are decoded as checked.
#[tokio::test]
async fn rows_read_by_position_check_each_columns_type_once() {
    use pirus_db::row::{Columns, read_all};
    use sea_orm::{ConnectionTrait, DbErr};
    let (db, _) = stores().await;
    let pool = pirus_db::connect(&pirus_db::DbConfig::new(db.url.clone()))
        .await
        .unwrap();
    let rows = |sql: &'static str| {
        let pool = pool.clone();
        async move { pool.query_all_raw(stmt(sql, [])).await.unwrap() }
    };
    let nullable =
        rows("SELECT v, t FROM (VALUES (NULL::bigint, 'a'), (5, 'b')) AS x (v, t)").await;
    let read = |c: &mut Columns<'_>| -> Result<(Option<i64>, String), DbErr> {
        Ok((c.take()?, c.take()?))
    };
    assert_eq!(
        read_all(&nullable, read).unwrap(),
        [(None, "a".to_owned()), (Some(5), "b".to_owned())]
    );

    // A NULL of the wrong type on the first row is still caught.
    let wrong = |c: &mut Columns<'_>| -> Result<(Option<i32>, String), DbErr> {
        Ok((c.take()?, c.take()?))
    };
    let e = read_all(&nullable, wrong).unwrap_err().to_string();
    assert!(e.contains("column 0 (v)") && e.contains("INT8"), "{e}");

    // Columns left unread, or read beyond the row, are errors.
    let short = |c: &mut Columns<'_>| -> Result<Option<i64>, DbErr> { c.take() };
    let e = read_all(&nullable, short).unwrap_err().to_string();
    assert!(e.contains("read 1 columns of a row of 2"), "{e}");
    let long = |c: &mut Columns<'_>| -> Result<(Option<i64>, String, String), DbErr> {
        Ok((c.take()?, c.take()?, c.take()?))
    };
    let e = read_all(&nullable, long).unwrap_err().to_string();
    assert!(e.contains("column 2 read of a row of 2"), "{e}");

    // A value NULL where the reader wants none is an error, whichever row it is on.
    let later_null = rows("SELECT v FROM (VALUES (1::bigint), (NULL)) AS x (v)").await;
    let strict = |c: &mut Columns<'_>| -> Result<i64, DbErr> { c.take() };
    let e = read_all(&later_null, strict).unwrap_err().to_string();
    assert!(e.contains("column 0 (v)"), "{e}");
    assert!(read_all(&[], strict).unwrap().is_empty());
}

/// Claimers of one node racing (the scheduler's claims, a restarted process's, several
/// workers) never take more than the node's capacity: 8 claimers at once, round after round,
/// on a node of 4 CPUs, runs of 2 CPUs each; each round exactly two are claimed and the node's
/// reservation is exactly its capacity. Between rounds the runs end.
#[tokio::test]
async fn racing_claimers_of_one_node_never_pass_its_capacity() {
    let (_db, s) = stores().await;
    node(&s, "a", 30).await;
    let placement = crate::placement::Placement {
        capacity: crate::placement::Capacity {
            cpus: 4,
            memory_bytes: 64 << 30,
            disk_bytes: 0,
            cpu_overcommit: 1.0,
        },
        labels: Default::default(),
    };
    let limits = crate::limits::NodeLimits::new(LARGE, LARGE);
    let two_cpus = Requested {
        cpus: Some(2),
        ..Requested::default()
    };
    for round in 0..10 {
        for _ in 0..5 {
            queued(&s, two_cpus, 1).await;
        }
        let claims = (0..8).map(|_| {
            let (queue, placement, limits) = (s.queue.clone(), placement.clone(), limits);
            tokio::spawn(async move {
                queue
                    .claim(
                        "a",
                        super::ClaimBounds {
                            max_runs: 100,
                            limits: &limits,
                            placement: &placement,
                        },
                    )
                    .await
                    .unwrap()
            })
        });
        let mut claimed = Vec::new();
        for claim in claims.collect::<Vec<_>>() {
            claimed.extend(claim.await.unwrap());
        }
        assert_eq!(
            claimed.len(),
            2,
            "round {round}: two runs of 2 CPUs fit 4 CPUs"
        );
        let reserved = super::claim::reserved(s.db(), "a").await.unwrap();
        assert_eq!((reserved.runs, reserved.cpus), (2, 4), "round {round}");
        // The claimed runs end; the waiting ones stay for the next round.
        for id in claimed {
            s.runs
                .change(id, "a", 1, Change::new(Event::Canceled, "round over"))
                .await
                .unwrap();
        }
    }
}
