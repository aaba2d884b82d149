//! SafeDir against real files, links, FIFOs and devices.

use std::os::unix::fs::symlink;

use super::*;

fn scratch() -> PathBuf {
    let path = std::env::temp_dir().join(format!("pirus-safedir-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn links_are_never_followed_anywhere_on_the_path() {
    let root = scratch();
    let outside = scratch();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    std::fs::create_dir(root.join("logs")).unwrap();
    symlink(outside.join("secret"), root.join("logs/out.log")).unwrap();
    symlink(&outside, root.join("up")).unwrap();
    symlink("../../", root.join("logs/rel")).unwrap();
    let dir = SafeDir::open(&root).unwrap();
    for name in ["logs/out.log", "up/secret", "logs/rel/etc/passwd"] {
        let e = dir.open_regular(name).unwrap_err();
        assert_eq!(
            refusal(&e),
            Some("a symbolic link (or below one)"),
            "{name}: {e}"
        );
        assert!(dir.read_small(name, 1024).is_err(), "{name}");
        assert!(dir.read_range(name, 0, 1024).is_err(), "{name}");
    }
    for name in ["../secret", "/etc/passwd", "logs/../../x", ""] {
        assert!(dir.open_regular(name).is_err(), "{name}");
    }
    assert!(dir.open_regular("logs/none").unwrap().is_none());
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let root = scratch();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("exit_status"))
        .status()
        .unwrap();
    assert!(status.success());
    symlink("/dev/zero", root.join("zero")).unwrap();
    let dir = SafeDir::open(&root).unwrap();
    // Would block for ever (no writer) if opened without O_NONBLOCK or read.
    let e = dir.read_small("exit_status", 64).unwrap_err();
    assert_eq!(refusal(&e), Some("a FIFO"), "{e}");
    assert!(dir.read_small("zero", 64).is_err());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn reads_are_bounded() {
    let root = scratch();
    std::fs::write(root.join("big"), vec![b'x'; 10_000]).unwrap();
    let dir = SafeDir::open(&root).unwrap();
    assert!(dir.read_small("big", 4096).is_err());
    assert_eq!(
        dir.read_small("big", 10_000).unwrap().unwrap().len(),
        10_000
    );
    assert_eq!(dir.read_range("big", 9_000, 4096).unwrap().len(), 1_000);
    assert_eq!(dir.read_range("big", 0, 100).unwrap().len(), 100);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn listings_skip_what_is_not_a_regular_file_and_are_bounded() {
    let root = scratch();
    let out = root.join("outputs");
    std::fs::create_dir_all(out.join("sub/deeper")).unwrap();
    std::fs::write(out.join("a.txt"), b"a").unwrap();
    std::fs::write(out.join("sub/deeper/b.txt"), b"bb").unwrap();
    symlink("/etc", out.join("etc")).unwrap();
    symlink("/etc/shadow", out.join("sub/shadow")).unwrap();
    std::process::Command::new("mkfifo")
        .arg(out.join("pipe"))
        .status()
        .unwrap();
    let dir = SafeDir::open(&root).unwrap();
    let listing = dir.list("outputs", WalkLimits::default()).unwrap();
    assert_eq!(
        listing.files,
        vec![("a.txt".into(), 1), ("sub/deeper/b.txt".into(), 2)]
    );
    let skipped: Vec<(&str, &str)> = listing
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.why))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("etc", "a symbolic link"),
            ("pipe", "a FIFO"),
            ("sub/shadow", "a symbolic link")
        ]
    );
    assert_eq!(listing.total_size(), 3);
    let tight = WalkLimits {
        max_entries: 3,
        max_depth: 64,
    };
    assert!(dir.list("outputs", tight).is_err());
    let shallow = WalkLimits {
        max_entries: 100,
        max_depth: 2,
    };
    assert!(dir.list("outputs", shallow).is_err());
    assert!(dir.disk_usage(100).unwrap() > 0);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn removal_removes_links_not_what_they_point_to() {
    let root = scratch();
    let outside = scratch();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    let run = root.join("run");
    std::fs::create_dir_all(run.join("outputs/sub")).unwrap();
    std::fs::write(run.join("outputs/sub/x"), b"x").unwrap();
    symlink(&outside, run.join("outputs/host")).unwrap();
    symlink(&outside, run.join("outputs/sub/host")).unwrap();
    let dir = SafeDir::open(&root).unwrap();
    dir.remove_tree("run").unwrap();
    assert!(!run.exists());
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
    dir.remove_tree("run").unwrap();
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn files_and_folders_are_made_beneath_only() {
    let root = scratch();
    let outside = scratch();
    symlink(&outside, root.join("link")).unwrap();
    let dir = SafeDir::open(&root).unwrap();
    dir.create_dir("inputs", 0o755).unwrap();
    dir.create_dir("inputs", 0o755).unwrap();
    dir.write_new("inputs/config.json", b"{}", 0o644).unwrap();
    assert!(dir.write_new("inputs/config.json", b"{}", 0o644).is_err());
    assert!(dir.write_new("link/planted", b"x", 0o644).is_err());
    assert!(dir.create_dir("link/sub", 0o755).is_err());
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    dir.chown_tree("inputs", 12345, 12345).unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.join("inputs/config.json")).unwrap();
    if rustix::process::geteuid().is_root() {
        assert_eq!(meta.uid(), 12345);
    }
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}
