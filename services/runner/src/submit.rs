//! SubmitRun: validates a run against its pipeline and queues it.
//!
//! The configuration is parsed, completed with the form's defaults, and validated against the
//! form (JSON Schema 2020-12), with the legacy placeholder enums (`x-pirus-enum`) resolved:
//! `input_files` to the run's sanitised input names, `databases` to the node's reference
//! databases. A problem is INVALID_ARGUMENT naming the field (`config_json.threads: ...`).

use std::{collections::HashMap, path::Path, time::Duration};

use pirus_db::views::{self, FileState, FileView, PipelineState, PipelineView};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    domain::{Error, NewRun, Plan, Requested, Result, Run},
    inputs::input_names,
    limits::{Limits, excess},
    placement::{self, Labels},
    store::{RunInsert, Stores},
};

/// Inputs of one run at most: each is fetched, cached and linked, and named in linear time.
pub(crate) const MAX_INPUTS: usize = 1000;

/// Queues a run, or answers the run an earlier submission (by the same owner) with the same
/// `request_id` queued. With `inputs_of`, every input must be that accessor's file (another's
/// is reported as not found).
pub(crate) async fn submit(
    stores: &Stores,
    databases_dir: Option<&Path>,
    new: NewRun,
    inputs_of: Option<Uuid>,
) -> Result<Run> {
    if new.input_file_ids.len() > MAX_INPUTS {
        return Err(Error::invalid(
            "input_file_ids",
            format!(
                "{} inputs; a run takes at most {MAX_INPUTS}",
                new.input_file_ids.len()
            ),
        ));
    }
    if let Some(request_id) = &new.request_id
        && let Some(run) = stores.runs.by_request_id(request_id, new.owner).await?
    {
        return same_submission(request_id, &new, run);
    }
    let pipeline = ready_pipeline(stores, new.pipeline_id).await?;

    let Checked {
        requested,
        node_selector,
    } = checked_request(stores, &new.requested, &new.node_selector, &pipeline).await?;
    let manifest = pipeline.manifest.as_ref().unwrap_or(&Value::Null);
    let plan = Plan::pipeline(manifest).ok_or_else(|| {
        Error::FailedPrecondition(format!("pipeline {} has no run command", pipeline.id))
    })?;

    let names = input_names(
        &input_file_names(
            stores,
            &new.input_file_ids,
            inputs_of,
            |i| format!("input_file_ids[{i}]"),
            // NOT_FOUND, as for any other missing resource.
            |field, id| Error::NotFound(format!("{field}: file {id}")),
        )
        .await?,
    );

    let databases = databases_dir.map(list_databases).unwrap_or_default();
    let form = pipeline
        .form
        .clone()
        .unwrap_or_else(|| serde_json::json!({"type": "object"}));
    let config = validate_config(&new.config_json, &form, &names, &databases)?;

    let id = Uuid::now_v7();
    let run = stores
        .runs
        .insert(RunInsert {
            id,
            name: run_name(&new.name, &pipeline)?,
            config,
            input_file_ids: new.input_file_ids.clone(),
            priority: new.priority,
            request_id: new.request_id.clone(),
            requested,
            max_attempts: new.max_attempts.map(|m| m.max(1) as i32).unwrap_or(1),
            pipeline,
            owner: new.owner,
            plan,
            tes: None,
            node_selector,
        })
        .await?;
    // Another run: a concurrent submission with the same key won the insert.
    match &new.request_id {
        Some(request_id) if run.id != id => same_submission(request_id, &new, run),
        _ => Ok(run),
    }
}

/// The READY pipeline `id` (NOT_FOUND, or FAILED_PRECONDITION when it is not ready).
async fn ready_pipeline(stores: &Stores, id: Uuid) -> Result<PipelineView> {
    let pipeline = views::pipeline(stores.db(), id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("pipeline {id}")))?;
    if pipeline.state != PipelineState::Ready {
        return Err(Error::FailedPrecondition(format!(
            "pipeline {} is not ready (it is {})",
            pipeline.id,
            pipeline.state.as_str()
        )));
    }
    Ok(pipeline)
}

