//! A client for LXD's REST API over its unix socket, built on hyper: what a Pirus runner needs
//! and nothing more (server info, images by fingerprint, instances, state changes, detached
//! exec, operations, storage pools and custom volumes). Each call opens its own connection
//! (cheap on a unix socket), so a restarted daemon is picked up by the next call.
//!
//! This crate knows nothing of runs or of the database.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-db, pirus-proto, pirus-server,
//! pirus-catalogue, pirus-runner.

mod images;
mod instances;
mod storage;

pub use instances::{Action, Instance, InstanceSpec, InstanceState};
pub use storage::Volume;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
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
    #[error("LXD operation failed: {0}")]
    Operation(String),
    #[error("unexpected answer from LXD: {0}")]
    Decode(String),
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LxdError {
    /// Whether LXD said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LxdError::Api { status: 404, .. })
    }
}

pub type Result<T, E = LxdError> = std::result::Result<T, E>;

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
pub(crate) struct Envelope {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_code: u16,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
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
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let metadata = self.json(http::Method::GET, "/1.0", None).await?;
        let field = |v: &Value, name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| LxdError::Decode(format!("no {name}")))
        };
        Ok(ServerInfo {
            server_version: field(&metadata["environment"], "server_version")?,
            api_version: field(&metadata, "api_version")?,
        })
    }

    /// Waits for an operation; answers it, or its error.
    pub async fn wait(&self, operation: &str, timeout: Duration) -> Result<Value> {
        if operation.is_empty() {
            return Err(LxdError::Decode("no operation to wait for".into()));
        }
        let path = format!("{operation}/wait?timeout={}", timeout.as_secs().max(1));
        let v = self.json(http::Method::GET, &path, None).await?;
        match v["status"].as_str() {
            Some("Success") => Ok(v),
            Some(status) => Err(LxdError::Operation(format!(
                "{status}: {}",
                v["err"].as_str().unwrap_or("no reason given")
            ))),
            None => Err(LxdError::Decode("operation without status".into())),
        }
    }

    pub(crate) async fn json(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        Ok(self.request(method, path, body).await?.metadata)
    }

    pub(crate) async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Envelope> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.send(method, path, full(bytes), "application/json")
            .await
    }

    /// One request; answers the envelope of a sync or async response, or the API error.
    pub(crate) async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<Envelope> {
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
        let uri = if self.project == "default" {
            format!("http://lxd{path}")
        } else {
            let separator = if path.contains('?') { '&' } else { '?' };
            format!("http://lxd{path}{separator}project={}", self.project)
        };
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "lxd")
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| LxdError::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let envelope: Envelope = serde_json::from_slice(&body)
            .map_err(|e| LxdError::Decode(format!("{e} in a {status} answer")))?;
        if status >= 400 || envelope.kind == "error" {
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
        Ok(envelope)
    }
}
