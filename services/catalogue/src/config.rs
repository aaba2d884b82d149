//! Options of `pirus-catalogue` (CONTRACT §1): every one a `--flag` and a `PIRUS_*` variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use pirus_server::{
    options::{CommonOptions, parse_duration, parse_size},
    process::ServiceConfig,
};

/// Pirus catalogue: pipeline packages, data files, resumable uploads (tus 1.0 and gRPC).
#[derive(Parser, Clone, Debug)]
#[command(name = "pirus-catalogue", version, about)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonOptions,

    /// gRPC listen address; port 0 binds a free port.
    #[arg(long, env = "PIRUS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address: tus uploads, /metrics, /livez, /readyz.
    #[arg(long, env = "PIRUS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Base of absolute tus Location URLs; default `http://` + the bound HTTP address.
    #[arg(long, env = "PIRUS_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// Partial uploads and content-addressed blobs. Several catalogue processes may share it.
    #[arg(long, env = "PIRUS_DATA_DIR", default_value = "./var/catalogue")]
    pub data_dir: PathBuf,

    /// Largest upload accepted (announced as Tus-Max-Size).
    #[arg(long, env = "PIRUS_MAX_UPLOAD_SIZE", default_value = "64GiB", value_parser = parse_size)]
    pub max_upload_size: u64,

    /// Largest pipeline image, counted on bytes actually inflated: the image as the package
    /// holds it, and the image unpacked (what LXD writes on every runner). A package over it
    /// ends ERROR naming the limit.
    #[arg(long, env = "PIRUS_MAX_IMAGE_SIZE", default_value = "32GiB", value_parser = parse_size)]
    pub max_image_size: u64,

    /// An incomplete upload untouched this long is removed.
    #[arg(long, env = "PIRUS_UPLOAD_EXPIRY", default_value = "24h", value_parser = parse_duration)]
    pub upload_expiry: Duration,

    /// How often upkeep runs (pausing idle uploads, removing expired ones, collecting blobs);
    /// default half the upload expiry, between 500ms and 5s. An expired upload answers 410
    /// until the next sweep removes it, 404 after.
    #[arg(long, env = "PIRUS_UPLOAD_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub upload_sweep_interval: Option<Duration>,

    /// Transfers (tus PATCH bodies, WriteUpload streams) running at once (installs run apart,
    /// one at a time). Each
    /// holds a PostgreSQL connection of its own for its lock, on top of the pool
    /// (--database-max-connections): keep the sum within the server's max_connections. One
    /// more is answered 503 / UNAVAILABLE, to be retried.
    #[arg(long, env = "PIRUS_MAX_TRANSFERS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_transfers: u32,

    /// The slowest a transfer (a tus PATCH body, a WriteUpload stream) may go, in bytes a
    /// second on average over every --transfer-rate-window: a client trickling bytes is cut
    /// off (keeping what arrived, so the upload resumes) instead of holding a transfer slot
    /// and its caller's stream budget. 0: no bound (a transfer still ends after 30 s with
    /// nothing).
    #[arg(long, env = "PIRUS_MIN_TRANSFER_RATE", default_value = "16KiB", value_parser = parse_size)]
    pub min_transfer_rate: u64,

    /// The window --min-transfer-rate is averaged over.
    #[arg(long, env = "PIRUS_TRANSFER_RATE_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub transfer_rate_window: Duration,

    /// File contents read at once (ReadFile streams, across callers), each by a thread of its
    /// own holding up to 5 MiB of read-ahead; one more is answered RESOURCE_EXHAUSTED with a
    /// retry hint. Each caller is also bounded by its stream budget (--max-streams-per-caller).
    #[arg(long, env = "PIRUS_MAX_FILE_READERS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_file_readers: u32,

    /// Origins (like `https://app.example.org`, comma-separated) whose web pages may call the
    /// tus endpoints from a browser. Empty (the default): no CORS headers at all, and no
    /// X-HTTP-Method-Override, so no other web page can drive uploads through a user's browser.
    #[arg(long, env = "PIRUS_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// The max_stored_bytes quota of a new principal (like `100GiB`); 0: unlimited.
    #[arg(long, env = "PIRUS_DEFAULT_QUOTA_STORED_BYTES", default_value = "0", value_parser = parse_size)]
    pub default_quota_stored_bytes: u64,

    /// The max_files quota of a new principal; 0: unlimited.
    #[arg(long, env = "PIRUS_DEFAULT_QUOTA_FILES", default_value_t = 0)]
    pub default_quota_files: u64,

    /// The max_queued_runs quota of a new principal; 0: unlimited.
    #[arg(long, env = "PIRUS_DEFAULT_QUOTA_QUEUED_RUNS", default_value_t = 0)]
    pub default_quota_queued_runs: u64,

    /// The max_running_runs quota of a new principal; 0: unlimited.
    #[arg(long, env = "PIRUS_DEFAULT_QUOTA_RUNNING_RUNS", default_value_t = 0)]
    pub default_quota_running_runs: u64,
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
    /// The quota of a principal made without one (CreatePrincipal without quota, CreateToken
    /// without principal).
    pub fn default_quota(&self) -> pirus_auth::principals::Quota {
        pirus_auth::principals::Quota {
            max_stored_bytes: self.default_quota_stored_bytes,
            max_files: self.default_quota_files,
            max_queued_runs: self.default_quota_queued_runs,
            max_running_runs: self.default_quota_running_runs,
            ..Default::default()
        }
    }

    pub fn upload_sweep_interval(&self) -> Duration {
        self.upload_sweep_interval.unwrap_or_else(|| {
            (self.upload_expiry / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
        })
    }
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => {
            Ok(s.trim_end_matches('/').to_owned())
        }
        _ => Err(
            "must be an http:// or https:// URL without a query, like https://pirus.example.org"
                .to_owned(),
        ),
    }
}

fn parse_origin(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("not an origin: {e}"))?;
    match (uri.scheme_str(), uri.authority(), uri.path()) {
        (Some("http" | "https"), Some(_), "" | "/") if uri.query().is_none() => {
            Ok(s.trim().trim_end_matches('/').to_owned())
        }
        _ => Err("an origin is a scheme and a host, like https://app.example.org".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url() {
        assert_eq!(
            parse_public_url("https://h.example/base/").as_deref(),
            Ok("https://h.example/base")
        );
        assert_eq!(
            parse_public_url("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        assert!(parse_public_url("ftp://h").is_err());
        assert!(parse_public_url("/relative").is_err());
        assert!(parse_public_url("http://h/?q=1").is_err());
        assert_eq!(
            parse_origin("https://app.example.org/").as_deref(),
            Ok("https://app.example.org")
        );
        assert!(parse_origin("https://app.example.org/path").is_err());
        assert!(parse_origin("*").is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::try_parse_from(["pirus-catalogue"]).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_upload_size, 64 << 30);
        assert_eq!(c.max_image_size, 32 << 30);
        assert_eq!(c.upload_expiry, Duration::from_secs(86_400));
        assert_eq!(c.data_dir, PathBuf::from("./var/catalogue"));
        assert_eq!(c.common.database_url, "postgres://localhost/pirus");
        assert!(c.cors_origins.is_empty());
    }
}
