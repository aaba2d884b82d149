//! `pirus run`: runs submitted (configuration typed and checked by the pipeline's form
//! locally first, local inputs uploaded first), listed, watched, controlled, and their
//! outputs read back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pirus_proto::runner::v1::{
    CancelRunRequest, DeleteRunRequest, GetRunRequest, ListRunsRequest, PauseRunRequest,
    PendingReason, ResumeRunRequest, Run as Proto, RunStatus, SubmitRunRequest,
    runner_service_client::RunnerServiceClient,
};

use super::{all_pages, file, find_pipeline, follow, is_id};
use crate::{
    config::Settings,
    connect::{self, Channel},
    download,
    failure::NotQueued,
    output::{Table, ago, emit, emit_list, print_json, short, to_json},
};

const NAME: &str = "pirus.runner.v1.Run";

#[derive(Debug, Subcommand)]
pub enum Run {
    /// Submits a run; with --follow, follows it and exits with its code
    #[command(
        after_help = "Examples:\n  pirus run submit hello --input reads.fq --config threads=4 --follow\n  \
                            pirus run submit hello:1.0.0 --config-file config.json --input 01a2...\n\n\
                            Exit codes with --follow: 0 DONE, the command's own code on ERROR, 1 on \
                            any other failure, 2 if the run could not be queued."
    )]
    Submit(Submit),
    /// Lists runs (yours; operators and admins: every run)
    #[command(after_help = "Example:\n  pirus run list --status running")]
    List {
        /// Only runs in this status (waiting, running, done, error...)
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this pipeline (its id)
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs on this node
        #[arg(long)]
        node: Option<String>,
        /// Only runs of this principal (operators and admins; a user only itself)
        #[arg(long)]
        owner: Option<String>,
    },
    /// Shows a run
    #[command(
        after_help = "Example:\n  pirus run show 01a2...\n  pirus --json run show 01a2... | jq .status"
    )]
    Show { id: String },
    /// Follows a run: status, progress and logs until it ends; exits with its code
    #[command(after_help = "Example:\n  pirus run watch 01a2...")]
    Watch {
        id: String,
        /// Status only, no logs
        #[arg(long)]
        no_logs: bool,
    },
    /// Prints a run's stdout (or stderr); -f follows it until the run ends
    #[command(after_help = "Example:\n  pirus run logs 01a2... -f --stderr")]
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        stderr: bool,
    },
    /// Pauses a running run (its container is frozen)
    #[command(after_help = "Example:\n  pirus run pause 01a2...")]
    Pause { id: String },
    /// Resumes a paused run
    #[command(after_help = "Example:\n  pirus run resume 01a2...")]
    Resume { id: String },
    /// Cancels a run
    #[command(after_help = "Example:\n  pirus run cancel 01a2...")]
    Cancel { id: String },
    /// Removes a run that has ended, with its outputs and logs
    #[command(after_help = "Example:\n  pirus run rm 01a2...")]
    Rm { id: String },
    /// Lists a run's outputs; --download fetches them (resumable, verified)
    #[command(after_help = "Example:\n  pirus run outputs 01a2... --download results/")]
    Outputs {
        id: String,
        /// A folder to download them into (kept relative names, created as needed)
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct Submit {
    /// The pipeline: id, name (its newest READY version) or name:version
    pipeline: String,
    /// A configuration value, typed by the pipeline's form (a.b=v for nested ones); repeatable
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// The configuration as a JSON file (--config values go on top)
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// An input: a local file (uploaded first) or a file id; repeatable
    #[arg(long = "input", value_name = "FILE_OR_ID")]
    inputs: Vec<String>,
    /// A name for the run
    #[arg(long)]
    name: Option<String>,
    /// Queue priority (higher first)
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// A label a node must have to take the run (over the pipeline's); repeatable
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_pair)]
    node_selector: Vec<(String, String)>,
    /// Follow the run until it ends, and exit with its code
    #[arg(long)]
    follow: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

