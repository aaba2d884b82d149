//! The runner's side of the catalogue: images and inputs fetched with ReadFile (verified
//! against their SHA-256), outputs and logs pushed with CreateFile + WriteUpload. Pushing is
//! idempotent: the catalogue answers the existing file for a run, kind and name, and an
//! upload cut short is resumed from its durable offset.

use std::path::Path;

use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::domain::{Error, Result};

const MESSAGE: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub enum PushKind {
    Output,
    Log,
}

#[derive(Clone)]
pub struct Catalogue {
    client: CatalogueServiceClient<Channel>,
}

fn unavailable(e: tonic::Status) -> Error {
    Error::Unavailable(format!(
        "the catalogue answered {:?}: {}",
        e.code(),
        e.message()
    ))
}

impl Catalogue {
    /// A client that connects on first use (the catalogue may start after the runner).
    pub fn connect_lazy(addr: &str) -> Result<Self> {
        let channel = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| Error::invalid("catalogue_addr", e.to_string()))?
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .connect_lazy();
        Ok(Self {
            client: CatalogueServiceClient::new(channel).max_decoding_message_size(16 << 20),
        })
    }

    /// Downloads a file into `dest` (through a temporary file, renamed once its SHA-256 is
    /// verified).
    pub async fn fetch(&self, file: Uuid, sha256: &str, dest: &Path) -> Result<()> {
        let folder = dest
            .parent()
            .ok_or_else(|| Error::internal("cache path without folder"))?;
        tokio::fs::create_dir_all(folder).await?;
        let temp = dest.with_extension(format!("part-{}", Uuid::new_v4().simple()));
        let result = self.fetch_into(file, sha256, &temp).await;
        match result {
            Ok(()) => tokio::fs::rename(&temp, dest)
                .await
                .map_err(|e| Error::internal(format!("rename to {}: {e}", dest.display()))),
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(e)
            }
        }
    }

    async fn fetch_into(&self, file: Uuid, sha256: &str, temp: &Path) -> Result<()> {
        let mut stream = self
            .client
            .clone()
            .read_file(pb::ReadFileRequest {
                file_id: file.to_string(),
                offset: 0,
                limit: 0,
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        let mut out = tokio::fs::File::create(temp)
            .await
            .map_err(|e| Error::internal(format!("{}: {e}", temp.display())))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unavailable)?;
            hasher.update(&chunk.data);
            out.write_all(&chunk.data).await?;
        }
        out.sync_all().await?;
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            return Err(Error::internal(format!(
                "file {file} arrived with sha256 {got}, not {sha256}"
            )));
        }
        Ok(())
    }

    /// Streams a file's content from `offset` into `tx` as log chunks.
    pub async fn read(
        &self,
        file: Uuid,
        offset: u64,
        tx: &tokio::sync::mpsc::Sender<Result<pirus_proto::runner::v1::LogChunk, tonic::Status>>,
    ) -> Result<()> {
        let mut stream = self
            .client
            .clone()
            .read_file(pb::ReadFileRequest {
                file_id: file.to_string(),
                offset: offset as i64,
                limit: 0,
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unavailable)?;
            let message = pirus_proto::runner::v1::LogChunk {
                offset: chunk.offset,
                data: chunk.data,
            };
            if tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Deletes a file of a deleted run; one already gone is fine.
    pub async fn delete(&self, file: Uuid) -> Result<()> {
        match self
            .client
            .clone()
            .delete_file(pb::DeleteFileRequest {
                id: file.to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(unavailable(status)),
        }
    }

    /// Registers `path` as an output or log of `run` and uploads what the catalogue lacks.
    pub async fn push(&self, run: Uuid, kind: PushKind, name: &str, path: &Path) -> Result<()> {
        let size = tokio::fs::metadata(path).await?.len();
        let sha256 = hash(path).await?;
        let mut client = self.client.clone();
        let file = client
            .create_file(pb::CreateFileRequest {
                filename: name.to_owned(),
                size: size as i64,
                sha256: sha256.clone(),
                kind: match kind {
                    PushKind::Output => pb::FileKind::Output,
                    PushKind::Log => pb::FileKind::Log,
                } as i32,
                source_run_id: run.to_string(),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        match pb::FileStatus::try_from(file.status) {
            Ok(pb::FileStatus::Ready) => return Ok(()),
            Ok(pb::FileStatus::Error) => {
                return Err(Error::internal(format!(
                    "{name}: the catalogue refused it: {}",
                    file.error_message
                )));
            }
            _ => {}
        }
        let status = client
            .get_upload_status(pb::GetUploadStatusRequest {
                upload_id: file.id.clone(),
            })
            .await
            .map_err(unavailable)?
            .into_inner();
        if status.complete {
            return Ok(());
        }
        let mut reader = tokio::fs::File::open(path).await?;
        reader.seek_to(status.offset as u64).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let id = file.id.clone();
        let producer = tokio::spawn(async move {
            let mut offset = status.offset;
            loop {
                let mut data = vec![0u8; MESSAGE];
                let n = read_full(&mut reader, &mut data).await?;
                data.truncate(n);
                let last = n < MESSAGE;
                let message = pb::WriteUploadRequest {
                    upload_id: id.clone(),
                    offset,
                    data: data.into(),
                };
                offset += n as i64;
                if tx.send(message).await.is_err() || last {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let written = client
            .write_upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(unavailable)?
            .into_inner();
        producer.await.map_err(Error::internal)??;
        if !written.complete {
            return Err(Error::internal(format!(
                "{name}: the upload ended at {} of {size} bytes",
                written.offset
            )));
        }
        Ok(())
    }
}

trait SeekTo {
    async fn seek_to(&mut self, offset: u64) -> std::io::Result<()>;
}

impl SeekTo for tokio::fs::File {
    async fn seek_to(&mut self, offset: u64) -> std::io::Result<()> {
        use tokio::io::AsyncSeekExt;
        self.seek(std::io::SeekFrom::Start(offset)).await.map(drop)
    }
}

async fn read_full(reader: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

async fn hash(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                return Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buffer[..n]);
        }
    })
    .await
    .map_err(Error::internal)?
    .map_err(Into::into)
}
