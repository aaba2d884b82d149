//! Options of `pirus-runner` (CONTRACT §1): every one a `--flag` and a `PIRUS_*` variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use pirus_server::{
    options::{CommonOptions, parse_duration, parse_size},
    process::ServiceConfig,
};

use crate::limits::{Limits, NodeLimits};

/// The LXD sockets tried, in order, when `--lxd-socket` is not given.
pub(crate) const DEFAULT_LXD_SOCKETS: &[&str] = &[
    "/var/lib/lxd/unix.socket",
    "/var/snap/lxd/common/lxd/unix.socket",
];

/// Pirus runner: one per LXD host; claims queued runs and runs each in its own container.
#[derive(Parser, Clone, Debug)]
#[command(name = "pirus-runner", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonOptions,

    /// gRPC listen address; port 0 binds a free port.
    #[arg(long, env = "PIRUS_GRPC_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address: /metrics, /livez, /readyz, and GA4GH TES under /ga4gh/tes/v1 and
    /// /v1.
    #[arg(long, env = "PIRUS_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,

    /// Per-run folders, and the image and input cache.
    #[arg(long, env = "PIRUS_WORK_DIR", default_value = "./var/runner")]
    pub work_dir: PathBuf,

    /// gRPC address of the catalogue, where images and inputs are fetched and outputs pushed.
    #[arg(long, env = "PIRUS_CATALOGUE_ADDR", default_value = "http://127.0.0.1:50051",
          value_parser = parse_endpoint)]
    pub catalogue_addr: String,

    #[command(flatten)]
    pub client_tls: pirus_server::tls::ClientTlsOptions,

    /// This runner's own token (a runner token for this node), for its calls to the catalogue
    /// and to other runners. Read again when it changes, so a token is rotated without a
    /// restart.
    #[arg(long, env = "PIRUS_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Name of this node; default the host name.
    #[arg(long, env = "PIRUS_NODE_NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// Address other runners use to reach this one; default the bound gRPC address.
    #[arg(long, env = "PIRUS_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// A node not heard from for this long is OFFLINE.
    #[arg(long, env = "PIRUS_NODE_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub node_lease: Duration,

    /// LXD's unix socket; default the first that exists of /var/lib/lxd/unix.socket and
    /// /var/snap/lxd/common/lxd/unix.socket.
    #[arg(long, env = "PIRUS_LXD_SOCKET")]
    pub lxd_socket: Option<PathBuf>,

    /// LXD project the run containers live in.
    #[arg(long, env = "PIRUS_LXD_PROJECT", default_value = "default")]
    pub lxd_project: String,

    /// Runs held at once (INITIALIZING through FINISHING, PAUSE included); default the CPUs.
    #[arg(long, env = "PIRUS_MAX_RUNS", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_runs: Option<u32>,

    /// Of `--database-max-connections`, the connections of the pool that reads pages of runs
    /// for requests (ListRuns, TES task lists): reads that only spend the database's CPU, so
    /// about twice the database host's cores serve them best. Two more read single runs in
    /// batches (GetRun, access checks); the rest serve writes.
    #[arg(long, env = "PIRUS_DATABASE_READ_CONNECTIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_read_connections: u32,

    /// Inputs fetched from the catalogue stay cached (hard-linked into each run that uses
    /// them); of those no run uses any more, this many bytes are kept for later runs, the
    /// least recently used removed first. Inputs in use are never removed.
    #[arg(long, env = "PIRUS_INPUT_CACHE_SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub input_cache_size: u64,

    /// Reference databases, mounted read-only into runs.
    #[arg(long, env = "PIRUS_DATABASES_DIR")]
    pub databases_dir: Option<PathBuf>,

    /// LXD storage pool of run containers. On a `btrfs` pool every run's root disk and its
    /// writable folders (outputs, logs) are hard-bounded by its disk limit; on other pools the
    /// writable folders are watched and a run that outgrows them ends ERROR.
    #[arg(long, env = "PIRUS_LXD_STORAGE_POOL", default_value = "default")]
    pub lxd_storage_pool: String,

    /// Give each run container an id range of its own (`security.idmap.isolated`), so that two
    /// runs cannot touch each other's files; needs enough subordinate ids for root.
    #[arg(long, env = "PIRUS_LXD_ISOLATED_IDMAP", default_value_t = true,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub lxd_isolated_idmap: bool,

    /// Host folders a TES task may read `file://` inputs from and write `file://` outputs
    /// beneath (comma-separated absolute paths); none by default, so `file://` is refused.
    #[arg(long, env = "PIRUS_TES_FILE_ROOTS", value_delimiter = ',', value_parser = parse_root)]
    pub tes_file_roots: Vec<PathBuf>,

    #[command(flatten)]
    pub run_limits: RunLimitOptions,

    #[command(flatten)]
    pub placement: PlacementOptions,
}

