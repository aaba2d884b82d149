//! Black-box test harness: every test gets a fresh PostgreSQL database, starts the real
//! `pirus-catalogue` and `pirus-runner` binaries on `127.0.0.1:0`, reads their bound addresses
//! from `--addr-file`, and talks to them over gRPC and HTTP like any client.
//!
//! The binaries are the ones next to the test executable (`target/<profile>/`); build them first
//! (`cargo build --bins`, which `tests/run.sh` does), or point `PIRUS_BIN_DIR` elsewhere.
//! PostgreSQL is reached through `PIRUS_TEST_DATABASE_URL` (an account that may create
//! databases); a missing PostgreSQL fails the tests loudly, it never skips them.
//!
//! Every test database has its own admin token, and every process on it is called with it
//! unless a test asks otherwise (see [`identity`]).
//!
//! Depends on (within Pirus): pirus-proto, pirus-db, pirus-auth. Never on: pirus-catalogue,
//! pirus-runner (they are driven as binaries, like any client).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

pub use identity::Channel;

pub mod http;
pub mod identity;
pub mod load;
pub mod packages;
pub mod pg;
pub mod proxy;
pub mod stack;
pub mod tls;

pub const DEFAULT_ADMIN_URL: &str = "postgres://pirus:pirus@127.0.0.1:5432/postgres";

/// The admin URL used to create and drop test databases: `PIRUS_TEST_DATABASE_URL`, else the
/// `postgres` database of `PIRUS_DATABASE_URL`, else a local default.
pub fn admin_url() -> String {
    std::env::var("PIRUS_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("PIRUS_DATABASE_URL").map(|u| with_database(&u, "postgres")))
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Replaces the database name (the path) of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..host_end], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The URL of the runner's own database role (deploy/setup.sh creates `pirus_runner`) on the
/// server `PIRUS_TEST_RUNNER_DATABASE_URL` names, if set (tests/run.sh sets it).
pub fn runner_role_admin_url() -> Option<String> {
    std::env::var("PIRUS_TEST_RUNNER_DATABASE_URL").ok()
}

/// What a runner started on `database_url` connects with: the runner's role on the same
/// database, when the URL is a test database of the server [`admin_url`] names and the role is
/// configured (as deployed runners connect); `database_url` itself otherwise.
pub fn runner_database_url(database_url: &str) -> String {
    fn credentials_and_server(url: &str) -> Option<(&str, &str)> {
        let after_scheme = &url[url.find("://")? + 3..];
        let (credentials, rest) = after_scheme.split_once('@')?;
        let server = rest.split(['/', '?']).next()?;
        Some((credentials, server))
    }
    let Some(role_url) = runner_role_admin_url() else {
        return database_url.to_owned();
    };
    let (Some((ours, server)), Some((admin, admin_server)), Some((role, role_server))) = (
        credentials_and_server(database_url),
        credentials_and_server(&admin_url()).map(|(c, s)| (c.to_owned(), s.to_owned())),
        credentials_and_server(&role_url),
    ) else {
        return database_url.to_owned();
    };
    if ours != admin || server != admin_server || server != role_server {
        return database_url.to_owned();
    }
    database_url.replacen(&format!("{ours}@"), &format!("{role}@"), 1)
}

/// Deterministic bytes that do not repeat in any short period (xorshift), quickly: test
/// content that no two tests (or seeds) share and that does not compress.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Opens a plain tokio-postgres connection (for assertions on the schema and rows).
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A database of its own for one test, dropped (with its connections) when the test ends.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
    /// Its first admin token (none for an empty database).
    pub admin_token: Option<String>,
}

impl TestDb {
    /// A migrated database with its first admin token, which every process started on it
    /// is called with.
    pub async fn create() -> Result<Self> {
        Self::create_on(&admin_url()).await
    }

    pub async fn create_on(admin_url: &str) -> Result<Self> {
        let mut db = Self::create_empty_on(admin_url).await?;
        let pool = pirus_db::connect(&pirus_db::DbConfig::new(db.url.clone())).await?;
        pirus_db::migrate(&pool).await?;
        pool.close().await.ok();
        let token = identity::bootstrap(&db.url).await?;
        identity::remember(&db.url, &token);
        db.admin_token = Some(token);
        Ok(db)
    }

    /// An empty database (no schema, no token): for tests of the migrations themselves.
    pub async fn create_empty() -> Result<Self> {
        Self::create_empty_on(&admin_url()).await
    }

