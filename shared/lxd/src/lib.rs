//! A client for LXD's REST API over its unix socket, built on hyper: what a Pirus runner needs
//! and nothing more (server info, images by fingerprint, instances, state changes, detached
//! exec, operations, storage pools and custom volumes). Each call opens its own connection
//! (cheap on a unix socket), so a restarted daemon is picked up by the next call.
//!
//! This crate knows nothing of runs or of the database.
//!
//! Depends on (within Pirus): nothing. Never on: pirus-db, pirus-proto, pirus-server,
//! pirus-catalogue, pirus-runner.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio_stream::StreamExt;

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

/// An instance to create.
#[derive(Clone, Debug, Default)]
pub struct InstanceSpec {
    pub name: String,
    /// Fingerprint of a local image.
    pub image: String,
    /// Instance config (`limits.*`, `user.*`, ...).
    pub config: BTreeMap<String, String>,
    /// Devices by name, each a map of device keys.
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

/// An instance as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct Instance {
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl Instance {
    /// The host uid that the container's root maps to (from `volatile.idmap.next` or, once
    /// started, `volatile.last_state.idmap`).
    pub fn root_host_uid(&self) -> Option<u32> {
        self.uid_range().map(|(first, _)| first)
    }

    /// The host uids the container's uids map to: the first one and how many.
    pub fn uid_range(&self) -> Option<(u32, u32)> {
        let maps = [
            "volatile.idmap.next",
            "volatile.last_state.idmap",
            "volatile.idmap.current",
        ];
        maps.iter()
            .find_map(|key| {
                let list: Vec<Value> = serde_json::from_str(self.config.get(*key)?).ok()?;
                list.iter().find_map(|m| {
                    (m["Isuid"] == true && m["Nsid"] == 0)
                        .then(|| Some((m["Hostid"].as_u64()?, m["Maprange"].as_u64()?)))
                        .flatten()
                })
            })
            .map(|(first, count)| (first as u32, count.min(u64::from(u32::MAX)) as u32))
    }

    /// Whether the container has an id range of its own (`security.idmap.isolated`).
    pub fn isolated(&self) -> bool {
        self.config
            .get("security.idmap.isolated")
            .map(String::as_str)
            == Some("true")
    }
}

/// A custom storage volume as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Live figures of an instance (`GET /1.0/instances/<name>/state`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceState {
    pub status: String,
    pub cpu_seconds: f64,
    pub memory_bytes: i64,
    pub memory_peak_bytes: i64,
    pub processes: i64,
    pub disk_bytes: i64,
}

/// A state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    /// Stop; `force` kills instead of asking init to shut down.
    Stop {
        force: bool,
    },
    Freeze,
    Unfreeze,
}

#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    project: String,
}

#[derive(Deserialize)]
struct Envelope {
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

    /// Creates (does not start) a container from a local image.
    pub async fn create_instance(&self, spec: &InstanceSpec, timeout: Duration) -> Result<()> {
        let body = json!({
            "name": spec.name,
            "type": "container",
            "source": {"type": "image", "fingerprint": spec.image},
            "config": spec.config,
            "devices": spec.devices,
            "profiles": ["default"],
        });
        let envelope = self
            .request(http::Method::POST, "/1.0/instances", Some(body))
            .await?;
        self.wait(&envelope.operation, timeout).await.map(drop)
    }

    /// The devices a profile gives its instances, by name.
    pub async fn profile_devices(
        &self,
        profile: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let v = self
            .json(http::Method::GET, &format!("/1.0/profiles/{profile}"), None)
            .await?;
        serde_json::from_value(v["devices"].clone()).map_err(|e| LxdError::Decode(e.to_string()))
    }