pub(crate) fn table(runs: &[Proto]) {
    let mut table = Table::new(&["ID", "NAME", "STATUS", "PROGRESS", "NODE", "CREATED"]);
    for r in runs {
        let mut status = RunStatus::try_from(r.status)
            .map_or("?".into(), |s| short(s.as_str_name(), "RUN_STATUS_"));
        // A waiting run says why: `waiting (capacity)`.
        if let Ok(reason) = PendingReason::try_from(r.pending_reason)
            && reason != PendingReason::Unspecified
        {
            status = format!(
                "{status} ({})",
                short(reason.as_str_name(), "PENDING_REASON_")
            );
        }
        let progress = r
            .progress
            .as_ref()
            .map_or("-".to_owned(), |p| format!("{:.0}%", p.value * 100.0));
        table.row(vec![
            r.id.clone(),
            r.name.clone(),
            status,
            progress,
            if r.node.is_empty() {
                "-".into()
            } else {
                r.node.clone()
            },
            ago(r.created_at.as_ref()),
        ]);
    }
    table.print();
}

fn show(settings: &Settings, run: &Proto) -> Result<()> {
    emit(settings.json, run, NAME, |runs| {
        table(runs);
        if !run.error_message.is_empty() {
            eprintln!("{}", run.error_message);
        }
        if !run.pending_message.is_empty() {
            eprintln!("waiting: {}", run.pending_message);
        }
    })
}

/// Shows the run a control call answered, or says what failed.
fn controlled(
    settings: &Settings,
    doing: &str,
    id: &str,
    answer: std::result::Result<tonic::Response<Proto>, tonic::Status>,
) -> Result<()> {
    let run = answer.with_context(|| format!("{doing} run {id}"))?;
    show(settings, &run.into_inner())
}

fn status_filter(text: &str) -> Result<i32> {
    let name = format!("RUN_STATUS_{}", text.to_ascii_uppercase());
    RunStatus::from_str_name(&name)
        .map(|s| s as i32)
        .with_context(|| format!("--status: '{text}' is not a run status"))
}

/// Every run `filter` selects, all pages.
async fn list(
    settings: &Settings,
    runner: &RunnerServiceClient<Channel>,
    filter: ListRunsRequest,
) -> Result<()> {
    let runs = all_pages(|page_token| {
        let mut r = runner.clone();
        let request = ListRunsRequest {
            page_token,
            ..filter.clone()
        };
        async move {
            let page = r
                .list_runs(request)
                .await
                .context("listing runs")?
                .into_inner();
            Ok((page.runs, page.next_page_token))
        }
    })
    .await?;
    emit_list(settings.json, &runs, NAME, table)
}

impl Run {
    pub async fn run(self, settings: &Settings) -> Result<u8> {
        if let Run::Submit(submit) = self {
            return submit.run(settings).await;
        }
        let mut runner = connect::runner(settings).await?;
        let get = |id: String| GetRunRequest { id };
        match self {
            Run::Submit(_) => unreachable!("handled above"),
            Run::List {
                status,
                pipeline,
                node,
                owner,
            } => {
                let filter = ListRunsRequest {
                    page_size: 1000,
                    page_token: String::new(),
                    status: status
                        .as_deref()
                        .map(status_filter)
                        .transpose()?
                        .unwrap_or(0),
                    pipeline_id: pipeline.unwrap_or_default(),
                    node: node.unwrap_or_default(),
                    owner: owner.unwrap_or_default(),
                };
                list(settings, &runner, filter).await?;
            }
            Run::Show { id } => {
                let run = runner
                    .get_run(get(id.clone()))
                    .await
                    .with_context(|| format!("run {id}"))?;
                show(settings, &run.into_inner())?;
            }
            Run::Watch { id, no_logs } => {
                return follow::follow(settings, runner, &id, !no_logs).await;
            }
            Run::Logs { id, follow, stderr } => {
                let stream = if stderr { "stderr" } else { "stdout" };
                follow::logs(settings, runner, &id, stream, follow).await?;
            }
            Run::Pause { id } => {
                let answer = runner.pause_run(PauseRunRequest { id: id.clone() }).await;
                controlled(settings, "pausing", &id, answer)?;
            }
            Run::Resume { id } => {
                let answer = runner.resume_run(ResumeRunRequest { id: id.clone() }).await;
                controlled(settings, "resuming", &id, answer)?;
            }
            Run::Cancel { id } => {
                let answer = runner.cancel_run(CancelRunRequest { id: id.clone() }).await;
                controlled(settings, "canceling", &id, answer)?;
            }
            Run::Rm { id } => {
                let answer = runner.delete_run(DeleteRunRequest { id: id.clone() }).await;
                controlled(settings, "deleting", &id, answer)?;
            }
            Run::Outputs { id, download } => {
                let run = runner
                    .get_run(get(id.clone()))
                    .await
                    .with_context(|| format!("run {id}"))?;
                outputs(settings, &run.into_inner(), download.as_deref()).await?;
            }
        }
        Ok(0)
    }
}