/// What a run asks of a node: its resources and its node selector.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub requested: Requested,
    pub node_selector: Labels,
}

/// What a run asks of a node, its own request and selector completed from its pipeline's
/// manifest; refused when no registered node could ever take it (none matches the selector,
/// or every matching one is too small). Every edge checks this before it queues.
pub(crate) async fn checked_request(
    stores: &Stores,
    asked: &Requested,
    selector: &Labels,
    pipeline: &PipelineView,
) -> Result<Checked> {
    let manifest = pipeline.manifest.as_ref().unwrap_or(&Value::Null);
    let requested = requested(asked, manifest);
    let mut node_selector: Labels =
        serde_json::from_value(manifest["node_selector"].clone()).unwrap_or_default();
    node_selector.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
    placement::check("node_selector", &node_selector)
        .map_err(|problems| Error::invalid("node_selector", problems.join("; ")))?;
    let nodes = stores.nodes.placements().await?;
    let matching: Vec<&placement::Placement> = nodes
        .iter()
        .filter(|n| placement::matches(&n.labels, &node_selector))
        .collect();
    if !nodes.is_empty()
        && let Some((field, message)) = placement::unmatched(
            &node_selector,
            &nodes.iter().map(|n| &n.labels).collect::<Vec<_>>(),
        )
    {
        return Err(Error::InvalidArgument { field, message });
    }
    fits_a_node(&requested, asked, &stores.nodes.largest_runs().await?)?;
    let capacities: Vec<placement::Capacity> = matching.iter().map(|n| n.capacity).collect();
    if let Some((field, why)) = placement::too_large(
        requested.cpus,
        requested.memory_bytes,
        requested.disk_bytes,
        &capacities,
    ) {
        return Err(Error::invalid(field, why));
    }
    Ok(Checked {
        requested,
        node_selector,
    })
}

/// The run an earlier (or concurrent) submission with this `request_id` queued, when this one
/// asks for the same run (the same pipeline and inputs, and a configuration the queued one holds: it has
/// the form's defaults added); a key reused for another run is ALREADY_EXISTS, naming the key
/// and what differs.
fn same_submission(request_id: &str, new: &NewRun, run: Run) -> Result<Run> {
    let mut differs = Vec::new();
    if new.pipeline_id != run.pipeline_id {
        differs.push("pipeline_id");
    }
    if new.input_file_ids != run.input_file_ids {
        differs.push("input_file_ids");
    }
    let asked: serde_json::Value = match new.config_json.trim() {
        "" => serde_json::json!({}),
        text => serde_json::from_str(text).unwrap_or(serde_json::Value::Null),
    };
    let same_config = asked.as_object().is_some_and(|asked| {
        asked
            .iter()
            .all(|(k, v)| run.config.get(k).is_some_and(|held| held == v))
    });
    if !same_config {
        differs.push("config_json");
    }
    match pirus_server::paging::reused_key(request_id, "run", run.id, &differs) {
        None => Ok(run),
        Some(message) => Err(Error::AlreadyExists(message)),
    }
}

/// The names of a run's input files, in order; every id must name an existing file (of
/// `owner`, if given: another user's file is missing to this caller) that did not fail its
/// upload. `field` names the request field of the i-th id; `missing` is the error for one
/// that is missing.
pub(crate) async fn input_file_names(
    stores: &Stores,
    ids: &[Uuid],
    owner: Option<Uuid>,
    field: impl Fn(usize) -> String,
    missing: impl Fn(String, Uuid) -> Error,
) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let files: HashMap<Uuid, FileView> = views::files(stores.db(), ids)
        .await?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    let mut names = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let file = files
            .get(id)
            .filter(|f| owner.is_none() || f.owner == owner)
            .ok_or_else(|| missing(field(i), *id))?;
        if file.state == FileState::Error {
            return Err(Error::invalid(
                &field(i),
                format!("file {id} failed its upload"),
            ));
        }
        names.push(file.name.clone());
    }
    Ok(names)
}

