//! `pirus token`: tokens (admins) and the caller's own identity.

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use pirus_proto::catalogue::v1::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Role, Token as Proto, WhoAmIRequest,
};

use crate::{
    config::Settings,
    connect,
    output::{Table, ago, emit, emit_list, print_json, print_line, short, to_json},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Admin,
    Operator,
    User,
    Runner,
}

impl RoleArg {
    pub(crate) fn proto(self) -> Role {
        match self {
            RoleArg::Admin => Role::Admin,
            RoleArg::Operator => Role::Operator,
            RoleArg::User => Role::User,
            RoleArg::Runner => Role::Runner,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Token {
    /// Makes a token (admins) and prints its secret, shown this once
    #[command(
        after_help = "Examples:\n  pirus token create alice --role user --ttl 90d\n  \
                            pirus token create alice-ci --principal alice\n  \
                            pirus token create node-2 --role runner --node node-2"
    )]
    Create {
        /// A label for people
        name: String,
        /// Required without --principal; with it, unset or the principal's role
        #[arg(long, required_unless_present = "principal")]
        role: Option<RoleArg>,
        /// The principal the token acts for (its files, runs and quotas); default: a new
        /// principal named after the token
        #[arg(long)]
        principal: Option<String>,
        /// The node a runner token acts for (runner tokens only)
        #[arg(long)]
        node: Option<String>,
        /// How long the token is accepted (for example 90d, 12h); default: no expiry
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Lists every token, never a secret (admins)
    #[command(after_help = "Example:\n  pirus token list --json | jq '.[].name'")]
    List,
    /// Revokes a token: every service refuses it within 5 s (admins)
    #[command(after_help = "Example:\n  pirus token revoke 0a1b2c3d-...")]
    Revoke {
        /// The token's accessor id (from `token list`)
        accessor_id: String,
    },
    /// Shows the token this command calls with
    #[command(after_help = "Example:\n  pirus token whoami")]
    Whoami,
}

fn row(t: &Proto) -> Vec<String> {
    let role = Role::try_from(t.role).map_or("?".to_owned(), |r| short(r.as_str_name(), "ROLE_"));
    let state = if t.revoked_at.is_some() {
        format!("revoked {}", ago(t.revoked_at.as_ref()))
    } else if t.expires_at.is_some() {
        let expiry = t.expires_at.as_ref().map(|e| e.seconds).unwrap_or_default();
        if expiry < chrono::Utc::now().timestamp() {
            "expired".to_owned()
        } else {
            "active, expires".to_owned()
        }
    } else {
        "active".to_owned()
    };
    vec![
        t.accessor_id.clone(),
        t.name.clone(),
        t.principal.clone(),
        role,
        if t.node.is_empty() {
            "-".into()
        } else {
            t.node.clone()
        },
        state,
        ago(t.created_at.as_ref()),
    ]
}

fn table(tokens: &[Proto]) {
    let mut table = Table::new(&[
        "ACCESSOR",
        "NAME",
        "PRINCIPAL",
        "ROLE",
        "NODE",
        "STATE",
        "CREATED",
    ]);
    tokens.iter().for_each(|t| table.row(row(t)));
    table.print();
}

impl Token {
    pub async fn run(self, settings: &Settings) -> Result<()> {
        let mut access = connect::access(settings).await?;
        const NAME: &str = "pirus.catalogue.v1.Token";
        match self {
            Token::Create {
                name,
                role,
                principal,
                node,
                ttl,
            } => {
                let made = access
                    .create_token(CreateTokenRequest {
                        name: name.clone(),
                        role: role.map_or(Role::Unspecified, RoleArg::proto) as i32,
                        principal: principal.unwrap_or_default(),
                        node: node.unwrap_or_default(),
                        ttl: ttl.map(|d| prost_types::Duration {
                            seconds: d.as_secs() as i64,
                            nanos: d.subsec_nanos() as i32,
                        }),
                    })
                    .await
                    .with_context(|| format!("creating token {name}"))?
                    .into_inner();
                if settings.json {
                    print_json(&to_json(&made, "pirus.catalogue.v1.CreateTokenResponse")?);
                } else {
                    if let Some(token) = &made.token {
                        table(std::slice::from_ref(token));
                    }
                    eprintln!("the secret, shown this once:");
                    print_line(&made.secret);
                }
            }
            Token::List => {
                let tokens = access
                    .list_tokens(ListTokensRequest {})
                    .await
                    .context("listing tokens")?
                    .into_inner()
                    .tokens;
                emit_list(settings.json, &tokens, NAME, table)?;
            }
            Token::Revoke { accessor_id } => {
                let token = access
                    .revoke_token(RevokeTokenRequest {
                        accessor_id: accessor_id.clone(),
                    })
                    .await
                    .with_context(|| format!("revoking token {accessor_id}"))?
                    .into_inner();
                emit(settings.json, &token, NAME, table)?;
            }
            Token::Whoami => {
                let token = access
                    .who_am_i(WhoAmIRequest {})
                    .await
                    .context("asking who this token is")?
                    .into_inner();
                emit(settings.json, &token, NAME, table)?;
            }
        }
        Ok(())
    }
}
