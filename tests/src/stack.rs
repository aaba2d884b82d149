//! A whole deployment for run tests: a fresh database, a catalogue, a runner (on the test LXD
//! storage pool), clients of both, the test pipeline (a busybox image built here) and helpers
//! to submit, follow and check runs. Tests that attack the runner build pipelines of their own
//! with [`Stack::install`].

use std::time::Duration;

use crate::Channel;
use anyhow::{Result, bail};
use pirus_proto::{
    catalogue::v1::{self as cat, catalogue_service_client::CatalogueServiceClient},
    runner::v1::{self as run, runner_service_client::RunnerServiceClient},
};
use tokio_stream::StreamExt;

use crate::{
    Kind, Launch, Process, TestDb,
    packages::{self, Format, Item},
};

/// The test pipeline's command: reads its input, writes outputs (and a link that must never be
/// collected), reports progress, sleeps and exits as its configuration says.
pub const SCRIPT: &str = r#"#!/bin/sh
echo "starting run $PIRUS_RUN_ID"
echo "a warning" >&2
code=$(sed -n 's/.*"exit_code": *\([0-9]*\).*/\1/p' "$PIRUS_CONFIG_FILE")
pause=$(sed -n 's/.*"sleep": *\([0-9]*\).*/\1/p' "$PIRUS_CONFIG_FILE")
mkdir -p "$PIRUS_OUTPUTS/sub"
wc -l < "$PIRUS_INPUTS/reads.txt" > "$PIRUS_OUTPUTS/count.txt"
sed 's/^/> /' "$PIRUS_INPUTS/reads.txt" > "$PIRUS_OUTPUTS/sub/lines.txt"
ln -s /etc/shadow "$PIRUS_OUTPUTS/escape"
for i in 1 2 3 4; do
  echo "{\"min\": 0, \"max\": 4, \"value\": $i, \"label\": \"$i / 4\"}" > "$PIRUS_PROGRESS_FILE"
  sleep 0.3
done
sleep "${pause:-0}"
echo "done"
exit "${code:-0}"
"#;

/// The test pipeline's form.
pub const FORM: &str = r#"{
  "type": "object",
  "properties": {
    "exit_code": {"type": "integer", "minimum": 0, "maximum": 255, "default": 0},
    "sleep": {"type": "integer", "minimum": 0, "maximum": 600, "default": 0},
    "input": {"type": "string", "enum": "__PIRUS_INPUT_FILES__"}
  }
}"#;

#[derive(Debug)]
pub struct Stack {
    pub db: TestDb,
    pub catalogue: Process,
    pub runner: Process,
    pub node: String,
    pub cat: CatalogueServiceClient<Channel>,
    pub run: RunnerServiceClient<Channel>,
    pub work_dir: std::path::PathBuf,
}

/// A deployment whose runner takes `max_runs` runs at once.
pub async fn stack(max_runs: u32) -> Result<Stack> {
    stack_with(max_runs, &[], &[]).await
}

/// A deployment with extra options for the catalogue and the runner.
pub async fn stack_with(
    max_runs: u32,
    catalogue_args: &[&str],
    runner_args: &[&str],
) -> Result<Stack> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .args(catalogue_args.iter().copied())
        .start()
        .await?;
    assemble(db, catalogue, max_runs, |runner| {
        runner.args(runner_args.iter().copied())
    })
    .await
}

/// A deployment over TLS with client certificates required everywhere (mTLS): the catalogue
/// and the runner present the certificates `catalogue` and `runner` of `certs`, the runner
/// reaches the catalogue at its `https://` address presenting its own as its client
/// certificate, and the harness's clients present `client`.
pub async fn stack_over_tls(max_runs: u32, certs: &crate::tls::Certs) -> Result<Stack> {
    let db = TestDb::create().await?;
    let ca = certs.ca().to_string_lossy().into_owned();
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .tls(certs, "catalogue", Some("client"))
        .args(["--tls-client-ca", &ca])
        .start()
        .await?;
    let (cert, key) = (certs.cert("runner"), certs.key("runner"));
    assemble(db, catalogue, max_runs, |runner| {
        runner
            .tls(certs, "runner", Some("client"))
            .args(["--tls-client-ca", &ca, "--tls-ca", &ca])
            .args(["--tls-client-cert", cert.to_str().unwrap_or_default()])
            .args(["--tls-client-key", key.to_str().unwrap_or_default()])
    })
    .await
}

