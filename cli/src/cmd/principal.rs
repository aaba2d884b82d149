//! `pirus principal` (admins): who owns files and runs, their roles, weights and quotas; and
//! `pirus usage`: what a principal uses against its quota.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use pirus_proto::catalogue::v1::{
    CreatePrincipalRequest, GetUsageRequest, ListPrincipalsRequest, Principal as Proto,
    PrincipalKind, Quota, Role, UpdatePrincipalRequest, Usage,
};

use crate::{
    cmd::token::RoleArg,
    config::Settings,
    connect,
    output::{Table, ago, emit, emit_list, short, size},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    Person,
    Service,
}

/// Quota flags; each 0 is unlimited.
#[derive(Debug, Args, Default)]
pub struct QuotaArgs {
    /// Bytes of files and uploads it may own
    #[arg(long)]
    max_stored_bytes: Option<u64>,
    /// Files it may own
    #[arg(long)]
    max_files: Option<u64>,
    /// Runs it may have waiting
    #[arg(long)]
    max_queued_runs: Option<u64>,
    /// Runs it may have running at once (more wait)
    #[arg(long)]
    max_running_runs: Option<u64>,
    /// CPUs its running runs may hold (more wait)
    #[arg(long)]
    max_reserved_cpus: Option<u64>,
    /// Memory its running runs may hold, in bytes (more wait)
    #[arg(long)]
    max_reserved_memory: Option<u64>,
}