    pub async fn create_empty_on(admin_url: &str) -> Result<Self> {
        let name = format!("pirus_test_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_connect(admin_url).await.context(
            "PostgreSQL is needed for these tests: run deploy/setup.sh --deps-only, or set \
             PIRUS_TEST_DATABASE_URL",
        )?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
            admin_token: None,
        })
    }

    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        pg_connect(&self.url).await
    }
}

/// A fresh database with the schema migrated, and a pool on it: for the services' own store
/// tests.
pub async fn migrated_db() -> Result<(TestDb, pirus_db::sea_orm::DatabaseConnection)> {
    let db = TestDb::create_empty().await?;
    let pool = pirus_db::connect(&pirus_db::DbConfig::new(db.url.clone())).await?;
    pirus_db::migrate(&pool).await?;
    Ok((db, pool))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = pg_connect(&admin_url).await.ok()?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Which binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Catalogue,
    Runner,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Catalogue => "pirus-catalogue",
            Kind::Runner => "pirus-runner",
        }
    }

    pub fn service_name(self) -> &'static str {
        match self {
            Kind::Catalogue => pirus_proto::CATALOGUE_SERVICE,
            Kind::Runner => pirus_proto::RUNNER_SERVICE,
        }
    }
}

/// Where the binaries are: `PIRUS_BIN_DIR`, or the profile folder of this test executable.
pub fn bin_path(kind: Kind) -> PathBuf {
    binary(kind.binary())
}

/// The `pirus` command-line client.
pub fn cli_path() -> PathBuf {
    binary("pirus")
}

fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("PIRUS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("target folder")
                .to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --bins) or set PIRUS_BIN_DIR",
        path.display()
    );
    path
}

/// How to start a service.
#[derive(Debug)]
pub struct Launch {
    pub kind: Kind,
    pub database_url: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Whether to pass `--grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --addr-file`.
    pub ephemeral_ports: bool,
    /// The addresses to bind instead of free ports (a process started again where another
    /// was), with `ephemeral_ports`.
    pub at: Option<Addrs>,
    /// Run as the service's own unprivileged user, with only the capabilities that
    /// `deploy/setup.sh` gives it (setpriv), as a deployment does.
    pub unprivileged: bool,
    /// The token clients of the process call with: the database's admin token.
    pub token: Option<String>,
    /// How clients reach the process when it serves TLS (its CA, and a client certificate
    /// when it requires one); none: plaintext.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// The LXD storage pool test runners use: `PIRUS_TEST_LXD_POOL`, else `pirus` (the btrfs pool
/// `deploy/setup.sh` creates, which bounds every run's disk).
pub fn test_pool() -> String {
    std::env::var("PIRUS_TEST_LXD_POOL").unwrap_or_else(|_| "pirus".to_owned())
}

/// The user and setpriv options a service runs with in a deployment (deploy/setup.sh).
fn setpriv_args(kind: Kind) -> Vec<String> {
    let (user, caps) = match kind {
        Kind::Catalogue => ("pirus-catalogue", ""),
        Kind::Runner => ("pirus-runner", "+chown,+dac_override,+fowner"),
    };
    let mut args = vec![
        format!("--reuid={user}"),
        format!("--regid={user}"),
        "--init-groups".to_owned(),
        "--no-new-privs".to_owned(),
    ];
    if caps.is_empty() {
        args.extend([
            "--inh-caps=-all".to_owned(),
            "--bounding-set=-all".to_owned(),
        ]);
    } else {
        args.extend([
            format!("--inh-caps=-all,{caps}"),
            format!("--ambient-caps={caps}"),
            format!("--bounding-set=-all,{caps}"),
        ]);
    }
    args.push("--".to_owned());
    args
}

impl Launch {
    pub fn new(kind: Kind, database_url: &str) -> Self {
        Self {
            kind,
            database_url: database_url.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            ephemeral_ports: true,
            at: None,
            unprivileged: false,
            token: identity::recall(database_url),
            client_tls: None,
        }
    }

