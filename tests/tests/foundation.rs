//! Foundation: both binaries migrate, serve health, reflection and the operations port, follow
//! the database's availability, shut down cleanly and fail fast on bad start-up input.

use std::time::{Duration, Instant};

use anyhow::Result;
use pirus_tests::{
    Kind, Launch, NOT_SERVING, SERVING, TestDb, eventually, health_status, http_get,
    pg::PrivatePostgres,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_reflection::pb::{v1, v1alpha};

/// A runner pointed at a socket that does not exist, so that tests never depend on LXD here.
fn runner(db: &str) -> Launch {
    Launch::new(Kind::Runner, db).args(["--lxd-socket", "/nonexistent/lxd.socket"])
}

fn catalogue(db: &str) -> Launch {
    Launch::new(Kind::Catalogue, db)
}

async fn v1_services(channel: pirus_tests::Channel) -> Result<Vec<String>> {
    use v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = stream.next().await.expect("one answer")?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection answer {other:?}"),
    }
}

async fn v1alpha_symbol_found(channel: pirus_tests::Channel, symbol: &str) -> Result<bool> {
    use v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = stream.next().await.expect("one answer")?;
    Ok(matches!(
        response.message_response,
        Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
    ))
}

async fn assert_health_and_reflection(launch: Launch, symbol: &str) -> Result<()> {
    let kind = launch.kind;
    let process = launch.start().await?;
    let channel = process.channel().await?;

    assert_eq!(health_status(channel.clone(), "").await?, SERVING);
    assert_eq!(
        health_status(channel.clone(), kind.service_name()).await?,
        SERVING
    );
    let unknown = health_status(channel.clone(), "no.such.Service")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let services = v1_services(channel.clone()).await?;
    for expected in [
        kind.service_name(),
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    assert!(
        v1alpha_symbol_found(channel.clone(), symbol).await?,
        "{symbol} not described"
    );
    assert!(
        !v1alpha_symbol_found(channel, "pirus.NoSuchMessage")
            .await
            .unwrap_or(false)
    );
    Ok(())
}

#[tokio::test]
async fn catalogue_serves_health_and_reflection() -> Result<()> {
    let db = TestDb::create().await?;
    assert_health_and_reflection(catalogue(&db.url), "pirus.catalogue.v1.Pipeline").await
}

#[tokio::test]
async fn runner_serves_health_and_reflection_without_lxd() -> Result<()> {
    let db = TestDb::create().await?;
    assert_health_and_reflection(runner(&db.url), "pirus.runner.v1.RunEvent").await
}

/// The real grpcurl (from PyPI), with no proto files at hand.
#[tokio::test]
async fn grpcurl_lists_and_describes_both_services() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = catalogue(&db.url).start().await?;
    let runner = runner(&db.url).start().await?;
    for (process, service, method) in [
        (&catalogue, pirus_proto::CATALOGUE_SERVICE, "WriteUpload"),
        (&runner, pirus_proto::RUNNER_SERVICE, "WatchRun"),
    ] {
        let addr = process.addrs().grpc.to_string();
        let list = grpcurl(&["-plaintext", &addr, "list"])?;
        for expected in [
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                list.lines().any(|l| l.trim() == expected),
                "{expected} not in:\n{list}"
            );
        }
        let describe = grpcurl(&["-plaintext", &addr, "describe", service])?;
        assert!(
            describe.contains(&format!("rpc {method}")),
            "{method} not in:\n{describe}"
        );
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"service": "{service}"}}"#),
            &addr,
            "grpc.health.v1.Health/Check",
        ])?;
        assert!(health.contains("\"SERVING\""), "health said:\n{health}");
    }
    Ok(())
}