/// What this node has to give its runs, and what it is. A claim reserves a run's request
/// (CPUs, memory, disk) against the capacity; runs held never ask for more than it has.
#[derive(clap::Args, Clone, Debug)]
pub struct PlacementOptions {
    /// CPUs the node's runs may hold in all (times --cpu-overcommit); default the host's CPUs.
    #[arg(long, env = "PIRUS_CAPACITY_CPUS", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub capacity_cpus: Option<u32>,
    /// Memory the node's runs may hold in all; default the host's memory less 1 GiB.
    #[arg(long, env = "PIRUS_CAPACITY_MEMORY", value_parser = parse_positive_size)]
    pub capacity_memory: Option<u64>,
    /// Disk the node's runs may hold in all; default the size of the run storage pool.
    #[arg(long, env = "PIRUS_CAPACITY_DISK", value_parser = parse_positive_size)]
    pub capacity_disk: Option<u64>,
    /// CPUs may be promised this many times over (at least 1.0); memory and disk never are.
    #[arg(long, env = "PIRUS_CPU_OVERCOMMIT", default_value_t = 1.0, value_parser = parse_overcommit)]
    pub cpu_overcommit: f64,
    /// A label of this node, KEY=VALUE (repeatable): runs whose node selector names labels
    /// go only to nodes that have them all.
    #[arg(long = "node-label", env = "PIRUS_NODE_LABELS", value_delimiter = ',',
          value_parser = crate::placement::parse_label)]
    pub node_labels: Vec<(String, String)>,
}

fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (1.0..=100.0).contains(&f) => Ok(f),
        _ => Err("must be a number from 1.0 to 100.0".to_owned()),
    }
}

impl PlacementOptions {
    /// The node's capacity: what is given, else the host's CPUs, its memory less 1 GiB, and
    /// `pool_size` (the run storage pool's size, when LXD says).
    pub(crate) fn capacity(&self, pool_size: Option<u64>) -> crate::placement::Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        crate::placement::Capacity {
            cpus: self.capacity_cpus.unwrap_or(cpus),
            memory_bytes: self.capacity_memory.unwrap_or_else(|| {
                host_memory().map_or(1 << 30, |m| m.saturating_sub(1 << 30).max(1 << 30))
            }),
            disk_bytes: self.capacity_disk.or(pool_size).unwrap_or(0),
            cpu_overcommit: self.cpu_overcommit,
        }
    }
}

fn parse_root(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s.trim());
    if !path.is_absolute() {
        return Err(format!("'{s}' is not an absolute path"));
    }
    Ok(path)
}

/// The largest run this node accepts, and what a run gets when neither its request nor its
/// pipeline names a limit. Every container is bounded, whether or not anything asks.
#[derive(clap::Args, Clone, Debug)]
pub struct RunLimitOptions {
    /// CPUs of the largest run; default the host's CPUs.
    #[arg(long, env = "PIRUS_MAX_RUN_CPUS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_run_cpus: Option<u32>,
    /// Memory of the largest run; default three quarters of the host's memory.
    #[arg(long, env = "PIRUS_MAX_RUN_MEMORY", value_parser = parse_positive_size)]
    pub max_run_memory: Option<u64>,
    /// Processes (and threads) of the largest run at once.
    #[arg(long, env = "PIRUS_MAX_RUN_PROCESSES", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(16..=4_000_000))]
    pub max_run_processes: u32,
    /// Disk of the largest run: its root disk, and its outputs and logs together.
    #[arg(long, env = "PIRUS_MAX_RUN_DISK", default_value = "64GiB", value_parser = parse_positive_size)]
    pub max_run_disk: u64,
    /// Wall-clock time of the longest run.
    #[arg(long, env = "PIRUS_MAX_RUN_TIME", default_value = "7d", value_parser = parse_duration)]
    pub max_run_time: Duration,

