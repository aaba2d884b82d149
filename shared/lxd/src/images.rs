//! Images, by fingerprint (the SHA-256 of a unified tarball).

use std::{path::Path, time::Duration};

use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_stream::StreamExt;

use crate::{Body, Client, LxdError, Result};

impl Client {
    /// Whether an image with this fingerprint is in the store.
    pub async fn has_image(&self, fingerprint: &str) -> Result<bool> {
        match self
            .json(
                http::Method::GET,
                &format!("/1.0/images/{fingerprint}"),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Imports a unified image tarball (streamed from disk) whose fingerprint, the SHA-256 of
    /// the tarball, is `fingerprint`, unless LXD has it already. Two importers racing is fine:
    /// the one that finds the image there after failing succeeds too.
    pub async fn ensure_image(
        &self,
        tarball: &Path,
        fingerprint: &str,
        timeout: Duration,
    ) -> Result<()> {
        if self.has_image(fingerprint).await? {
            return Ok(());
        }
        match self.import_image(tarball, timeout).await {
            Ok(imported) if imported == fingerprint => Ok(()),
            Ok(imported) => Err(LxdError::Operation(format!(
                "the image imported as {imported}, not {fingerprint}"
            ))),
            Err(e) if self.has_image(fingerprint).await.unwrap_or(false) => {
                tracing::debug!(error = %e, "image imported meanwhile by someone else");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn delete_image(&self, fingerprint: &str, timeout: Duration) -> Result<()> {
        match self
            .request(
                http::Method::DELETE,
                &format!("/1.0/images/{fingerprint}"),
                None,
            )
            .await
        {
            Ok(envelope) => self.wait(&envelope.operation, timeout).await.map(drop),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Imports a unified image tarball (streamed from disk); answers its fingerprint, the
    /// SHA-256 of the tarball. LXD refuses an image it already has.
    pub async fn import_image(&self, tarball: &Path, timeout: Duration) -> Result<String> {
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|source| LxdError::File {
                path: tarball.to_owned(),
                source,
            })?;
        let frames =
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|r| r.map(Frame::data));
        let body: Body = BodyExt::boxed(StreamBody::new(frames));
        let envelope = self
            .send(
                http::Method::POST,
                "/1.0/images",
                body,
                "application/octet-stream",
            )
            .await?;
        let operation = self.wait(&envelope.operation, timeout).await?;
        operation["metadata"]["fingerprint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LxdError::Decode("image import answered no fingerprint".into()))
    }
}