fn grpcurl(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("grpcurl")
        .args(args)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("grpcurl not found ({e}): tests/run.sh installs it from PyPI")
        })?;
    anyhow::ensure!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn operations_port_serves_livez_readyz_and_metrics() -> Result<()> {
    let db = TestDb::create().await?;
    for launch in [catalogue(&db.url), runner(&db.url)] {
        let kind = launch.kind;
        let process = launch.start().await?;
        assert_eq!(http_get(&process.http_url("/livez")).await?.0, 200);
        let (status, body) = http_get(&process.http_url("/readyz")).await?;
        assert_eq!((status, body.trim()), (200, "ready"));

        // One gRPC call, so that the call counter has a sample.
        health_status(process.channel().await?, "").await?;
        let (status, metrics) = http_get(&process.http_url("/metrics")).await?;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("pirus_db_up 1"),
            "{kind:?} metrics:\n{metrics}"
        );
        assert!(
            metrics.contains("pirus_ready 1"),
            "{kind:?} metrics:\n{metrics}"
        );
        assert!(
            metrics.contains(
                r#"pirus_grpc_calls_total{method="/grpc.health.v1.Health/Check",code="Ok"}"#
            ),
            "{kind:?} metrics:\n{metrics}"
        );
        assert!(
            metrics.trim_end().ends_with("# EOF"),
            "not OpenMetrics text"
        );
        if kind == Kind::Runner {
            assert!(
                metrics.contains("pirus_lxd_up 0"),
                "runner metrics:\n{metrics}"
            );
        }
        assert_eq!(http_get(&process.http_url("/no-such-path")).await?.0, 404);
    }
    Ok(())
}

const TABLES: &[&str] = &[
    "blobs",
    "files",
    "uploads",
    "pipelines",
    "pipeline_documents",
    "runs",
    "run_attempts",
    "run_events",
    "nodes",
];

async fn schema_state(db: &TestDb) -> Result<(Vec<String>, i64)> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await?;
    let tables = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let migrations: i64 = client
        .query_one("SELECT count(*) FROM seaql_migrations", &[])
        .await?
        .get(0);
    Ok((tables, migrations))
}

#[tokio::test]
async fn migrations_build_the_schema_on_an_empty_database() -> Result<()> {
    let db = TestDb::create_empty().await?;
    let tables_before: i64 = db
        .client()
        .await?
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(tables_before, 0);

    let process = catalogue(&db.url).start().await?;
    let (tables, migrations) = schema_state(&db).await?;
    for table in TABLES {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
    assert_eq!(migrations, pirus_db::MIGRATIONS as i64);

    // A second start finds nothing to do and keeps the data.
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO blobs (sha256, size) VALUES (repeat('a', 64), 1)",
            &[],
        )
        .await?;
    drop(process);
    let _again = runner(&db.url).start().await?;
    assert_eq!(schema_state(&db).await?.1, pirus_db::MIGRATIONS as i64);
    let blobs: i64 = client
        .query_one("SELECT count(*) FROM blobs", &[])
        .await?
        .get(0);
    assert_eq!(blobs, 1);

    // The schema's own guards hold: a malformed digest is refused by the database.
    let bad = client
        .execute("INSERT INTO blobs (sha256, size) VALUES ('XYZ', 1)", &[])
        .await;
    assert!(bad.is_err());
    Ok(())
}

#[tokio::test]
async fn processes_started_at_the_same_instant_on_a_fresh_database_all_come_up() -> Result<()> {
    let db = TestDb::create_empty().await?;
    let mut processes = vec![
        catalogue(&db.url).spawn()?,
        runner(&db.url).spawn()?,
        catalogue(&db.url).spawn()?,
        runner(&db.url).spawn()?,
    ];
    for process in &mut processes {
        process.wait_serving(Duration::from_secs(60)).await?;
        assert_eq!(health_status(process.channel().await?, "").await?, SERVING);
    }
    let (tables, migrations) = schema_state(&db).await?;
    assert_eq!(
        migrations,
        pirus_db::MIGRATIONS as i64,
        "a migration was applied more than once"
    );
    assert!(tables.iter().any(|t| t == "runs"));
    Ok(())
}

