//! Logging: `tracing` to stderr, as text for people or JSON lines for machines. `RUST_LOG`
//! overrides the default filter (`info`).

use tracing_subscriber::{EnvFilter, fmt};

use crate::options::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,h2=warn,hyper=warn")
    });
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second init (tests running a service in-process) keeps the first subscriber.
    let _ = result;
}
