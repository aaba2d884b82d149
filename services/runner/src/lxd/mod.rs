//! A client for LXD's REST API over its unix socket, built on hyper. It speaks only what the
//! runner needs; each call opens its own connection (cheap on a unix socket), so a restarted
//! daemon is picked up by the next call.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum LxdError {
    #[error("cannot reach LXD at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("LXD connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("LXD answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from LXD: {0}")]
    Decode(String),
}

/// What `GET /1.0` says of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub server_version: String,
    pub api_version: String,
}

#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    project: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    metadata: serde_json::Value,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_code: u16,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, project: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            project: project.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// `GET /1.0`: the daemon's version, proving it answers.
    pub async fn server_info(&self) -> Result<ServerInfo, LxdError> {
        let metadata = self.request(http::Method::GET, "/1.0", None).await?;
        let environment = &metadata["environment"];
        let field = |v: &serde_json::Value, name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| LxdError::Decode(format!("no {name}")))
        };
        Ok(ServerInfo {
            server_version: field(environment, "server_version")?,
            api_version: field(&metadata, "api_version")?,
        })
    }

    /// One request; answers the `metadata` of a synchronous response, or the API error.
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, LxdError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LxdError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "lxd connection ended");
            }
        });
        let separator = if path.contains('?') { '&' } else { '?' };
        let uri = if self.project == "default" {
            format!("http://lxd{path}")
        } else {
            format!("http://lxd{path}{separator}project={}", self.project)
        };
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "lxd")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| LxdError::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let envelope: Envelope = serde_json::from_slice(&body)
            .map_err(|e| LxdError::Decode(format!("{e} in a {status} answer")))?;
        if status >= 400 || !envelope.error.is_empty() {
            let code = if envelope.error_code != 0 {
                envelope.error_code
            } else {
                status
            };
            return Err(LxdError::Api {
                status: code,
                message: envelope.error,
            });
        }
        Ok(envelope.metadata)
    }
}
