//! The project's own tus 1.0 client, on hyper: HEAD for an upload's offset, and PATCH of a
//! file's bytes from that offset, streamed in one request (as `curl -T` does) or, with
//! per-chunk checksums, one request per chunk. One connection per upload, plaintext or TLS
//! with the same trust as the gRPC calls. The upload itself is created over gRPC
//! (CreateFile, CreatePipeline), which answers its tus URL.

use std::{io::SeekFrom, path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::progress::Progress;

type Body = BoxBody<Bytes, std::io::Error>;

/// Bytes read from the file per frame of a streamed PATCH.
const READ: usize = 1 << 20;

/// The server refused a PATCH because another transfer still holds the upload (423): the
/// previous one, cut off, until the server notices; worth trying again shortly.
#[derive(Debug)]
pub(crate) struct Locked;

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another transfer of this upload is still running on the server")
    }
}

impl std::error::Error for Locked {}

/// The connection broke during a PATCH (the server may have refused it and closed, or the
/// network failed): the server's offset tells where to go on.
#[derive(Debug)]
pub(crate) struct Cut(String);

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the connection broke: {}", self.0)
    }
}

impl std::error::Error for Cut {}

pub(crate) struct Tus {
    sender: SendRequest<Body>,
    authorization: Option<String>,
}

/// Where an upload stands on the server.
pub(crate) struct Offset {
    pub offset: u64,
    pub length: Option<u64>,
}

impl Tus {
    /// Opens a connection to the host of `url`.
    pub(crate) async fn connect(
        url: &str,
        tls: impl FnOnce() -> Result<Arc<rustls::ClientConfig>>,
        token: Option<&str>,
    ) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("'{url}' is not a URL"))?;
        let host = uri.host().context("the upload URL has no host")?.to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot reach {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let sender = if https {
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .with_context(|| format!("'{host}' is not a TLS server name"))?;
            let stream = tokio_rustls::TlsConnector::from(tls()?)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with {host}:{port}"))?;
            handshake(stream).await?
        } else {
            handshake(tcp).await?
        };
        Ok(Self {
            sender,
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    fn request(&self, method: &str, url: &str) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header("tus-resumable", "1.0.0");
        if let Some(auth) = &self.authorization {
            builder = builder.header("authorization", auth);
        }
        builder
    }

    /// The upload's offset and length (`None`: the upload is gone).
    pub(crate) async fn head(&mut self, url: &str) -> Result<Option<Offset>> {
        let request = self
            .request("HEAD", url)
            .body(Empty::new().map_err(|never| match never {}).boxed())?;
        let response = self.sender.send_request(request).await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
            s if s.is_success() => Ok(Some(Offset {
                offset: header_u64(&response, "upload-offset")
                    .context("the server answered no Upload-Offset")?,
                length: header_u64(&response, "upload-length"),
            })),
            s => bail!("HEAD {url}: {s}"),
        }
    }

    /// Sends `path`'s bytes from `start` to `total`, in one streamed PATCH, or in PATCHes of
    /// `chunk` bytes each carrying its SHA-256 (the tus checksum extension). Answers the
    /// upload's offset after it.
    pub(crate) async fn send(
        &mut self,
        url: &str,
        path: &Path,
        start: u64,
        total: u64,
        chunk: Option<u64>,
        progress: &mut Progress,
    ) -> Result<u64> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.seek(SeekFrom::Start(start)).await?;
        let mut offset = start;
        while offset < total {
            let end = chunk.map_or(total, |c| (offset + c).min(total));
            let (body, checksum) = match chunk {
                None => (streamed(file, progress.handle(), offset), None),
                Some(_) => {
                    let mut buffer = vec![0; (end - offset) as usize];
                    file.read_exact(&mut buffer).await?;
                    let digest = Sha256::digest(&buffer);
                    let sum = base64::engine::general_purpose::STANDARD.encode(digest);
                    (
                        Full::new(Bytes::from(buffer))
                            .map_err(|never| match never {})
                            .boxed(),
                        Some(sum),
                    )
                }
            };
            let mut request = self
                .request("PATCH", url)
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", offset)
                .header("content-length", end - offset);
            if let Some(sum) = checksum {
                request = request.header("upload-checksum", format!("sha256 {sum}"));
            }
            let response = self
                .sender
                .send_request(request.body(body)?)
                .await
                .map_err(|e| Cut(e.to_string()))?;
            let status = response.status();
            if status == StatusCode::LOCKED {
                bail!(Locked);
            }
            if status != StatusCode::NO_CONTENT {
                let text = response.into_body().collect().await.map(|b| b.to_bytes());
                let text = text.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
                bail!("PATCH refused ({status}): {}", text.unwrap_or_default());
            }
            offset = header_u64(&response, "upload-offset").context("no Upload-Offset")?;
            progress.set(offset);
            if chunk.is_none() {
                break;
            }
            file = reopen(path, offset).await?;
        }
        Ok(offset)
    }
}

async fn reopen(path: &Path, offset: u64) -> Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(file)
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Body>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn header_u64<B>(response: &http::Response<B>, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The rest of `file` as a streamed body, read in 1 MiB frames by a task of its own; the
/// position of each frame handed to the connection goes to `progress`.
fn streamed(mut file: tokio::fs::File, progress: crate::progress::Handle, start: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Frame<Bytes>>>(4);
    tokio::spawn(async move {
        let mut position = start;
        loop {
            let mut buffer = vec![0; READ];
            match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    buffer.truncate(n);
                    position += n as u64;
                    if tx.send(Ok(Frame::data(Bytes::from(buffer)))).await.is_err() {
                        break;
                    }
                    progress.set(position);
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    BodyExt::boxed(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}
