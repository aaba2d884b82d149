//! Transport security, against the real services and stock clients: TLS on gRPC and HTTP from
//! the same certificate (grpcurl with `-cacert`, curl, tonic), plaintext and unknown-CA clients
//! refused, mTLS between a runner and the catalogue through a whole run (and a client without
//! a certificate, or with one of another CA, refused), PostgreSQL connections (LISTEN included)
//! over TLS with `sslmode=verify-full`, and the start-up refusals.

use std::{path::PathBuf, process::Output, time::Duration};

use anyhow::{Context, Result, ensure};
use pirus_auth::Role;
use pirus_proto::{
    catalogue::v1::{self as cat, access_service_client::AccessServiceClient},
    runner::v1 as run,
};
use pirus_tests::{
    Kind, Launch, TestDb,
    identity::mint,
    stack::{stack_over_tls, status, statuses},
    tls::Certs,
};

fn command(program: &str, args: &[&str]) -> Result<Output> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} not found (tests/run.sh installs grpcurl)"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// curl's HTTP status for `args` ("000" when no HTTP exchange happened).
fn curl_status(args: &[&str]) -> Result<String> {
    let mut all = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let output = command("curl", &all)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn path(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn grpc_and_http_serve_tls_from_one_certificate_and_refuse_plaintext() -> Result<()> {
    let certs = Certs::make(&["catalogue"])?;
    let other = Certs::make(&[])?;
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .tls(&certs, "catalogue", None)
        .start()
        .await?;
    let token = catalogue
        .token
        .clone()
        .context("the test database's admin token")?;
    let bearer = format!("authorization: Bearer {token}");
    let (grpc, http) = (
        catalogue.addrs().grpc.to_string(),
        catalogue.addrs().http.to_string(),
    );
    let ca = path(certs.ca());

    // tonic, trusting the CA.
    let me = AccessServiceClient::new(catalogue.channel().await?)
        .who_am_i(cat::WhoAmIRequest {})
        .await?
        .into_inner();
    assert_eq!(me.role, cat::Role::Admin as i32);

    // grpcurl with -cacert: reflection and a call.
    let listed = command("grpcurl", &["-cacert", &ca, &grpc, "list"])?;
    assert!(listed.status.success(), "grpcurl list: {}", text(&listed));
    assert!(text(&listed).contains("pirus.catalogue.v1.CatalogueService"));
    let who = command(
        "grpcurl",
        &[
            "-cacert",
            &ca,
            "-H",
            &bearer,
            &grpc,
            "pirus.catalogue.v1.AccessService/WhoAmI",
        ],
    )?;
    assert!(who.status.success(), "grpcurl WhoAmI: {}", text(&who));
    assert!(text(&who).contains("ROLE_ADMIN"), "{}", text(&who));

    // Refused: plaintext, a client that trusts only the system's roots, another CA.
    let plain = command("grpcurl", &["-plaintext", "-H", &bearer, &grpc, "list"])?;
    assert!(
        !plain.status.success(),
        "plaintext gRPC answered: {}",
        text(&plain)
    );
    let system = command("grpcurl", &["-H", &bearer, &grpc, "list"])?;
    assert!(!system.status.success(), "an unknown CA was trusted");
    assert!(
        text(&system).contains("certificate"),
        "grpcurl said: {}",
        text(&system)
    );
    let stranger = tonic::transport::Channel::from_shared(format!("https://{grpc}"))?
        .tls_config(other.client_config(None))?
        .connect()
        .await;
    assert!(stranger.is_err(), "a client trusting another CA connected");

    // The HTTP port: the same certificate, tus answering with https:// locations.
    let livez = format!("https://{http}/livez");
    assert_eq!(curl_status(&["--cacert", &ca, &livez])?, "200");
    assert_eq!(curl_status(&[&livez])?, "000", "curl trusted an unknown CA");
    assert_eq!(
        curl_status(&[&format!("http://{http}/livez")])?,
        "000",
        "plaintext HTTP answered on the TLS port"
    );
    let created = command(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            "-X",
            "POST",
            &format!("https://{http}/uploads/files/"),
            "-H",
            &bearer,
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Length: 3",
            "-H",
            "Upload-Metadata: filename eC50eHQ=",
        ],
    )?;
    let headers = text(&created).to_ascii_lowercase();
    assert!(
        headers.starts_with("http/1.1 201"),
        "tus creation: {headers}"
    );
    assert!(
        headers.contains(&format!("location: https://{http}/uploads/files/")),
        "the public URL follows TLS: {headers}"
    );
    Ok(())
}

#[tokio::test]
async fn mtls_carries_a_whole_run_and_refuses_clients_without_a_certificate() -> Result<()> {
    let certs = Certs::make(&["catalogue", "runner", "client"])?;
    let other = Certs::make(&["client"])?;
    let mut s = stack_over_tls(1, &certs).await?;

    // The runner fetches the image and the input and pushes outputs and logs, all over mTLS.
    let submitted = s.submit_ready(r#"{"input": "reads.txt"}"#).await?;
    let events = s.watch(&submitted.id, 0).await?;
    assert_eq!(
        statuses(&events).last(),
        Some(&run::RunStatus::Done),
        "{events:?}"
    );
    let done = s.get(&submitted.id).await?;
    assert_eq!(status(done.status), run::RunStatus::Done);
    let outputs = s.files_of(&done).await?;
    assert!(!outputs.is_empty(), "no outputs came back over mTLS");
    let live = s.runner.grpc_url();
    assert!(live.starts_with("https://"), "{live}");

    // Without a client certificate (how the runner calls when given none), or with one
    // another CA signed: refused by both services, on gRPC and HTTP.
    for process in [&s.catalogue, &s.runner] {
        let url = process.grpc_url();
        for config in [certs.client_config(None), {
            let c = other.client_config(Some("client"));
            c.ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                certs.ca(),
            )?))
        }] {
            let refused = match tonic::transport::Channel::from_shared(url.clone())?
                .tls_config(config)?
                .connect()
                .await
            {
                Err(_) => true,
                Ok(channel) => {
                    pirus_tests::health_status(pirus_tests::identity::with_token(channel, None), "")
                        .await
                        .is_err()
                }
            };
            assert!(
                refused,
                "{url} answered a client without a trusted certificate"
            );
        }
    }
    let (ca, grpc) = (path(certs.ca()), s.catalogue.addrs().grpc.to_string());
    let bare = command("grpcurl", &["-cacert", &ca, &grpc, "list"])?;
    assert!(
        !bare.status.success(),
        "grpcurl without a certificate: {}",
        text(&bare)
    );
    let (cert, key) = (path(certs.cert("client")), path(certs.key("client")));
    let with = command(
        "grpcurl",
        &["-cacert", &ca, "-cert", &cert, "-key", &key, &grpc, "list"],
    )?;
    assert!(
        with.status.success(),
        "grpcurl with a certificate: {}",
        text(&with)
    );
    let livez = s.catalogue.http_url("/livez");
    assert_eq!(curl_status(&["--cacert", &ca, &livez])?, "000");
    assert_eq!(
        curl_status(&["--cacert", &ca, "--cert", &cert, "--key", &key, &livez])?,
        "200"
    );
    Ok(())
}

