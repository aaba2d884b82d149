//! Option parsing helpers: durations (`10s`, `5m`, `24h`), sizes (`512MiB`, `64GiB`), the
//! options both binaries take, and a parse that reports a bad option in one line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};

/// Options every Pirus binary takes (CONTRACT §1).
#[derive(Args, Clone, Debug)]
pub struct CommonOptions {
    /// PostgreSQL URL shared by the catalogue and every runner.
    #[arg(
        long,
        env = "PIRUS_DATABASE_URL",
        default_value = "postgres://localhost/pirus"
    )]
    pub database_url: String,

    /// Log format: `text` for people, `json` for machines.
    #[arg(long, env = "PIRUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write the bound addresses here as JSON (`{"grpc": "...", "http": "..."}`) once serving.
    #[arg(long, env = "PIRUS_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,

    /// How long in-flight requests may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "PIRUS_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// `token`: every call needs a bearer token (the default). `none`: every caller is an
    /// admin, for development; accepted only when every bound address is loopback.
    #[arg(long, env = "PIRUS_AUTH", value_enum, default_value_t = Auth::Token)]
    pub auth: Auth,

    #[command(flatten)]
    pub tls: crate::tls::ServerTlsOptions,

    /// Connections in the database pools serving requests (a runner's reads of runs take
    /// `--database-read-connections` and 2 more of them, in pools of their own).
    #[arg(long, env = "PIRUS_DATABASE_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_max_connections: u32,

    /// Streams (watches, log follows, downloads, uploads) a user token may hold at once;
    /// operators and admins 4 times it, runner tokens 16 times. One more is answered
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PIRUS_MAX_STREAMS_PER_CALLER", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_caller: u32,

    /// Concurrent calls one gRPC connection may carry (HTTP/2 max concurrent streams).
    #[arg(long, env = "PIRUS_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_connection: u32,

    /// On the HTTP port, a client must send each request's header within this; the
    /// connection is closed otherwise (also an idle kept-alive connection).
    #[arg(long, env = "PIRUS_HTTP_HEADER_READ_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub http_header_read_timeout: Duration,

    /// Connections the HTTP port keeps open at once; one more is closed when accepted.
    #[arg(long, env = "PIRUS_MAX_HTTP_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_http_connections: u32,

    /// Connections one client (an IPv4 address, or an IPv6 /64) keeps open on each port (gRPC
    /// and HTTP) at once; one more is closed when accepted. Raise it when clients reach the
    /// service through a proxy that connects from one address.
    #[arg(long, env = "PIRUS_MAX_CONNECTIONS_PER_PEER", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_peer: u32,

    /// Connections the gRPC port keeps open at once; one more is closed when accepted.
    #[arg(long, env = "PIRUS_MAX_GRPC_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_grpc_connections: u32,

    /// A new gRPC connection must send the HTTP/2 preface (its first 24 bytes; with TLS, the
    /// start of its hello) within this, or it is closed.
    #[arg(long, env = "PIRUS_GRPC_PREFACE_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub grpc_preface_timeout: Duration,

    /// A gRPC connection with no call open for this long is closed (a client reconnects on
    /// its next call). Streams (WatchRun, StreamRunLogs, uploads) count as open calls for as
    /// long as they last; the keepalive PINGs that keep a quiet stream alive do not.
    #[arg(long, env = "PIRUS_GRPC_IDLE_TIMEOUT", default_value = "5m",
          value_parser = parse_duration)]
    pub grpc_idle_timeout: Duration,
}

impl CommonOptions {
    /// The HTTP port's bounds, from these options.
    pub fn http_limits(&self) -> crate::serve::HttpLimits {
        crate::serve::HttpLimits {
            header_read_timeout: self.http_header_read_timeout,
            max_connections: self.max_http_connections as usize,
            max_connections_per_peer: self.max_connections_per_peer as usize,
        }
    }

    /// The gRPC port's bounds, from these options.
    pub fn grpc_limits(&self) -> crate::grpc_port::GrpcLimits {
        crate::grpc_port::GrpcLimits {
            max_connections: self.max_grpc_connections as usize,
            max_connections_per_peer: self.max_connections_per_peer as usize,
            preface_timeout: self.grpc_preface_timeout,
            idle_timeout: self.grpc_idle_timeout,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    Token,
    None,
}

impl Auth {
    pub fn mode(self) -> pirus_auth::AuthMode {
        match self {
            Self::Token => pirus_auth::AuthMode::Token,
            Self::None => pirus_auth::AuthMode::None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses the command line and the environment. A bad option ends the process with one line on
/// stderr and exit status 2; `--help` and `--version` print as usual.
pub fn parse<T: Parser>() -> T {
    match T::try_parse() {
        Ok(options) => options,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                e.exit();
            }
            let rendered = e.to_string();
            let line = first_line(&rendered);
            let name = T::command().get_name().to_owned();
            eprintln!("{name}: {line}");
            std::process::exit(2);
        }
    }
}

/// clap's message as one line: its first line, and when that announces a list ("the
/// following required arguments were not provided:"), the list's items after it.
fn first_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).skip_while(|l| l.is_empty());
    let Some(first) = lines.next() else {
        return "invalid command line".to_owned();
    };
    if !first.ends_with(':') {
        return first.to_owned();
    }
    let items: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    format!("{first} {}", items.join(", "))
}

/// Parses a duration written like `10s`, `5m`, `24h` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 10s, 5m, 24h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

/// Parses a size written like `512MiB`, `64GiB`, `1.5GB` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("K", 1 << 10),
        ("M", 1 << 20),
        ("G", 1 << 30),
        ("T", 1 << 40),
        ("B", 1),
    ];
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let bad = || format!("invalid size '{s}' (write sizes like 512MiB, 64GiB, or bytes)");
    let multiplier = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(unit))
            .map(|&(_, m)| m)
            .ok_or_else(bad)?
    };
    if number.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(bad);
    }
    let f: f64 = number.parse().map_err(|_| bad())?;
    let bytes = f * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Formats a size the way options are written (`64GiB`), for logs and headers.
pub fn format_size(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for &(unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clap_error_is_one_line_with_its_list() {
        let rendered = "error: the following required arguments were not provided:\n  --tls-key <TLS_KEY>\n\nUsage: x --tls-cert <TLS_CERT>\n";
        assert_eq!(
            first_line(rendered),
            "error: the following required arguments were not provided: --tls-key <TLS_KEY>"
        );
        assert_eq!(first_line("\nerror: bad value\n\nmore"), "error: bad value");
        assert_eq!(first_line(""), "invalid command line");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size(" 10 KiB "), Ok(10 << 10));
        for bad in [
            "",
            "GiB",
            "banana",
            "12XB",
            "-1MiB",
            "1.2.3MiB",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn sizes_round_trip() {
        for n in [1u64, 1023, 1 << 10, 3 << 20, 64 << 30, 5 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10").is_err());
    }
}