/// Health follows the database: NOT_SERVING when PostgreSQL stops (the process keeps running
/// and stays live), SERVING again when it is back, with no restart of the service.
#[tokio::test]
async fn health_follows_the_database_going_away_and_coming_back() -> Result<()> {
    let pg = PrivatePostgres::start()?;
    let db = TestDb::create_on(&pg.admin_url()).await?;
    let mut processes = vec![
        catalogue(&db.url).start().await?,
        runner(&db.url).args(["--node-lease", "3s"]).start().await?,
    ];
    for process in &processes {
        assert_eq!(health_status(process.channel().await?, "").await?, SERVING);
        // A scraper reading metrics before the outage keeps reading them during it: its token,
        // checked a moment ago, is still good while no token can be revoked.
        let (status, metrics) = http_get(&process.http_url("/metrics")).await?;
        assert_eq!(status, 200);
        assert!(metrics.contains("pirus_db_up 1"), "{metrics}");
    }

    pg.stop()?;
    for process in &processes {
        let channel = process.channel().await?;
        let service = process.kind.service_name();
        eventually(
            Duration::from_secs(15),
            "NOT_SERVING after the database stopped",
            || {
                let channel = channel.clone();
                async move { health_status(channel, service).await.ok() == Some(NOT_SERVING) }
            },
        )
        .await?;
        let (status, body) = http_get(&process.http_url("/readyz")).await?;
        assert_eq!(status, 503);
        assert!(body.contains("database unreachable"), "{body}");
        assert_eq!(http_get(&process.http_url("/livez")).await?.0, 200);
        assert!(
            http_get(&process.http_url("/metrics"))
                .await?
                .1
                .contains("pirus_db_up 0")
        );
    }

    pg.pg_ctl_start()?;
    for process in &mut processes {
        let channel = process.channel().await?;
        let service = process.kind.service_name();
        eventually(
            Duration::from_secs(20),
            "SERVING after the database came back",
            || {
                let channel = channel.clone();
                async move { health_status(channel, service).await.ok() == Some(SERVING) }
            },
        )
        .await?;
        assert_eq!(http_get(&process.http_url("/readyz")).await?.0, 200);
        assert!(
            process.wait_exit(Duration::from_millis(10)).await.is_err(),
            "process exited"
        );
    }
    // The runner's lease, renewed over a connection of its own, is renewed again: a heartbeat
    // newer than the database's restart, and the node ONLINE.
    let client = db.client().await?;
    let back: std::time::SystemTime = client.query_one("SELECT now()", &[]).await?.get(0);
    eventually(
        Duration::from_secs(10),
        "a heartbeat after the database came back",
        || {
            let client = &client;
            async move {
                let row = client
                    .query_one("SELECT heartbeat_at, status FROM nodes", &[])
                    .await;
                row.is_ok_and(|r| {
                    r.get::<_, std::time::SystemTime>(0) > back && r.get::<_, String>(1) == "online"
                })
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_and_sigint_shut_down_cleanly() -> Result<()> {
    let db = TestDb::create().await?;
    for (launch, signal) in [
        (catalogue(&db.url), "TERM"),
        (runner(&db.url), "TERM"),
        (catalogue(&db.url), "INT"),
        (runner(&db.url), "INT"),
    ] {
        let mut process = launch.start().await?;
        // A client connection is open while the signal arrives.
        let channel = process.channel().await?;
        assert_eq!(health_status(channel.clone(), "").await?, SERVING);
        let started = Instant::now();
        process.signal(signal)?;
        let status = process.wait_exit(Duration::from_secs(10)).await?;
        assert!(
            status.success(),
            "{:?} exited {status} on SIG{signal}:\n{}",
            process.kind,
            process.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        assert!(process.stderr().contains("stopped"), "{}", process.stderr());
        // And nothing is listening any more.
        assert!(health_status(channel, "").await.is_err());
    }
    Ok(())
}

/// What a process printed on stderr, without the log lines it wrote before failing.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("pirus-")).collect()
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_with_one_line() -> Result<()> {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    for (kind, url) in [
        (Kind::Catalogue, "postgres://pirus:pirus@127.0.0.1:1/pirus"),
        (Kind::Runner, "postgres://pirus:pirus@127.0.0.1:1/pirus"),
        (
            Kind::Catalogue,
            "postgres://pirus:pirus@127.0.0.1:5432/pirus_no_such_database",
        ),
    ] {
        let mut process = Launch::new(kind, url).spawn()?;
        let started = Instant::now();
        let status = process.wait_exit(Duration::from_secs(15)).await?;
        assert!(!status.success());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let stderr = process.stderr();
        let lines = error_lines(&stderr);
        assert_eq!(lines.len(), 1, "expected one error line:\n{stderr}");
        assert!(lines[0].contains("database"), "{}", lines[0]);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stderr.contains(":pirus@"),
            "the password leaked:\n{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_option_fails_fast_with_one_line() -> Result<()> {
    for (kind, args, named) in [
        (
            Kind::Catalogue,
            vec!["--max-upload-size", "banana"],
            "--max-upload-size",
        ),
        (
            Kind::Catalogue,
            vec!["--upload-expiry", "later"],
            "--upload-expiry",
        ),
        (
            Kind::Catalogue,
            vec!["--grpc-addr", "nowhere"],
            "--grpc-addr",
        ),
        (
            Kind::Catalogue,
            vec!["--public-url", "ftp://x"],
            "--public-url",
        ),
        (Kind::Runner, vec!["--node-lease", "0s"], "--node-lease"),
        (Kind::Runner, vec!["--max-runs", "many"], "--max-runs"),
        (Kind::Runner, vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let mut process = Launch {
            ephemeral_ports: false,
            ..Launch::new(kind, "postgres://unused/x")
        }
        .args(args.clone())
        .spawn()?;
        let status = process.wait_exit(Duration::from_secs(5)).await?;
        assert_eq!(status.code(), Some(2), "{args:?}");
        let stderr = process.stderr();
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?} printed:\n{stderr}"
        );
        assert!(stderr.contains(named), "{args:?} printed:\n{stderr}");
    }

    // An environment variable is an option too.
    let mut launch = Launch {
        ephemeral_ports: false,
        ..Launch::new(Kind::Runner, "postgres://unused/x")
    };
    launch
        .env
        .push(("PIRUS_NODE_LEASE".into(), "whenever".into()));
    let mut process = launch.spawn()?;
    assert_eq!(
        process.wait_exit(Duration::from_secs(5)).await?.code(),
        Some(2)
    );
    assert!(
        process.stderr().contains("node-lease"),
        "{}",
        process.stderr()
    );
    Ok(())
}

/// A taken port is a clear start-up error, not a hang.
#[tokio::test]
async fn a_taken_port_fails_fast() -> Result<()> {
    let db = TestDb::create().await?;
    let first = catalogue(&db.url).start().await?;
    let taken = first.addrs().grpc.to_string();
    let mut second = Launch {
        ephemeral_ports: false,
        ..catalogue(&db.url)
    }
    .args(["--grpc-addr", &taken, "--http-addr", "127.0.0.1:0"])
    .spawn()?;
    let status = second.wait_exit(Duration::from_secs(10)).await?;
    assert!(!status.success());
    let stderr = second.stderr();
    assert!(stderr.contains("cannot bind gRPC address"), "{stderr}");
    Ok(())
}

/// Pooled connections end a transaction left idle (a frozen process must not hold its locks
/// forever); the migration lock's transaction lifts the limit for itself.
#[tokio::test]
async fn pooled_connections_do_not_hold_idle_transactions_forever() -> Result<()> {
    use pirus_db::sea_orm::{ConnectionTrait, DbBackend, Statement};
    let db = TestDb::create_empty().await?;
    let pool = pirus_db::connect(&pirus_db::DbConfig::new(&db.url)).await?;
    let show = "SHOW idle_in_transaction_session_timeout";
    let row = pool
        .query_one_raw(Statement::from_string(DbBackend::Postgres, show))
        .await?
        .expect("a row");
    let value: String = row.try_get("", "idle_in_transaction_session_timeout")?;
    assert_eq!(value, "30s");
    pirus_db::migrate(&pool).await?;
    Ok(())
}

/// Errors that mean the database cannot serve for now (answered UNAVAILABLE and retried) are
/// told apart from queries that fail: a database over its connection limit (SQLSTATE 53300,
/// what a server out of connection slots answers too) is the former, a syntax error the latter.
#[tokio::test]
async fn database_refusals_are_unavailable_and_failing_queries_are_not() -> Result<()> {
    use pirus_db::sea_orm::sqlx::{self, Connection, postgres::PgConnection};
    let db = TestDb::create().await?;
    let mut connection = PgConnection::connect(&db.url).await?;
    let failed = sqlx::query("SELEC 1")
        .execute(&mut connection)
        .await
        .expect_err("a syntax error");
    assert!(!pirus_db::sqlx_is_unavailable(&failed), "{failed}");

    // The owner (the service account) closes its database to new connections.
    let admin = db.client().await?;
    admin
        .batch_execute(&format!("ALTER DATABASE {} CONNECTION LIMIT 0", db.name))
        .await?;
    let refused = PgConnection::connect(&db.url)
        .await
        .expect_err("a database allowing no connections");
    let code = refused
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("53300"), "{refused}");
    assert!(pirus_db::sqlx_is_unavailable(&refused), "{refused}");
    Ok(())
}

/// A raw HTTP/1.1 GET of `path` on a connection of its own: the status line, or what ended it.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    raw_get_on(tokio::net::TcpStream::connect(addr).await?, path).await
}

/// A connection to `addr` from the loopback address `source` (any of 127.0.0.0/8 is this
/// host's): a second client, as far as the server can tell.
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(socket.connect(addr).await?)
}

/// [`raw_get`] on a connection already open.
async fn raw_get_on(mut stream: tokio::net::TcpStream, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("closed without an answer")
        .to_owned())
}

/// Reads until the peer closes (or 10 s pass); answers how long that took and what came.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> (Duration, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    (started.elapsed(), got)
}

