//! `pirus file`: data files uploaded (resumable, several at once), listed, read back
//! (resumable, verified) and removed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use pirus_proto::catalogue::v1::{
    CreateFileRequest, DeleteFileRequest, File as Proto, FileKind, FileStatus, GetFileRequest,
    ListFilesRequest,
};

use super::{Catalogue, all_pages, upload};
use crate::{
    config::Settings,
    connect, download,
    output::{Table, ago, emit, emit_list, print_json, short, size, to_json},
    remember::{Entry, Local},
};

const NAME: &str = "pirus.catalogue.v1.File";

#[derive(Debug, Subcommand)]
pub enum File {
    /// Uploads files (one after the other); run the same command again to resume
    #[command(
        after_help = "Examples:\n  pirus file upload reads_1.fq.gz reads_2.fq.gz\n  \
                            pirus file upload big.bam --checksum 64"
    )]
    Upload {
        /// The files
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Send in chunks of this many MiB, each verified by the server (SHA-256)
        #[arg(long, value_name = "MIB")]
        checksum: Option<u64>,
    },
    /// Lists your files (operators and admins: every file)
    #[command(after_help = "Example:\n  pirus file list --run 01a2...")]
    List {
        /// Only the outputs and logs of this run
        #[arg(long)]
        run: Option<String>,
    },
    /// Shows a file
    #[command(after_help = "Example:\n  pirus file show 01a2...")]
    Show {
        /// The file's id
        id: String,
    },
    /// Downloads a file (resumable; verified against its SHA-256)
    #[command(after_help = "Example:\n  pirus file download 01a2... -o reads.fq.gz")]
    Download {
        /// The file's id
        id: String,
        /// Where to write it [default: its name, in the current folder]
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Removes a file
    #[command(after_help = "Example:\n  pirus file rm 01a2...")]
    Rm {
        /// The file's id
        id: String,
    },
}

pub(crate) fn table(files: &[Proto]) {
    let mut table = Table::new(&["ID", "NAME", "KIND", "STATUS", "SIZE", "CREATED"]);
    for f in files {
        let kind =
            FileKind::try_from(f.kind).map_or("?".into(), |k| short(k.as_str_name(), "FILE_KIND_"));
        let status = FileStatus::try_from(f.status)
            .map_or("?".into(), |s| short(s.as_str_name(), "FILE_STATUS_"));
        table.row(vec![
            f.id.clone(),
            f.name.clone(),
            kind,
            status,
            size(f.size),
            ago(f.created_at.as_ref()),
        ]);
    }
    table.print();
}

pub(crate) async fn get(catalogue: &mut Catalogue, id: &str) -> Result<Proto> {
    Ok(catalogue
        .get_file(GetFileRequest { id: id.to_owned() })
        .await
        .with_context(|| format!("file {id}"))?
        .into_inner())
}

/// Uploads one local file as a data file; answers its id.
pub(crate) async fn upload_one(
    settings: &Settings,
    catalogue: &Catalogue,
    path: &std::path::Path,
    checksum: Option<u64>,
) -> Result<String> {
    let local = Local::of(path, "file", &settings.catalogue)?;
    let mut create = catalogue.clone();
    let request = CreateFileRequest {
        filename: local.name(),
        size: local.size as i64,
        ..Default::default()
    };
    upload(
        settings,
        &local,
        checksum.map(|mib| mib.max(1) << 20),
        || async move {
            let f = create
                .create_file(request)
                .await
                .context("announcing the file")?
                .into_inner();
            Ok(Entry {
                id: f.id,
                url: f.upload_url,
            })
        },
    )
    .await
}

impl File {
    pub async fn run(self, settings: &Settings) -> Result<()> {
        let mut catalogue = connect::catalogue(settings).await?;
        match self {
            File::Upload { paths, checksum } => {
                let mut files = Vec::new();
                for path in &paths {
                    let id = upload_one(settings, &catalogue, path, checksum).await?;
                    files.push(get(&mut catalogue, &id).await?);
                }
                emit_list(settings.json, &files, NAME, table)?;
            }
            File::List { run } => {
                let files = all_pages(|page_token| {
                    let mut c = catalogue.clone();
                    let run = run.clone().unwrap_or_default();
                    async move {
                        let r = c
                            .list_files(ListFilesRequest {
                                page_size: 1000,
                                page_token,
                                source_run_id: run,
                                ..Default::default()
                            })
                            .await
                            .context("listing files")?
                            .into_inner();
                        Ok((r.files, r.next_page_token))
                    }
                })
                .await?;
                emit_list(settings.json, &files, NAME, table)?;
            }
            File::Show { id } => {
                let f = get(&mut catalogue, &id).await?;
                emit(settings.json, &f, NAME, table)?;
            }
            File::Download { id, output } => {
                let f = get(&mut catalogue, &id).await?;
                let target = output.unwrap_or_else(|| PathBuf::from(safe_name(&f.name)));
                download::download(&mut catalogue, &f, &target).await?;
                if settings.json {
                    print_json(&to_json(&f, NAME)?);
                }
            }
            File::Rm { id } => {
                let f = catalogue
                    .delete_file(DeleteFileRequest { id: id.clone() })
                    .await
                    .with_context(|| format!("deleting file {id}"))?
                    .into_inner();
                emit(settings.json, &f, NAME, table)?;
            }
        }
        Ok(())
    }
}

/// A local name for a file of the catalogue: its last path component, never `..` or empty
/// (a file's name is whatever its uploader said).
pub(crate) fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    match base {
        "" | "." | ".." => "download".to_owned(),
        other => other
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect(),
    }
}