impl QuotaArgs {
    fn given(&self) -> bool {
        [
            self.max_stored_bytes,
            self.max_files,
            self.max_queued_runs,
            self.max_running_runs,
            self.max_reserved_cpus,
            self.max_reserved_memory,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The quota: what is given over `base` (the principal's current one, or none).
    fn over(&self, base: Quota) -> Quota {
        Quota {
            max_stored_bytes: self.max_stored_bytes.unwrap_or(base.max_stored_bytes),
            max_files: self.max_files.unwrap_or(base.max_files),
            max_queued_runs: self.max_queued_runs.unwrap_or(base.max_queued_runs),
            max_running_runs: self.max_running_runs.unwrap_or(base.max_running_runs),
            max_reserved_cpus: self.max_reserved_cpus.unwrap_or(base.max_reserved_cpus),
            max_reserved_memory_bytes: self
                .max_reserved_memory
                .unwrap_or(base.max_reserved_memory_bytes),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Principal {
    /// Makes a principal (admins)
    #[command(
        after_help = "Examples:\n  pirus principal create alice --kind person --role user \
                      --max-stored-bytes 500000000000\n  \
                      pirus principal create lims --kind service --role user --weight 2"
    )]
    Create {
        /// 1 to 100 of a-z, 0-9, '.', '_' and '-'
        name: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Fair-share weight (default 1)
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Lists every principal (admins)
    #[command(after_help = "Example:\n  pirus principal list --json | jq '.[].name'")]
    List,
    /// Changes a principal's role, weight, quota, or disables it (admins): a disabled
    /// principal's tokens are refused everywhere within 5 s
    #[command(
        after_help = "Examples:\n  pirus principal update alice --max-queued-runs 100\n  \
                      pirus principal update mallory --disable"
    )]
    Update {
        name: String,
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        quota: QuotaArgs,
        /// Refuse all its tokens
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Accept its tokens again
        #[arg(long)]
        enable: bool,
    },
}

fn limit(n: u64, bytes: bool) -> String {
    match (n, bytes) {
        (0, _) => "-".to_owned(),
        (n, true) => size(n as i64),
        (n, false) => n.to_string(),
    }
}

fn table(principals: &[Proto]) {
    let mut table = Table::new(&[
        "NAME", "KIND", "ROLE", "WEIGHT", "STORED", "FILES", "QUEUED", "RUNNING", "STATE",
        "CREATED",
    ]);
    for p in principals {
        let q = p.quota.unwrap_or_default();
        let kind = PrincipalKind::try_from(p.kind).map_or("?".to_owned(), |k| {
            short(k.as_str_name(), "PRINCIPAL_KIND_")
        });
        let role =
            Role::try_from(p.role).map_or("?".to_owned(), |r| short(r.as_str_name(), "ROLE_"));
        let state = if p.disabled_at.is_some() {
            format!("disabled {}", ago(p.disabled_at.as_ref()))
        } else {
            "active".to_owned()
        };
        table.row(vec![
            p.name.clone(),
            kind,
            role,
            p.weight.to_string(),
            limit(q.max_stored_bytes, true),
            limit(q.max_files, false),
            limit(q.max_queued_runs, false),
            limit(q.max_running_runs, false),
            state,
            ago(p.created_at.as_ref()),
        ]);
    }
    table.print();
}

/// `pirus usage`: one line per counter, used against its limit.
pub(crate) fn usage_table(usages: &[Usage]) {
    let mut table = Table::new(&["PRINCIPAL", "QUOTA", "USED", "LIMIT"]);
    for u in usages {
        let q = u.quota.unwrap_or_default();
        let r = u.reserved.unwrap_or_default();
        let rows = [
            (
                "stored_bytes",
                size(u.stored_bytes),
                limit(q.max_stored_bytes, true),
            ),
            ("files", u.files.to_string(), limit(q.max_files, false)),
            (
                "queued_runs",
                u.queued_runs.to_string(),
                limit(q.max_queued_runs, false),
            ),
            (
                "running_runs",
                u.running_runs.to_string(),
                limit(q.max_running_runs, false),
            ),
            (
                "reserved_cpus",
                r.cpu.to_string(),
                limit(q.max_reserved_cpus, false),
            ),
            (
                "reserved_memory",
                size(r.memory_bytes),
                limit(q.max_reserved_memory_bytes, true),
            ),
        ];
        for (name, used, max) in rows {
            table.row(vec![u.principal.clone(), name.to_owned(), used, max]);
        }
    }
    table.print();
}

/// Runs `pirus usage [PRINCIPAL]`.
pub(crate) async fn usage(settings: &Settings, principal: Option<String>) -> Result<()> {
    let mut access = connect::access(settings).await?;
    let usage = access
        .get_usage(GetUsageRequest {
            principal: principal.clone().unwrap_or_default(),
        })
        .await
        .with_context(|| match &principal {
            Some(p) => format!("reading the usage of {p}"),
            None => "reading the usage of this token's principal".to_owned(),
        })?
        .into_inner();
    emit(
        settings.json,
        &usage,
        "pirus.catalogue.v1.Usage",
        usage_table,
    )
}

impl Principal {
    pub async fn run(self, settings: &Settings) -> Result<()> {
        let mut access = connect::access(settings).await?;
        const NAME: &str = "pirus.catalogue.v1.Principal";
        let principal = match self {
            Principal::Create {
                name,
                kind,
                role,
                weight,
                quota,
            } => access
                .create_principal(CreatePrincipalRequest {
                    name: name.clone(),
                    kind: match kind {
                        KindArg::Person => PrincipalKind::Person,
                        KindArg::Service => PrincipalKind::Service,
                    } as i32,
                    role: role.proto() as i32,
                    weight,
                    quota: quota.given().then(|| quota.over(Quota::default())),
                })
                .await
                .with_context(|| format!("creating principal {name}"))?
                .into_inner(),
            Principal::List => {
                let principals = access
                    .list_principals(ListPrincipalsRequest {})
                    .await
                    .context("listing principals")?
                    .into_inner()
                    .principals;
                return emit_list(settings.json, &principals, NAME, table);
            }
            Principal::Update {
                name,
                role,
                weight,
                quota,
                disable,
                enable,
            } => {
                // A quota flag changes that limit alone: the rest are the principal's now.
                let quota = if quota.given() {
                    let current = access
                        .list_principals(ListPrincipalsRequest {})
                        .await
                        .context("reading the principal's quota")?
                        .into_inner()
                        .principals
                        .into_iter()
                        .find(|p| p.name == name)
                        .with_context(|| format!("no principal named {name}"))?;
                    Some(quota.over(current.quota.unwrap_or_default()))
                } else {
                    None
                };
                access
                    .update_principal(UpdatePrincipalRequest {
                        name: name.clone(),
                        role: role.map(|r| r.proto() as i32),
                        weight,
                        quota,
                        disabled: (disable || enable).then_some(disable),
                    })
                    .await
                    .with_context(|| format!("updating principal {name}"))?
                    .into_inner()
            }
        };
        emit(settings.json, &principal, NAME, table)
    }
}
