//! A run's container: its spec (devices, limits, labels), creation, start and the command.
//!
//! Every container is unprivileged, gets `limits.cpu`, `limits.memory` and `limits.processes`
//! whether or not the run asked, an id range of its own where enabled
//! (`security.idmap.isolated`), no network unless its manifest asks (every NIC of the default
//! profile is masked), a root disk of the run's disk limit on pools that enforce one, and a
//! seccomp policy ([`SECCOMP`]) that refuses making btrfs subvolumes, which would escape it.

use std::{collections::BTreeMap, path::Path, time::Duration};

use pirus_lxd::{Action, InstanceSpec};
use serde_json::Value;
use uuid::Uuid;

use super::workspace::{PoolCaps, Workspace};
use crate::{
    domain::{Error, Result, Run},
    inputs::CONFIG_FILE,
    limits::Limits,
};

pub(super) const LXD_TIMEOUT: Duration = Duration::from_secs(120);

/// The container's seccomp policy (LXD's `raw.seccomp`, which replaces the policy LXD would
/// generate, so LXD 5.0's own rules come first, unchanged), plus: no btrfs subvolume or
/// snapshot may be made. A container's root may make them on a btrfs pool, and each gets a
/// quota group of its own, outside the run's disk bound: a run limited to 64 MiB wrote 1 GiB
/// into one under its outputs folder and 300 MiB into one on its root disk. The ioctls are
/// BTRFS_IOC_SUBVOL_CREATE (0x5000940e), BTRFS_IOC_SUBVOL_CREATE_V2 (0x50009418),
/// BTRFS_IOC_SNAP_CREATE (0x50009401) and BTRFS_IOC_SNAP_CREATE_V2 (0x50009417); each is
/// refused with EPERM.
const SECCOMP: &str = "2
denylist
[all]
reject_force_umount
[all]
kexec_load errno 38
open_by_handle_at errno 38
init_module errno 38
finit_module errno 38
delete_module errno 38
ioctl errno 1 [1,0x5000940e,SCMP_CMP_EQ]
ioctl errno 1 [1,0x50009418,SCMP_CMP_EQ]
ioctl errno 1 [1,0x50009401,SCMP_CMP_EQ]
ioctl errno 1 [1,0x50009417,SCMP_CMP_EQ]
";

pub(crate) fn container_name(run: Uuid, attempt: i32) -> String {
    format!("pirus-{}-{attempt}", run.simple())
}

/// The manifest fields a run's container needs: where the run's folders are mounted, and
/// whether it has a network.
pub(super) struct Layout {
    pub inputs: String,
    pub outputs: String,
    pub logs: String,
    pub databases: String,
    pub network: bool,
}

impl Layout {
    pub(super) fn from_manifest(m: &Value) -> Self {
        let text = |key: &str, default: &str| m[key].as_str().unwrap_or(default).to_owned();
        Self {
            inputs: text("inputs", "/pipeline/inputs"),
            outputs: text("outputs", "/pipeline/outputs"),
            logs: text("logs", "/pipeline/logs"),
            databases: text("databases", "/pipeline/databases"),
            network: m["network"].as_bool().unwrap_or(false),
        }
    }
}

/// Everything a container's spec is made from.
pub(super) struct Spec<'a> {
    pub run: &'a Run,
    pub node: &'a str,
    pub layout: &'a Layout,
    pub workspace: &'a Workspace,
    pub limits: Limits,
    pub pool: &'a str,
    pub caps: PoolCaps,
    pub isolated_idmap: bool,
    pub databases_dir: Option<&'a Path>,
    /// NICs of the default profile, masked unless the run may use the network.
    pub profile_nics: Vec<String>,
}

fn disk(source: &Path, path: &str, readonly: bool) -> BTreeMap<String, String> {
    let mut d = BTreeMap::from([
        ("type".to_owned(), "disk".to_owned()),
        ("source".to_owned(), source.display().to_string()),
        ("path".to_owned(), path.to_owned()),
    ]);
    if readonly {
        d.insert("readonly".to_owned(), "true".to_owned());
    }
    d
}