/// A gRPC connection with no call open for `--grpc-idle-timeout` is closed, however it
/// answers the server's keepalive; a connection with a stream open is kept however quiet the
/// stream is; and a client whose idle connection was closed is served on its next call.
#[tokio::test]
async fn a_grpc_connection_without_calls_is_closed_and_one_with_a_stream_is_kept() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let db = TestDb::create().await?;
    let process = catalogue(&db.url)
        .args(["--grpc-idle-timeout", "2s"])
        .start()
        .await?;
    let addr = process.addrs().grpc;

    // The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    let mut quiet = connect_from("127.0.0.1", addr).await?;
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let (took, got) = until_closed(&mut quiet).await;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "a gRPC connection without calls was closed after {took:?}"
    );
    assert!(!got.is_empty(), "the server's SETTINGS came first");

    // A health Watch answers once, then nothing while the status stays: a quiet stream.
    let watching = process.channel().await?;
    let mut watch = HealthClient::new(watching.clone())
        .watch(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(watch.message().await?.map(|m| m.status), Some(SERVING));
    match tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
        Err(_) => {}
        Ok(ended) => panic!("a quiet stream ended on an idle-timed-out connection: {ended:?}"),
    }

    // A client that stays away longer than the timeout is served when it comes back.
    let idle = process.channel().await?;
    assert_eq!(health_status(idle.clone(), "").await?, SERVING);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(health_status(idle, "").await?, SERVING);
    Ok(())
}