async fn outputs(settings: &Settings, run: &Proto, into: Option<&Path>) -> Result<()> {
    let mut catalogue = connect::catalogue(settings).await?;
    let mut files = Vec::new();
    for id in &run.output_file_ids {
        files.push(file::get(&mut catalogue, id).await?);
    }
    if let Some(dir) = into {
        for f in &files {
            let target = dir.join(relative(&f.name));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            download::download(&mut catalogue, f, &target).await?;
        }
    }
    emit_list(
        settings.json,
        &files,
        "pirus.catalogue.v1.File",
        file::table,
    )?;
    Ok(())
}

/// An output's name as a path below the download folder: its components cleaned, never
/// absolute, never `..`.
fn relative(name: &str) -> PathBuf {
    let parts: Vec<String> = name
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .map(|p| {
            if p == ".." {
                "_".to_owned()
            } else {
                file::safe_name(p)
            }
        })
        .collect();
    if parts.is_empty() {
        PathBuf::from("output")
    } else {
        parts.iter().collect()
    }
}

impl Submit {
    async fn run(self, settings: &Settings) -> Result<u8> {
        let follow = self.follow;
        let request = self.request(settings).await.context(NotQueued)?;
        let mut runner = connect::runner(settings).await.context(NotQueued)?;
        let run = runner
            .submit_run(request)
            .await
            .context("submitting the run")
            .context(NotQueued)?
            .into_inner();
        if !follow {
            show(settings, &run)?;
            return Ok(0);
        }
        if settings.json {
            print_json(&to_json(&run, NAME)?);
        } else {
            eprintln!("run {} queued", run.id);
        }
        follow::follow(settings, runner, &run.id, true).await
    }

    /// The request: the pipeline found, local inputs uploaded, the configuration built from
    /// the file and the pairs and checked by the form.
    async fn request(&self, settings: &Settings) -> Result<SubmitRunRequest> {
        let mut catalogue = connect::catalogue(settings).await?;
        let pipeline = find_pipeline(&mut catalogue, &self.pipeline).await?;
        let form: serde_json::Value =
            serde_json::from_str(&pipeline.form_json).unwrap_or(serde_json::Value::Null);
        let mut config = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => anyhow::bail!("{} is not a JSON object", path.display()),
                }
            }
            None => serde_json::Map::new(),
        };
        for pair in &self.config {
            pirus_form::set_pair(&mut config, &form, pair).map_err(|p| anyhow::anyhow!("{p}"))?;
        }
        let config_json = serde_json::Value::Object(config).to_string();
        if form.is_object() {
            // The server's own check, before anything is uploaded or queued.
            if let Err(pirus_form::Invalid::Config(p)) =
                pirus_form::validate(&config_json, &form, pirus_form::Enums::default())
            {
                anyhow::bail!("invalid argument: {p}");
            }
        }
        let mut input_file_ids = Vec::new();
        for input in &self.inputs {
            let id = if is_id(input) && !Path::new(input).exists() {
                input.clone()
            } else {
                file::upload_one(settings, &catalogue, Path::new(input), None).await?
            };
            input_file_ids.push(id);
        }
        Ok(SubmitRunRequest {
            pipeline_id: pipeline.id,
            name: self.name.clone().unwrap_or_default(),
            config_json,
            input_file_ids,
            priority: self.priority,
            node_selector: self.node_selector.iter().cloned().collect(),
            ..Default::default()
        })
    }
}
