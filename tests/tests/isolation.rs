//! A pipeline is hostile: these pipelines attack their runner from inside their container, on
//! the real LXD, and nothing they do may reach the host. Links to a root-only host file in
//! place of logs and outputs, outputs swapped for links while they are collected, FIFOs and
//! `/dev/zero` where the runner reads, a run that writes past its disk limit, a fork bomb, runs
//! larger than any node, thousands of repeated inputs, and a runner that is not root.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use pirus_proto::runner::v1::{self as run};
use pirus_tests::{
    Kind, Launch, TestDb,
    stack::{Stack, stack, stack_with, status},
};
use tokio_stream::StreamExt;
use tonic::Code;

const NO_FORM: &str = r#"{"type": "object"}"#;

/// A root-only host file (mode 0600) whose content must never come out of a run.
struct Secret {
    path: std::path::PathBuf,
    content: String,
}

impl Secret {
    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("pirus-secret-{tag}"));
        let content = format!("HOST-SECRET-{tag}");
        std::fs::write(&path, &content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { path, content })
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn assert_absent(&self, what: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&self.content),
            "the host secret leaked into {what}"
        );
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Follows a run to its end (at most `within`); answers the run and every event.
async fn ended(
    s: &mut Stack,
    id: &str,
    within: Duration,
) -> Result<(run::Run, Vec<run::RunEvent>)> {
    let events = tokio::time::timeout(within, s.watch(id, 0))
        .await
        .map_err(|_| anyhow::anyhow!("run {id} did not end within {within:?}"))??;
    Ok((s.get(id).await?, events))
}