/// The HTTP port does not let a client hold it: a request header not finished within
/// `--http-header-read-timeout` closes the connection, and past `--max-http-connections`
/// a new connection is closed at once; others are answered throughout.
#[tokio::test]
async fn the_http_port_drops_trickled_headers_and_connections_past_its_cap() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::create().await?;
    let slow = catalogue(&db.url)
        .args(["--http-header-read-timeout", "1s"])
        .start()
        .await?;
    let mut trickling = tokio::net::TcpStream::connect(slow.addrs().http).await?;
    trickling
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n")
        .await?;
    let (took, _) = until_closed(&mut trickling).await;
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "a trickled header was cut after {took:?}"
    );
    assert_eq!(
        raw_get(slow.addrs().http, "/livez").await?,
        "HTTP/1.1 200 OK"
    );

    let capped = catalogue(&db.url)
        .args(["--max-http-connections", "3"])
        .start()
        .await?;
    let addr = capped.addrs().http;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(addr).await?;
    let (took, got) = until_closed(&mut fourth).await;
    assert!(
        took < Duration::from_secs(2) && got.is_empty(),
        "a connection past the cap stayed {took:?} and got {got:?}"
    );
    // One of the three goes: the next connection is served.
    drop(idle.pop());
    eventually(Duration::from_secs(5), "a freed slot serves", || async {
        raw_get(addr, "/livez")
            .await
            .is_ok_and(|s| s == "HTTP/1.1 200 OK")
    })
    .await?;
    Ok(())
}

