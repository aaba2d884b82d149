//! Instances: creation, state, detached exec, removal.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Client, LxdError, Result};

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

impl Client {
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
        // After a failed start LXD cleans up with a stop operation of its own, and refuses a
        // delete ("Instance is busy running a "stop" operation") until it ends: try again.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let path = format!("/1.0/instances/{name}");
            let result = match self.request(http::Method::DELETE, &path, None).await {
                Ok(envelope) => self.wait(&envelope.operation, timeout).await.map(drop),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e)
                    if e.to_string().contains("is busy running")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
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
}
