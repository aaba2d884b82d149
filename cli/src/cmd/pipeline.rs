//! `pirus pipeline`: packages uploaded and installed (admins), pipelines listed and read.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use pirus_proto::catalogue::v1::{
    CreatePipelineRequest, DeletePipelineRequest, GetPipelineRequest, ListPipelinesRequest,
    Pipeline as Proto, PipelineStatus,
};

use super::{Catalogue, all_pages, find_pipeline, upload};
use crate::{
    config::Settings,
    connect,
    output::{Table, ago, emit, emit_list, print_line, short, size},
    remember::{Entry, Local},
};

const NAME: &str = "pirus.catalogue.v1.Pipeline";

#[derive(Debug, Subcommand)]
pub enum Pipeline {
    /// Uploads a package (resumable) and waits for its install (admins)
    #[command(after_help = "Example:\n  pirus pipeline upload hello-1.0.tar.gz")]
    Upload {
        /// The package: .zip, .tar.gz or .tar.bz2
        package: PathBuf,
        /// Do not wait for the install to end
        #[arg(long)]
        no_wait: bool,
    },
    /// Lists pipelines (users see READY ones)
    #[command(after_help = "Example:\n  pirus pipeline list --json")]
    List,
    /// Shows a pipeline: by id, name (newest READY version) or name:version
    #[command(after_help = "Example:\n  pirus pipeline show hello:1.0.0")]
    Show {
        /// Id, name or name:version
        pipeline: String,
    },
    /// Prints a pipeline's run-configuration form (a JSON Schema)
    #[command(after_help = "Example:\n  pirus pipeline form hello")]
    Form {
        /// Id, name or name:version
        pipeline: String,
    },
    /// Uninstalls a pipeline (admins)
    #[command(after_help = "Example:\n  pirus pipeline rm hello:1.0.0")]
    Rm {
        /// Id, name or name:version
        pipeline: String,
    },
}

fn status(p: &Proto) -> String {
    PipelineStatus::try_from(p.status).map_or("?".to_owned(), |s| {
        short(s.as_str_name(), "PIPELINE_STATUS_")
    })
}

fn table(pipelines: &[Proto]) {
    let mut table = Table::new(&["ID", "NAME", "VERSION", "STATUS", "SIZE", "CREATED"]);
    for p in pipelines {
        table.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.version.clone(),
            status(p),
            size(p.size),
            ago(p.created_at.as_ref()),
        ]);
    }
    table.print();
}

fn show(settings: &Settings, p: &Proto) -> Result<()> {
    emit(settings.json, p, NAME, |pipelines| {
        table(pipelines);
        if !p.error_message.is_empty() {
            eprintln!("install failed:\n{}", p.error_message);
        }
    })
}

/// Polls a pipeline until its install ends.
async fn installed(catalogue: &mut Catalogue, id: &str) -> Result<Proto> {
    loop {
        let p = catalogue
            .get_pipeline(GetPipelineRequest { id: id.to_owned() })
            .await
            .with_context(|| format!("pipeline {id}"))?
            .into_inner();
        match PipelineStatus::try_from(p.status) {
            Ok(PipelineStatus::Ready | PipelineStatus::Error) => return Ok(p),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

impl Pipeline {
    pub async fn run(self, settings: &Settings) -> Result<()> {
        let mut catalogue = connect::catalogue(settings).await?;
        match self {
            Pipeline::Upload { package, no_wait } => {
                let local = Local::of(&package, "pipeline", &settings.catalogue)?;
                let mut create = catalogue.clone();
                let request = CreatePipelineRequest {
                    filename: local.name(),
                    size: local.size as i64,
                    ..Default::default()
                };
                let id = upload(settings, &local, None, || async move {
                    let p = create
                        .create_pipeline(request)
                        .await
                        .context("announcing the package")?
                        .into_inner();
                    Ok(Entry {
                        id: p.id,
                        url: p.upload_url,
                    })
                })
                .await?;
                let p = if no_wait {
                    find_pipeline(&mut catalogue, &id).await?
                } else {
                    installed(&mut catalogue, &id).await?
                };
                show(settings, &p)?;
                if PipelineStatus::try_from(p.status) == Ok(PipelineStatus::Error) {
                    bail!("the package did not install");
                }
            }
            Pipeline::List => {
                let pipelines = all_pages(|page_token| {
                    let mut c = catalogue.clone();
                    async move {
                        let r = c
                            .list_pipelines(ListPipelinesRequest {
                                page_size: 1000,
                                page_token,
                                ..Default::default()
                            })
                            .await
                            .context("listing pipelines")?
                            .into_inner();
                        Ok((r.pipelines, r.next_page_token))
                    }
                })
                .await?;
                emit_list(settings.json, &pipelines, NAME, table)?;
            }
            Pipeline::Show { pipeline } => {
                let p = find_pipeline(&mut catalogue, &pipeline).await?;
                show(settings, &p)?;
            }
            Pipeline::Form { pipeline } => {
                let p = find_pipeline(&mut catalogue, &pipeline).await?;
                let form: serde_json::Value = serde_json::from_str(&p.form_json)
                    .with_context(|| format!("pipeline {} has no form yet", p.id))?;
                print_line(&serde_json::to_string_pretty(&form)?);
            }
            Pipeline::Rm { pipeline } => {
                let p = find_pipeline(&mut catalogue, &pipeline).await?;
                let deleted = catalogue
                    .delete_pipeline(DeletePipelineRequest { id: p.id.clone() })
                    .await
                    .with_context(|| format!("deleting pipeline {}", p.id))?
                    .into_inner();
                show(settings, &deleted)?;
            }
        }
        Ok(())
    }
}