/// Starts a runner of a fresh node beside `catalogue` (`options` adds to its launch) and
/// connects the harness's clients to both.
async fn assemble(
    db: TestDb,
    catalogue: Process,
    max_runs: u32,
    options: impl FnOnce(Launch) -> Launch,
) -> Result<Stack> {
    let node = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let work_dir = crate::tempdir()?;
    let runner = Launch::new(Kind::Runner, &db.url)
        .args(["--node-name", &node, "--max-runs", &max_runs.to_string()])
        .args(["--work-dir", work_dir.to_str().unwrap()])
        .args(["--catalogue-addr", &catalogue.grpc_url()]);
    let runner = options(runner).start().await?;
    Ok(Stack {
        cat: CatalogueServiceClient::new(catalogue.channel().await?),
        run: RunnerServiceClient::new(runner.channel().await?),
        db,
        catalogue,
        runner,
        node,
        work_dir,
    })
}

impl Drop for Stack {
    /// The runner goes first, then whatever containers of its node a test left running (a
    /// test may end while a run does): nothing of a test outlives it in LXD.
    fn drop(&mut self) {
        let _ = self.runner.signal("KILL");
        // LXD finishes a creation the runner asked for before it died: wait for those (a few
        // seconds at most), so that the listing below sees their containers.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && creating_instances() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(output) = node_containers(&self.node) {
            for name in String::from_utf8_lossy(&output.stdout).lines() {
                let _ = std::process::Command::new("lxc")
                    .args(["delete", "--force", name.trim()])
                    .output();
            }
        }
        // And the run volumes of its node (on the test pool).
        let pool = crate::test_pool();
        let volumes = std::process::Command::new("lxc")
            .args([
                "storage", "volume", "list", &pool, "--format", "csv", "-c", "tn",
            ])
            .output();
        if let Ok(output) = volumes {
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Some(name) = line.strip_prefix("custom,") else {
                    continue;
                };
                let node = std::process::Command::new("lxc")
                    .args(["storage", "volume", "get", &pool, name, "user.pirus.node"])
                    .output();
                if node.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == self.node) {
                    let _ = std::process::Command::new("lxc")
                        .args(["storage", "volume", "delete", &pool, name])
                        .output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

impl Stack {
    pub async fn upload(&mut self, name: &str, data: &[u8]) -> Result<String> {
        let file = self
            .cat
            .create_file(cat::CreateFileRequest {
                filename: name.into(),
                size: data.len() as i64,
                ..Default::default()
            })
            .await?
            .into_inner();
        if !data.is_empty() {
            let message = cat::WriteUploadRequest {
                upload_id: file.id.clone(),
                offset: 0,
                data: data.to_vec().into(),
                ..Default::default()
            };
            self.cat.write_upload(tokio_stream::iter([message])).await?;
        }
        Ok(file.id)
    }

    /// Installs the test pipeline; answers its id.
    pub async fn pipeline(&mut self) -> Result<String> {
        self.install(
            "wc",
            SCRIPT,
            FORM,
            r#""resources": {"cpu": 1, "memory": "256MiB"}"#,
        )
        .await
    }

    /// Installs a busybox pipeline named `name` whose command is `script`, with `form` and
    /// extra manifest fields (`"resources": {...}`, or empty); answers its id once READY.
    pub async fn install(
        &mut self,
        name: &str,
        script: &str,
        form: &str,
        manifest_extra: &str,
    ) -> Result<String> {
        let package = package(name, script, form, manifest_extra)?;
        self.install_package(name, package).await
    }

    /// Installs a busybox pipeline `name` of `version` (a TES executor's image), whose own
    /// command does nothing.
    pub async fn install_version(&mut self, name: &str, version: &str) -> Result<String> {
        let package = package_version(
            name,
            version,
            "#!/bin/sh\ntrue\n",
            r#"{"type": "object"}"#,
            "",
        )?;
        self.install_package(name, package).await
    }

    async fn install_package(&mut self, name: &str, package: Vec<u8>) -> Result<String> {
        let file = self.upload(&format!("{name}.tar.gz"), &package).await?;
        let p = self
            .cat
            .install_pipeline(cat::InstallPipelineRequest { file_id: file })
            .await?
            .into_inner();
        let p = crate::install_ended(&mut self.cat, &p.id).await?;
        match cat::PipelineStatus::try_from(p.status)? {
            cat::PipelineStatus::Ready => Ok(p.id),
            _ => bail!("install failed: {}", p.error_message),
        }
    }

    /// The test pipeline installed and one small input uploaded: (pipeline id, file id).
    pub async fn ready(&mut self) -> Result<(String, String)> {
        let pipeline = self.pipeline().await?;
        let input = self.upload("reads.txt", b"x\n").await?;
        Ok((pipeline, input))
    }

    /// The test pipeline, an input, and a run of it with `config_json` (submitted).
    pub async fn submit_ready(&mut self, config_json: &str) -> Result<run::Run> {
        let (pipeline, input) = self.ready().await?;
        Ok(self
            .submit(run::SubmitRunRequest {
                pipeline_id: pipeline,
                config_json: config_json.to_owned(),
                input_file_ids: vec![input],
                ..Default::default()
            })
            .await?)
    }

    /// The test pipeline, an input, and a run of it that sleeps `seconds` (submitted).
    pub async fn submit_sleeping(&mut self, seconds: u32) -> Result<run::Run> {
        self.submit_ready(&format!(r#"{{"sleep": {seconds}}}"#))
            .await
    }

    /// A run's events after `after`, followed as they come.
    pub async fn follow(
        &mut self,
        id: &str,
        after: i64,
    ) -> Result<tonic::Streaming<run::RunEvent>> {
        let request = run::WatchRunRequest {
            run_id: id.into(),
            after_seq: after,
        };
        Ok(self.run.watch_run(request).await?.into_inner())
    }

    /// Follows a run's events until it is RUNNING.
    pub async fn wait_running(&mut self, id: &str) -> Result<()> {
        let mut stream = self.follow(id, 0).await?;
        while let Some(e) = stream.next().await {
            if status(e?.status) == run::RunStatus::Running {
                return Ok(());
            }
        }
        let run = self.get(id).await?;
        let log = self.runner.stderr();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        bail!(
            "run {id} ended without running ({}): {}\nthe runner's warnings:\n{}",
            run.status,
            run.error_message,
            warnings[warnings.len().saturating_sub(20)..].join("\n")
        )
    }

    pub async fn submit(
        &mut self,
        request: run::SubmitRunRequest,
    ) -> Result<run::Run, tonic::Status> {
        self.run.submit_run(request).await.map(|r| r.into_inner())
    }

    /// Every event of a run from `after`, until its terminal one.
    pub async fn watch(&mut self, id: &str, after: i64) -> Result<Vec<run::RunEvent>> {
        let mut stream = self.follow(id, after).await?;
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Some(event) = tokio::time::timeout_at(deadline, stream.next()).await? {
            events.push(event?);
        }
        Ok(events)
    }

    pub async fn read(&mut self, file: &str) -> Result<Vec<u8>> {
        crate::read_file(&mut self.cat, file).await
    }

    /// No container of this node is left in LXD, and no run folder on disk.
    /// A run as GetRun answers it.
    pub async fn get(&mut self, id: &str) -> Result<run::Run> {
        Ok(self
            .run
            .get_run(run::GetRunRequest { id: id.into() })
            .await?
            .into_inner())
    }

    /// A run's `stream` (`stdout` or `stderr`) from StreamRunLogs, without following.
    pub async fn logs(&mut self, id: &str, stream: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut chunks = self
            .run
            .stream_run_logs(run::StreamRunLogsRequest {
                run_id: id.into(),
                stream: stream.into(),
                offset: 0,
                follow: false,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = chunks.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    /// Name and content of each of a run's files (`output_file_ids` then `log_file_ids`).
    pub async fn files_of(&mut self, r: &run::Run) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for id in r.output_file_ids.iter().chain(&r.log_file_ids) {
            let f = self
                .cat
                .get_file(cat::GetFileRequest { id: id.clone() })
                .await?
                .into_inner();
            out.push((f.name, self.read(id).await?));
        }
        Ok(out)
    }

    /// Submits a run of `pipeline` with no inputs and the given request fields.
    pub async fn submit_to(
        &mut self,
        pipeline: &str,
        request: run::SubmitRunRequest,
    ) -> Result<run::Run, tonic::Status> {
        self.submit(run::SubmitRunRequest {
            pipeline_id: pipeline.into(),
            ..request
        })
        .await
    }

    /// Starts the runner again after it was stopped: the same node, work folder and catalogue,
    /// `max_runs` at once.
    pub async fn restart_runner(&mut self, max_runs: u32) -> Result<()> {
        let runner = Launch::new(Kind::Runner, &self.db.url)
            .args([
                "--node-name",
                &self.node,
                "--max-runs",
                &max_runs.to_string(),
            ])
            .args(["--work-dir", self.work_dir.to_str().unwrap_or_default()])
            .args(["--catalogue-addr", &self.catalogue.grpc_url()])
            .start()
            .await?;
        self.run = RunnerServiceClient::new(runner.channel().await?);
        self.runner = runner;
        Ok(())
    }

    pub fn assert_clean(&self) -> Result<()> {
        let output = node_containers(&self.node)?;
        let left = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(left.is_empty(), "containers left behind: {left}");
        // A run's folders go just after its end is recorded (its container just before).
        let runs = self.work_dir.join("runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let folders = std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0);
            if folders == 0 {
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{folders} run folders left in {}",
                runs.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `lxc list` of the containers tagged with `node`: their names, one a line.
/// Whether LXD is creating an instance right now (for anyone).
fn creating_instances() -> bool {
    std::process::Command::new("lxc")
        .args(["operation", "list", "--format", "csv"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.contains("Creating instance") && l.contains("Running"))
        })
}

pub fn node_containers(node: &str) -> std::io::Result<std::process::Output> {
    std::process::Command::new("lxc")
        .args([
            "list",
            &format!("user.pirus.node={node}"),
            "--format",
            "csv",
            "-c",
            "n",
        ])
        .output()
}

pub fn status(value: i32) -> run::RunStatus {
    run::RunStatus::try_from(value).unwrap()
}

pub fn terminal(s: run::RunStatus) -> bool {
    matches!(
        s,
        run::RunStatus::Done | run::RunStatus::Error | run::RunStatus::Canceled
    )
}

/// The distinct statuses of a run's events, in order.
pub fn statuses(events: &[run::RunEvent]) -> Vec<run::RunStatus> {
    let mut out: Vec<run::RunStatus> = Vec::new();
    for e in events {
        if out.last() != Some(&status(e.status)) {
            out.push(status(e.status));
        }
    }
    out
}

/// A busybox pipeline package (tar.gz) named `name`, version 1.0.0, whose command is
/// `script`, with `form` and extra manifest fields (`"resources": {...}`, or empty).
pub fn package(name: &str, script: &str, form: &str, manifest_extra: &str) -> Result<Vec<u8>> {
    package_version(name, "1.0.0", script, form, manifest_extra)
}

/// [`package`] of another version.
pub fn package_version(
    name: &str,
    version: &str,
    script: &str,
    form: &str,
    manifest_extra: &str,
) -> Result<Vec<u8>> {
    let extra = if manifest_extra.is_empty() {
        String::new()
    } else {
        format!(", {manifest_extra}")
    };
    let manifest = format!(
        r#"{{"pirus_api": "2", "name": "{name}", "version": "{version}", "image": "image.tar.gz",
        "run": "/pipeline/run.sh", "form": "form.json"{extra}}}"#
    );
    let entries = packages::image_entries(
        packages::metadata_yaml(""),
        &[(
            "rootfs/pipeline/run.sh",
            Item::Exec(script.as_bytes().to_vec()),
        )],
    )?;
    let refs: Vec<(&str, Item)> = entries
        .iter()
        .map(|(n, i)| (n.as_str(), i.clone()))
        .collect();
    let image = packages::archive(Format::TarGz, &refs)?;
    let package = packages::archive(
        Format::TarGz,
        &[
            ("manifest.json", Item::File(manifest.into_bytes())),
            ("image.tar.gz", Item::File(image)),
            ("form.json", Item::File(form.as_bytes().to_vec())),
        ],
    )?;
    Ok(package)
}

/// The test pipeline's package (what [`Stack::pipeline`] installs).
pub fn test_package() -> Result<Vec<u8>> {
    package(
        "wc",
        SCRIPT,
        FORM,
        r#""resources": {"cpu": 1, "memory": "256MiB"}"#,
    )
}

/// `r` waits for `reason`, and its message says `says`.
pub fn assert_pending(r: &run::Run, reason: run::PendingReason, says: &str) {
    assert_eq!(r.pending_reason, reason as i32, "{}", r.pending_message);
    assert!(
        r.pending_message.contains(says),
        "'{says}' in: {}",
        r.pending_message
    );
}
