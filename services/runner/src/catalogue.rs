//! The runner's side of the catalogue: images and inputs fetched with ReadFile (verified
//! against their SHA-256), outputs and logs pushed with CreateFile + WriteUpload. Pushing is
//! idempotent: the catalogue answers the existing file for a run, kind and name, and an
//! upload cut short is resumed from its durable offset. Every call carries the runner's own
//! token, or (for reads and deletions made for a client) the client's.

use std::{os::unix::fs::FileExt, path::Path, sync::Arc, time::Duration};

use pirus_auth::{Credential, client::OwnCredential};
use pirus_proto::catalogue::v1::{self as pb, catalogue_service_client::CatalogueServiceClient};
use pirus_server::tls::ClientTls;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::domain::{Error, LogChunk, Result};

const MESSAGE: usize = 1 << 20;
/// How long a read waits for a catalogue at its reader bound.
const READER_BOUND_WAIT: Duration = Duration::from_secs(60);

/// The pause a refusal asks for (gRPC's retry pushback), else 1 s; at most 10 s.
fn retry_pushback(status: &tonic::Status) -> Duration {
    let ms = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms.min(10_000))
}

/// A random pause below `up_to`.
fn jitter(up_to: Duration) -> Duration {
    let nanos = up_to.as_nanos().max(1);
    Duration::from_nanos((Uuid::new_v4().as_u128() % nanos) as u64)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum PushKind {
    Output,
    Log,
}

#[derive(Clone)]
pub(crate) struct Catalogue {
    client: CatalogueServiceClient<Channel>,
    /// The runner's own token.
    credential: OwnCredential,
}

fn unavailable(e: tonic::Status) -> Error {
    // A quota of the run's owner (its outputs would pass it): said as the catalogue said it.
    if e.code() == tonic::Code::ResourceExhausted && e.message().starts_with("quota ") {
        return Error::QuotaExceeded(e.message().to_owned());
    }
    Error::Unavailable(format!(
        "the catalogue answered {:?}: {}",
        e.code(),
        e.message()
    ))
}

/// Gives the verified file `temp` the name `dest` unless `dest` exists, and never replaces it:
/// the cache's files are hard-linked into runs' folders while others may be fetched, and
/// renaming over a file being linked makes that link fail (Linux's link() answers ENOENT for
/// an inode whose last name went meanwhile). Whatever is at `dest` was verified against the
/// same SHA-256 before it got the name, so it is as good as `temp`. `temp` is left to the
/// caller to remove.
async fn publish(temp: &Path, dest: &Path) -> Result<()> {
    match tokio::fs::hard_link(temp, dest).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::internal(format!(
            "link {} -> {}: {e}",
            temp.display(),
            dest.display()
        ))),
    }
}

impl Catalogue {
    /// A client that connects on first use (the catalogue may start after the runner).
    pub(crate) fn connect_lazy(
        tls: &ClientTls,
        addr: &str,
        credential: OwnCredential,
    ) -> Result<Self> {
        let channel = tls
            .endpoint(addr)
            .map_err(|e| Error::invalid("catalogue_addr", e))?
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .connect_lazy();
        Ok(Self {
            client: CatalogueServiceClient::new(channel).max_decoding_message_size(16 << 20),
            credential,
        })
    }