/// The labels that tie an LXD object (container, volume) to its run, attempt and node.
pub(super) fn labels(run: Uuid, attempt: i32, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("user.pirus.run".to_owned(), run.to_string()),
        ("user.pirus.attempt".to_owned(), attempt.to_string()),
        ("user.pirus.node".to_owned(), node.to_owned()),
    ])
}

impl Spec<'_> {
    pub(super) fn build(&self) -> InstanceSpec {
        let (w, l) = (self.workspace, self.layout);
        let mut devices = BTreeMap::from([
            (
                "pirus-inputs".to_owned(),
                disk(&w.inputs_path(), &l.inputs, true),
            ),
            (
                "pirus-outputs".to_owned(),
                disk(&w.data_path("outputs"), &l.outputs, false),
            ),
            (
                "pirus-logs".to_owned(),
                disk(&w.data_path("logs"), &l.logs, false),
            ),
            (
                "pirus-control".to_owned(),
                disk(&w.data_path("control"), "/.pirus", false),
            ),
        ]);
        if let Some(databases) = self.databases_dir {
            devices.insert(
                "pirus-databases".to_owned(),
                disk(databases, &l.databases, true),
            );
        }
        if !l.network {
            // No network unless the manifest asks: every NIC the profile would bring is masked
            // by a device of type none under the same name.
            for name in &self.profile_nics {
                devices.insert(
                    name.clone(),
                    BTreeMap::from([("type".to_owned(), "none".to_owned())]),
                );
            }
        }
        // The root disk on the run's pool, bounded where the pool enforces a size.
        let mut root = BTreeMap::from([
            ("type".to_owned(), "disk".to_owned()),
            ("path".to_owned(), "/".to_owned()),
            ("pool".to_owned(), self.pool.to_owned()),
        ]);
        if self.caps.root_quota {
            root.insert("size".to_owned(), self.limits.disk_bytes.to_string());
        }
        devices.insert("root".to_owned(), root);

        let mut config = labels(self.run.id, self.run.attempt, self.node);
        config.insert("limits.cpu".to_owned(), self.limits.cpus.to_string());
        config.insert(
            "limits.memory".to_owned(),
            self.limits.memory_bytes.to_string(),
        );
        config.insert(
            "limits.processes".to_owned(),
            self.limits.processes.to_string(),
        );
        if self.isolated_idmap {
            config.insert("security.idmap.isolated".to_owned(), "true".to_owned());
        }
        config.insert("raw.seccomp".to_owned(), SECCOMP.to_owned());
        InstanceSpec {
            name: container_name(self.run.id, self.run.attempt),
            image: self.run.image_sha256.clone(),
            config,
            devices,
        }
    }

    /// The environment of the run's command (CONTRACT §5).
    pub(super) fn environment(&self) -> BTreeMap<String, String> {
        let l = self.layout;
        BTreeMap::from([
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
            ("PIRUS_RUN_ID".to_owned(), self.run.id.to_string()),
            (
                "PIRUS_CONFIG_FILE".to_owned(),
                format!("{}/{CONFIG_FILE}", l.inputs),
            ),
            (
                "PIRUS_PROGRESS_FILE".to_owned(),
                format!("{}/progress.json", l.logs),
            ),
            ("PIRUS_INPUTS".to_owned(), l.inputs.clone()),
            ("PIRUS_OUTPUTS".to_owned(), l.outputs.clone()),
            ("PIRUS_LOGS".to_owned(), l.logs.clone()),
            ("PIRUS_DATABASES".to_owned(), l.databases.clone()),
        ])
    }
}

/// The names of the NICs a profile brings.
pub(super) async fn profile_nics(lxd: &pirus_lxd::Client) -> Result<Vec<String>> {
    let devices = lxd
        .profile_devices("default")
        .await
        .map_err(Error::internal)?;
    Ok(devices
        .into_iter()
        .filter(|(_, d)| d.get("type").map(String::as_str) == Some("nic"))
        .map(|(name, _)| name)
        .collect())
}

/// Tries at making a container with an id range of its own.
const CREATE_TRIES: u32 = 8;

