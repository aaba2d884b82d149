//! A private PostgreSQL cluster for tests that stop and start the database: the shared server
//! stays up for every other test. It listens only on a unix socket in its own folder, so it
//! needs no port. Run as root, it runs as the `postgres` system user (PostgreSQL refuses root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// initdb and start a cluster with a trusted `pirus` superuser.
    pub fn start() -> Result<Self> {
        let bin = find_bin_dir()?;
        let dir = crate::tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            anyhow::ensure!(status.success(), "chown of {} failed", dir.display());
        }
        let pg = Self {
            bin,
            dir,
            as_postgres,
        };
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-A", "trust", "-U", "pirus", "--no-sync"],
        )?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// URL of the cluster's `postgres` database (through the unix socket).
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://pirus@localhost/postgres?host={}",
            self.dir.display()
        )
    }

    pub fn stop(&self) -> Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    pub fn pg_ctl_start(&self) -> Result<()> {
        let options = format!(
            "-c listen_addresses='' -k {} -c fsync=off",
            self.dir.display()
        );
        let log = format!("{}/postgres.log", self.dir.display());
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.display())
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let output = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .current_dir(&self.dir)
                .output()
        } else {
            Command::new(&program)
                .args(args)
                .current_dir(&self.dir)
                .output()
        }
        .with_context(|| format!("cannot run {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "PostgreSQL server binaries not found under {}",
                root.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}