    /// The node a runner will call itself: `--node-name`, `PIRUS_NODE_NAME`, or the host name.
    fn node_name(&self) -> String {
        let from_args = self
            .args
            .iter()
            .position(|a| a == "--node-name")
            .and_then(|i| self.args.get(i + 1).cloned())
            .or_else(|| {
                self.args
                    .iter()
                    .find_map(|a| a.strip_prefix("--node-name=").map(str::to_owned))
            });
        let from_env = || {
            self.env
                .iter()
                .find(|(k, _)| k == "PIRUS_NODE_NAME")
                .map(|(_, v)| v.clone())
        };
        from_args.or_else(from_env).unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned())
        })
    }

    /// A runner on a database with tokens gets a runner token of its own node (in a file only
    /// its user reads), unless the test gave one.
    fn runner_token(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let given = self.args.iter().any(|a| a.starts_with("--token-file"))
            || self.env.iter().any(|(k, _)| k == "PIRUS_TOKEN_FILE");
        if self.kind != Kind::Runner || given || self.token.is_none() {
            return Ok(None);
        }
        let node = self.node_name();
        let token = identity::mint_blocking(
            &self.database_url,
            &format!("runner {node}"),
            pirus_auth::Role::Runner,
            Some(&node),
        )?;
        let path = dir.join("runner.token");
        std::fs::write(&path, token)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if self.unprivileged {
            let status = std::process::Command::new("chown")
                .args([
                    "pirus-runner:pirus-runner",
                    path.to_str().unwrap_or_default(),
                ])
                .status()?;
            anyhow::ensure!(status.success(), "chown of the runner token failed");
        }
        Ok(Some(path))
    }

    /// Runs the service as its own user, as [`Launch::unprivileged`] says.
    pub fn unprivileged(mut self) -> Self {
        self.unprivileged = true;
        self
    }

    /// Serves TLS with the certificate `name` of `certs`; the harness's clients trust the CA
    /// and present `client` (a certificate of `certs`) when given.
    pub fn tls(mut self, certs: &tls::Certs, name: &str, client: Option<&str>) -> Self {
        self.args.extend(certs.server_args(name));
        self.client_tls = Some(certs.client_config(client));
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Spawns the process and returns at once (before it serves).
    pub fn spawn(self) -> Result<Process> {
        let dir = tempdir()?;
        let addr_file = dir.join("addr.json");
        let stderr_path = dir.join("stderr.log");
        let token_file = self.runner_token(&dir)?;
        let mut command = if self.unprivileged {
            let user = match self.kind {
                Kind::Catalogue => "pirus-catalogue",
                Kind::Runner => "pirus-runner",
            };
            let status = std::process::Command::new("chown")
                .args([&format!("{user}:{user}"), dir.to_str().unwrap_or_default()])
                .status()?;
            anyhow::ensure!(
                status.success(),
                "chown of {} to {user} failed",
                dir.display()
            );
            let mut c = Command::new("setpriv");
            c.args(setpriv_args(self.kind)).arg(bin_path(self.kind));
            c
        } else {
            Command::new(bin_path(self.kind))
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env(
                "PIRUS_DATABASE_URL",
                match self.kind {
                    Kind::Catalogue => self.database_url.clone(),
                    Kind::Runner => runner_database_url(&self.database_url),
                },
            )
            .env("PIRUS_SHUTDOWN_TIMEOUT", "5s");
        match self.kind {
            Kind::Catalogue => command.env("PIRUS_DATA_DIR", dir.join("data")),
            Kind::Runner => command
                .env("PIRUS_WORK_DIR", dir.join("work"))
                .env("PIRUS_LXD_STORAGE_POOL", test_pool()),
        };
        if let Some(path) = &token_file {
            command.env("PIRUS_TOKEN_FILE", path);
        }
        if self.ephemeral_ports {
            let (grpc, http) = self.at.map_or_else(
                || ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
                |a| (a.grpc.to_string(), a.http.to_string()),
            );
            command.args(["--grpc-addr", &grpc, "--http-addr", &http, "--addr-file"]);
            command.arg(&addr_file);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.kind.binary()))?;
        Ok(Process {
            kind: self.kind,
            child,
            dir,
            addr_file,
            stderr_path,
            addrs: None,
            token: self.token,
            client_tls: self.client_tls,
        })
    }

    /// Spawns the process and waits until it reports its addresses.
    pub async fn start(self) -> Result<Process> {
        let mut process = self.spawn()?;
        process.wait_serving(Duration::from_secs(60)).await?;
        Ok(process)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// A running service process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    pub kind: Kind,
    child: Child,
    pub dir: PathBuf,
    addr_file: PathBuf,
    stderr_path: PathBuf,
    addrs: Option<Addrs>,
    /// The token [`Process::channel`] and HTTP requests to it carry.
    pub token: Option<String>,
    /// TLS of the harness's channels to it (see [`Launch::tls`]).
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Process {
    /// Waits for the addr file; fails early, with the process's stderr, if it exits first.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<Addrs> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.addr_file) {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let addrs = Addrs {
                    grpc: v["grpc"].as_str().context("grpc address")?.parse()?,
                    http: v["http"].as_str().context("http address")?.parse()?,
                };
                self.addrs = Some(addrs);
                if let Some(token) = &self.token {
                    identity::remember(&addrs.http.to_string(), token);
                }
                return Ok(addrs);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before serving:\n{}",
                    self.kind.binary(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve within {timeout:?}:\n{}",
                    self.kind.binary(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs.expect("process is serving")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A channel whose calls carry the process's token (the database's admin token).
    pub async fn channel(&self) -> Result<Channel> {
        Ok(identity::with_token(
            self.raw_channel().await?,
            self.token.as_deref(),
        ))
    }

    /// A channel whose calls carry `token`.
    pub async fn channel_as(&self, token: &str) -> Result<Channel> {
        Ok(identity::with_token(self.raw_channel().await?, Some(token)))
    }

    /// A channel from the loopback address `local` (like 127.0.3.7: a peer of its own),
    /// carrying `token` or none.
    pub async fn channel_from(
        &self,
        local: std::net::IpAddr,
        token: Option<&str>,
    ) -> Result<Channel> {
        let channel = self
            .endpoint()?
            .local_address(Some(local))
            .connect()
            .await?;
        Ok(identity::with_token(channel, token))
    }

    /// A channel whose calls carry no token (over TLS when the process serves it).
    pub async fn raw_channel(&self) -> Result<tonic::transport::Channel> {
        Ok(self.endpoint()?.connect().await?)
    }

    /// The process's gRPC address as a URL: `https://` when it serves TLS.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addrs().grpc)
    }

    fn endpoint(&self) -> Result<tonic::transport::Endpoint> {
        let endpoint = tonic::transport::Channel::from_shared(self.grpc_url())?;
        Ok(match &self.client_tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        })
    }

    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", self.addrs().http, path)
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} still running after {timeout:?}", self.kind.binary()))?
            .map_err(Into::into)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh folder under the system temporary folder.
