//! `pirus`, the command-line client: uploads with a progress bar that resume where they
//! stopped, runs submitted with their configuration checked locally and followed live,
//! downloads verified against their digest, nodes and tokens. Tables for people, `--json` for
//! scripts, one-line errors naming what failed and the server's message.
//!
//! Depends on (within Pirus): pirus-proto, pirus-form. Never on: pirus-db, pirus-server,
//! pirus-lxd, pirus-auth, pirus-catalogue, pirus-runner. It talks to the services only through
//! their public API (gRPC, and tus for upload bytes), as any other client would.

// Printing to stdout is what a command-line client is for.
#![allow(clippy::print_stdout)]

mod cmd;
mod config;
mod connect;
mod download;
mod failure;
mod output;
mod progress;
mod remember;
mod tus;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use failure::Failure;

const EXAMPLES: &str = "\
Examples:
  pirus pipeline upload hello-1.0.tar.gz
  pirus file upload reads_1.fq.gz reads_2.fq.gz
  pirus run submit hello --input reads_1.fq.gz --config threads=4 --follow
  pirus run watch 01a2...  |  pirus run logs 01a2... -f
  pirus run outputs 01a2... --download results/
  pirus node list  |  pirus token create alice --role user

Settings come from flags, then the environment (PIRUS_CATALOGUE_ADDR, PIRUS_RUNNER_ADDR,
PIRUS_TOKEN, PIRUS_TOKEN_FILE, PIRUS_TLS_CA), then ~/.config/pirus/config.toml.";

#[derive(Debug, Parser)]
#[command(name = "pirus", version, about = "The Pirus command-line client", after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: config::Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pipelines: upload and install a package, list, show, read the form, remove
    #[command(subcommand)]
    Pipeline(cmd::pipeline::Pipeline),
    /// Data files: upload (resumable), list, show, download (resumable, verified), remove
    #[command(subcommand)]
    File(cmd::file::File),
    /// Runs: submit, list, show, watch, logs, pause, resume, cancel, remove, outputs
    #[command(subcommand)]
    Run(cmd::run::Run),
    /// Runner nodes: list, drain, undrain (operators)
    #[command(subcommand)]
    Node(cmd::node::Node),
    /// Tokens: create, list, revoke (admins), whoami (anyone)
    #[command(subcommand)]
    Token(cmd::token::Token),
    /// Principals (who owns files and runs): create, list, update (admins)
    #[command(subcommand)]
    Principal(cmd::principal::Principal),
    /// What a principal uses against its quota (default: this token's principal)
    #[command(after_help = "Examples:\n  pirus usage\n  pirus usage alice --json")]
    Usage {
        /// A principal's name (operators and admins may name anyone)
        principal: Option<String>,
    },
    /// Prints the completion script of a shell
    #[command(after_help = "Example:\n  pirus completions bash > /etc/bash_completion.d/pirus")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// Parses the command line, runs it, and answers the exit code: 0 when it worked, the run's
/// code for `run submit --follow` and `run watch`, 1 on a failure (one line on stderr), 2 when
/// a run could not be queued.
pub fn main() -> ExitCode {
    use clap::{FromArgMatches, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let from_flag = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    cli.global.token_flag = from_flag("token");
    cli.global.token_file_flag = from_flag("token_file");
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "pirus", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pirus: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let failure = Failure::of(&e);
            eprintln!("pirus: {}", failure.line);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let settings = config::Settings::resolve(&cli.global)?;
    match cli.command {
        Command::Pipeline(c) => c.run(&settings).await.map(|()| 0),
        Command::File(c) => c.run(&settings).await.map(|()| 0),
        Command::Run(c) => c.run(&settings).await,
        Command::Node(c) => c.run(&settings).await.map(|()| 0),
        Command::Token(c) => c.run(&settings).await.map(|()| 0),
        Command::Principal(c) => c.run(&settings).await.map(|()| 0),
        Command::Usage { principal } => cmd::principal::usage(&settings, principal)
            .await
            .map(|()| 0),
        Command::Completions { .. } => Ok(0),
    }
}