fn messages(events: &[run::RunEvent]) -> String {
    events
        .iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn links_devices_and_fifos_in_the_run_folder_never_reach_the_host() -> Result<()> {
    let secret = Secret::new()?;
    let mut s = stack(2).await?;
    // The wrapper has opened the logs before the command runs; the command swaps them for
    // links (to the host secret, to /dev/zero) and lays out links among its outputs, then
    // stays alive a while so that its logs are read live too.
    let script = format!(
        r#"#!/bin/sh
echo "to the original log"
rm -f "$PIRUS_LOGS/out.log" "$PIRUS_LOGS/err.log" "$PIRUS_PROGRESS_FILE"
ln -s {secret} "$PIRUS_LOGS/out.log"
ln -s /dev/zero "$PIRUS_LOGS/err.log"
ln -s /dev/zero "$PIRUS_PROGRESS_FILE"
cd "$PIRUS_OUTPUTS"
echo fine > ok.txt
ln -s {secret} leak.txt
ln -s /etc etc
ln -s / root
mkdir -p sub && ln -s {secret} sub/leak && echo nested > sub/ok.txt
ln {secret} hard.txt 2>/dev/null || true
mkfifo pipe
sleep 4
"#,
        secret = secret.path()
    );
    let pipeline = s.install("links", &script, NO_FORM, "").await?;
    let r = s.submit_to(&pipeline, Default::default()).await?;
    s.wait_running(&r.id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Live reads while the links are in place.
    for stream in ["stdout", "stderr"] {
        match s.logs(&r.id, stream).await {
            Ok(bytes) => secret.assert_absent(&format!("the live {stream}"), &bytes),
            Err(e) => assert_ne!(e.code(), Code::Internal, "{e}"),
        }
    }
    let (done, events) = ended(&mut s, &r.id, Duration::from_secs(120)).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}",
        done.error_message
    );
    let files = s.files_of(&done).await?;
    for (name, content) in &files {
        secret.assert_absent(name, content);
    }
    let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["ok.txt", "sub/ok.txt"],
        "only regular files are collected"
    );
    let text = messages(&events);
    for skipped in [
        "leak.txt (a symbolic link)",
        "etc (a symbolic link)",
        "root (a symbolic link)",
        "sub/leak (a symbolic link)",
        "pipe (a FIFO)",
        "logs/out.log (a symbolic link",
        "logs/err.log (a symbolic link",
    ] {
        assert!(
            text.contains(skipped),
            "'{skipped}' not reported in:\n{text}"
        );
    }
    for stream in ["stdout", "stderr"] {
        if let Ok(bytes) = s.logs(&r.id, stream).await {
            secret.assert_absent(stream, &bytes);
        }
    }
    // The runner is unharmed and the next run works.
    let (pipeline, input) = s.ready().await?;
    let next = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            input_file_ids: vec![input],
            ..Default::default()
        })
        .await?;
    let (next, _) = ended(&mut s, &next.id, Duration::from_secs(120)).await?;
    assert_eq!(status(next.status), run::RunStatus::Done);
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn outputs_swapped_for_links_during_collection_are_never_followed() -> Result<()> {
    let secret = Secret::new()?;
    let mut s = stack(3).await?;
    // A background process keeps swapping every output between a file and a link to the host
    // secret; the command exits at once, leaving it running.
    let script = format!(
        r#"#!/bin/sh
cd "$PIRUS_OUTPUTS"
i=0
while [ $i -lt 40 ]; do echo "data $i" > "f$i"; i=$((i + 1)); done
(
  while :; do
    i=0
    while [ $i -lt 40 ]; do
      ln -sf {secret} "f$i.l" && mv -f "f$i.l" "f$i"
      echo "data $i" > "f$i.n" && mv -f "f$i.n" "f$i"
      i=$((i + 1))
    done
  done
) > /dev/null 2>&1 &
sleep 1
exit 0
"#,
        secret = secret.path()
    );
    let pipeline = s.install("swap", &script, NO_FORM, "").await?;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(s.submit_to(&pipeline, Default::default()).await?.id);
    }
    let mut collected = 0;
    for id in ids {
        let (done, events) = ended(&mut s, &id, Duration::from_secs(180)).await?;
        assert_eq!(
            status(done.status),
            run::RunStatus::Done,
            "{}",
            done.error_message
        );
        for (name, content) in s.files_of(&done).await? {
            secret.assert_absent(&name, &content);
            if let Some(number) = name.strip_prefix('f') {
                let text = String::from_utf8(content)?;
                // A file caught between `>` creating it and echo writing it is empty or
                // partial: only ever a beginning of what the script writes.
                let whole = format!("data {}\n", number.trim_end_matches(".n"));
                assert!(whole.starts_with(&text), "{name}: {text}");
                collected += text.starts_with("data ") as usize;
            }
        }
        // Whatever was a link when the container stopped is named as skipped.
        let skipped = messages(&events).matches("(a symbolic link)").count();
        let files = done.output_file_ids.len();
        assert!(
            files + skipped >= 40,
            "{files} files + {skipped} skipped of 40"
        );
    }
    assert!(
        collected > 0,
        "some outputs were regular files when collected"
    );
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn fifos_as_exit_status_and_progress_never_stall_the_runner() -> Result<()> {
    let mut s = stack(2).await?;
    let script = r#"#!/bin/sh
rm -f /.pirus/exit_status "$PIRUS_PROGRESS_FILE"
mkfifo /.pirus/exit_status "$PIRUS_PROGRESS_FILE"
sleep 600
"#;
    let pipeline = s.install("fifo", script, NO_FORM, "").await?;
    let timed = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                timeout: Some(prost_types::Duration {
                    seconds: 6,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await?;
    let canceled = s.submit_to(&pipeline, Default::default()).await?;
    s.wait_running(&canceled.id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.run
        .cancel_run(run::CancelRunRequest {
            id: canceled.id.clone(),
        })
        .await?;
    let (c, _) = ended(&mut s, &canceled.id, Duration::from_secs(60)).await?;
    assert_eq!(status(c.status), run::RunStatus::Canceled);
    let (t, _) = ended(&mut s, &timed.id, Duration::from_secs(60)).await?;
    assert_eq!(status(t.status), run::RunStatus::Error);
    assert!(t.error_message.contains("timed out"), "{}", t.error_message);
    // Still serving, and still running runs.
    let health = pirus_tests::health_status(s.runner.channel().await?, "").await?;
    assert_eq!(health, 1, "SERVING");
    let (pipeline, input) = s.ready().await?;
    let next = s
        .submit(run::SubmitRunRequest {
            pipeline_id: pipeline,
            input_file_ids: vec![input],
            ..Default::default()
        })
        .await?;
    let (next, _) = ended(&mut s, &next.id, Duration::from_secs(120)).await?;
    assert_eq!(status(next.status), run::RunStatus::Done);
    s.assert_clean()?;
    Ok(())
}

/// Submits a run of `pipeline` limited to `disk_bytes`, with `inputs`.
async fn submit_with_disk(
    s: &mut Stack,
    pipeline: &str,
    disk_bytes: i64,
    inputs: Vec<String>,
) -> Result<run::Run> {
    let request = run::SubmitRunRequest {
        input_file_ids: inputs,
        resources: Some(run::Resources {
            disk_bytes,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(s.submit_to(pipeline, request).await?)
}

/// What a run wrote to its stdout, once ended.
async fn stdout_of(s: &mut Stack, id: &str) -> Result<String> {
    Ok(String::from_utf8(s.logs(id, "stdout").await?)?)
}

/// Fills its outputs, then its root disk; what it learnt is printed once there is room again,
/// and it ends with its folders full (so that its exit status file cannot be written).
const FILL: &str = r#"#!/bin/sh
dd if=/dev/zero of="$PIRUS_OUTPUTS/big" bs=1M count=100 2>/dev/null
out=$?
out_size=$(stat -c %s "$PIRUS_OUTPUTS/big")
rm -f "$PIRUS_OUTPUTS/big"
dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null
root=$?
root_size=$(stat -c %s /big)
rm -f /big
echo "outputs dd: $out $out_size"
echo "root dd: $root $root_size"
dd if=/dev/zero of="$PIRUS_OUTPUTS/full" bs=1M count=100 2>/dev/null
exit 0
"#;

#[tokio::test]
async fn a_run_cannot_write_past_its_disk_limit() -> Result<()> {
    let mut s = stack(1).await?;
    let pipeline = s.install("fill", FILL, NO_FORM, "").await?;
    let limit = 32i64 << 20;
    let r = submit_with_disk(&mut s, &pipeline, limit, Vec::new()).await?;
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(180)).await?;
    let stdout = stdout_of(&mut s, &r.id).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}\n{stdout}",
        done.error_message
    );
    for (line, what) in [("outputs dd: ", "outputs"), ("root dd: ", "root disk")] {
        let rest = stdout
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no '{line}' in:\n{stdout}"));
        let (rc, size) = rest.split_once(' ').unwrap_or((rest, "0"));
        assert_eq!(rc, "1", "the {what} write was stopped:\n{stdout}");
        let size: i64 = size.parse()?;
        assert!(size <= limit, "{what}: {size} bytes written, over {limit}");
    }
    for (name, content) in s.files_of(&done).await? {
        assert!(
            content.len() as i64 <= limit,
            "{name} holds {} bytes, over the {limit} limit",
            content.len()
        );
    }
    s.assert_clean()?;
    Ok(())
}

/// A static helper that makes a btrfs subvolume `NAME` in `DIR` (the ioctl an attacker used).
const SUBVOLUME_HELPER: &str = r#"
#include <fcntl.h>
#include <linux/btrfs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int fd = open(argv[1], O_RDONLY | O_DIRECTORY);
  if (fd < 0) { perror("open"); return 2; }
  struct btrfs_ioctl_vol_args_v2 v2;
  memset(&v2, 0, sizeof v2);
  strncpy(v2.name, argv[2], BTRFS_SUBVOL_NAME_MAX);
  if (ioctl(fd, BTRFS_IOC_SUBVOL_CREATE_V2, &v2) == 0) return 0;
  perror("BTRFS_IOC_SUBVOL_CREATE_V2");
  struct btrfs_ioctl_vol_args v1;
  memset(&v1, 0, sizeof v1);
  strncpy(v1.name, argv[2], BTRFS_PATH_NAME_MAX);
  if (ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, &v1) == 0) return 0;
  perror("BTRFS_IOC_SUBVOL_CREATE");
  return 1;
}
"#;

/// Tries the helper in the outputs folder and on the root disk, and fills what it made.
const NESTED: &str = r#"#!/bin/sh
mkdir -p /tmp && cp "$PIRUS_INPUTS/subvol" /tmp/subvol && chmod 755 /tmp/subvol
for dir in "$PIRUS_OUTPUTS" /tmp /; do
  if /tmp/subvol "$dir" nested; then
    dd if=/dev/zero of="$dir/nested/big" bs=1M count=100 2>/dev/null
    echo "in $dir: made, $(stat -c %s "$dir/nested/big") bytes written"
    rm -f "$dir/nested/big"
  else
    echo "in $dir: refused"
  fi
done
"#;

/// The attack: a run limited to 64 MiB made btrfs subvolumes (each with a quota group of its
/// own, outside the run's bound) under its outputs folder and on its root disk, and wrote
/// 1 GiB and 300 MiB into them. Making a subvolume is now refused in every folder.
#[tokio::test]
async fn a_run_cannot_escape_its_disk_bound_with_nested_subvolumes() -> Result<()> {
    let dir = pirus_tests::tempdir()?;
    let (source, helper) = (dir.join("subvol.c"), dir.join("subvol"));
    std::fs::write(&source, SUBVOLUME_HELPER)?;
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .args([&helper, &source])
        .output()?;
    assert!(built.status.success(), "cc: {built:?}");
    let mut s = stack(1).await?;
    let input = s.upload("subvol", &std::fs::read(&helper)?).await?;
    let pipeline = s.install("nested", NESTED, NO_FORM, "").await?;
    let r = submit_with_disk(&mut s, &pipeline, 64 << 20, vec![input]).await?;
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(180)).await?;
    let stdout = stdout_of(&mut s, &r.id).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}",
        done.error_message
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": refused")).count(),
        3,
        "a subvolume was made:\n{stdout}"
    );
    let stderr = String::from_utf8(s.logs(&r.id, "stderr").await?)?;
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    s.assert_clean()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Sparse files weigh nothing on disk: a sparse 1 GiB err.log and a sparse 50 MB output.
const SPARSE: &str = r#"#!/bin/sh
dd if=/dev/zero of="$PIRUS_LOGS/err.log" bs=1 count=0 seek=1073741824 2>/dev/null
dd if=/dev/zero of="$PIRUS_OUTPUTS/sparse.bin" bs=1 count=0 seek=52428800 2>/dev/null
echo written
"#;