    /// CPUs of a run that names none.
    #[arg(long, env = "PIRUS_DEFAULT_RUN_CPUS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub default_run_cpus: u32,
    /// Memory of a run that names none.
    #[arg(long, env = "PIRUS_DEFAULT_RUN_MEMORY", default_value = "2GiB", value_parser = parse_positive_size)]
    pub default_run_memory: u64,
    /// Processes of a run that names none.
    #[arg(long, env = "PIRUS_DEFAULT_RUN_PROCESSES", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(16..=4_000_000))]
    pub default_run_processes: u32,
    /// Disk of a run that names none.
    #[arg(long, env = "PIRUS_DEFAULT_RUN_DISK", default_value = "8GiB", value_parser = parse_positive_size)]
    pub default_run_disk: u64,
    /// Wall-clock time of a run whose pipeline and request name no timeout.
    #[arg(long, env = "PIRUS_DEFAULT_RUN_TIME", default_value = "24h", value_parser = parse_duration)]
    pub default_run_time: Duration,
}

impl RunLimitOptions {
    pub fn node_limits(&self) -> NodeLimits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let largest = Limits {
            cpus: self.max_run_cpus.unwrap_or(cpus),
            memory_bytes: self
                .max_run_memory
                .unwrap_or_else(|| host_memory().map_or(1 << 30, |m| m / 4 * 3)),
            processes: self.max_run_processes,
            disk_bytes: self.max_run_disk,
            time: self.max_run_time,
        };
        let default = Limits {
            cpus: self.default_run_cpus,
            memory_bytes: self.default_run_memory,
            processes: self.default_run_processes,
            disk_bytes: self.default_run_disk,
            time: self.default_run_time,
        };
        NodeLimits::new(largest, default)
    }
}

/// MemTotal of /proc/meminfo, in bytes.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parse_positive_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be larger than zero".to_owned()),
        n => Ok(n),
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &CommonOptions {
        &self.common
    }

    fn addresses(&self) -> (SocketAddr, SocketAddr) {
        (self.grpc_addr, self.http_addr)
    }
}

impl Config {
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }

    pub fn max_runs(&self) -> u32 {
        self.max_runs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
    }

    pub fn lxd_socket(&self) -> PathBuf {
        self.lxd_socket.clone().unwrap_or_else(|| {
            let found = DEFAULT_LXD_SOCKETS
                .iter()
                .find(|p| std::path::Path::new(p).exists());
            PathBuf::from(found.unwrap_or(&DEFAULT_LXD_SOCKETS[0]))
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(s.trim_end_matches('/').to_owned()),
        _ => Err("must be an http:// or https:// URL like http://127.0.0.1:50051".to_owned()),
    }
}

fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1 to 63 letters, digits, '-', '_' or '.'".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::try_parse_from(["pirus-runner"]).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50052");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.catalogue_addr, "http://127.0.0.1:50051");
        assert_eq!(c.node_lease, Duration::from_secs(30));
        assert_eq!(c.lxd_project, "default");
        assert!(c.max_runs() >= 1);
        assert!(!c.node_name().is_empty());
        assert_eq!(c.lxd_storage_pool, "default");
        assert!(c.lxd_isolated_idmap);
        let limits = c.run_limits.node_limits();
        assert_eq!(limits.default.cpus, 1);
        assert_eq!(limits.default.time, Duration::from_secs(24 * 3600));
        assert_eq!(limits.largest.disk_bytes, 64 << 30);
        assert!(limits.largest.memory_bytes > 0);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::try_parse_from(["pirus-runner", "--node-lease", "soon"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--node-name", "a/b"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--catalogue-addr", "nope"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--max-runs", "-1"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--max-run-disk", "0"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--max-run-processes", "2"]).is_err());
        assert!(Config::try_parse_from(["pirus-runner", "--lxd-isolated-idmap", "maybe"]).is_err());
        let c = Config::try_parse_from(["pirus-runner", "--lxd-isolated-idmap", "false"]).unwrap();
        assert!(!c.lxd_isolated_idmap);
    }
}
