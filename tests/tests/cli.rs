//! The `pirus` command-line client, run as the real binary against real services (and LXD for
//! runs): every verb with its `--json` output parsed, the exit codes of a followed run, an
//! upload and a download killed mid-way then resumed to a byte-identical result, and a watch
//! whose connection is cut resuming without gaps or repeats.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use pirus_proto::catalogue::v1 as cat;
use pirus_tests::{
    Kind, Launch, Process, TestDb,
    proxy::Proxy,
    stack::{Stack, stack, test_package},
    tempdir,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The CLI as a user runs it: a home of its own (its cache and settings), the services'
/// addresses and the admin token from the environment.
struct Cli {
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(catalogue: &str, runner: &str, token: &str) -> Result<Self> {
        let home = tempdir()?;
        Ok(Self {
            env: vec![
                ("PIRUS_CATALOGUE_ADDR".into(), catalogue.into()),
                ("PIRUS_RUNNER_ADDR".into(), runner.into()),
                ("PIRUS_TOKEN".into(), token.into()),
            ],
            home,
        })
    }

    fn of(s: &Stack) -> Result<Self> {
        Self::new(
            &s.catalogue.grpc_url(),
            &s.runner.grpc_url(),
            s.db.admin_token.as_deref().unwrap_or_default(),
        )
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(pirus_tests::cli_path());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Result<Output> {
        let output = tokio::time::timeout(Duration::from_secs(180), self.command(args).output())
            .await
            .with_context(|| format!("pirus {args:?} did not end"))??;
        Ok(output)
    }

    /// Runs a command that must succeed; answers its stdout.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        ensure!(
            out.status.success(),
            "pirus {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs a command with --json; answers the document it printed.
    async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all).await?;
        serde_json::from_str(&text).with_context(|| format!("pirus {args:?} printed {text}"))
    }

    fn cache(&self) -> PathBuf {
        self.home.join(".cache/pirus/uploads.json")
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, data)?;
    Ok(path)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn text(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// One stderr line, the message a person reads.
fn one_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("pirus: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {text}");
    lines[0].to_owned()
}

#[tokio::test]
async fn every_verb_works_against_real_services() -> Result<()> {
    let s = stack(2).await?;
    let cli = Cli::of(&s)?;
    let dir = tempdir()?;

    // Tokens: whoami, create (its secret once), list (never a secret), a call as the new
    // token, revoke.
    let me = cli.json(&["token", "whoami"]).await?;
    assert_eq!(me["role"], "ROLE_ADMIN");
    let made = cli
        .json(&["token", "create", "alice", "--role", "user", "--ttl", "1h"])
        .await?;
    let secret = made["secret"].as_str().context("a secret")?.to_owned();
    let accessor = made["token"]["accessor_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let tokens = cli.json(&["token", "list"]).await?;
    let listed = tokens.as_array().context("an array")?;
    assert!(listed.iter().any(|t| t["accessor_id"] == accessor.as_str()));
    assert!(!tokens.to_string().contains(&secret), "no secret is listed");
    let mut alice = Cli::of(&s)?;
    alice.set("PIRUS_TOKEN", &secret);
    assert_eq!(alice.json(&["token", "whoami"]).await?["name"], "alice");
    let revoked = cli.json(&["token", "revoke", &accessor]).await?;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Nodes: a table for people, JSON for scripts, drain and undrain.
    let table = cli.ok(&["node", "list"]).await?;
    assert!(
        table.starts_with("NAME") && table.contains(&s.node),
        "{table}"
    );
    let nodes = cli.json(&["node", "list"]).await?;
    assert!(
        nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["name"] == s.node.as_str()))
    );
    let drained = cli.json(&["node", "drain", &s.node]).await?;
    assert_eq!(drained["status"], "NODE_STATUS_DRAINING");
    let back = cli.json(&["node", "undrain", &s.node]).await?;
    assert_eq!(back["status"], "NODE_STATUS_ONLINE");

    // A pipeline: uploaded and installed, listed, shown by name and name:version, its form.
    let package = write(&dir, "wc.tar.gz", &test_package()?)?;
    let installed = cli.json(&["pipeline", "upload", text(&package)]).await?;
    assert_eq!(installed["status"], "PIPELINE_STATUS_READY", "{installed}");
    let id = installed["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        cli.json(&["pipeline", "list"])
            .await?
            .to_string()
            .contains(&id)
    );
    assert_eq!(
        cli.json(&["pipeline", "show", "wc"]).await?["id"],
        id.as_str()
    );
    let form: Value = serde_json::from_str(&cli.ok(&["pipeline", "form", "wc:1.0.0"]).await?)?;
    assert!(form["properties"]["exit_code"].is_object(), "{form}");

    // A file: uploaded, listed, shown, downloaded identical.
    let reads = write(&dir, "reads.txt", b"a\nb\nc\n")?;
    let files = cli.json(&["file", "upload", text(&reads)]).await?;
    let file = &files[0];
    assert_eq!(file["status"], "FILE_STATUS_READY");
    assert_eq!(file["sha256"], sha256(b"a\nb\nc\n").as_str());
    let file_id = file["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        cli.json(&["file", "list"])
            .await?
            .to_string()
            .contains(&file_id)
    );
    assert_eq!(
        cli.json(&["file", "show", &file_id]).await?["name"],
        "reads.txt"
    );
    let copy = dir.join("copy.txt");
    cli.ok(&["file", "download", &file_id, "-o", text(&copy)])
        .await?;
    assert_eq!(std::fs::read(&copy)?, b"a\nb\nc\n");

    // A run: submitted with a local input (uploaded first) and followed; its logs stream to
    // stdout and stderr, and the command exits 0 for DONE.
    let out = cli
        .run(&[
            "run",
            "submit",
            "wc",
            "--input",
            text(&reads),
            "--config",
            "sleep=0",
            "--follow",
        ])
        .await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("starting run") && stdout.contains("done"),
        "{stdout}"
    );
    assert!(
        stderr.contains("a warning") && stderr.contains(" done"),
        "{stderr}"
    );
    let runs = cli.json(&["run", "list", "--status", "done"]).await?;
    let run = runs[0]["id"].as_str().context("a done run")?.to_owned();
    assert_eq!(
        cli.json(&["run", "show", &run]).await?["status"],
        "RUN_STATUS_DONE"
    );
    assert!(
        cli.ok(&["run", "logs", &run])
            .await?
            .contains("starting run")
    );
    assert!(
        cli.ok(&["run", "logs", &run, "--stderr"])
            .await?
            .contains("a warning")
    );
    let results = dir.join("results");
    let outputs = cli
        .json(&["run", "outputs", &run, "--download", text(&results)])
        .await?;
    assert!(
        outputs.as_array().is_some_and(|o| o.len() >= 2),
        "{outputs}"
    );
    assert_eq!(
        std::fs::read_to_string(results.join("count.txt"))?.trim(),
        "3"
    );
    assert!(std::fs::read_to_string(results.join("sub/lines.txt"))?.contains("> b"));

    // Removals, and a failure as one line naming what failed and the server's message.
    cli.json(&["run", "rm", &run]).await?;
    let gone = cli.run(&["run", "show", &run]).await?;
    assert_eq!(gone.status.code(), Some(1));
    let line = one_line(&gone);
    assert!(
        line.contains(&format!("run {run}")) && line.contains("not found"),
        "{line}"
    );
    cli.json(&["file", "rm", &file_id]).await?;
    cli.json(&["pipeline", "rm", &id]).await?;

    let bash = cli.ok(&["completions", "bash"]).await?;
    assert!(bash.contains("_pirus"), "a bash completion script");
    for shell in ["zsh", "fish"] {
        assert!(!cli.ok(&["completions", shell]).await?.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn run_submit_follow_exits_with_the_run_s_code() -> Result<()> {
    let mut s = stack(2).await?;
    let pipeline = s.pipeline().await?;
    let cli = Cli::of(&s)?;
    let dir = tempdir()?;
    let reads = write(&dir, "reads.txt", b"x\n")?;
    let submit = |config: &'static str| {
        let args = vec![
            "run".to_owned(),
            "submit".to_owned(),
            pipeline.clone(),
            "--input".to_owned(),
            s_owned(&reads),
            "--config".to_owned(),
            config.to_owned(),
            "--follow".to_owned(),
        ];
        args
    };
    let args = submit("exit_code=3");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let failed = cli.run(&refs).await?;
    assert_eq!(failed.status.code(), Some(3), "the command's own code");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("error") && stderr.contains("exit code 3"),
        "{stderr}"
    );

    // Refused before anything is queued: by the form, locally, with the server's message;
    // by the server (an input that does not exist); an unknown pipeline.
    let args = submit("sleep=1000");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = cli.run(&refs).await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        one_line(&refused).contains("config_json.sleep"),
        "{refused:?}"
    );
    let missing = uuid::Uuid::new_v4().to_string();
    let refused = cli
        .run(&["run", "submit", &pipeline, "--input", &missing, "--follow"])
        .await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(one_line(&refused).contains("not found"), "{refused:?}");
    let refused = cli.run(&["run", "submit", "nosuch", "--follow"]).await?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(one_line(&refused).contains("no READY pipeline nosuch"));
    Ok(())
}

