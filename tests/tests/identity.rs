//! Identity: nothing answers without a valid token, each role may exactly what its row of the
//! table allows, users never see each other's files, uploads and runs, a runner acts only for
//! its own node, a revocation is seen everywhere within seconds, every change is audited, and
//! unsafe start-up options are refused. Against the real services (and LXD for runs).

use std::time::{Duration, Instant};

use anyhow::Result;
use pirus_auth::Role;
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
    identity::mint,
    stack::{Stack, stack},
};
use tokio_stream::StreamExt;
use tonic::Code;

/// Clients of both services, calling with one token.
#[derive(Clone)]
struct Clients {
    cat: CatalogueServiceClient<Channel>,
    access: AccessServiceClient<Channel>,
    run: RunnerServiceClient<Channel>,
}

async fn clients(s: &Stack, token: Option<&str>) -> Result<Clients> {
    let (c, r) = match token {
        Some(t) => (
            s.catalogue.channel_as(t).await?,
            s.runner.channel_as(t).await?,
        ),
        None => (
            pirus_tests::identity::with_token(s.catalogue.raw_channel().await?, None),
            pirus_tests::identity::with_token(s.runner.raw_channel().await?, None),
        ),
    };
    Ok(Clients {
        cat: CatalogueServiceClient::new(c.clone()),
        access: AccessServiceClient::new(c),
        run: RunnerServiceClient::new(r),
    })
}

/// Clients connecting from the loopback address `local`: a peer of its own, so that the
/// slow-down of repeated failures from one peer (tested on its own) does not pace a table.
async fn clients_from(s: &Stack, local: std::net::IpAddr, token: Option<&str>) -> Result<Clients> {
    let c = s.catalogue.channel_from(local, token).await?;
    Ok(Clients {
        cat: CatalogueServiceClient::new(c.clone()),
        access: AccessServiceClient::new(c),
        run: RunnerServiceClient::new(s.runner.channel_from(local, token).await?),
    })
}

fn peer(class: usize, index: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, class as u8 + 1, index as u8 + 1).into()
}

async fn token(s: &Stack, name: &str, role: Role, node: Option<&str>) -> Result<String> {
    mint(&s.db.url, name, role, node, None).await
}

/// What the calls of the table act on: admin-owned unless said.
struct Fixtures {
    pipeline: String,
    /// A READY data file.
    file: String,
    /// A file still UPLOADING (its upload id is its id).
    uploading: String,
    /// A finished run.
    run: String,
}

/// Every RPC of both services, by its full name.
const METHODS: &[&str] = &[
    "/pirus.catalogue.v1.CatalogueService/CreatePipeline",
    "/pirus.catalogue.v1.CatalogueService/InstallPipeline",
    "/pirus.catalogue.v1.CatalogueService/GetPipeline",
    "/pirus.catalogue.v1.CatalogueService/ListPipelines",
    "/pirus.catalogue.v1.CatalogueService/DeletePipeline",
    "/pirus.catalogue.v1.CatalogueService/GetPipelineDocument",
    "/pirus.catalogue.v1.CatalogueService/CreateFile",
    "/pirus.catalogue.v1.CatalogueService/GetFile",
    "/pirus.catalogue.v1.CatalogueService/ListFiles",
    "/pirus.catalogue.v1.CatalogueService/DeleteFile",
    "/pirus.catalogue.v1.CatalogueService/WriteUpload",
    "/pirus.catalogue.v1.CatalogueService/GetUploadStatus",
    "/pirus.catalogue.v1.CatalogueService/ReadFile",
    "/pirus.catalogue.v1.AccessService/CreateToken",
    "/pirus.catalogue.v1.AccessService/ListTokens",
    "/pirus.catalogue.v1.AccessService/RevokeToken",
    "/pirus.catalogue.v1.AccessService/WhoAmI",
    "/pirus.catalogue.v1.AccessService/ListAuditEvents",
    "/pirus.catalogue.v1.AccessService/CreatePrincipal",
    "/pirus.catalogue.v1.AccessService/ListPrincipals",
    "/pirus.catalogue.v1.AccessService/UpdatePrincipal",
    "/pirus.catalogue.v1.AccessService/GetUsage",
    "/pirus.runner.v1.RunnerService/SubmitRun",
    "/pirus.runner.v1.RunnerService/GetRun",
    "/pirus.runner.v1.RunnerService/ListRuns",
    "/pirus.runner.v1.RunnerService/WatchRun",
    "/pirus.runner.v1.RunnerService/StreamRunLogs",
    "/pirus.runner.v1.RunnerService/PauseRun",
    "/pirus.runner.v1.RunnerService/ResumeRun",
    "/pirus.runner.v1.RunnerService/CancelRun",
    "/pirus.runner.v1.RunnerService/DeleteRun",
    "/pirus.runner.v1.RunnerService/GetRunMonitoring",
    "/pirus.runner.v1.RunnerService/ListNodes",
    "/pirus.runner.v1.RunnerService/DrainNode",
    "/pirus.runner.v1.RunnerService/UndrainNode",
];