/// The CA that signed PostgreSQL's certificate: deploy/setup.sh's deployment CA.
fn database_ca() -> Result<PathBuf> {
    let ca = std::env::var("PIRUS_TEST_DATABASE_CA")
        .map_or_else(|_| PathBuf::from("/etc/pirus/tls/ca.pem"), PathBuf::from);
    ensure!(
        ca.exists(),
        "{} missing: deploy/setup.sh --deps-only gives PostgreSQL a certificate of the deployment CA",
        ca.display()
    );
    Ok(ca)
}

#[tokio::test]
async fn database_connections_listen_included_use_tls_verified_in_full() -> Result<()> {
    let ca = database_ca()?;
    let db = TestDb::create().await?;
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        ca.display()
    );
    // The harness's own connections (plain TCP) are made before `since`: the runner's token
    // and the connection the checks below use.
    let node = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let token = mint(&db.url, "runner", Role::Runner, Some(&node), None).await?;
    let dir = pirus_tests::tempdir()?;
    let token_file = dir.join("runner.token");
    std::fs::write(&token_file, token)?;
    let client = db.client().await?;
    let since: std::time::SystemTime = client.query_one("SELECT now()", &[]).await?.get(0);

    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .args(["--database-url", &verified])
        .start()
        .await?;
    let runner = Launch::new(Kind::Runner, &db.url)
        .args(["--database-url", &verified, "--node-name", &node])
        .args(["--token-file", token_file.to_str().unwrap_or_default()])
        .args(["--catalogue-addr", &catalogue.grpc_url()])
        .start()
        .await?;
    // Both serve (ready means their pools answer), and every connection they hold on the
    // database is TLS: the pools, the runner's LISTEN connection, the catalogue's.
    for process in [&catalogue, &runner] {
        let (code, body) = pirus_tests::http_get(&process.http_url("/readyz")).await?;
        assert_eq!((code, body.trim()), (200, "ready"));
    }
    let database = db.url.rsplit('/').next().unwrap_or_default().to_owned();
    let connections = || async {
        let rows = client
            .query(
                "SELECT s.ssl, coalesce(s.version, ''), a.query
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = $1 AND a.backend_start > $2",
                &[&database, &since],
            )
            .await
            .expect("pg_stat_activity");
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect::<Vec<(bool, String, String)>>()
    };
    // The runner's listener connects beside its pool: wait for its LISTEN.
    pirus_tests::eventually(Duration::from_secs(10), "the runner LISTENs", || async {
        let rows = connections().await;
        rows.iter()
            .filter(|(_, _, q)| q.starts_with("LISTEN"))
            .count()
            >= 1
    })
    .await?;
    let rows = connections().await;
    assert!(rows.len() >= 3, "the services' connections: {rows:?}");
    for (ssl, version, query) in &rows {
        assert!(ssl, "a plaintext connection of the services: {query}");
        assert!(version.starts_with("TLSv1."), "{version}");
    }
    drop((catalogue, runner));
    let _ = std::fs::remove_dir_all(dir);

    // A certificate the given CA did not sign: one line naming the reason, at once.
    let other = Certs::make(&[])?;
    let wrong_ca = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        other.ca().display()
    );
    let mut refused = Launch::new(Kind::Catalogue, &db.url)
        .args(["--database-url", &wrong_ca])
        .spawn()?;
    let exit = refused.wait_exit(Duration::from_secs(30)).await?;
    assert!(!exit.success());
    let stderr = refused.stderr();
    assert!(stderr.contains("certificate"), "stderr: {stderr}");
    Ok(())
}