/// Past `--max-connections-per-peer`, one more connection from the same client is closed
/// at once, while another client is served and the first is again once one of its own goes.
#[tokio::test]
async fn one_client_cannot_hold_every_http_connection() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = catalogue(&db.url)
        .args(["--max-connections-per-peer", "2"])
        .start()
        .await?;
    let addr = catalogue.addrs().http;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from("127.0.0.1", addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect_from("127.0.0.1", addr).await?;
    let (took, got) = until_closed(&mut third).await;
    assert!(
        took < Duration::from_secs(2) && got.is_empty(),
        "a third connection of one client stayed {took:?} and got {got:?}"
    );
    assert_eq!(
        raw_get_on(connect_from("127.0.0.2", addr).await?, "/livez").await?,
        "HTTP/1.1 200 OK",
        "another client is served"
    );
    drop(held.pop());
    eventually(
        Duration::from_secs(5),
        "the client's freed slot serves",
        || async {
            match connect_from("127.0.0.1", addr).await {
                Ok(stream) => raw_get_on(stream, "/livez")
                    .await
                    .is_ok_and(|s| s == "HTTP/1.1 200 OK"),
                Err(_) => false,
            }
        },
    )
    .await?;
    Ok(())
}

/// The gRPC port does not let a client hold it either: a connection that sends no HTTP/2
/// preface within `--grpc-preface-timeout` is closed (one that did is kept past it), and past `--max-connections-per-peer` one more connection from the same
/// client is closed at once while another client is served.
#[tokio::test]
async fn the_grpc_port_drops_silent_connections_and_bounds_each_client() -> Result<()> {
    let db = TestDb::create().await?;
    let quick = catalogue(&db.url)
        .args(["--grpc-preface-timeout", "1s"])
        .start()
        .await?;
    let addr = quick.addrs().grpc;
    let speaking = quick.channel().await?;
    assert_eq!(health_status(speaking.clone(), "").await?, SERVING);
    let mut silent = connect_from("127.0.0.1", addr).await?;
    let (took, _) = until_closed(&mut silent).await;
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "a silent gRPC connection was closed after {took:?}"
    );
    assert_eq!(
        health_status(speaking, "").await?,
        SERVING,
        "a connection that sent its preface is kept past the timeout"
    );

    let capped = catalogue(&db.url)
        .args(["--max-connections-per-peer", "2"])
        .start()
        .await?;
    let local = |ip: &str| ip.parse::<std::net::IpAddr>();
    let mut held = vec![
        capped.channel_from(local("127.0.0.1")?, None).await?,
        capped.channel_from(local("127.0.0.1")?, None).await?,
    ];
    for channel in &held {
        assert_eq!(health_status(channel.clone(), "").await?, SERVING);
    }
    let mut third = connect_from("127.0.0.1", capped.addrs().grpc).await?;
    let (took, got) = until_closed(&mut third).await;
    assert!(
        took < Duration::from_secs(2) && got.is_empty(),
        "a third gRPC connection of one client stayed {took:?} and got {got:?}"
    );
    let other = capped.channel_from(local("127.0.0.2")?, None).await?;
    assert_eq!(
        health_status(other, "").await?,
        SERVING,
        "another client is served"
    );
    drop(held.pop());
    eventually(
        Duration::from_secs(5),
        "the client's freed slot serves",
        || async {
            match capped.channel_from(local("127.0.0.1").unwrap(), None).await {
                Ok(channel) => health_status(channel, "").await.is_ok_and(|s| s == SERVING),
                Err(_) => false,
            }
        },
    )
    .await?;
    Ok(())
}