/// Why a creation is tried again.
enum Attempt {
    Retry(String),
    Fail(Error),
}

/// Creates the container (removing a stale one first), hands the writable folders to its
/// mapped root, and starts it.
///
/// LXD 5.0 allocates isolated id ranges racily: containers created at the same instant were
/// seen sharing a range (no isolation at all) or getting one outside root's subordinate ids
/// (they never start). So this runner creates its containers one at a time (`creating`), and
/// since other processes (another runner on the host, an operator) may create at the same
/// instant, an isolated container whose range overlaps another isolated container's, or that
/// fails to start, is removed and made again (a few times, after a random pause).
pub(super) async fn create_and_start(
    lxd: &pirus_lxd::Client,
    creating: &tokio::sync::Mutex<()>,
    spec: &InstanceSpec,
    workspace: &Workspace,
) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match create_once(lxd, creating, spec, workspace).await {
            Ok(()) => return Ok(()),
            Err(Attempt::Retry(why)) if tries < CREATE_TRIES => {
                tracing::warn!(container = %spec.name, %why, "making the container again");
                let pause = 50 + (Uuid::new_v4().as_u128() % 250) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(Attempt::Retry(why)) => return Err(Error::internal(why)),
            Err(Attempt::Fail(e)) => return Err(e),
        }
    }
}

async fn create_once(
    lxd: &pirus_lxd::Client,
    creating: &tokio::sync::Mutex<()>,
    spec: &InstanceSpec,
    workspace: &Workspace,
) -> std::result::Result<(), Attempt> {
    let fail = |e: pirus_lxd::LxdError| Attempt::Fail(Error::internal(e));
    lxd.remove_instance(&spec.name, LXD_TIMEOUT)
        .await
        .map_err(fail)?;
    {
        let _one_at_a_time = creating.lock().await;
        lxd.create_instance(spec, LXD_TIMEOUT).await.map_err(fail)?;
    }
    let instance = lxd
        .instance(&spec.name)
        .await
        .map_err(fail)?
        .ok_or_else(|| Attempt::Fail(Error::internal("the container vanished after creation")))?;
    let (uid, count) = instance.uid_range().ok_or_else(|| {
        Attempt::Fail(Error::internal(
            "the container has no id map (is it privileged?)",
        ))
    })?;
    if instance.isolated() {
        let others = lxd.instances().await.map_err(fail)?;
        let shared = others.iter().find(|other| {
            other.name != instance.name
                && other.isolated()
                && other
                    .uid_range()
                    .is_some_and(|(first, n)| first < uid + count && uid < first + n)
        });
        if let Some(other) = shared {
            return Err(Attempt::Retry(format!(
                "its id range overlaps that of {}",
                other.name
            )));
        }
    }
    workspace.give_to(uid).await.map_err(Attempt::Fail)?;
    match lxd.set_state(&spec.name, Action::Start, LXD_TIMEOUT).await {
        Ok(()) => Ok(()),
        Err(e) if instance.isolated() => Err(Attempt::Retry(format!("it did not start: {e}"))),
        Err(e) => Err(fail(e)),
    }
}

/// Starts the wrapper, detached, on `command` (its program and arguments): it writes the exit
/// status into the control folder, and exits with it. Answers the exec operation, whose
/// return code LXD keeps for a few seconds.
pub(super) async fn exec_command(
    lxd: &pirus_lxd::Client,
    name: &str,
    command: &[String],
    environment: &BTreeMap<String, String>,
) -> Result<String> {
    let mut argv = vec!["/bin/sh".to_owned(), "/.pirus/run.sh".to_owned()];
    argv.extend_from_slice(command);
    lxd.exec_detached(name, &argv, environment)
        .await
        .map_err(Error::internal)
}

/// Stops (by force) and deletes the container: nothing inside can change the run's folders
/// any more. Errors are logged; a container that is gone is fine.
pub(super) async fn remove(lxd: &pirus_lxd::Client, name: &str) -> Result<()> {
    lxd.remove_instance(name, LXD_TIMEOUT)
        .await
        .map_err(Error::internal)
}