fn s_owned(p: &Path) -> String {
    text(p).to_owned()
}

fn data(len: usize) -> Vec<u8> {
    pirus_tests::random_bytes(len, 0x9e37_79b9_7f4a_7c15)
}

/// Waits until `check` holds, polling.
async fn until(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check()? {
        if std::time::Instant::now() > deadline {
            bail!("{what}: not within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A catalogue reached through throttled proxies (see [`slow_catalogue`]), its database, and
/// the CLI pointed at it.
async fn slow_cli() -> Result<(TestDb, Process, Proxy, Proxy, Cli)> {
    let db = TestDb::create().await?;
    let (catalogue, http, grpc) = slow_catalogue(&db).await?;
    let cli = Cli::new(
        &format!("http://{}", grpc.addr()),
        "http://127.0.0.1:1",
        db.admin_token.as_deref().unwrap_or_default(),
    )?;
    Ok((db, catalogue, http, grpc, cli))
}

/// A catalogue whose tus URLs and gRPC port are reached through throttled proxies, so a
/// transfer lasts long enough to be killed mid-way.
async fn slow_catalogue(db: &TestDb) -> Result<(Process, Proxy, Proxy)> {
    // The HTTP proxy must exist before the catalogue, whose public URL names it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let http_port = listener.local_addr()?.port();
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .args(["--public-url", &format!("http://127.0.0.1:{http_port}")])
        .start()
        .await?;
    let http = Proxy::start_on(listener, catalogue.addrs().http, 16 << 20)?;
    let grpc = Proxy::start(catalogue.addrs().grpc, 16 << 20).await?;
    Ok((catalogue, http, grpc))
}

#[tokio::test]
async fn an_upload_and_a_download_killed_mid_way_resume_to_identical_bytes() -> Result<()> {
    let (db, _catalogue, _http, grpc, cli) = slow_cli().await?;
    let dir = tempdir()?;
    let content = data(64 << 20);
    let big = write(&dir, "big.bin", &content)?;

    // The upload, killed once some bytes are durable on the server.
    let mut first = cli.command(&["file", "upload", text(&big)]).spawn()?;
    let cache = cli.cache();
    until("the upload is remembered", || Ok(cache.exists())).await?;
    let remembered: Value = serde_json::from_slice(&std::fs::read(&cache)?)?;
    let id = remembered
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|e| e["id"].as_str())
        .context("an upload id")?
        .to_owned();
    let mut catalogue = cat::catalogue_service_client::CatalogueServiceClient::new(
        pirus_tests::identity::with_token(
            tonic::transport::Channel::from_shared(format!("http://{}", grpc.addr()))?
                .connect()
                .await?,
            db.admin_token.as_deref(),
        ),
    );
    let status = |c: &mut cat::catalogue_service_client::CatalogueServiceClient<_>| {
        let id = id.clone();
        let mut c = c.clone();
        async move {
            c.get_upload_status(cat::GetUploadStatusRequest { upload_id: id })
                .await
                .map(|r| r.into_inner())
        }
    };
    loop {
        let now = status(&mut catalogue).await?;
        if now.offset > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().await?;
    let cut = status(&mut catalogue).await?;
    assert!(
        !cut.complete && cut.offset < content.len() as i64,
        "killed mid-way: {cut:?}"
    );

    // The same command resumes from the server's offset and completes.
    let again = cli.run(&["--json", "file", "upload", text(&big)]).await?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("resuming at"), "{stderr}");
    let files: Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(files[0]["id"], id.as_str(), "the same upload, resumed");
    assert_eq!(files[0]["sha256"], sha256(&content).as_str());

    // The download, killed once its partial file holds bytes, then resumed and verified.
    let target = dir.join("back.bin");
    let part = dir.join("back.bin.part");
    let mut first = cli
        .command(&["file", "download", &id, "-o", text(&target)])
        .spawn()?;
    until("the download has begun", || {
        Ok(std::fs::metadata(&part)
            .map(|m| m.len() > 0)
            .unwrap_or(false))
    })
    .await?;
    first.kill().await?;
    let partial = std::fs::metadata(&part)?.len();
    assert!(partial < content.len() as u64, "killed mid-way");
    let again = cli
        .run(&["file", "download", &id, "-o", text(&target)])
        .await?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming at"));
    assert!(
        std::fs::read(&target)? == content,
        "the download is byte-identical"
    );
    assert!(!part.exists());
    Ok(())
}

#[tokio::test]
async fn a_watch_whose_connection_is_cut_resumes_without_gaps_or_repeats() -> Result<()> {
    let mut s = stack(1).await?;
    let run = s.submit_sleeping(4).await?;
    let proxy = Proxy::start(s.runner.addrs().grpc, 0).await?;
    let cli = Cli::new(
        &s.catalogue.grpc_url(),
        &format!("http://{}", proxy.addr()),
        s.db.admin_token.as_deref().unwrap_or_default(),
    )?;
    let mut watch = cli
        .command(&["--json", "run", "watch", &run.id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = watch.stdout.take().context("stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seqs = Vec::new();
    let mut cut = false;
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await??
    {
        let event: Value = serde_json::from_str(&line)?;
        seqs.push(event["seq"].as_i64().context("a seq")?);
        if !cut && event["status"] == "RUN_STATUS_RUNNING" {
            proxy.cut();
            cut = true;
        }
    }
    let status = watch.wait().await?;
    assert!(cut, "the connection was cut while the run ran");
    assert!(proxy.accepted() >= 2, "the watch reconnected");
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "every event once, in order");
    assert_eq!(status.code(), Some(0), "DONE");
    Ok(())
}

/// Over TLS with client certificates required (mTLS) on gRPC and the tus port: without a
/// client certificate the CLI is refused in one line; with one it calls and uploads.
#[tokio::test]
async fn the_cli_speaks_tls_with_client_certificates() -> Result<()> {
    let certs = pirus_tests::tls::Certs::make(&["catalogue", "runner", "client"])?;
    let s = pirus_tests::stack::stack_over_tls(1, &certs).await?;
    let mut cli = Cli::of(&s)?;
    assert!(s.catalogue.grpc_url().starts_with("https://"));
    cli.set("PIRUS_TLS_CA", text(&certs.ca()));
    let refused = cli.run(&["token", "whoami"]).await?;
    assert_eq!(refused.status.code(), Some(1));
    // (TLS 1.3: the server checks the client's certificate after the handshake, and closes.)
    let line = one_line(&refused);
    assert!(
        line.contains("who this token is") && line.contains("connection"),
        "{line}"
    );
    cli.set("PIRUS_TLS_CLIENT_CERT", text(&certs.cert("client")));
    cli.set("PIRUS_TLS_CLIENT_KEY", text(&certs.key("client")));
    assert_eq!(cli.json(&["token", "whoami"]).await?["role"], "ROLE_ADMIN");
    let dir = tempdir()?;
    let file = write(&dir, "tls.txt", b"over tls\n")?;
    let uploaded = cli.json(&["file", "upload", text(&file)]).await?;
    assert_eq!(uploaded[0]["sha256"], sha256(b"over tls\n").as_str());
    let nodes = cli.json(&["node", "list"]).await?;
    assert!(nodes.to_string().contains(&s.node));
    Ok(())
}

/// On a terminal an upload draws a progress bar (bytes, rate, ETA), read here from the screen
/// of a real terminal (tmux), and ends with one line once the bar is cleared.
#[tokio::test]
async fn an_upload_on_a_terminal_draws_a_progress_bar() -> Result<()> {
    let (_db, _catalogue, _http, _grpc, cli) = slow_cli().await?;
    let dir = tempdir()?;
    let big = write(&dir, "screen.bin", &data(48 << 20))?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = String::from("env -i");
    for (k, v) in [
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".to_owned(), text(&cli.home).to_owned()),
        ("TERM".to_owned(), "xterm".to_owned()),
    ]
    .into_iter()
    .chain(cli.env.iter().cloned())
    {
        line.push_str(&format!(" {k}={}", quote(&v)));
    }
    line.push_str(&format!(
        " {} file upload {}; sleep 60",
        quote(text(&pirus_tests::cli_path())),
        quote(text(&big))
    ));
    let socket = format!("pirus-test-{}", uuid::Uuid::new_v4().simple());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
    };
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "20", &line])?;
    ensure!(started.status.success(), "tmux: {started:?}");
    let screen = || -> Result<String> {
        Ok(String::from_utf8_lossy(&tmux(&["capture-pane", "-p"])?.stdout).into_owned())
    };
    let mut bar = None;
    let mut done = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.is_none() && std::time::Instant::now() < deadline {
        let now = screen()?;
        if bar.is_none()
            && let Some(l) = now
                .lines()
                .find(|l| l.contains("ETA") && l.contains("screen.bin ["))
        {
            bar = Some(l.to_owned());
        }
        done = now
            .lines()
            .find(|l| l.starts_with("screen.bin: uploaded"))
            .map(str::to_owned);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tmux(&["kill-server"]);
    let bar = bar.context("no progress bar was drawn")?;
    assert!(bar.contains("MiB") && bar.contains("/48.00 MiB"), "{bar}");
    let done = done.context("the upload did not end")?;
    assert!(done.contains("48.0 MiB of 48.0 MiB (100%)"), "{done}");
    Ok(())
}

/// Controlling a run from the CLI: pause, resume and cancel a running run, `run logs -f`
/// following it to its end, `run watch` exiting 1 for CANCELED; and `--checksum` uploads in
/// chunks the server verifies.
#[tokio::test]
async fn runs_are_controlled_and_chunked_uploads_verified() -> Result<()> {
    let mut s = stack(1).await?;
    let pipeline = s.pipeline().await?;
    let cli = Cli::of(&s)?;
    let dir = tempdir()?;
    let reads = write(&dir, "reads.txt", b"x\ny\n")?;
    let run = cli
        .json(&[
            "run",
            "submit",
            &pipeline,
            "--input",
            text(&reads),
            "--config",
            "sleep=60",
        ])
        .await?;
    let id = run["id"].as_str().context("a run id")?.to_owned();
    s.wait_running(&id).await?;
    assert_eq!(cli.json(&["run", "pause", &id]).await?["id"], id.as_str());
    until_status(&cli, &id, "RUN_STATUS_PAUSE").await?;
    cli.json(&["run", "resume", &id]).await?;
    until_status(&cli, &id, "RUN_STATUS_RUNNING").await?;
    // A follower of the log, started now, ends when the run does.
    let follower = cli.command(&["run", "logs", &id, "-f"]).output();
    let follower = tokio::spawn(follower);
    cli.json(&["run", "cancel", &id]).await?;
    let watched = cli.run(&["run", "watch", &id, "--no-logs"]).await?;
    assert_eq!(watched.status.code(), Some(1), "CANCELED is not success");
    assert!(String::from_utf8_lossy(&watched.stderr).contains("canceled"));
    let logs = tokio::time::timeout(Duration::from_secs(60), follower).await???;
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(String::from_utf8_lossy(&logs.stdout).contains("starting run"));

    // A chunked upload: 3 MiB in 1 MiB PATCHes, each with its SHA-256.
    let content = data(3 << 20);
    let chunked = write(&dir, "chunked.bin", &content)?;
    let files = cli
        .json(&["file", "upload", text(&chunked), "--checksum", "1"])
        .await?;
    assert_eq!(files[0]["sha256"], sha256(&content).as_str());
    assert_eq!(files[0]["status"], "FILE_STATUS_READY");
    Ok(())
}

async fn until_status(cli: &Cli, id: &str, status: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = cli.json(&["run", "show", id]).await?;
        if run["status"] == status {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("run {id} is {} rather than {status}", run["status"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Settings come from flags, then the environment, then the settings file: each level is
/// shown to win over the next.
#[tokio::test]
async fn settings_come_from_flags_then_environment_then_the_file() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let admin = db.admin_token.clone().unwrap_or_default();
    let user =
        pirus_tests::identity::mint(&db.url, "bob", pirus_auth::Role::User, None, None).await?;
    let mut cli = Cli::new("http://127.0.0.1:1", "http://127.0.0.1:1", "")?;
    cli.env.clear();
    let dir = cli.home.join(".config/pirus");
    std::fs::create_dir_all(&dir)?;
    let token_file = write(&cli.home, "admin.token", format!("{admin}\n").as_bytes())?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "catalogue_addr = \"{}\"\ntoken_file = \"{}\"\n",
            catalogue.grpc_url(),
            text(&token_file)
        ),
    )?;
    // The file alone: the admin.
    assert_eq!(cli.json(&["token", "whoami"]).await?["role"], "ROLE_ADMIN");
    // The environment over the file: bob.
    cli.set("PIRUS_TOKEN", &user);
    assert_eq!(cli.json(&["token", "whoami"]).await?["name"], "bob");
    // A flag over the environment (even a token file over a token): the admin again; and a
    // wrong address by flag fails.
    let by_flag = cli
        .json(&["--token-file", text(&token_file), "token", "whoami"])
        .await?;
    assert_eq!(by_flag["role"], "ROLE_ADMIN");
    assert_eq!(
        cli.json(&["--token", &admin, "token", "whoami"]).await?["role"],
        "ROLE_ADMIN"
    );
    let wrong = cli
        .run(&["--catalogue", "http://127.0.0.1:1", "token", "whoami"])
        .await?;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(one_line(&wrong).contains("cannot reach the catalogue at http://127.0.0.1:1"));
    // A settings file that is not valid says which and why, in one line.
    std::fs::write(dir.join("config.toml"), "catalog_addr = 1\n")?;
    let bad = cli.run(&["token", "whoami"]).await?;
    assert!(one_line(&bad).contains("config.toml is not a valid configuration"));
    Ok(())
}

/// A reader that goes away before reading (`pirus token list | head -c0`) ends the command
/// at once, quietly and successfully, as with any Unix filter: a table and a JSON document
/// alike (`println!` panicked there, code 101).
#[tokio::test]
async fn output_into_a_closed_pipe_ends_the_command_quietly() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let cli = Cli::new(
        &catalogue.grpc_url(),
        "http://127.0.0.1:1",
        db.admin_token.as_deref().unwrap_or_default(),
    )?;
    for args in [&["token", "list"][..], &["--json", "token", "list"]] {
        let mut child = cli
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // The read end closes before the answer comes back: the first write finds no reader.
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .with_context(|| format!("pirus {args:?} did not end"))??;
        ensure!(
            out.status.code() == Some(0) && out.stderr.is_empty(),
            "pirus {args:?} into a closed pipe: {}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A catalogue reached over TLS that answers a plaintext upload URL (a misconfigured
/// `--public-url`) never gets the token sent in clear: the upload is refused, in one line.
#[tokio::test]
async fn a_plaintext_upload_url_is_refused_when_the_catalogue_speaks_tls() -> Result<()> {
    let certs = pirus_tests::tls::Certs::make(&["catalogue"])?;
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .tls(&certs, "catalogue", None)
        .args(["--public-url", "http://127.0.0.1:9"])
        .start()
        .await?;
    let mut cli = Cli::new(
        &catalogue.grpc_url(),
        "http://127.0.0.1:1",
        db.admin_token.as_deref().unwrap_or_default(),
    )?;
    cli.set("PIRUS_TLS_CA", text(&certs.ca()));
    let dir = tempdir()?;
    let file = write(&dir, "secret.txt", b"x\n")?;
    let refused = cli.run(&["file", "upload", text(&file)]).await?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(one_line(&refused).contains("not https"), "{refused:?}");
    Ok(())
}

/// Principals, their tokens and their usage from the command line: `principal create`, `token
/// create --principal`, `principal update` of one limit (the others stay), `usage`, and
/// `run list --owner` refused for a user naming another principal.
#[tokio::test]
async fn principals_and_usage_from_the_cli() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url).start().await?;
    let admin = Cli::new(
        &catalogue.grpc_url(),
        "http://127.0.0.1:9",
        db.admin_token.as_deref().unwrap_or_default(),
    )?;
    let made = admin
        .json(&[
            "principal",
            "create",
            "lab",
            "--kind",
            "service",
            "--role",
            "user",
            "--max-stored-bytes",
            "1000",
            "--max-files",
            "5",
        ])
        .await?;
    assert_eq!(made["name"], "lab");
    assert_eq!(made["kind"], "PRINCIPAL_KIND_SERVICE");
    let token = admin
        .json(&["token", "create", "lab-ci", "--principal", "lab"])
        .await?;
    assert_eq!(token["token"]["principal"], "lab");
    assert_eq!(token["token"]["role"], "ROLE_USER");
    let updated = admin
        .json(&["principal", "update", "lab", "--max-queued-runs", "7"])
        .await?;
    assert_eq!(updated["quota"]["max_queued_runs"], 7);
    assert_eq!(
        updated["quota"]["max_stored_bytes"], 1000,
        "the other limits stay"
    );
    let listed = admin.json(&["principal", "list"]).await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == "lab")),
        "{listed}"
    );

    let secret = token["secret"].as_str().unwrap_or_default();
    let lab = Cli::new(&catalogue.grpc_url(), "http://127.0.0.1:9", secret)?;
    let dir = tempdir()?;
    let file = write(&dir, "small.txt", b"hello")?;
    lab.ok(&["file", "upload", text(&file)]).await?;
    let usage = lab.json(&["usage"]).await?;
    assert_eq!(usage["principal"], "lab");
    assert_eq!(
        (usage["stored_bytes"].as_i64(), usage["files"].as_i64()),
        (Some(5), Some(1))
    );
    let table = lab.ok(&["usage"]).await?;
    assert!(
        table.contains("stored_bytes") && table.contains("1000 B"),
        "{table}"
    );
    let other = lab.run(&["usage", "harness-admin"]).await?;
    assert_eq!(other.status.code(), Some(1));
    assert!(one_line(&other).contains("another principal"), "{other:?}");
    Ok(())
}
