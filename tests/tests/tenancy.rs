//! Tenancy: principals own files, uploads and runs, tokens are their credentials, and every
//! principal's quotas hold under concurrency. Against the real services (and LXD for runs);
//! each test ends by recounting every principal's usage from the rows and finding the
//! counters equal.

use std::time::{Duration, Instant};

use anyhow::Result;
use pirus_proto::{
    catalogue::v1::{
        self as cat, access_service_client::AccessServiceClient,
        catalogue_service_client::CatalogueServiceClient,
    },
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use pirus_tests::{
    Channel, Kind, Launch, Process, TestDb,
    http::{Http, b64},
    stack::{self, Stack},
};
use tonic::Code;

/// The counters equal a recount of the rows (what `pirus-catalogue usage --check` checks).
async fn assert_no_drift(db: &TestDb) -> Result<()> {
    let pool = pirus_db::connect(&pirus_db::DbConfig::new(db.url.clone())).await?;
    let drift = pirus_auth::principals::PrincipalStore::new(pool.clone())
        .drift()
        .await?;
    pool.close().await.ok();
    assert!(drift.is_empty(), "usage counters drifted: {drift:?}");
    Ok(())
}

use pirus_tests::identity::{principal, services_without_lxd as services, token_of};

async fn catalogue_as(p: &Process, token: &str) -> Result<CatalogueServiceClient<Channel>> {
    Ok(CatalogueServiceClient::new(p.channel_as(token).await?))
}

async fn usage(p: &Process, token: &str) -> Result<cat::Usage> {
    Ok(AccessServiceClient::new(p.channel_as(token).await?)
        .get_usage(cat::GetUsageRequest::default())
        .await?
        .into_inner())
}

/// Creates a file of `size` bytes (its bytes not sent: a file counts from its creation).
async fn create(
    c: &mut CatalogueServiceClient<Channel>,
    name: &str,
    size: i64,
) -> Result<cat::File, tonic::Status> {
    c.create_file(cat::CreateFileRequest {
        filename: name.into(),
        size,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn upload(
    c: &mut CatalogueServiceClient<Channel>,
    name: &str,
    data: &[u8],
) -> Result<String> {
    let file = create(c, name, data.len() as i64).await?;
    let message = cat::WriteUploadRequest {
        upload_id: file.id.clone(),
        offset: 0,
        data: data.to_vec().into(),
        ..Default::default()
    };
    c.write_upload(tokio_stream::iter([message])).await?;
    Ok(file.id)
}

fn assert_quota(e: &tonic::Status, quota: &str, used: &str, limit: &str) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    for part in [quota, used, limit] {
        assert!(e.message().contains(part), "'{part}' in: {}", e.message());
    }
}

/// A principal's second upload past its byte quota is refused over gRPC and tus (naming the
/// quota, what is used and the limit) while the first stays READY; an upload of deferred
/// length is cut off at the limit with the bytes before it kept; max_files refuses the file
/// past it; deleting frees at once.
#[tokio::test]
async fn a_byte_quota_refuses_what_would_pass_it_and_deleting_frees_it() -> Result<()> {
    let db = TestDb::create().await?;
    let (catalogue, _runner) = services(&db).await?;
    let quota = cat::Quota {
        max_stored_bytes: 1000,
        max_files: 3,
        ..Default::default()
    };
    let carol = principal(&catalogue, "carol", quota).await?;
    let mut c = catalogue_as(&catalogue, &carol).await?;
    let first = upload(&mut c, "first", &[7u8; 600]).await?;

    let e = create(&mut c, "second", 600).await.unwrap_err();
    assert_quota(&e, "max_stored_bytes", "600 used", "limit is 1000");
    let auth = format!("Bearer {carol}");
    let meta = format!("filename {}", b64(b"second"));
    let r = Http::anonymous()
        .tus(
            "POST",
            &catalogue.http_url("/uploads/files/"),
            &[
                ("authorization", &auth),
                ("upload-length", "600"),
                ("upload-metadata", &meta),
            ],
        )
        .await?;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_stored_bytes"), "{}", r.body);
    let kept = c
        .get_file(cat::GetFileRequest { id: first.clone() })
        .await?
        .into_inner();
    assert_eq!(kept.status, cat::FileStatus::Ready as i32);
    assert_eq!(kept.owner, "carol");

    // Deferred length: charged as bytes arrive, cut off at the limit.
    let r = Http::anonymous()
        .tus(
            "POST",
            &catalogue.http_url("/uploads/files/"),
            &[
                ("authorization", &auth),
                ("upload-defer-length", "1"),
                ("upload-metadata", &meta),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let location = r.header("location").expect("Location").to_owned();
    let r = Http::anonymous()
        .patch(&location, 0, vec![1u8; 1000], &[("authorization", &auth)])
        .await?;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_stored_bytes"), "{}", r.body);
    let head = Http::anonymous()
        .tus("HEAD", &location, &[("authorization", &auth)])
        .await?;
    assert_eq!(head.offset(), 400, "the bytes up to the limit are kept");
    assert_eq!(usage(&catalogue, &carol).await?.stored_bytes, 1000);

    // max_files: two files (the READY one and the deferred upload), a third is the limit.
    create(&mut c, "empty", 0).await?;
    let e = create(&mut c, "fourth", 0).await.unwrap_err();
    assert_quota(&e, "max_files", "3 used", "limit is 3");

    // Deleting frees at once.
    c.delete_file(cat::DeleteFileRequest { id: first }).await?;
    let now = usage(&catalogue, &carol).await?;
    assert_eq!((now.stored_bytes, now.files), (400, 2));
    create(&mut c, "after", 600).await?;
    assert_no_drift(&db).await
}

/// 20 uploads created at once, racing for the last 10% of a quota: exactly the ten that fit
/// are made, the others refused, and the quota is never passed.
#[tokio::test]
async fn racing_uploads_never_pass_a_quota() -> Result<()> {
    let db = TestDb::create().await?;
    let (catalogue, _runner) = services(&db).await?;
    let quota = cat::Quota {
        max_stored_bytes: 10_000,
        ..Default::default()
    };
    let dana = principal(&catalogue, "dana", quota).await?;
    let mut c = catalogue_as(&catalogue, &dana).await?;
    create(&mut c, "bulk", 9_000).await?;
    // Two tokens of one principal share its quota: half the racers use a second token.
    let second = token_of(&catalogue, "dana", "dana ci").await?;
    let mut racers = Vec::new();
    for i in 0..20 {
        let token = if i % 2 == 0 { &dana } else { &second };
        let mut c = catalogue_as(&catalogue, token).await?;
        racers.push(tokio::spawn(async move {
            create(&mut c, &format!("racer-{i}"), 100).await
        }));
    }
    let mut made = 0;
    for racer in racers {
        match racer.await? {
            Ok(_) => made += 1,
            Err(e) => assert_quota(&e, "max_stored_bytes", "used", "limit is 10000"),
        }
    }
    assert_eq!(made, 10, "exactly the uploads that fit");
    let u = usage(&catalogue, &dana).await?;
    assert_eq!((u.stored_bytes, u.files), (10_000, 11));
    assert_no_drift(&db).await
}

/// A rotated token keeps everything: the new token of the principal sees the old token's
/// files and runs (and their outputs, the principal's too), the revoked one is refused; File
/// and Run name their owner; owner filters work for admins and are refused for users naming
/// another; audit events name the principal.
#[tokio::test]
async fn rotation_keeps_what_the_principal_owns() -> Result<()> {
    let mut s = stack::stack(2).await?;
    let pipeline = s.pipeline().await?;
    let old = principal(&s.catalogue, "alice", cat::Quota::default()).await?;
    let mut c = catalogue_as(&s.catalogue, &old).await?;
    let input = upload(&mut c, "reads.txt", b"x\n").await?;
    let mut r = RunnerServiceClient::new(s.runner.channel_as(&old).await?);
    let submitted = r
        .submit_run(run::SubmitRunRequest {
            pipeline_id: pipeline,
            input_file_ids: vec![input.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(submitted.owner, "alice");
    let events = s.watch(&submitted.id, 0).await?;
    assert_eq!(
        stack::status(events.last().expect("events").status),
        run::RunStatus::Done
    );

    let new = token_of(&s.catalogue, "alice", "alice laptop 2").await?;
    let mut admin = AccessServiceClient::new(s.catalogue.channel().await?);
    admin
        .revoke_token(cat::RevokeTokenRequest {
            accessor_id: accessor_of(&old),
        })
        .await?;
    let mut c2 = catalogue_as(&s.catalogue, &new).await?;
    let mut r2 = RunnerServiceClient::new(s.runner.channel_as(&new).await?);
    let file = c2
        .get_file(cat::GetFileRequest { id: input.clone() })
        .await?
        .into_inner();
    assert_eq!(file.owner, "alice");
    let done = r2
        .get_run(run::GetRunRequest {
            id: submitted.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(done.owner, "alice");
    assert!(!done.output_file_ids.is_empty());
    for output in &done.output_file_ids {
        let f = c2
            .get_file(cat::GetFileRequest { id: output.clone() })
            .await?
            .into_inner();
        assert_eq!(f.owner, "alice", "a run's outputs are its owner's");
    }
    let mine = r2
        .list_runs(run::ListRunsRequest {
            owner: "alice".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .runs;
    assert_eq!(mine.len(), 1);
    // The revoked token is refused within 5 s.
    let start = Instant::now();
    while c
        .get_file(cat::GetFileRequest { id: input.clone() })
        .await
        .is_ok()
    {
        assert!(start.elapsed() < Duration::from_secs(5), "still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Owner filters: an admin names anyone; a user only itself.
    let listed = s
        .cat
        .list_files(cat::ListFilesRequest {
            owner: "alice".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .files;
    assert!(listed.iter().all(|f| f.owner == "alice"));
    assert!(listed.iter().any(|f| f.id == input));
    let bob = principal(&s.catalogue, "bob", cat::Quota::default()).await?;
    let e = catalogue_as(&s.catalogue, &bob)
        .await?
        .list_files(cat::ListFilesRequest {
            owner: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = AccessServiceClient::new(s.catalogue.channel_as(&bob).await?)
        .get_usage(cat::GetUsageRequest {
            principal: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Audit events name the principal.
    let events = admin
        .list_audit_events(cat::ListAuditEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.principal == "alice" && e.action.ends_with("/CreateFile")),
        "an audit event of alice's CreateFile"
    );
    assert_no_drift(&s.db).await
}

fn accessor_of(token: &str) -> String {
    let hex = &token["pirus_".len().."pirus_".len() + 32];
    uuid::Uuid::parse_str(hex).unwrap().to_string()
}

/// Disabling a principal refuses all its tokens within 5 s on both services' gRPC, on tus
/// and on TES; enabling it again accepts them.
#[tokio::test]
async fn a_disabled_principal_is_refused_everywhere_within_five_seconds() -> Result<()> {
    let db = TestDb::create().await?;
    let (catalogue, runner) = services(&db).await?;
    let erin = principal(&catalogue, "erin", cat::Quota::default()).await?;
    let laptop = token_of(&catalogue, "erin", "erin ci").await?;
    let auth = format!("Bearer {laptop}");
    let tus_url = catalogue.http_url("/uploads/files/");
    let tes_url = runner.http_url("/ga4gh/tes/v1/tasks");
    let refused = |disabled: bool| {
        let (catalogue, runner, erin, laptop, auth) = (&catalogue, &runner, &erin, &laptop, &auth);
        let (tus_url, tes_url) = (&tus_url, &tes_url);
        async move {
            let mut c = catalogue_as(catalogue, erin).await?;
            let grpc_c = c.list_files(cat::ListFilesRequest::default()).await;
            let mut r = RunnerServiceClient::new(runner.channel_as(laptop).await?);
            let grpc_r = r.list_runs(run::ListRunsRequest::default()).await;
            let meta = format!("filename {}", b64(b"f"));
            let tus = Http::anonymous()
                .tus(
                    "POST",
                    tus_url,
                    &[
                        ("authorization", auth),
                        ("upload-length", "0"),
                        ("upload-metadata", &meta),
                    ],
                )
                .await?;
            let tes = Http::anonymous()
                .send("GET", tes_url, &[("authorization", auth)], Vec::new())
                .await?;
            let want = |code: Code| (code == Code::Unauthenticated) == disabled;
            anyhow::Ok(
                grpc_c.err().map_or(!disabled, |e| want(e.code()))
                    && grpc_r.err().map_or(!disabled, |e| want(e.code()))
                    && (tus.status == 401) == disabled
                    && (tes.status == 401) == disabled,
            )
        }
    };
    assert!(refused(false).await?, "accepted while enabled");
    let mut admin = AccessServiceClient::new(catalogue.channel().await?);
    let updated = admin
        .update_principal(cat::UpdatePrincipalRequest {
            name: "erin".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(updated.disabled_at.is_some());
    let start = Instant::now();
    while !refused(true).await? {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a disabled principal's tokens still accepted after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("disabling seen everywhere after {:?}", start.elapsed());
    // The change is in the audit trail (written within about a second).
    let start = Instant::now();
    loop {
        let events = admin
            .list_audit_events(cat::ListAuditEventsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .events;
        if events
            .iter()
            .any(|e| e.action.ends_with("/UpdatePrincipal") && e.target == updated.id)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "UpdatePrincipal not audited"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin
        .update_principal(cat::UpdatePrincipalRequest {
            name: "erin".into(),
            disabled: Some(false),
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    while !refused(false).await? {
        assert!(start.elapsed() < Duration::from_secs(5), "still refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_no_drift(&db).await
}

/// max_queued_runs refuses SubmitRun past it (naming the quota); max_running_runs holds a
/// second run WAITING while the first runs, then it runs.
#[tokio::test]
async fn run_quotas_refuse_past_the_queue_and_hold_back_past_running() -> Result<()> {
    let mut s: Stack = stack::stack(4).await?;
    let pipeline = s.pipeline().await?;
    s.install_version("alpine", "1.0.0").await?;
    let quota = cat::Quota {
        max_queued_runs: 1,
        max_running_runs: 1,
        ..Default::default()
    };
    let frank = principal(&s.catalogue, "frank", quota).await?;
    let mut c = catalogue_as(&s.catalogue, &frank).await?;
    let input = upload(&mut c, "reads.txt", b"x\n").await?;
    let mut r = RunnerServiceClient::new(s.runner.channel_as(&frank).await?);
    let submit = |sleep: u32| run::SubmitRunRequest {
        pipeline_id: pipeline.clone(),
        input_file_ids: vec![input.clone()],
        config_json: format!(r#"{{"sleep": {sleep}}}"#),
        ..Default::default()
    };
    let first = r.submit_run(submit(4)).await?.into_inner();
    s.wait_running(&first.id).await?;
    let second = r.submit_run(submit(0)).await?.into_inner();
    let e = r.submit_run(submit(0)).await.unwrap_err();
    assert_quota(&e, "max_queued_runs", "1 used", "limit is 1");
    // TES create counts against the same quota (429, as HTTP answers a quota).
    let task = serde_json::json!({
        "executors": [{"image": "alpine", "command": ["true"]}]
    });
    let auth = format!("Bearer {frank}");
    let tes = Http::anonymous()
        .send(
            "POST",
            &s.runner.http_url("/ga4gh/tes/v1/tasks"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            task.to_string(),
        )
        .await?;
    assert_eq!(tes.status, 429, "{}", tes.body);
    assert!(tes.body.contains("max_queued_runs"), "{}", tes.body);
    // The second waits while the first runs (the runner has room for four).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_now = s.get(&first.id).await?;
    let second_now = s.get(&second.id).await?;
    assert_eq!(stack::status(first_now.status), run::RunStatus::Running);
    assert_eq!(stack::status(second_now.status), run::RunStatus::Waiting);
    stack::assert_pending(&second_now, run::PendingReason::Quota, "max_running_runs");
    let u = usage(&s.catalogue, &frank).await?;
    assert_eq!((u.queued_runs, u.running_runs), (1, 1));
    assert_eq!(u.reserved.expect("reserved").cpu, 1);
    // Then it runs.
    let events = s.watch(&second.id, 0).await?;
    assert_eq!(
        stack::status(events.last().expect("events").status),
        run::RunStatus::Done
    );
    assert_no_drift(&s.db).await
}

/// A run whose outputs would take its owner past max_stored_bytes ends ERROR naming the
/// quota; its logs are kept (and counted).
#[tokio::test]
async fn a_run_whose_outputs_pass_the_quota_ends_in_error_with_its_logs() -> Result<()> {
    let mut s = stack::stack(2).await?;
    let script = "#!/bin/sh\necho writing\nhead -c 5000 /dev/zero > \"$PIRUS_OUTPUTS/big\"\n";
    let pipeline = s
        .install("big", script, r#"{"type": "object"}"#, "")
        .await?;
    let quota = cat::Quota {
        max_stored_bytes: 2000,
        ..Default::default()
    };
    let gina = principal(&s.catalogue, "gina", quota).await?;
    let mut r = RunnerServiceClient::new(s.runner.channel_as(&gina).await?);
    let submitted = r
        .submit_run(run::SubmitRunRequest {
            pipeline_id: pipeline,
            ..Default::default()
        })
        .await?
        .into_inner();
    s.watch(&submitted.id, 0).await?;
    let ended = s.get(&submitted.id).await?;
    assert_eq!(stack::status(ended.status), run::RunStatus::Error);
    assert!(
        ended.error_message.contains("max_stored_bytes"),
        "{}",
        ended.error_message
    );
    assert!(!ended.log_file_ids.is_empty(), "its logs are kept");
    let logs = s.logs(&submitted.id, "stdout").await?;
    assert!(String::from_utf8_lossy(&logs).contains("writing"));
    let u = usage(&s.catalogue, &gina).await?;
    assert!(u.stored_bytes <= 2000, "{u:?}");
    assert_no_drift(&s.db).await
}

/// A deployment upgraded to principals: every token made before gets a principal of its own
/// (named after it, made valid) that owns what the token owned, so the old token keeps
/// working and sees its files with their owner, and the usage counters start equal to a
/// recount.
#[tokio::test]
async fn tokens_made_before_principals_keep_what_they_own() -> Result<()> {
    let db = TestDb::create_empty().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE seaql_migrations (version varchar PRIMARY KEY, applied_at bigint NOT NULL)",
        )
        .await?;
    // The schema as it was before principals: migrations 1 to 9.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/db/src/migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    for file in files.iter().take(9) {
        client
            .batch_execute(&std::fs::read_to_string(file)?)
            .await?;
        let version = file.file_stem().unwrap().to_string_lossy().into_owned();
        client
            .execute(
                "INSERT INTO seaql_migrations (version, applied_at) VALUES ($1, 0)",
                &[&version],
            )
            .await?;
    }
    let minted = pirus_auth::token::mint();
    client
        .execute(
            "INSERT INTO tokens (accessor_id, name, role, secret_hash)
             VALUES ($1::text::uuid, 'Old Laptop!', 'user', $2)",
            &[&minted.accessor.to_string(), &minted.digest.to_vec()],
        )
        .await?;
    let file = uuid::Uuid::now_v7();
    client
        .execute(
            "INSERT INTO files (id, name, status, size, owner)
             VALUES ($1::text::uuid, 'old.txt', 'ready', 5, $2::text::uuid)",
            &[&file.to_string(), &minted.accessor.to_string()],
        )
        .await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let mut c = catalogue_as(&catalogue, &minted.token).await?;
    let got = c
        .get_file(cat::GetFileRequest {
            id: file.to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(got.owner, "old-laptop");
    let me = AccessServiceClient::new(catalogue.channel_as(&minted.token).await?)
        .who_am_i(cat::WhoAmIRequest {})
        .await?
        .into_inner();
    assert_eq!(
        (me.principal.as_str(), me.role),
        ("old-laptop", cat::Role::User as i32)
    );
    let u = usage(&catalogue, &minted.token).await?;
    assert_eq!((u.stored_bytes, u.files), (5, 1));
    assert_no_drift(&db).await
}
