//! `pirus-catalogue token ...`: token management from a host with the database's credentials,
//! for setting a deployment up before any token exists (or without a running catalogue).
//!
//! - `token bootstrap` makes the first admin token when no token exists (it also takes every
//!   row older than identity). With a token in the database already: one line on stderr and
//!   exit 1.
//! - `token create --role R --name N [--node X] [--ttl D]` makes any token (deploy/setup.sh
//!   gives the local runner its own this way).
//!
//! Both print the secret alone on the last line of stdout. Database options are the server's
//! (`--database-url` / `PIRUS_DATABASE_URL`).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pirus_auth::{
    Role,
    store::{NewToken, TokenInfo, TokenStore},
};
use pirus_server::options::{CommonOptions, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "pirus-catalogue token",
    about = "Token management from the server's host"
)]
struct TokenCli {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Admin,
    Operator,
    User,
    Runner,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Creates the first admin token when none exists; prints its secret on the last line.
    Bootstrap {
        #[command(flatten)]
        common: CommonOptions,
        /// The token's name.
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Creates a token; prints its secret on the last line.
    Create {
        #[command(flatten)]
        common: CommonOptions,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The node a runner token acts for (runner tokens only).
        #[arg(long)]
        node: Option<String>,
        /// Lifetime, like `30d` or `12h`; default: no expiry.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
}

/// Whether the command line is `pirus-catalogue token ...`.
pub fn is_token_command() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "token")
}

fn fail(what: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pirus-catalogue token {what}: {message}");
    ExitCode::FAILURE
}

/// Prints what was made, then the secret alone on the last line.
fn print(token: &TokenInfo, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created the {} token '{}' (accessor {}) of principal '{}'; its secret follows, shown \
         this once\n{secret}",
        token.role.as_str(),
        token.name,
        token.accessor,
        token.principal_name
    )?;
    out.flush()
}

/// The token a `create` asks for, checked.
fn new_token(
    name: String,
    role: RoleArg,
    node: Option<String>,
    ttl: Option<std::time::Duration>,
) -> Result<NewToken, String> {
    let role = match role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Operator => Role::Operator,
        RoleArg::User => Role::User,
        RoleArg::Runner => Role::Runner,
    };
    if (role == Role::Runner) != node.is_some() {
        return Err("--node is required for a runner token, and only for one".to_owned());
    }
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err("--name must be 1 to 200 characters".to_owned());
    }
    let expires_at = ttl
        .map(|t| chrono::Duration::from_std(t).map(|t| chrono::Utc::now() + t))
        .transpose()
        .map_err(|_| "--ttl is too long".to_owned())?;
    Ok(NewToken {
        name: name.trim().to_owned(),
        // A principal of its own, as CreateToken without a principal makes.
        principal: pirus_auth::store::TokenPrincipal::New {
            role,
            quota: Default::default(),
        },
        node,
        expires_at,
        created_by: None,
    })
}

/// Runs `pirus-catalogue token ...`.
pub fn token_command() -> ExitCode {
    let cli = TokenCli::parse_from(std::env::args_os().skip(1));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail("", format!("cannot start the async runtime: {e}")),
    };
    let (what, made) = match cli.command {
        TokenCommand::Bootstrap { common, name } => (
            "bootstrap",
            runtime.block_on(async {
                let db = pirus_server::process::database(&common).await?;
                anyhow::Ok(TokenStore::new(db).bootstrap(&name).await?)
            }),
        ),
        TokenCommand::Create {
            common,
            name,
            role,
            node,
            ttl,
        } => {
            let new = match new_token(name, role, node, ttl) {
                Ok(new) => new,
                Err(e) => return fail("create", e),
            };
            (
                "create",
                runtime.block_on(async {
                    let db = pirus_server::process::database(&common).await?;
                    anyhow::Ok(Some(TokenStore::new(db).create(new).await?))
                }),
            )
        }
    };
    match made {
        Ok(Some((token, secret))) => match print(&token, &secret) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(what, format!("cannot print the secret: {e}")),
        },
        Ok(None) => fail(
            what,
            "a token exists already; make more with AccessService/CreateToken or `token create`",
        ),
        Err(e) => fail(what, format!("{e:#}")),
    }
}