#[tokio::test]
async fn start_up_refuses_plaintext_and_unusable_certificates() -> Result<()> {
    let db = TestDb::create().await?;
    let certs = Certs::make(&["catalogue"])?;
    let (cert, key, ca) = (
        path(certs.cert("catalogue")),
        path(certs.key("catalogue")),
        path(certs.ca()),
    );
    // Plaintext on an address other machines reach (explicit addresses, no --addr-file).
    for (kind, addrs) in [
        (Kind::Catalogue, ["0.0.0.0:0", "127.0.0.1:0"]),
        (Kind::Runner, ["127.0.0.1:0", "0.0.0.0:0"]),
    ] {
        let mut launch = Launch::new(kind, &db.url);
        launch.ephemeral_ports = false;
        let launch = launch.args(["--grpc-addr", addrs[0], "--http-addr", addrs[1]]);
        refused(launch, "refusing to serve plaintext on 0.0.0.0:0").await?;
    }
    // Certificates that cannot be used, each named with its option.
    let files: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--tls-cert", &cert], "--tls-key"),
        (vec!["--tls-cert", &ca, "--tls-key", &ca], "--tls-key"),
        (vec!["--tls-cert", &key, "--tls-key", &key], "--tls-cert"),
        (
            vec!["--tls-cert", &cert, "--tls-key", "/nonexistent/key.pem"],
            "--tls-key /nonexistent/key.pem",
        ),
        (
            vec![
                "--tls-client-ca",
                &key,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
            "--tls-client-ca",
        ),
    ];
    for (args, expected) in files {
        refused(Launch::new(Kind::Catalogue, &db.url).args(args), expected).await?;
    }
    // --insecure-plaintext lets a deployment behind a TLS-terminating proxy start.
    let mut launch = Launch::new(Kind::Catalogue, &db.url);
    launch.ephemeral_ports = false;
    let dir = pirus_tests::tempdir()?;
    let addr_file = dir.join("addr.json");
    let proxied = launch
        .args(["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"])
        .args([
            "--insecure-plaintext",
            "--addr-file",
            addr_file.to_str().unwrap_or_default(),
        ])
        .spawn()?;
    pirus_tests::eventually(
        Duration::from_secs(30),
        "the proxied catalogue serves",
        || {
            let exists = addr_file.exists();
            async move { exists }
        },
    )
    .await?;
    proxied.signal("TERM")?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// `launch` exits at once with status 2 and one line on stderr containing `expected`.
async fn refused(launch: Launch, expected: &str) -> Result<()> {
    let args = launch.args.clone();
    let mut process = launch.spawn()?;
    let exit = process.wait_exit(Duration::from_secs(20)).await?;
    let stderr = process.stderr();
    assert_eq!(exit.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    Ok(())
}