    /// Downloads a file into `dest` (through a temporary file, published once its SHA-256 is
    /// verified). A `dest` already there is kept: see [`publish`].
    pub(crate) async fn fetch(&self, file: Uuid, sha256: &str, dest: &Path) -> Result<()> {
        let folder = dest
            .parent()
            .ok_or_else(|| Error::internal("cache path without folder"))?;
        tokio::fs::create_dir_all(folder).await?;
        let temp = dest.with_extension(format!("part-{}", Uuid::new_v4().simple()));
        let result = self.fetch_into(file, sha256, &temp).await;
        // Readable by run containers (inputs are hard-linked into their folders), whatever
        // the runner's umask.
        let result = match result {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                tokio::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))
                    .await
                    .map_err(Error::from)
            }
            e => e,
        };
        let result = match result {
            Ok(()) => publish(&temp, dest).await,
            e => e,
        };
        let _ = tokio::fs::remove_file(&temp).await;
        result
    }

    async fn fetch_into(&self, file: Uuid, sha256: &str, temp: &Path) -> Result<()> {
        let mut stream = self
            .client
            .clone()
            .read_file(self.credential.get().request(pb::ReadFileRequest {
                file_id: file.to_string(),
                offset: 0,
                limit: 0,
            }))
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

    /// Streams a file's content from `offset` into `tx` as log chunks, read as `caller` (else
    /// as this runner).
    pub(crate) async fn read(
        &self,
        file: Uuid,
        offset: u64,
        caller: &Credential,
        tx: &tokio::sync::mpsc::Sender<Result<LogChunk>>,
    ) -> Result<()> {
        // A broken connection (a burst of readers at a run's end, a restarting catalogue) is
        // tried again a few times, from the offset reached; a catalogue at its reader bound
        // (RESOURCE_EXHAUSTED) is asked again after the pause it names, spread so that the
        // readers it turned away do not all come back at once, for up to a minute.
        let mut offset = offset;
        let mut tries = 0;
        let give_up = tokio::time::Instant::now() + READER_BOUND_WAIT;
        loop {
            let status = match self.read_once(file, &mut offset, caller, tx).await {
                Ok(()) => return Ok(()),
                Err(status) => status,
            };
            let pause = match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown if tries < 3 => {
                    tries += 1;
                    Duration::from_millis(200 << tries)
                }
                tonic::Code::ResourceExhausted if tokio::time::Instant::now() < give_up => {
                    retry_pushback(&status) + jitter(Duration::from_secs(1))
                }
                _ => return Err(unavailable(status)),
            };
            tokio::select! {
                () = tx.closed() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn read_once(
        &self,
        file: Uuid,
        offset: &mut u64,
        caller: &Credential,
        tx: &tokio::sync::mpsc::Sender<Result<LogChunk>>,
    ) -> std::result::Result<(), tonic::Status> {
        let own = self.credential.get();
        let request = caller.or(&own).request(pb::ReadFileRequest {
            file_id: file.to_string(),
            offset: *offset as i64,
            limit: 0,
        });
        let mut stream = self.client.clone().read_file(request).await?.into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            *offset = chunk.offset as u64 + chunk.data.len() as u64;
            let message = LogChunk {
                offset: chunk.offset as u64,
                data: chunk.data,
            };
            if tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Deletes a file of a deleted run as `caller` (else as this runner); one already gone is
    /// fine.
    pub(crate) async fn delete(&self, file: Uuid, caller: &Credential) -> Result<()> {
        let own = self.credential.get();
        let request = caller.or(&own).request(pb::DeleteFileRequest {
            id: file.to_string(),
        });
        match self.client.clone().delete_file(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(unavailable(status)),
        }
    }

    /// Registers the first `size` bytes of `file` (an output or log of `run`, opened through
    /// the run's workspace) and uploads what the catalogue lacks. The bytes are read from the
    /// open handle with positioned reads, never by path: what is hashed is what is sent.
    pub(crate) async fn push(
        &self,
        run: Uuid,
        kind: PushKind,
        name: &str,
        file: std::fs::File,
        size: u64,
    ) -> Result<()> {
        let file = Arc::new(file);
        let sha256 = hash(std::sync::Arc::clone(&file), size).await?;
        let mut client = self.client.clone();
        let created = client
            .create_file(self.credential.get().request(pb::CreateFileRequest {
                filename: name.to_owned(),
                size: size as i64,
                sha256: sha256.clone(),
                kind: match kind {
                    PushKind::Output => pb::FileKind::Output,
                    PushKind::Log => pb::FileKind::Log,
                } as i32,
                source_run_id: run.to_string(),
                ..Default::default()
            }))
            .await
            .map_err(unavailable)?
            .into_inner();
        // The file registered for this run, kind and name must be this one: anything else
        // (registered before by someone else) is never taken as the run's result.
        if !created.sha256.is_empty() && created.sha256 != sha256 {
            return Err(Error::internal(format!(
                "{name}: the catalogue holds another file ({}) as this run's result; refused",
                created.sha256
            )));
        }
        match pb::FileStatus::try_from(created.status) {
            Ok(pb::FileStatus::Ready) => return Ok(()),
            Ok(pb::FileStatus::Error) => {
                return Err(Error::internal(format!(
                    "{name}: the catalogue refused it: {}",
                    created.error_message
                )));
            }
            _ => {}
        }
        let status = client
            .get_upload_status(self.credential.get().request(pb::GetUploadStatusRequest {
                upload_id: created.id.clone(),
            }))
            .await
            .map_err(unavailable)?
            .into_inner();
        if status.complete {
            return Ok(());
        }
        self.upload_from(created.id, file, status.offset as u64, size, name)
            .await
    }

    /// Uploads bytes `start..size` of `file` into upload `id`, a message at a time, read with
    /// positioned reads on the blocking pool.
    async fn upload_from(
        &self,
        id: String,
        file: Arc<std::fs::File>,
        start: u64,
        size: u64,
        name: &str,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let producer = tokio::task::spawn_blocking(move || {
            let mut offset = start;
            loop {
                let want = (size - offset).min(MESSAGE as u64) as usize;
                let mut data = vec![0u8; want];
                file.read_exact_at(&mut data, offset)?;
                let message = pb::WriteUploadRequest {
                    upload_id: id.clone(),
                    offset: offset as i64,
                    data: data.into(),
                    ..Default::default()
                };
                offset += want as u64;
                if tx.blocking_send(message).is_err() || offset >= size {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let written = self
            .client
            .clone()
            .write_upload(
                self.credential
                    .get()
                    .request(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
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

/// SHA-256 of the first `size` bytes of an open (never yet read) file, on the blocking pool;
/// the upload then reads it with positioned reads.
async fn hash(file: Arc<std::fs::File>, size: u64) -> Result<String> {
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let (digest, read) = pirus_server::digest::sha256(&mut std::io::Read::take(&*file, size))?;
        if read != size {
            return Err(std::io::Error::other(format!(
                "the file holds {read} bytes, not {size}"
            )));
        }
        Ok(digest)
    })
    .await
    .map_err(Error::internal)?
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use std::time::Duration;

    use super::{jitter, publish, retry_pushback};

    /// The pause a refusal names is taken (bounded), 1 s when it names none; jitter stays
    /// below its bound and varies.
    #[test]
    fn refusals_are_retried_after_the_pause_they_name() {
        let exhausted = pirus_auth::admission::exhausted("full");
        assert_eq!(retry_pushback(&exhausted), Duration::from_secs(1));
        let mut long = tonic::Status::resource_exhausted("full");
        long.metadata_mut()
            .insert("grpc-retry-pushback-ms", "600000".parse().unwrap());
        assert_eq!(retry_pushback(&long), Duration::from_secs(10));
        let bare = tonic::Status::resource_exhausted("full");
        assert_eq!(retry_pushback(&bare), Duration::from_secs(1));
        let pauses: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| jitter(Duration::from_secs(1))).collect();
        assert!(pauses.iter().all(|p| *p < Duration::from_secs(1)));
        assert!(pauses.len() > 40, "{pauses:?}");
    }

    /// A file already in the cache keeps its inode (a link being made to it cannot fail), and
    /// an absent one gets the new file.
    #[tokio::test]
    async fn publishing_never_replaces_a_cached_file() {
        let dir = std::env::temp_dir().join(format!("pirus-publish-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let (dest, first, second) = (dir.join("sha"), dir.join("a.part"), dir.join("b.part"));
        std::fs::write(&first, b"verified").unwrap();
        std::fs::write(&second, b"verified").unwrap();
        publish(&first, &dest).await.unwrap();
        let inode = std::fs::metadata(&dest).unwrap().ino();
        assert_eq!(inode, std::fs::metadata(&first).unwrap().ino());
        publish(&second, &dest).await.unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&dest).unwrap(), b"verified");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
