//! `pirus-catalogue usage --check`: recounts every principal's usage from the rows (files,
//! uploads, runs) and compares it with the counters the database keeps in the transactions of
//! what they count. Prints each difference; exit 0 when there is none, 1 otherwise. Database
//! options are the server's (`--database-url` / `PIRUS_DATABASE_URL`).

use std::process::ExitCode;

use clap::Parser;
use pirus_auth::principals::PrincipalStore;
use pirus_server::options::CommonOptions;

#[derive(Parser, Debug)]
#[command(
    name = "pirus-catalogue usage",
    about = "Checks the usage counters against a recount"
)]
struct UsageCli {
    #[command(flatten)]
    common: CommonOptions,
    /// Recount and compare (the only action).
    #[arg(long)]
    check: bool,
}

/// Whether the command line is `pirus-catalogue usage ...`.
pub fn is_usage_command() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "usage")
}

/// Runs `pirus-catalogue usage --check`.
pub fn usage_command() -> ExitCode {
    let cli = UsageCli::parse_from(std::env::args_os().skip(1));
    if !cli.check {
        eprintln!("pirus-catalogue usage: give --check");
        return ExitCode::FAILURE;
    }
    let drift = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let db = pirus_server::process::database(&cli.common).await?;
                anyhow::Ok(PrincipalStore::new(db).drift().await?)
            })
        });
    let (report, code) = match drift {
        Ok(drift) if drift.is_empty() => (
            "usage counters match a recount of the rows\n".to_owned(),
            ExitCode::SUCCESS,
        ),
        Ok(drift) => {
            let mut report: String = drift
                .iter()
                .map(|d| {
                    format!(
                        "principal {}: counted {:?}, recounted {:?}\n",
                        d.principal, d.counted, d.recounted
                    )
                })
                .collect();
            report.push_str(&format!(
                "{} principals' counters differ from a recount\n",
                drift.len()
            ));
            (report, ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("pirus-catalogue usage --check: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(report.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(_) => ExitCode::FAILURE,
    }
}