/// A run pushes at most its disk limit to the catalogue, counted in bytes, not in the blocks
/// its files use: a sparse 1 GiB log and a sparse 50 MB output of a run limited to 64 MiB
/// let it push 3 times its bound before (each file was held to the limit on its own).
#[tokio::test]
async fn sparse_files_push_no_more_than_the_run_s_disk_limit() -> Result<()> {
    let mut s = stack(1).await?;
    let pipeline = s.install("sparse", SPARSE, NO_FORM, "").await?;
    let limit = 64i64 << 20;
    let r = submit_with_disk(&mut s, &pipeline, limit, Vec::new()).await?;
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(180)).await?;
    let pushed: usize = s.files_of(&done).await?.iter().map(|(_, c)| c.len()).sum();
    assert!(
        pushed as i64 <= limit,
        "{pushed} bytes pushed for a run limited to {limit}"
    );
    assert_eq!(status(done.status), run::RunStatus::Error);
    assert!(
        done.error_message.contains("disk limit"),
        "{}",
        done.error_message
    );
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn on_a_pool_without_quotas_a_run_that_outgrows_its_disk_is_ended() -> Result<()> {
    let mut s = stack_with(1, &[], &["--lxd-storage-pool", "default"]).await?;
    // Written slowly, so that the watch sees it long before it could fill the disk.
    let script = r#"#!/bin/sh
i=0
while [ $i -lt 200 ]; do
  dd if=/dev/zero of="$PIRUS_OUTPUTS/part$i" bs=1M count=1 2>/dev/null
  i=$((i + 1))
  sleep 0.05
done
"#;
    let pipeline = s.install("grow", script, NO_FORM, "").await?;
    let r = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                resources: Some(run::Resources {
                    disk_bytes: 16 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(120)).await?;
    assert_eq!(status(done.status), run::RunStatus::Error);
    assert!(
        done.error_message
            .contains("outgrew its disk limit of 16MiB"),
        "{}",
        done.error_message
    );
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn a_fork_bomb_is_bounded_by_the_process_limit() -> Result<()> {
    let mut s = stack(1).await?;
    // Waits before it forks, so that the test can check the limit is in place first.
    let script = r#"#!/bin/sh
sleep 4
bomb() { bomb & bomb & wait; }
bomb
sleep 600
"#;
    let pipeline = s.install("bomb", script, NO_FORM, "").await?;
    let r = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                resources: Some(run::Resources {
                    processes: 64,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    s.wait_running(&r.id).await?;
    let container = format!("pirus-{}-1", r.id.replace('-', ""));
    let limit = std::process::Command::new("lxc")
        .args(["config", "get", &container, "limits.processes"])
        .output()?;
    let limit = String::from_utf8_lossy(&limit.stdout).trim().to_owned();
    if limit != "64" {
        let _ = s
            .run
            .cancel_run(run::CancelRunRequest { id: r.id.clone() })
            .await;
        bail!("the container has no process limit ({limit:?}): not starting the bomb");
    }
    // The bomb runs into the container's pids cgroup limit: its `max` event counts the forks
    // refused. (LXD's own process count is not reliable on every cgroup layout, so the cgroup
    // is read directly.) Watched until a refusal shows, for up to 30 s: on a loaded host the
    // bomb may start late (a fixed wait made this test fail once in CI).
    let cgroup = |file: &str| -> Option<String> {
        [
            format!("/sys/fs/cgroup/pids/lxc.payload.{container}/{file}"),
            format!("/sys/fs/cgroup/lxc.payload.{container}/{file}"),
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
    };
    let refusals = || -> u64 {
        cgroup("pids.events")
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("max "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals() == 0 {
        if Instant::now() > deadline {
            let run = s.get(&r.id).await?;
            bail!(
                "no fork refused within 30 s: pids.max {:?}, the run {:?} ({})",
                cgroup("pids.max"),
                status(run.status),
                run.error_message
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(cgroup("pids.max").as_deref().map(str::trim), Some("64"));
    let current: u64 = cgroup("pids.current")
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    assert!(current <= 64, "{current} tasks");
    // The host and the runner keep answering.
    s.run
        .get_run_monitoring(run::GetRunMonitoringRequest { id: r.id.clone() })
        .await?;
    assert!(std::process::Command::new("true").status()?.success());
    assert_eq!(
        pirus_tests::health_status(s.runner.channel().await?, "").await?,
        1
    );
    s.run
        .cancel_run(run::CancelRunRequest { id: r.id.clone() })
        .await?;
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(60)).await?;
    assert_eq!(status(done.status), run::RunStatus::Canceled);
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn runs_larger_than_every_node_are_refused_and_never_claimed_by_a_smaller_node() -> Result<()>
{
    let mut s = stack_with(1, &[], &["--max-run-cpus", "1", "--max-run-memory", "1GiB"]).await?;
    let hungry = s
        .install(
            "hungry",
            "#!/bin/sh\necho hi\n",
            NO_FORM,
            r#""resources": {"processes": 1000000}"#,
        )
        .await?;
    let small = s
        .install("small", "#!/bin/sh\necho hi\n", NO_FORM, "")
        .await?;
    let refused = |resources: run::Resources| run::SubmitRunRequest {
        resources: Some(resources),
        ..Default::default()
    };
    for (request, field, limit) in [
        (
            refused(run::Resources {
                cpu: 64,
                ..Default::default()
            }),
            "resources.cpu",
            "(1)",
        ),
        (
            refused(run::Resources {
                memory_bytes: 2 << 30,
                ..Default::default()
            }),
            "resources.memory_bytes",
            "(1GiB)",
        ),
        (
            run::SubmitRunRequest {
                timeout: Some(prost_types::Duration {
                    seconds: 30 * 86_400,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "timeout",
            "(604800s)",
        ),
    ] {
        let e = s.submit_to(&small, request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
        assert!(e.message().contains(limit), "{limit}: {}", e.message());
    }
    let e = s.submit_to(&hungry, Default::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("resources.processes: the pipeline asks for 1000000"),
        "{}",
        e.message()
    );
    // A larger node that takes no runs: a 2-CPU run is accepted, and waits for it.
    let big = format!("{}-big", s.node);
    let _big = Launch::new(Kind::Runner, &s.db.url)
        .args([
            "--node-name",
            &big,
            "--max-runs",
            "0",
            "--max-run-cpus",
            "2",
        ])
        .args([
            "--catalogue-addr",
            &format!("http://{}", s.catalogue.addrs().grpc),
        ])
        .start()
        .await?;
    let two = s
        .submit_to(
            &small,
            refused(run::Resources {
                cpu: 2,
                ..Default::default()
            }),
        )
        .await?;
    let one = s.submit_to(&small, Default::default()).await?;
    let (one, _) = ended(&mut s, &one.id, Duration::from_secs(120)).await?;
    assert_eq!(status(one.status), run::RunStatus::Done);
    let two = s.get(&two.id).await?;
    assert_eq!(
        status(two.status),
        run::RunStatus::Waiting,
        "the 1-CPU node never claims it"
    );
    Ok(())
}

#[tokio::test]
async fn thousands_of_repeated_inputs_answer_at_once() -> Result<()> {
    let mut s = stack(1).await?;
    let script = "#!/bin/sh\nls \"$PIRUS_INPUTS\" | wc -l > \"$PIRUS_OUTPUTS/count\"\n";
    let pipeline = s.install("count", script, NO_FORM, "").await?;
    let input = s.upload("reads.fq", b"ACGT\n").await?;
    let started = std::time::Instant::now();
    // 50,000 ids are a request of 1.9 MB: past what a unary request may hold (1 MiB), refused
    // as it arrives; 1,001 fit, and are refused naming the field.
    let e = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                input_file_ids: vec![input.clone(); 50_000],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("1048576 bytes"), "{}", e.message());
    let e = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                input_file_ids: vec![input.clone(); 1001],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 1000"), "{}", e.message());
    // The most a run may have: named uniquely, linked, and run.
    let r = s
        .submit_to(
            &pipeline,
            run::SubmitRunRequest {
                input_file_ids: vec![input; 1000],
                ..Default::default()
            },
        )
        .await?;
    eprintln!("both submissions answered in {:?}", started.elapsed());
    let (done, _) = ended(&mut s, &r.id, Duration::from_secs(180)).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}",
        done.error_message
    );
    let files = s.files_of(&done).await?;
    let count = files.iter().find(|(n, _)| n == "count").expect("count");
    assert_eq!(
        String::from_utf8_lossy(&count.1).trim(),
        "1001",
        "1000 inputs and config.json"
    );
    Ok(())
}

#[tokio::test]
async fn services_run_as_their_own_unprivileged_users() -> Result<()> {
    let db = TestDb::create().await?;
    let catalogue = Launch::new(Kind::Catalogue, &db.url)
        .unprivileged()
        .start()
        .await?;
    let node = format!(
        "unpriv-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let runner = Launch::new(Kind::Runner, &db.url)
        .unprivileged()
        .args(["--node-name", &node])
        .args([
            "--catalogue-addr",
            &format!("http://{}", catalogue.addrs().grpc),
        ])
        .start()
        .await?;
    let status_of = |pid: u32| -> Result<String> {
        Ok(std::fs::read_to_string(format!("/proc/{pid}/status"))?)
    };
    for (p, user) in [(&catalogue, "pirus-catalogue"), (&runner, "pirus-runner")] {
        let st = status_of(p.pid())?;
        let uid = st
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        let expected = std::process::Command::new("id")
            .args(["-u", user])
            .output()?;
        let expected = String::from_utf8_lossy(&expected.stdout).trim().to_owned();
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == expected),
            "{user}: {uid}"
        );
    }
    let mut s = Stack {
        cat: pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient::new(
            catalogue.channel().await?,
        ),
        run: pirus_proto::runner::v1::runner_service_client::RunnerServiceClient::new(
            runner.channel().await?,
        ),
        node,
        work_dir: runner.dir.join("work"),
        db,
        catalogue,
        runner,
    };
    let r = s.submit_ready(r#"{"input": "reads.txt"}"#).await?;
    let mut events = s.follow(&r.id, 0).await?;
    while let Some(e) = events.next().await {
        if pirus_tests::stack::terminal(status(e?.status)) {
            break;
        }
    }
    let done = s.get(&r.id).await?;
    assert_eq!(
        status(done.status),
        run::RunStatus::Done,
        "{}",
        done.error_message
    );
    let files = s.files_of(&done).await?;
    assert!(
        files.iter().any(|(n, c)| n == "count.txt" && c == b"1\n"),
        "{files:?}"
    );
    s.assert_clean()?;
    Ok(())
}

#[tokio::test]
async fn runs_started_together_get_id_ranges_of_their_own() -> Result<()> {
    // Four runs of 1 CPU at once, whatever the host's CPUs (capacity defaults to them).
    let mut s = stack_with(4, &[], &["--capacity-cpus", "4"]).await?;
    let pipeline = s
        .install("idle", "#!/bin/sh\nsleep 6\n", NO_FORM, "")
        .await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.submit_to(&pipeline, Default::default()).await?.id);
    }
    for id in &ids {
        s.wait_running(id).await?;
    }
    let mut bases = Vec::new();
    for id in &ids {
        let container = format!("pirus-{}-1", id.replace('-', ""));
        let out = std::process::Command::new("lxc")
            .args(["config", "get", &container, "volatile.idmap.base"])
            .output()?;
        let base: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        bases.push(base);
    }
    bases.sort();
    for pair in bases.windows(2) {
        assert!(
            pair[1] >= pair[0] + 65536,
            "overlapping id ranges: {bases:?}"
        );
    }
    for id in &ids {
        let (done, _) = ended(&mut s, id, Duration::from_secs(120)).await?;
        assert_eq!(
            status(done.status),
            run::RunStatus::Done,
            "{}",
            done.error_message
        );
    }
    s.assert_clean()?;
    Ok(())
}