pub fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pirus-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A minimal HTTP/1.1 GET over loopback: status and body. It carries the token of the
/// process serving `url`, if the harness started it.
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let client: Client<_, Empty<hyper::body::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse()?;
    let mut request = hyper::Request::get(uri.clone());
    if let Some(token) = uri.authority().and_then(|a| identity::recall(a.as_str())) {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The gRPC health status of `service` ("" for the whole server).
pub async fn health_status(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status)
}

pub const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
pub const NOT_SERVING: i32 =
    tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

/// Polls `check` every 100 ms until it returns true, at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what}: not within {timeout:?}")
}

/// Waits (at most 60 s) for a pipeline's install to end, READY or ERROR, and answers it.
pub async fn install_ended(
    catalogue: &mut pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient<
        Channel,
    >,
    id: &str,
) -> Result<pirus_proto::catalogue::v1::Pipeline> {
    use pirus_proto::catalogue::v1::{GetPipelineRequest, PipelineStatus};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = GetPipelineRequest { id: id.to_owned() };
        let p = catalogue.get_pipeline(request).await?.into_inner();
        match PipelineStatus::try_from(p.status)? {
            PipelineStatus::Ready | PipelineStatus::Error => return Ok(p),
            _ if Instant::now() > deadline => bail!("install of {id} did not end: {p:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A ready file's whole content, through ReadFile.
pub async fn read_file(
    catalogue: &mut pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient<
        Channel,
    >,
    id: &str,
) -> Result<Vec<u8>> {
    let request = pirus_proto::catalogue::v1::ReadFileRequest {
        file_id: id.to_owned(),
        offset: 0,
        limit: 0,
    };
    let mut stream = catalogue.read_file(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Runs as ListRuns pages them (1,000 a page), until `limit` are read or the list ends.
pub async fn list_runs(
    runner: &mut pirus_proto::runner::v1::runner_service_client::RunnerServiceClient<Channel>,
    limit: usize,
) -> Result<Vec<pirus_proto::runner::v1::Run>> {
    let mut runs = Vec::new();
    let mut token = String::new();
    while runs.len() < limit {
        let page = runner
            .list_runs(pirus_proto::runner::v1::ListRunsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        runs.extend(page.runs);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(runs)
}

/// A process's peak resident memory (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for process {pid}"))?;
    Ok(kib << 10)
}