/// The methods the services publish (reflection's descriptor sets), to hold [`METHODS`] to.
fn published_methods() -> Result<Vec<String>> {
    use prost::Message;
    let mut out = Vec::new();
    for set in [
        pirus_proto::CATALOGUE_DESCRIPTOR_SET,
        pirus_proto::RUNNER_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(set)?;
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    out.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Calls `method` with requests naming the fixtures; the status it ended with (`Ok` for
/// success). Streams are read to their end.
async fn call(method: &str, c: &Clients, f: &Fixtures) -> Result<(), tonic::Status> {
    let (mut cat, mut access, mut run) = (c.cat.clone(), c.access.clone(), c.run.clone());
    let unknown = uuid::Uuid::new_v4().to_string();
    let name = method.rsplit('/').next().unwrap_or_default();
    match name {
        "CreatePipeline" => cat
            .create_pipeline(cat::CreatePipelineRequest {
                filename: "p.tar.gz".into(),
                size: 10,
                ..Default::default()
            })
            .await
            .map(drop),
        "InstallPipeline" => cat
            .install_pipeline(cat::InstallPipelineRequest {
                file_id: unknown.clone(),
            })
            .await
            .map(drop),
        "GetPipeline" => cat
            .get_pipeline(cat::GetPipelineRequest {
                id: f.pipeline.clone(),
            })
            .await
            .map(drop),
        "ListPipelines" => cat
            .list_pipelines(cat::ListPipelinesRequest::default())
            .await
            .map(drop),
        "DeletePipeline" => cat
            .delete_pipeline(cat::DeletePipelineRequest { id: unknown })
            .await
            .map(drop),
        "GetPipelineDocument" => cat
            .get_pipeline_document(cat::GetPipelineDocumentRequest {
                pipeline_id: f.pipeline.clone(),
                name: "manifest".into(),
            })
            .await
            .map(drop),
        "CreateFile" => cat
            .create_file(cat::CreateFileRequest {
                filename: "new.txt".into(),
                size: 3,
                ..Default::default()
            })
            .await
            .map(drop),
        "GetFile" => cat
            .get_file(cat::GetFileRequest { id: f.file.clone() })
            .await
            .map(drop),
        "ListFiles" => cat
            .list_files(cat::ListFilesRequest::default())
            .await
            .map(drop),
        "DeleteFile" => cat
            .delete_file(cat::DeleteFileRequest { id: unknown })
            .await
            .map(drop),
        "WriteUpload" => cat
            .write_upload(tokio_stream::iter([cat::WriteUploadRequest {
                upload_id: f.uploading.clone(),
                offset: 0,
                data: b"a".to_vec().into(),
                ..Default::default()
            }]))
            .await
            .map(drop),
        "GetUploadStatus" => cat
            .get_upload_status(cat::GetUploadStatusRequest {
                upload_id: f.uploading.clone(),
            })
            .await
            .map(drop),
        "ReadFile" => {
            drain(cat.read_file(cat::ReadFileRequest {
                file_id: f.file.clone(),
                ..Default::default()
            }))
            .await
        }
        "CreateToken" => access
            .create_token(cat::CreateTokenRequest {
                name: "made".into(),
                role: cat::Role::User as i32,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListTokens" => access
            .list_tokens(cat::ListTokensRequest {})
            .await
            .map(drop),
        "RevokeToken" => access
            .revoke_token(cat::RevokeTokenRequest {
                accessor_id: unknown,
            })
            .await
            .map(drop),
        "WhoAmI" => access.who_am_i(cat::WhoAmIRequest {}).await.map(drop),
        "ListAuditEvents" => access
            .list_audit_events(cat::ListAuditEventsRequest::default())
            .await
            .map(drop),
        "CreatePrincipal" => access
            .create_principal(cat::CreatePrincipalRequest {
                name: format!("p-{}", &unknown[..8]),
                kind: cat::PrincipalKind::Person as i32,
                role: cat::Role::User as i32,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListPrincipals" => access
            .list_principals(cat::ListPrincipalsRequest {})
            .await
            .map(drop),
        "UpdatePrincipal" => access
            .update_principal(cat::UpdatePrincipalRequest {
                name: "harness-admin".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        // The caller's own usage: any role.
        "GetUsage" => access
            .get_usage(cat::GetUsageRequest::default())
            .await
            .map(drop),
        _ => call_runner(name, &mut run, f).await,
    }
}

async fn call_runner(
    name: &str,
    run: &mut RunnerServiceClient<Channel>,
    f: &Fixtures,
) -> Result<(), tonic::Status> {
    let id = f.run.clone();
    match name {
        "SubmitRun" => run
            .submit_run(run::SubmitRunRequest {
                pipeline_id: f.pipeline.clone(),
                config_json: r#"{"sleep": 0}"#.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetRun" => run.get_run(run::GetRunRequest { id }).await.map(drop),
        "ListRuns" => run
            .list_runs(run::ListRunsRequest::default())
            .await
            .map(drop),
        "WatchRun" => {
            drain(run.watch_run(run::WatchRunRequest {
                run_id: id,
                after_seq: 0,
            }))
            .await
        }
        "StreamRunLogs" => {
            drain(run.stream_run_logs(run::StreamRunLogsRequest {
                run_id: id,
                stream: "stdout".into(),
                ..Default::default()
            }))
            .await
        }
        "PauseRun" => run.pause_run(run::PauseRunRequest { id }).await.map(drop),
        "ResumeRun" => run.resume_run(run::ResumeRunRequest { id }).await.map(drop),
        "CancelRun" => run.cancel_run(run::CancelRunRequest { id }).await.map(drop),
        "DeleteRun" => run
            .delete_run(run::DeleteRunRequest {
                id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .map(drop),
        "GetRunMonitoring" => run
            .get_run_monitoring(run::GetRunMonitoringRequest { id })
            .await
            .map(drop),
        "ListNodes" => run.list_nodes(run::ListNodesRequest {}).await.map(drop),
        "DrainNode" => run
            .drain_node(run::DrainNodeRequest {
                name: "no-such-node".into(),
            })
            .await
            .map(drop),
        "UndrainNode" => run
            .undrain_node(run::UndrainNodeRequest {
                name: "no-such-node".into(),
            })
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// A server stream read to its end: its first error, if any.
async fn drain<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> Result<(), tonic::Status> {
    let mut stream = call.await?.into_inner();
    while let Some(item) = stream.next().await {
        item?;
    }
    Ok(())
}

/// The stack, the test pipeline, a ready file, an uploading file and a finished run, all the
/// admin's.
async fn fixtures() -> Result<(Stack, Fixtures)> {
    let mut s = stack(2).await?;
    let (pipeline, file) = s.ready().await?;
    let uploading = s
        .cat
        .create_file(cat::CreateFileRequest {
            filename: "later.txt".into(),
            size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .id;
    let r = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            input_file_ids: vec![file.clone()],
            ..Default::default()
        })
        .await?;
    s.watch(&r.id, 0).await?;
    Ok((
        s,
        Fixtures {
            pipeline,
            file,
            uploading,
            run: r.id,
        },
    ))
}

/// Every RPC of both services and every tus route, with no token, a malformed one, an
/// unknown one, an expired one and a revoked one: UNAUTHENTICATED (401 with
/// `WWW-Authenticate: Bearer`) every time, while health, reflection, /livez and /readyz stay
/// open.
#[tokio::test]
async fn every_call_without_a_valid_token_is_unauthenticated() -> Result<()> {
    let mut published = published_methods()?;
    published.sort();
    let mut listed: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
    listed.sort();
    assert_eq!(listed, published, "the table covers every RPC");

    let (mut s, f) = fixtures().await?;
    let expired = mint(
        &s.db.url,
        "expired",
        Role::Admin,
        None,
        Some(chrono::Duration::seconds(-1)),
    )
    .await?;
    let revoked = token(&s, "revoked", Role::Admin, None).await?;
    let revoked_id = accessor_of(&revoked);
    let access = AccessServiceClient::new(s.catalogue.channel().await?);
    access
        .clone()
        .revoke_token(cat::RevokeTokenRequest {
            accessor_id: revoked_id,
        })
        .await?;
    let unknown = {
        // Well formed, never issued.
        let real = token(&s, "real", Role::Admin, None).await?;
        let fake = uuid::Uuid::new_v4().simple().to_string();
        format!("pirus_{fake}_{}", &real[real.len() - 43..])
    };
    tokio::time::sleep(pirus_auth::verifier::CACHE).await;

    let bad: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("a malformed token", Some("not-a-token")),
        ("an unknown token", Some(&unknown)),
        ("an expired token", Some(&expired)),
        ("a revoked token", Some(&revoked)),
    ];
    let files = s.catalogue.http_url("/uploads/files/");
    let member = format!("{files}{}", f.uploading);
    for (class, (what, t)) in bad.into_iter().enumerate() {
        for (i, method) in METHODS.iter().enumerate() {
            let c = clients_from(&s, peer(class, i), t).await?;
            let status = call(method, &c, &f).await.expect_err(method);
            assert_eq!(status.code(), Code::Unauthenticated, "{method} with {what}");
        }
        let http = |i: usize| Http::anonymous_from(peer(class, 100 + i));
        let header = t.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("tus-resumable", "1.0.0")];
        if let Some(h) = &header {
            headers.push(("authorization", h.as_str()));
        }
        for (i, (method, url)) in [
            ("POST", files.as_str()),
            ("HEAD", member.as_str()),
            ("PATCH", member.as_str()),
            ("DELETE", member.as_str()),
            ("GET", member.as_str()),
        ]
        .into_iter()
        .enumerate()
        {
            let mut h = headers.clone();
            h.push(("upload-length", "3"));
            let r = http(i).send(method, url, &h, "").await?;
            assert_eq!(r.status, 401, "tus {method} with {what}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{method}");
        }
        for (i, process) in [&s.catalogue, &s.runner].into_iter().enumerate() {
            let r = http(10 + i)
                .send("GET", &process.http_url("/metrics"), &headers, "")
                .await?;
            assert_eq!(r.status, 401, "/metrics with {what}");
            for open in ["/livez", "/readyz"] {
                let r = http(20)
                    .send("GET", &process.http_url(open), &headers, "")
                    .await?;
                assert_eq!(r.status, 200, "{open} with {what}");
            }
        }
    }
    // Health and reflection answer anyone.
    for process in [&s.catalogue, &s.runner] {
        let channel = pirus_tests::identity::with_token(process.raw_channel().await?, None);
        assert_eq!(
            pirus_tests::health_status(channel, "").await?,
            pirus_tests::SERVING
        );
    }
    // Nothing the refused calls asked for happened.
    let still = s
        .cat
        .get_file(cat::GetFileRequest {
            id: f.uploading.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(still.upload_offset, 0);
    s.get(&f.run).await?;
    Ok(())
}

fn accessor_of(token: &str) -> String {
    let hex = &token["pirus_".len().."pirus_".len() + 32];
    uuid::Uuid::parse_str(hex).unwrap().to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The role may: anything but PERMISSION_DENIED, UNAUTHENTICATED or NOT_FOUND of a
    /// fixture.
    Allowed,
    /// PERMISSION_DENIED.
    Denied,
    /// NOT_FOUND: someone else's resource.
    Hidden,
}

/// What each role gets for each call on the admin's fixtures (CONTRACT §6, row by row).
fn expected(role: Role, method: &str) -> Expect {
    use Expect::*;
    let name = method.rsplit('/').next().unwrap_or_default();
    match (role, name) {
        (_, "WhoAmI" | "GetUsage") => Allowed,
        (Role::Admin, _) => Allowed,
        (
            _,
            "CreatePipeline" | "InstallPipeline" | "DeletePipeline" | "CreateToken" | "ListTokens"
            | "RevokeToken" | "ListAuditEvents" | "CreatePrincipal" | "ListPrincipals"
            | "UpdatePrincipal",
        ) => Denied,
        (
            Role::Operator,
            "CreateFile" | "WriteUpload" | "DeleteFile" | "SubmitRun" | "DeleteRun",
        ) => Denied,
        (Role::Operator, _) => Allowed,
        (Role::User, "ListNodes" | "DrainNode" | "UndrainNode") => Denied,
        (Role::User, "GetPipeline" | "ListPipelines" | "GetPipelineDocument") => Allowed,
        (
            Role::User,
            "CreateFile" | "ListFiles" | "SubmitRun" | "ListRuns" | "DeleteRun" | "DeleteFile",
        ) => Allowed,
        (Role::User, _) => Hidden,
        (Role::Runner, "StreamRunLogs" | "GetRunMonitoring") => Allowed,
        (Role::Runner, "GetFile" | "ReadFile" | "GetUploadStatus" | "WriteUpload") => Hidden,
        (Role::Runner, _) => Denied,
    }
}

/// Each role, on every RPC of both services: exactly its row of the table is allowed;
/// everything else is PERMISSION_DENIED, or NOT_FOUND for the admin's own resources.
#[tokio::test]
async fn each_role_may_exactly_what_the_table_allows() -> Result<()> {
    let (s, f) = fixtures().await?;
    let mut failures = Vec::new();
    for role in [Role::Operator, Role::User, Role::Runner, Role::Admin] {
        let node = (role == Role::Runner).then_some("elsewhere");
        let t = token(&s, role.as_str(), role, node).await?;
        let c = clients(&s, Some(&t)).await?;
        for method in METHODS {
            let got = call(method, &c, &f).await;
            let want = expected(role, method);
            let ok = match (&got, want) {
                (Err(e), Expect::Denied) => e.code() == Code::PermissionDenied,
                (Err(e), Expect::Hidden) => e.code() == Code::NotFound,
                (Ok(()), Expect::Allowed) => true,
                (Err(e), Expect::Allowed) => {
                    let refused = matches!(
                        e.code(),
                        Code::PermissionDenied | Code::Unauthenticated | Code::Internal
                    );
                    let fixture_hidden =
                        e.code() == Code::NotFound && fixture_named(e.message(), &f);
                    !refused && !fixture_hidden
                }
                (Ok(()), _) => false,
            };
            if !ok {
                failures.push(format!(
                    "{} {method}: expected {want:?}, got {:?}",
                    role.as_str(),
                    got.map_err(|e| (e.code(), e.message().to_owned()))
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn fixture_named(message: &str, f: &Fixtures) -> bool {
    [&f.pipeline, &f.file, &f.uploading, &f.run]
        .iter()
        .any(|id| message.contains(id.as_str()))
}

/// Two users: neither sees nor touches the other's files, uploads (gRPC and tus) and runs,
/// nor uses the other's files as inputs; their idempotency keys do not collide; lists are
/// their own.
#[tokio::test]
async fn two_users_cannot_see_or_touch_each_other_s_files_uploads_and_runs() -> Result<()> {
    let mut s = stack(2).await?;
    let pipeline = s.pipeline().await?;
    let (ta, tb) = (
        token(&s, "alice", Role::User, None).await?,
        token(&s, "bob", Role::User, None).await?,
    );
    let (mut a, mut b) = (clients(&s, Some(&ta)).await?, clients(&s, Some(&tb)).await?);

    // Alice's file (with an idempotency key), her unfinished upload over tus, and her run.
    let create = |request_id: &str| cat::CreateFileRequest {
        filename: "reads.txt".into(),
        size: 2,
        request_id: request_id.into(),
        ..Default::default()
    };
    let file = a.cat.create_file(create("key-1")).await?.into_inner();
    a.cat
        .write_upload(tokio_stream::iter([cat::WriteUploadRequest {
            upload_id: file.id.clone(),
            offset: 0,
            data: b"x\n".to_vec().into(),
            ..Default::default()
        }]))
        .await?;
    let http = Http::anonymous();
    let bearer_a = format!("Bearer {ta}");
    let bearer_b = format!("Bearer {tb}");
    let meta = format!("filename {}", b64(b"half.bin"));
    let created = http
        .tus(
            "POST",
            &s.catalogue.http_url("/uploads/files/"),
            &[
                ("authorization", &bearer_a),
                ("upload-length", "10"),
                ("upload-metadata", &meta),
            ],
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let upload = created.header("location").unwrap().to_owned();
    let r = a
        .run
        .submit_run(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            input_file_ids: vec![file.id.clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    s.watch(&r.id, 0).await?;

    // Bob: everything of Alice's is not found, and nothing changes.
    let not_found = |what: &str, got: Result<(), tonic::Status>| {
        let e = got.expect_err(what);
        assert_eq!(e.code(), Code::NotFound, "{what}: {}", e.message());
    };
    let id = file.id.clone();
    not_found(
        "GetFile",
        b.cat
            .get_file(cat::GetFileRequest { id: id.clone() })
            .await
            .map(drop),
    );
    not_found(
        "ReadFile",
        drain(b.cat.read_file(cat::ReadFileRequest {
            file_id: id.clone(),
            ..Default::default()
        }))
        .await,
    );
    not_found(
        "DeleteFile",
        b.cat
            .delete_file(cat::DeleteFileRequest { id: id.clone() })
            .await
            .map(drop),
    );
    let upload_id = upload.rsplit('/').next().unwrap().to_owned();
    not_found(
        "GetUploadStatus",
        b.cat
            .get_upload_status(cat::GetUploadStatusRequest {
                upload_id: upload_id.clone(),
            })
            .await
            .map(drop),
    );
    for (method, expect) in [("HEAD", 404), ("DELETE", 404)] {
        let r = http
            .tus(method, &upload, &[("authorization", &bearer_b)])
            .await?;
        assert_eq!(r.status, expect, "tus {method} of another's upload");
    }
    let r2 = http
        .patch(&upload, 0, "0123456789", &[("authorization", &bearer_b)])
        .await?;
    assert_eq!(r2.status, 404, "tus PATCH of another's upload");
    for (what, got) in [
        (
            "GetRun",
            b.run
                .get_run(run::GetRunRequest { id: r.id.clone() })
                .await
                .map(drop),
        ),
        (
            "CancelRun",
            b.run
                .cancel_run(run::CancelRunRequest { id: r.id.clone() })
                .await
                .map(drop),
        ),
        (
            "DeleteRun",
            b.run
                .delete_run(run::DeleteRunRequest { id: r.id.clone() })
                .await
                .map(drop),
        ),
        (
            "WatchRun",
            drain(b.run.watch_run(run::WatchRunRequest {
                run_id: r.id.clone(),
                after_seq: 0,
            }))
            .await,
        ),
    ] {
        not_found(what, got);
    }
    // Alice's file is no input of Bob's, and named like a missing one.
    let refused = b
        .run
        .submit_run(run::SubmitRunRequest {
            pipeline_id: pipeline.clone(),
            input_file_ids: vec![file.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(
        refused.message().contains("not found"),
        "{}",
        refused.message()
    );
    // Bob's lists hold nothing of Alice's; his key is his own.
    let files = b
        .cat
        .list_files(cat::ListFilesRequest::default())
        .await?
        .into_inner();
    assert!(files.files.is_empty(), "{:?}", files.files);
    let runs = b
        .run
        .list_runs(run::ListRunsRequest::default())
        .await?
        .into_inner();
    assert!(runs.runs.is_empty());
    let his = b.cat.create_file(create("key-1")).await?.into_inner();
    assert_ne!(
        his.id, file.id,
        "one user's request_id never answers another's file"
    );

    // Alice still has everything, her run's outputs and logs are hers.
    let head = http
        .tus("HEAD", &upload, &[("authorization", &bearer_a)])
        .await?;
    assert_eq!(head.status, 200);
    let done = a
        .run
        .get_run(run::GetRunRequest { id: r.id.clone() })
        .await?
        .into_inner();
    assert!(!done.output_file_ids.is_empty());
    let mine = a
        .cat
        .list_files(cat::ListFilesRequest::default())
        .await?
        .into_inner();
    for output in done.output_file_ids.iter().chain(&done.log_file_ids) {
        assert!(
            mine.files.iter().any(|f| &f.id == output),
            "{output} is Alice's"
        );
        not_found(
            "another's output",
            b.cat
                .get_file(cat::GetFileRequest { id: output.clone() })
                .await
                .map(drop),
        );
    }
    // Her logs of the finished run come through the runner, read as her.
    let logs = drain_bytes(a.run.stream_run_logs(run::StreamRunLogsRequest {
        run_id: r.id.clone(),
        stream: "stdout".into(),
        ..Default::default()
    }))
    .await?;
    assert!(String::from_utf8_lossy(&logs).contains("done"));
    // And she may delete her run, with its files.
    a.run
        .delete_run(run::DeleteRunRequest { id: r.id.clone() })
        .await?;
    let gone = a
        .cat
        .get_file(cat::GetFileRequest {
            id: done.output_file_ids[0].clone(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    Ok(())
}

async fn drain_bytes(
    call: impl std::future::Future<
        Output = Result<tonic::Response<tonic::Streaming<run::LogChunk>>, tonic::Status>,
    >,
) -> Result<Vec<u8>> {
    let mut stream = call.await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?.data);
    }
    Ok(out)
}

/// Outputs of a run are registered only by the runner holding it: a user, an admin and a
/// runner of another node are refused, and the run's result is what its container wrote.
/// A runner token acts for its node only: it reads no input of another node's run, and a
/// runner started with another node's token refuses to start.
#[tokio::test]
async fn planted_outputs_never_replace_a_run_s_result_and_runner_tokens_stay_on_their_node()
-> Result<()> {
    let mut s = stack(2).await?;
    let (pipeline, input) = s.ready().await?;
    let r = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            config_json: r#"{"sleep": 3}"#.into(),
            input_file_ids: vec![input.clone()],
            ..Default::default()
        })
        .await?;
    s.wait_running(&r.id).await?;

    let user = token(&s, "user", Role::User, None).await?;
    let other = token(&s, "other runner", Role::Runner, Some("other-node")).await?;
    let admin = s.db.admin_token.clone().unwrap();
    let plant = cat::CreateFileRequest {
        filename: "count.txt".into(),
        size: 7,
        sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"planted"))
        },
        kind: cat::FileKind::Output as i32,
        source_run_id: r.id.clone(),
        ..Default::default()
    };
    for (who, t) in [
        ("a user", &user),
        ("another node's runner", &other),
        ("an admin", &admin),
    ] {
        let mut c = clients(&s, Some(t)).await?;
        let e = c.cat.create_file(plant.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {}", e.message());
    }
    // Another node's runner reads no input of this node's run, nor its uploads.
    let mut o = clients(&s, Some(&other)).await?;
    let e = drain(o.cat.read_file(cat::ReadFileRequest {
        file_id: input.clone(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = o.cat.list_files(cat::ListFilesRequest {
        source_run_id: r.id.clone(),
        ..Default::default()
    });
    assert!(e.await?.into_inner().files.is_empty());

    let events = s.watch(&r.id, 0).await?;
    assert_eq!(
        pirus_tests::stack::status(events.last().unwrap().status),
        run::RunStatus::Done
    );
    let done = s.get(&r.id).await?;
    let files = s.files_of(&done).await?;
    let count = files
        .iter()
        .find(|(n, _)| n == "count.txt")
        .expect("count.txt");
    assert_eq!(count.1, b"1\n", "the run's own output, not a planted one");

    // A runner given another node's token refuses to start, in one line.
    let dir = pirus_tests::tempdir()?;
    let file = dir.join("other.token");
    std::fs::write(&file, &other)?;
    let mut wrong = Launch::new(Kind::Runner, &s.db.url)
        .args([
            "--node-name",
            "this-node",
            "--lxd-socket",
            "/nonexistent/lxd.socket",
        ])
        .arg(format!("--token-file={}", file.display()))
        .spawn()?;
    let status = wrong.wait_exit(Duration::from_secs(30)).await?;
    assert!(!status.success());
    let stderr = wrong.stderr();
    assert!(
        stderr.contains("needs a runner token for node 'this-node'"),
        "{stderr}"
    );
    Ok(())
}

/// A catalogue, and a runner without LXD (these tests make no runs).
async fn services(db: &TestDb) -> Result<(Process, Process)> {
    pirus_tests::identity::services_without_lxd(db).await
}

/// A token revoked on the catalogue is refused by the runner within 5 s, and by the
/// catalogue itself; a new token for the same holder works at once (rotation).
#[tokio::test]
async fn a_revoked_token_is_refused_everywhere_within_five_seconds() -> Result<()> {
    let db = TestDb::create().await?;
    let (catalogue, runner) = services(&db).await?;
    let t = mint(&db.url, "rotating", Role::Operator, None, None).await?;
    let mut on_runner = RunnerServiceClient::new(runner.channel_as(&t).await?);
    let mut on_catalogue = CatalogueServiceClient::new(catalogue.channel_as(&t).await?);
    on_runner.list_nodes(run::ListNodesRequest {}).await?;
    on_catalogue
        .list_files(cat::ListFilesRequest::default())
        .await?;

    let mut access = AccessServiceClient::new(catalogue.channel().await?);
    let replacement = access
        .create_token(cat::CreateTokenRequest {
            name: "rotated".into(),
            role: cat::Role::Operator as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let revoked = access
        .revoke_token(cat::RevokeTokenRequest {
            accessor_id: accessor_of(&t),
        })
        .await?
        .into_inner();
    assert!(revoked.revoked_at.is_some());
    let start = Instant::now();
    loop {
        let runner_refuses = on_runner
            .list_nodes(run::ListNodesRequest {})
            .await
            .is_err_and(|e| e.code() == Code::Unauthenticated);
        let catalogue_refuses = on_catalogue
            .list_files(cat::ListFilesRequest::default())
            .await
            .is_err_and(|e| e.code() == Code::Unauthenticated);
        if runner_refuses && catalogue_refuses {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still accepted {:?} after the revocation",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "revocation seen by both services after {:?}",
        start.elapsed()
    );
    let mut rotated = RunnerServiceClient::new(runner.channel_as(&replacement.secret).await?);
    rotated.list_nodes(run::ListNodesRequest {}).await?;
    let me = AccessServiceClient::new(catalogue.channel_as(&replacement.secret).await?)
        .who_am_i(cat::WhoAmIRequest {})
        .await?
        .into_inner();
    assert_eq!(me.name, "rotated");
    assert_eq!(me.role, cat::Role::Operator as i32);
    Ok(())
}

/// Revoking a token ends what it already opened, within the 5 s new calls are refused in: a
/// WatchRun follow on the runner ends UNAUTHENTICATED, a WriteUpload stream ends
/// UNAUTHENTICATED, and a tus PATCH still sending is answered 401; the uploads keep the bytes
/// that arrived and take no more. (Before, a follow kept delivering for over 70 s and a PATCH
/// kept writing.)
#[tokio::test]
async fn revoking_a_token_ends_its_open_streams_and_transfers() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = stack(1).await?;
    let run = s.submit_sleeping(60).await?;
    s.wait_running(&run.id).await?;
    let watcher = token(&s, "watcher", Role::Operator, None).await?;
    let uploader = token(&s, "uploader", Role::Admin, None).await?;

    // A follow of the sleeping run, a WriteUpload fed slowly, a PATCH fed slowly.
    let mut follow = RunnerServiceClient::new(s.runner.channel_as(&watcher).await?)
        .watch_run(run::WatchRunRequest {
            run_id: run.id.clone(),
            after_seq: 0,
        })
        .await?
        .into_inner();
    let mut cat = CatalogueServiceClient::new(s.catalogue.channel_as(&uploader).await?);
    let size = 1i64 << 30;
    let file = |name: &str| cat::CreateFileRequest {
        filename: name.into(),
        size,
        ..Default::default()
    };
    let grpc_file = cat.create_file(file("grpc.bin")).await?.into_inner();
    let tus_file = cat.create_file(file("tus.bin")).await?.into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let id = grpc_file.id.clone();
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < size {
            let message = cat::WriteUploadRequest {
                upload_id: id.clone(),
                offset,
                data: vec![7u8; 32 << 10].into(),
                ..Default::default()
            };
            if tx.send(message).await.is_err() {
                return;
            }
            offset += 32 << 10;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut writer = cat.clone();
    let grpc_upload = tokio::spawn(async move {
        writer
            .write_upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let mut patch = tokio::net::TcpStream::connect(s.catalogue.addrs().http).await?;
    let head = format!(
        "PATCH /uploads/files/{} HTTP/1.1\r\nHost: pirus\r\nAuthorization: Bearer {uploader}\r\n\
         Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Offset: 0\r\nContent-Length: {size}\r\n\r\n",
        tus_file.id
    );
    patch.write_all(head.as_bytes()).await?;
    let (mut from_server, mut to_server) = patch.into_split();
    tokio::spawn(async move {
        let chunk = vec![9u8; 32 << 10];
        while to_server.write_all(&chunk).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Everything flows before the revocation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut access = AccessServiceClient::new(s.catalogue.channel().await?);
    for t in [&watcher, &uploader] {
        access
            .revoke_token(cat::RevokeTokenRequest {
                accessor_id: accessor_of(t),
            })
            .await?;
    }
    let revoked = Instant::now();
    let within = Duration::from_secs(5);
    // The follow ends refused.
    let ended = tokio::time::timeout(within, async {
        loop {
            match follow.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status.code()),
                None => return None,
            }
        }
    })
    .await;
    assert_eq!(
        ended,
        Ok(Some(Code::Unauthenticated)),
        "the follow did not end refused"
    );
    // The WriteUpload stream is refused.
    let refused = tokio::time::timeout(within, grpc_upload).await??;
    assert_eq!(
        refused.map(drop).map_err(|e| e.code()),
        Err(Code::Unauthenticated)
    );
    // The PATCH is answered 401.
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(within, from_server.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    eprintln!(
        "open calls of a revoked token ended within {:?}",
        revoked.elapsed()
    );

    // Both uploads keep what arrived and take no more (read with the harness's admin token).
    let mut admin = s.cat.clone();
    let mut offsets = Vec::new();
    for id in [&grpc_file.id, &tus_file.id] {
        let first = upload_offset(&mut admin, id).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let later = upload_offset(&mut admin, id).await?;
        assert!(first > 0, "{id}: nothing was kept");
        assert_eq!(
            first, later,
            "{id}: bytes still arrive after the revocation"
        );
        offsets.push(first);
    }
    eprintln!("kept: {offsets:?}");
    Ok(())
}

/// An upload's durable offset.
async fn upload_offset(cat: &mut CatalogueServiceClient<Channel>, id: &str) -> Result<i64> {
    let request = cat::GetUploadStatusRequest {
        upload_id: id.to_owned(),
    };
    Ok(cat.get_upload_status(request).await?.into_inner().offset)
}

/// Every change is recorded with its caller and outcome, refused ones too, on both services;
/// only admins read the trail.
#[tokio::test]
async fn changes_are_audited_with_caller_target_and_outcome() -> Result<()> {
    let db = TestDb::create().await?;
    let (catalogue, runner) = services(&db).await?;
    let user = mint(&db.url, "auditee", Role::User, None, None).await?;
    let mut cat_user = CatalogueServiceClient::new(catalogue.channel_as(&user).await?);
    let file = cat_user
        .create_file(cat::CreateFileRequest {
            filename: "a.txt".into(),
            size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut run_user = RunnerServiceClient::new(runner.channel_as(&user).await?);
    let drained = run_user
        .drain_node(run::DrainNodeRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(drained.code(), Code::PermissionDenied);
    let anonymous = CatalogueServiceClient::new(pirus_tests::identity::with_token(
        catalogue.raw_channel().await?,
        None,
    ))
    .delete_file(cat::DeleteFileRequest {
        id: file.id.clone(),
    })
    .await
    .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let location = Http::default()
        .tus(
            "POST",
            &catalogue.http_url("/uploads/files/"),
            &[
                ("upload-length", "3"),
                ("upload-metadata", &format!("filename {}", b64(b"t.bin"))),
            ],
        )
        .await?;
    assert_eq!(location.status, 201);
    // Reads are not changes.
    cat_user
        .get_file(cat::GetFileRequest {
            id: file.id.clone(),
        })
        .await?;

    let user_id = accessor_of(&user);
    let admin_id = accessor_of(db.admin_token.as_deref().unwrap());
    let mut access = AccessServiceClient::new(catalogue.channel().await?);
    let mut events = Vec::new();
    pirus_tests::eventually(Duration::from_secs(5), "four audit events", || {
        let mut access = access.clone();
        async move {
            access
                .list_audit_events(cat::ListAuditEventsRequest::default())
                .await
                .map(|r| r.into_inner().events.len() >= 4)
                .unwrap_or(false)
        }
    })
    .await?;
    events.extend(
        access
            .list_audit_events(cat::ListAuditEventsRequest::default())
            .await?
            .into_inner()
            .events,
    );
    let seen: Vec<(&str, &str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.service.as_str(),
                e.action.as_str(),
                e.accessor_id.as_str(),
                e.outcome.as_str(),
            )
        })
        .collect();
    let expect = [
        (
            "catalogue",
            "/pirus.catalogue.v1.CatalogueService/CreateFile",
            user_id.as_str(),
            "ok",
        ),
        (
            "runner",
            "/pirus.runner.v1.RunnerService/DrainNode",
            user_id.as_str(),
            "PermissionDenied",
        ),
        (
            "catalogue",
            "/pirus.catalogue.v1.CatalogueService/DeleteFile",
            "",
            "Unauthenticated",
        ),
        (
            "catalogue",
            "POST /uploads/files/",
            admin_id.as_str(),
            "201",
        ),
    ];
    for e in expect {
        assert!(seen.contains(&e), "{e:?} not in {seen:?}");
    }
    assert_eq!(events.len(), 4, "only changes are recorded: {seen:?}");
    // Each names what it acted on: the id it created, the name it was given, the upload's
    // URL; nothing for a call refused before any handler read it.
    let target = |action: &str| {
        events
            .iter()
            .find(|e| e.action.ends_with(action))
            .map(|e| e.target.clone())
            .unwrap_or_default()
    };
    assert_eq!(target("/CreateFile"), file.id);
    assert_eq!(target("/DrainNode"), "x");
    assert_eq!(target("/DeleteFile"), "");
    assert!(
        target("/uploads/files/").contains("/uploads/files/"),
        "{}",
        target("/uploads/files/")
    );
    let e = AccessServiceClient::new(catalogue.channel_as(&user).await?)
        .list_audit_events(cat::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    Ok(())
}

/// Tokens made through AccessService: the secret is answered once and never listed; bad
/// requests name their field. `token bootstrap` makes the first admin token only once.
#[tokio::test]
async fn tokens_are_made_listed_and_bootstrapped_once() -> Result<()> {
    let db = TestDb::create_empty().await?;
    let bootstrap = |db: &TestDb| {
        std::process::Command::new(pirus_tests::bin_path(Kind::Catalogue))
            .args(["token", "bootstrap"])
            .env("PIRUS_DATABASE_URL", &db.url)
            .output()
    };
    let first = bootstrap(&db)?;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8(first.stdout)?;
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(
        secret.starts_with("pirus_"),
        "the secret alone on the last line: {stdout}"
    );
    let again = bootstrap(&db)?;
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8(again.stderr)?;
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("a token exists already"), "{stderr}");

    pirus_tests::identity::remember(&db.url, &secret);
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let mut access = AccessServiceClient::new(catalogue.channel().await?);
    let me = access.who_am_i(cat::WhoAmIRequest {}).await?.into_inner();
    assert_eq!(
        (me.name.as_str(), me.role),
        ("admin", cat::Role::Admin as i32)
    );
    for (request, field) in [
        (
            cat::CreateTokenRequest {
                name: String::new(),
                role: cat::Role::User as i32,
                ..Default::default()
            },
            "name",
        ),
        (
            cat::CreateTokenRequest {
                name: "r".into(),
                role: cat::Role::Runner as i32,
                ..Default::default()
            },
            "node",
        ),
        (
            cat::CreateTokenRequest {
                name: "u".into(),
                role: cat::Role::User as i32,
                node: "n".into(),
                ..Default::default()
            },
            "node",
        ),
        (
            cat::CreateTokenRequest {
                name: "x".into(),
                ..Default::default()
            },
            "role",
        ),
        (
            cat::CreateTokenRequest {
                name: "t".into(),
                role: cat::Role::User as i32,
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "ttl",
        ),
    ] {
        let e = access.create_token(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let made = access
        .create_token(cat::CreateTokenRequest {
            name: "runner-7".into(),
            role: cat::Role::Runner as i32,
            node: "node-7".into(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            principal: String::new(),
        })
        .await?
        .into_inner();
    let token = made.token.unwrap();
    assert_eq!(token.node, "node-7");
    assert!(token.expires_at.is_some());
    let listed = access
        .list_tokens(cat::ListTokensRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.tokens.len(), 2);
    let text = format!("{listed:?}");
    assert!(
        !text.contains(&made.secret[made.secret.len() - 43..]),
        "no secret is listed"
    );
    assert!(!text.contains(&secret[secret.len() - 43..]));
    Ok(())
}

/// Unsafe start-up options are refused in one line with exit 2; CORS is off unless origins
/// are listed, and then only those are let in (method override with it only).
#[tokio::test]
async fn unsafe_options_are_refused_and_cors_is_off_by_default() -> Result<()> {
    let db = TestDb::create().await?;
    for kind in [Kind::Catalogue, Kind::Runner] {
        let mut p = Launch::new(kind, &db.url);
        p.ephemeral_ports = false;
        let mut p = p
            .args([
                "--auth",
                "none",
                "--grpc-addr",
                "0.0.0.0:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .spawn()?;
        let status = p.wait_exit(Duration::from_secs(20)).await?;
        assert_eq!(status.code(), Some(2), "{}", p.stderr());
        let stderr = p.stderr();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--auth none"), "{stderr}");
    }

    let closed = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let open = Launch::new(Kind::Catalogue, &db.url)
        .args(["--cors-origins", "https://app.example.org"])
        .start()
        .await?;
    let http = Http::default();
    let meta = format!("filename {}", b64(b"c.bin"));
    for (p, origin, allowed) in [
        (&closed, "https://app.example.org", false),
        (&open, "https://evil.example.net", false),
        (&open, "https://app.example.org", true),
    ] {
        let url = p.http_url("/uploads/files/");
        let preflight = http
            .send("OPTIONS", &url, &[("origin", origin)], "")
            .await?;
        let created = http
            .tus(
                "POST",
                &url,
                &[
                    ("origin", origin),
                    ("upload-length", "3"),
                    ("upload-metadata", &meta),
                ],
            )
            .await?;
        assert_eq!(created.status, 201);
        let acao = created
            .header("access-control-allow-origin")
            .map(str::to_owned);
        assert_eq!(acao.as_deref(), allowed.then_some(origin), "{origin}");
        assert_eq!(
            preflight.header("access-control-allow-methods").is_some(),
            allowed,
            "preflight for {origin}"
        );
        // A POST that says it is a DELETE deletes only where browsers are let in.
        let location = created.header("location").unwrap().to_owned();
        let overridden = http
            .tus("POST", &location, &[("x-http-method-override", "DELETE")])
            .await?;
        let after = http.tus("HEAD", &location, &[]).await?;
        if p.http_url("") == open.http_url("") && allowed {
            assert_eq!(overridden.status, 204);
            assert_eq!(after.status, 404);
        } else if p.http_url("") == closed.http_url("") {
            assert_eq!(overridden.status, 405, "{}", overridden.body);
            assert_eq!(after.status, 200);
        }
    }
    Ok(())
}

/// Guessing is slowed down per peer: after a few unknown tokens from one address, each further
/// guess from it waits longer, while a valid token from the same address (a NAT, the runners'
/// host), other peers, and clients with a missing or expired token are answered at once.
#[tokio::test]
async fn repeated_guesses_from_one_peer_are_slowed_down() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let admin = db.admin_token.clone().unwrap();
    let guess = format!(
        "pirus_{}_{}",
        uuid::Uuid::new_v4().simple(),
        &admin[admin.len() - 43..]
    );
    let guesser: std::net::IpAddr = "127.0.9.1".parse()?;
    let bystander: std::net::IpAddr = "127.0.9.2".parse()?;
    let who = |channel: Channel| async move {
        let start = Instant::now();
        let r = AccessServiceClient::new(channel)
            .who_am_i(cat::WhoAmIRequest {})
            .await;
        (r.map(drop).map_err(|e| e.code()), start.elapsed())
    };
    let free = pirus_auth::verifier::FREE_FAILURES as usize;
    let mut times = Vec::new();
    for _ in 0..free + 5 {
        let (r, took) = who(catalogue.channel_from(guesser, Some(&guess)).await?).await;
        assert_eq!(r, Err(Code::Unauthenticated));
        times.push(took);
    }
    assert!(
        times[..free]
            .iter()
            .all(|t| *t < Duration::from_millis(150)),
        "the first guesses are answered at once: {times:?}"
    );
    assert!(
        times[free + 4] >= Duration::from_millis(800),
        "the 10th guess in a row waits: {times:?}"
    );
    // A valid token from the guesser's address does not pay for its guesses; others are not
    // slowed, nor are clients without a token.
    let (r, took) = who(catalogue.channel_from(guesser, Some(&admin)).await?).await;
    assert_eq!(r, Ok(()));
    assert!(
        took < Duration::from_millis(500),
        "a valid token waited: {took:?}"
    );
    let (r, took) = who(catalogue.channel_from(guesser, Some(&guess)).await?).await;
    assert_eq!(r, Err(Code::Unauthenticated));
    assert!(
        took >= Duration::from_millis(800),
        "the guesser is still slowed: {took:?}"
    );
    let (r, took) = who(catalogue.channel_from(bystander, Some(&admin)).await?).await;
    assert_eq!(r, Ok(()));
    assert!(took < Duration::from_millis(500), "{took:?}");
    for _ in 0..free + 3 {
        let (r, took) = who(catalogue.channel_from(bystander, None).await?).await;
        assert_eq!(r, Err(Code::Unauthenticated));
        assert!(
            took < Duration::from_millis(500),
            "a missing token is no guess: {took:?}"
        );
    }
    Ok(())
}

/// Runners connect as a database role of their own (`pirus_runner`, deploy/setup.sh) that
/// carries a run through its whole life, deletion included, and may do nothing else: no
/// tokens (only the lookup function), no files, pipelines, uploads or blobs, no reading the
/// audit trail, no schema changes.
#[tokio::test]
async fn runners_connect_as_a_database_role_with_only_what_a_runner_needs() -> Result<()> {
    anyhow::ensure!(
        pirus_tests::runner_role_admin_url().is_some(),
        "PIRUS_TEST_RUNNER_DATABASE_URL is not set: run the suite through tests/run.sh, which \
         takes the runner role deploy/setup.sh --deps-only creates"
    );
    let mut s = stack(1).await?;
    let r = s.submit_ready("{}").await?;
    let events = s.watch(&r.id, 0).await?;
    assert_eq!(
        pirus_tests::stack::status(events.last().unwrap().status),
        run::RunStatus::Done
    );
    let done = s.get(&r.id).await?;
    assert!(!done.output_file_ids.is_empty(), "{done:?}");
    s.run
        .delete_run(run::DeleteRunRequest { id: r.id.clone() })
        .await?;

    let owner = s.db.client().await?;
    let database = s.db.url.rsplit('/').next().unwrap_or_default().to_owned();
    let users: Vec<String> = owner
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = $1",
            &[&database],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        users.iter().any(|u| u == "pirus_runner"),
        "the runner connects as pirus_runner: {users:?}"
    );

    let role = pirus_tests::pg_connect(&pirus_tests::runner_database_url(&s.db.url)).await?;
    for refused in [
        "SELECT * FROM tokens",
        "UPDATE tokens SET revoked_at = NULL",
        "SELECT * FROM files",
        "DELETE FROM files",
        "UPDATE pipelines SET status = 'error'",
        "SELECT * FROM uploads",
        "SELECT * FROM blobs",
        "SELECT * FROM audit_events",
        "DELETE FROM audit_events",
        "CREATE TABLE planted (a int)",
        "DROP TABLE runs",
        "ALTER TABLE runs DROP COLUMN owner",
        "SELECT pirus_grant_runner()",
    ] {
        let e = role
            .batch_execute(refused)
            .await
            .expect_err(&format!("the runner role may not: {refused}"));
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{refused}: {e}"
        );
    }
    // What it may: verify a token through the lookup function, read the boundary views.
    let admin = accessor_of(s.db.admin_token.as_deref().unwrap());
    let found = role
        .query("SELECT role FROM pirus_token($1::text::uuid)", &[&admin])
        .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].get::<_, String>(0), "admin");
    role.batch_execute(
        "SELECT count(*) FROM file_for_runs; SELECT count(*) FROM pipeline_for_runs",
    )
    .await?;
    Ok(())
}

/// A runner whose role has no grants yet (a deployment where the role was made before the
/// migration that grants it ran) waits for them, saying why, instead of failing; it serves
/// once they are there.
#[tokio::test]
async fn a_runner_waits_for_its_database_role_s_grants() -> Result<()> {
    anyhow::ensure!(
        pirus_tests::runner_role_admin_url().is_some(),
        "PIRUS_TEST_RUNNER_DATABASE_URL is not set: run the suite through tests/run.sh"
    );
    let db = TestDb::create().await?;
    let owner = db.client().await?;
    owner
        .batch_execute(
            "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM pirus_runner;
             REVOKE ALL ON FUNCTION pirus_token(uuid) FROM pirus_runner",
        )
        .await?;
    let mut runner = Launch::new(Kind::Runner, &db.url)
        .args(["--lxd-socket", "/nonexistent/lxd.socket"])
        .spawn()?;
    let early = runner.wait_serving(Duration::from_secs(3)).await;
    let why = early.expect_err("a runner without grants does not serve");
    assert!(
        why.to_string().contains("did not serve within"),
        "it waits rather than exits: {why}"
    );
    assert!(
        runner.stderr().contains("may not change it"),
        "{}",
        runner.stderr()
    );
    owner.batch_execute("SELECT pirus_grant_runner()").await?;
    runner.wait_serving(Duration::from_secs(30)).await?;
    Ok(())
}
