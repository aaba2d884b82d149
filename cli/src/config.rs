//! Where the services are and who calls them: flags, then the environment, then
//! `~/.config/pirus/config.toml` (or `--config`), then defaults for a local deployment.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;

/// Options every command takes.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// The catalogue's gRPC address (https:// for TLS) [default: the config file's, else
    /// http://127.0.0.1:50051]
    #[arg(long, global = true, env = "PIRUS_CATALOGUE_ADDR", value_name = "URL")]
    pub catalogue: Option<String>,
    /// A runner's gRPC address [default: the config file's, else http://127.0.0.1:50052]
    #[arg(long, global = true, env = "PIRUS_RUNNER_ADDR", value_name = "URL")]
    pub runner: Option<String>,
    /// The bearer token to call with
    #[arg(long, global = true, env = "PIRUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token
    #[arg(long, global = true, env = "PIRUS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the services' certificates [default: the system's]
    #[arg(long, global = true, env = "PIRUS_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, for services that require one (mTLS)
    #[arg(
        long,
        global = true,
        env = "PIRUS_TLS_CLIENT_CERT",
        value_name = "PATH",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(
        long,
        global = true,
        env = "PIRUS_TLS_CLIENT_KEY",
        value_name = "PATH",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
    /// The settings file [default: ~/.config/pirus/config.toml] (named so because
    /// `run submit --config` sets a run's configuration)
    #[arg(long, global = true, env = "PIRUS_CONFIG", value_name = "PATH")]
    pub settings: Option<PathBuf>,
    /// Whether --token and --token-file were given on the command line (rather than by the
    /// environment): set after parsing, for precedence.
    #[arg(skip)]
    pub token_flag: bool,
    #[arg(skip)]
    pub token_file_flag: bool,
    /// Output for scripts: one JSON document per command (a list is one array), one JSON
    /// object per line for streams
    #[arg(long, global = true)]
    pub json: bool,
}

/// The configuration file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    catalogue_addr: Option<String>,
    runner_addr: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
}

/// Everything a command needs to reach the services.
#[derive(Clone, Debug)]
pub struct Settings {
    pub catalogue: String,
    pub runner: String,
    pub token: Option<String>,
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (mTLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub json: bool,
    /// Where upload URLs are remembered for resuming.
    pub cache_dir: PathBuf,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn xdg(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home().map(|h| h.join(fallback)))
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

impl Settings {
    pub fn resolve(global: &Global) -> Result<Self> {
        let explicit = global.settings.clone();
        let path = explicit
            .clone()
            .or_else(|| xdg("XDG_CONFIG_HOME", ".config").map(|d| d.join("pirus/config.toml")));
        let file = match &path {
            Some(path) if explicit.is_some() || path.exists() => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileSettings>(&text)
                    .with_context(|| format!("{} is not a valid configuration", path.display()))?
            }
            _ => FileSettings::default(),
        };
        // Flags, then the environment, then the file; at each level a token before a file.
        let token = if global.token_flag {
            global.token.as_deref().map(|t| t.trim().to_owned())
        } else if global.token_file_flag {
            global.token_file.as_deref().map(read_token).transpose()?
        } else if let Some(token) = &global.token {
            Some(token.trim().to_owned())
        } else if let Some(path) = &global.token_file {
            Some(read_token(path)?)
        } else if let Some(token) = &file.token {
            Some(token.trim().to_owned())
        } else {
            file.token_file.as_deref().map(read_token).transpose()?
        };
        let cache_dir = xdg("XDG_CACHE_HOME", ".cache")
            .map(|d| d.join("pirus"))
            .unwrap_or_else(|| std::env::temp_dir().join("pirus-cache"));
        Ok(Self {
            catalogue: global
                .catalogue
                .clone()
                .or(file.catalogue_addr)
                .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned()),
            runner: global
                .runner
                .clone()
                .or(file.runner_addr)
                .unwrap_or_else(|| "http://127.0.0.1:50052".to_owned()),
            token,
            tls_ca: global.tls_ca.clone().or(file.tls_ca),
            tls_client: match (&global.tls_client_cert, &global.tls_client_key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                _ => file.tls_client_cert.zip(file.tls_client_key),
            },
            json: global.json,
            cache_dir,
        })
    }
}