/// The run's name: as asked (trimmed, bounded, no control characters), else the pipeline's
/// name and version.
pub(crate) fn run_name(asked: &str, pipeline: &PipelineView) -> Result<String> {
    if asked.trim().is_empty() {
        Ok(format!("{} {}", pipeline.name, pipeline.version))
    } else if asked.len() > 256 || asked.chars().any(char::is_control) {
        Err(Error::invalid(
            "name",
            "must be at most 256 characters, without control characters",
        ))
    } else {
        Ok(asked.trim().to_owned())
    }
}

/// What the run asks for: its request, else its pipeline's manifest (`resources` and `timeout`),
/// else nothing (the claiming node's defaults).
fn requested(request: &Requested, manifest: &Value) -> Requested {
    let resources = &manifest["resources"];
    let number = |v: &Value| v.as_u64().filter(|n| *n > 0);
    Requested {
        cpus: request
            .cpus
            .or(number(&resources["cpu"]).map(|n| n.min(u64::from(u32::MAX)) as u32)),
        memory_bytes: request.memory_bytes.or(number(&resources["memory_bytes"])),
        processes: request
            .processes
            .or(number(&resources["processes"]).map(|n| n.min(u64::from(u32::MAX)) as u32)),
        disk_bytes: request.disk_bytes.or(number(&resources["disk_bytes"])),
        time: request
            .time
            .or(number(&manifest["timeout_seconds"]).map(Duration::from_secs)),
    }
}

/// Refuses a run that no registered node could ever take, naming every field over the largest
/// node's limit (and whether the pipeline or the request asked for it).
fn fits_a_node(requested: &Requested, asked: &Requested, nodes: &[Limits]) -> Result<()> {
    if nodes.is_empty() || nodes.iter().any(|n| excess(requested, n).is_empty()) {
        return Ok(());
    }
    // Field by field, against the largest value any node has.
    let largest = nodes.iter().fold(nodes[0], |a, b| Limits {
        cpus: a.cpus.max(b.cpus),
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
        processes: a.processes.max(b.processes),
        disk_bytes: a.disk_bytes.max(b.disk_bytes),
        time: a.time.max(b.time),
    });
    let over = excess(requested, &largest);
    let Some(first) = over.first() else {
        return Err(Error::invalid(
            "resources",
            "no single node has all of these at once; ask for less",
        ));
    };
    let from_pipeline = |field: &str| match field {
        "resources.cpu" => asked.cpus.is_none(),
        "resources.memory_bytes" => asked.memory_bytes.is_none(),
        "resources.processes" => asked.processes.is_none(),
        "resources.disk_bytes" => asked.disk_bytes.is_none(),
        _ => asked.time.is_none(),
    };
    let describe = |e: &crate::limits::Excess| {
        let who = if from_pipeline(e.field) {
            "the pipeline asks for"
        } else {
            "asks for"
        };
        format!(
            "{who} {}, more than the largest node allows ({})",
            e.asked, e.limit
        )
    };
    let mut message = describe(first);
    for other in &over[1..] {
        message.push_str(&format!("; {}: {}", other.field, describe(other)));
    }
    Err(Error::invalid(first.field, message))
}

fn list_databases(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Parses `config_json`, applies the form's defaults, resolves dynamic enums, and validates
/// (with `pirus_form`, which the CLI runs too, so both say the same).
pub(crate) fn validate_config(
    config_json: &str,
    form: &Value,
    input_names: &[String],
    databases: &[String],
) -> Result<Value> {
    let enums = pirus_form::Enums {
        input_files: Some(input_names),
        databases: Some(databases),
    };
    pirus_form::validate(config_json, form, enums).map_err(|e| match e {
        pirus_form::Invalid::Config(p) => Error::invalid(&p.field, p.message),
        pirus_form::Invalid::Form(why) => Error::internal(why),
    })
}
