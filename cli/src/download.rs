//! Ranged, resumable downloads (ReadFile) into `<target>.part`, verified against the file's
//! SHA-256 before they take their name: an interrupted download continues from the partial
//! file's length, and a corrupted one never looks finished.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pirus_proto::catalogue::v1::{File, ReadFileRequest};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use crate::{connect::Channel, output::size, progress::Progress};

type Catalogue =
    pirus_proto::catalogue::v1::catalogue_service_client::CatalogueServiceClient<Channel>;

fn partial(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// The digest of what the partial file already holds.
async fn hash_prefix(part: &Path) -> Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut file = tokio::fs::File::open(part).await?;
    let mut buffer = vec![0; 1 << 20];
    let mut length = 0;
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
    Ok((hasher, length))
}

/// Downloads `file` to `target`, resuming a partial download left there.
pub(crate) async fn download(catalogue: &mut Catalogue, file: &File, target: &Path) -> Result<()> {
    let part = partial(target);
    let total = file.size.max(0) as u64;
    let (mut hasher, mut position) = match tokio::fs::metadata(&part).await {
        Ok(meta) if meta.len() <= total => hash_prefix(&part).await?,
        _ => (Sha256::new(), 0),
    };
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    if position == 0 {
        out.set_len(0).await?;
    }
    let mut progress = Progress::new(&file.name, total, position);
    let request = ReadFileRequest {
        file_id: file.id.clone(),
        offset: position as i64,
        limit: 0,
    };
    let mut stream = catalogue
        .read_file(request)
        .await
        .with_context(|| format!("reading file {}", file.id))?
        .into_inner();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| {
            format!(
                "the download of {} was cut at {}; run the same command again to resume",
                file.name,
                size(position as i64)
            )
        })?;
        if chunk.offset as u64 != position {
            bail!(
                "the server sent bytes at {} where {position} was expected",
                chunk.offset
            );
        }
        out.write_all(&chunk.data).await?;
        hasher.update(&chunk.data);
        position += chunk.data.len() as u64;
        progress.set(position);
    }
    out.sync_all().await?;
    drop(out);
    let digest = hex::encode(hasher.finalize());
    if position != total || (!file.sha256.is_empty() && digest != file.sha256) {
        let _ = tokio::fs::remove_file(&part).await;
        progress.finish("failed verification");
        bail!(
            "the download of {} does not match the file ({} of {} bytes, SHA-256 {digest}, \
             expected {}); the partial file was removed: download again",
            file.name,
            position,
            total,
            file.sha256
        );
    }
    tokio::fs::rename(&part, target)
        .await
        .with_context(|| format!("cannot name {}", target.display()))?;
    progress.finish("downloaded and verified");
    Ok(())
}
