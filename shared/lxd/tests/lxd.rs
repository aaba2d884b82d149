//! The LXD client against the real daemon: a busybox image built here (never downloaded),
//! imported by fingerprint, an unprivileged container with a disk device, detached exec, state
//! changes and removal. LXD must be running (deploy/setup.sh --deps-only); these tests fail,
//! never skip, without it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use pirus_lxd::{Action, Client, InstanceSpec};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(60);

fn client() -> Client {
    Client::new("/var/lib/lxd/unix.socket", "default")
}

#[tokio::test]
async fn a_container_runs_a_detached_command_that_writes_to_a_host_folder() -> Result<()> {
    let lxd = client();
    let info = lxd.server_info().await?;
    assert!(!info.server_version.is_empty());
    let devices = lxd.profile_devices("default").await?;
    assert_eq!(
        devices
            .get("root")
            .and_then(|d| d.get("type"))
            .map(String::as_str),
        Some("disk")
    );

    // An image of this run's own (a file makes its fingerprint unique), removed at the end.
    let marker = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let entries = pirus_tests::packages::image_entries(
        pirus_tests::packages::metadata_yaml(""),
        &[(
            "rootfs/etc/pirus-lxd-test",
            pirus_tests::packages::Item::File(marker.into_bytes()),
        )],
    )?;
    let refs: Vec<(&str, pirus_tests::packages::Item)> = entries
        .iter()
        .map(|(n, i)| (n.as_str(), i.clone()))
        .collect();
    let image = pirus_tests::packages::archive(pirus_tests::packages::Format::TarGz, &refs)?;
    let dir = pirus_tests::tempdir()?;
    let tarball = dir.join("image.tar.gz");
    std::fs::write(&tarball, &image)?;
    let fingerprint = hex::encode(Sha256::digest(&image));
    let imported = lxd.import_image(&tarball, T).await?;
    assert_eq!(
        imported, fingerprint,
        "the fingerprint of a unified tarball is its SHA-256"
    );
    assert!(lxd.has_image(&fingerprint).await?);
    assert!(!lxd.has_image(&"0".repeat(64)).await?);
    // A second import is refused by LXD; ensure_image takes it in its stride.
    assert!(lxd.import_image(&tarball, T).await.is_err());
    lxd.ensure_image(&tarball, &fingerprint, T).await?;

    let name = format!("pirus-lxd-test-{}", std::process::id());
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let spec = InstanceSpec {
        name: name.clone(),
        image: fingerprint.clone(),
        config: BTreeMap::from([
            ("user.pirus.run".to_owned(), "test".to_owned()),
            ("limits.memory".to_owned(), "128MiB".to_owned()),
        ]),
        devices: BTreeMap::from([(
            "out".to_owned(),
            BTreeMap::from([
                ("type".to_owned(), "disk".to_owned()),
                ("source".to_owned(), out.display().to_string()),
                ("path".to_owned(), "/out".to_owned()),
            ]),
        )]),
    };
    lxd.remove_instance(&name, T).await?;
    lxd.create_instance(&spec, T).await?;
    let created = lxd.instance(&name).await?.expect("created");
    assert_eq!(
        created.config.get("user.pirus.run").map(String::as_str),
        Some("test")
    );
    let uid = created
        .root_host_uid()
        .expect("an unprivileged container maps root");
    assert!(uid > 0, "container root is not host root");
    std::process::Command::new("chown")
        .arg(format!("{uid}:{uid}"))
        .arg(&out)
        .status()?;

    lxd.set_state(&name, Action::Start, T).await?;
    let command = ["/bin/sh", "-c", "echo $GREETING > /out/hello; exit 3"].map(String::from);
    let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
    let operation = lxd.exec_detached(&name, &command, &env).await?;
    let done = lxd.wait(&operation, T).await?;
    assert_eq!(done["metadata"]["return"], 3);
    assert_eq!(lxd.exec_return(&operation).await?, Some(3));
    let sleeper = ["/bin/sh", "-c", "sleep 30"].map(String::from);
    let running = lxd.exec_detached(&name, &sleeper, &env).await?;
    assert_eq!(lxd.exec_return(&running).await?, None, "still running");
    assert_eq!(std::fs::read_to_string(out.join("hello"))?, "hi\n");

    let state = lxd.state(&name).await?;
    assert_eq!(state.status, "Running");
    // LXD reads memory usage from the cgroup at the moment of asking, and has answered 0 for
    // a container that had just started (its peak already counted): either figure shows it.
    assert!(
        state.processes >= 1 && (state.memory_bytes > 0 || state.memory_peak_bytes > 0),
        "{state:?}"
    );
    lxd.set_state(&name, Action::Freeze, T).await?;
    assert_eq!(lxd.state(&name).await?.status, "Frozen");
    lxd.set_state(&name, Action::Unfreeze, T).await?;
    assert!(lxd.instances().await?.iter().any(|i| i.name == name));

    lxd.remove_instance(&name, T).await?;
    assert!(lxd.instance(&name).await?.is_none());
    lxd.remove_instance(&name, T).await?; // Idempotent.
    let err = lxd.set_state(&name, Action::Start, T).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    lxd.delete_image(&fingerprint, T).await?;
    assert!(!lxd.has_image(&fingerprint).await?);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_socket_is_a_clear_error() {
    let err = Client::new("/nonexistent/lxd.socket", "default")
        .server_info()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot reach LXD at /nonexistent/lxd.socket"),
        "{err}"
    );
}