    pub async fn instance(&self, name: &str) -> Result<Option<Instance>> {
        match self
            .json(http::Method::GET, &format!("/1.0/instances/{name}"), None)
            .await
        {
            Ok(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| LxdError::Decode(e.to_string())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every instance of the project, with its config.
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        let v = self
            .json(http::Method::GET, "/1.0/instances?recursion=1", None)
            .await?;
        serde_json::from_value(v).map_err(|e| LxdError::Decode(e.to_string()))
    }

    /// Changes an instance's state and waits for it.
    pub async fn set_state(&self, name: &str, action: Action, timeout: Duration) -> Result<()> {
        let (verb, force) = match action {
            Action::Start => ("start", false),
            Action::Stop { force } => ("stop", force),
            Action::Freeze => ("freeze", false),
            Action::Unfreeze => ("unfreeze", false),
        };
        let body = json!({"action": verb, "timeout": timeout.as_secs().max(1), "force": force});
        let path = format!("/1.0/instances/{name}/state");
        let envelope = self.request(http::Method::PUT, &path, Some(body)).await?;
        self.wait(&envelope.operation, timeout + Duration::from_secs(5))
            .await
            .map(drop)
    }

    /// Stops (by force) and deletes an instance; one that does not exist is fine.
    pub async fn remove_instance(&self, name: &str, timeout: Duration) -> Result<()> {
        match self.instance(name).await? {
            None => return Ok(()),
            Some(i) if i.status != "Stopped" => {
                if i.status == "Frozen" {
                    let _ = self.set_state(name, Action::Unfreeze, timeout).await;
                }
                match self
                    .set_state(name, Action::Stop { force: true }, timeout)
                    .await
                {
                    Err(e) if !e.is_not_found() => {
                        tracing::debug!(error = %e, "stop before delete")
                    }
                    _ => {}
                }
            }
            Some(_) => {}
        }
        match self
            .request(
                http::Method::DELETE,
                &format!("/1.0/instances/{name}"),
                None,
            )
            .await
        {
            Ok(envelope) => self.wait(&envelope.operation, timeout).await.map(drop),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The driver of a storage pool (`dir`, `btrfs`, `zfs`, `lvm`...).
    pub async fn storage_pool_driver(&self, pool: &str) -> Result<String> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/storage-pools/{pool}"),
                None,
            )
            .await?;
        v["driver"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LxdError::Decode(format!("storage pool {pool} has no driver")))
    }

    /// Creates a custom volume of `pool` with `config` (`size`, `user.*`...).
    pub async fn create_volume(
        &self,
        pool: &str,
        name: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<()> {
        let body =
            json!({"name": name, "type": "custom", "content_type": "filesystem", "config": config});
        let path = format!("/1.0/storage-pools/{pool}/volumes/custom");
        let envelope = self.request(http::Method::POST, &path, Some(body)).await?;
        if envelope.operation.is_empty() {
            return Ok(());
        }
        self.wait(&envelope.operation, timeout).await.map(drop)
    }

    /// Deletes a custom volume of `pool`; one that does not exist is fine.
    pub async fn delete_volume(&self, pool: &str, name: &str, timeout: Duration) -> Result<()> {
        let path = format!("/1.0/storage-pools/{pool}/volumes/custom/{name}");
        match self.request(http::Method::DELETE, &path, None).await {
            Ok(envelope) if envelope.operation.is_empty() => Ok(()),
            Ok(envelope) => self.wait(&envelope.operation, timeout).await.map(drop),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The custom volumes of `pool` in this project, with their config.
    pub async fn volumes(&self, pool: &str) -> Result<Vec<Volume>> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/storage-pools/{pool}/volumes/custom?recursion=1"),
                None,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| LxdError::Decode(e.to_string()))
    }

    /// Where the content of a custom volume of a pool that keeps volumes as host folders
    /// (`btrfs`, `dir`) is on this host, once created: LXD's folder (beside its socket),
    /// `storage-pools/<pool>/custom/<project>_<volume>`. A snap-packaged LXD keeps its mounts
    /// in a namespace of its own, so callers check that the folder exists.
    pub fn volume_host_path(&self, pool: &str, name: &str) -> PathBuf {
        let lxd_dir = self.socket.parent().unwrap_or(Path::new("/var/lib/lxd"));
        lxd_dir
            .join("storage-pools")
            .join(pool)
            .join("custom")
            .join(format!("{}_{name}", self.project))
    }

    pub async fn state(&self, name: &str) -> Result<InstanceState> {
        let v = self
            .json(
                http::Method::GET,
                &format!("/1.0/instances/{name}/state"),
                None,
            )
            .await?;
        let disk = v["disk"]
            .as_object()
            .map(|d| d.values().filter_map(|x| x["usage"].as_i64()).sum())
            .unwrap_or(0);
        Ok(InstanceState {
            status: v["status"].as_str().unwrap_or_default().to_owned(),
            cpu_seconds: v["cpu"]["usage"].as_f64().unwrap_or(0.0) / 1e9,
            memory_bytes: v["memory"]["usage"].as_i64().unwrap_or(0),
            memory_peak_bytes: v["memory"]["usage_peak"].as_i64().unwrap_or(0),
            processes: v["processes"].as_i64().unwrap_or(0),
            disk_bytes: disk,
        })
    }

    /// Starts `command` in the instance, detached: no websockets, no recorded output (the
    /// command redirects its own). Answers the operation's path, to wait on if wanted; LXD
    /// forgets it seconds after the command ends, so a caller that must know the exit status
    /// later has the command write it somewhere.
    pub async fn exec_detached(
        &self,
        name: &str,
        command: &[String],
        environment: &BTreeMap<String, String>,
    ) -> Result<String> {
        let body = json!({
            "command": command,
            "environment": environment,
            "wait-for-websocket": false,
            "interactive": false,
            "record-output": false,
        });
        let path = format!("/1.0/instances/{name}/exec");
        let envelope = self.request(http::Method::POST, &path, Some(body)).await?;
        Ok(envelope.operation)
    }

    /// The return code of a finished exec operation; `None` while it runs, or once LXD has
    /// forgotten it (seconds after it ended).
    pub async fn exec_return(&self, operation: &str) -> Result<Option<i32>> {
        match self.json(http::Method::GET, operation, None).await {
            Ok(op) if op["status"] == "Running" || op["status"] == "Pending" => Ok(None),
            Ok(op) => Ok(op["metadata"]["return"].as_i64().map(|c| c as i32)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
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

    async fn json(&self, method: http::Method, path: &str, body: Option<Value>) -> Result<Value> {
        Ok(self.request(method, path, body).await?.metadata)
    }

    async fn request(
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
    async fn send(
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
