//! TES tasks queued as Pirus runs: a created task validated ([`super::validate`]), the
//! pipeline its executors name resolved, and the run queued through the one submission path
//! with the task's plan ([`super::plan`]).

use pirus_auth::{Caller, policy};
use pirus_db::views::{self, PipelineView};
use tes::v1::types::requests;
use uuid::Uuid;

use super::{plan, validate};
use crate::{
    access,
    domain::{Error, Result},
    runs::Runs,
    store::RunInsert,
    submit,
};

fn invalid(field: impl AsRef<str>, message: impl Into<String>) -> Error {
    Error::invalid(field.as_ref(), message)
}

/// The catalogue files a `pirus://files/<id>[,<id>...]` URL names (`None`: not such a URL).
pub(super) fn catalogue_ids(url: &str) -> Option<Vec<Uuid>> {
    url.strip_prefix("pirus://files/")?
        .split(',')
        .map(|id| Uuid::try_parse(id.trim()).ok())
        .collect::<Option<Vec<_>>>()
        .filter(|ids| !ids.is_empty())
}

/// `name` or `name:version`, split.
fn image_name(image: &str) -> (&str, Option<&str>) {
    match image.trim().rsplit_once(':') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => (name, Some(version)),
        _ => (image.trim(), None),
    }
}

/// A version as numbers where it has them, for "newest".
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-', '+'])
        .map(|part| match part.parse() {
            Ok(n) => (n, String::new()),
            Err(_) => (0, part.to_owned()),
        })
        .collect()
}

/// The READY pipeline an executor's image names: that version, or the newest.
async fn pipeline_of(runs: &Runs, field: &str, image: &str) -> Result<PipelineView> {
    let (name, version) = image_name(image);
    let mut candidates = views::ready_pipelines_named(runs.stores.db(), name).await?;
    candidates.retain(|p| version.is_none_or(|v| p.version == v));
    candidates.sort_by_key(|p| version_key(&p.version));
    candidates.pop().ok_or_else(|| {
        invalid(
            field,
            match version {
                Some(v) => format!("no READY pipeline '{name}' of version '{v}' is installed"),
                None => format!("no READY pipeline named '{name}' is installed"),
            },
        )
    })
}

/// Queues a task as a run of the caller's; answers its id.
pub(super) async fn create(runs: &Runs, caller: &Caller, task: requests::Task) -> Result<Uuid> {
    access::require(caller, pirus_auth::policy::Action::SubmitRuns)?;
    let asked = validate::validate(&task)?;
    let pipeline = pipeline_of(runs, "executors[0].image", &task.executors[0].image).await?;
    for (i, e) in task.executors.iter().enumerate().skip(1) {
        let field = format!("executors[{i}].image");
        // Most tasks name one image in every executor: resolved once, not once each.
        if e.image != task.executors[0].image
            && pipeline_of(runs, &field, &e.image).await?.id != pipeline.id
        {
            return Err(invalid(
                field,
                format!(
                    "'{}' is not the pipeline of executors[0] ('{}'): a task's executors run in one container",
                    e.image, task.executors[0].image
                ),
            ));
        }
    }
    let stores = &runs.stores;
    // A task names no node selector; its pipeline's manifest may.
    let checked =
        submit::checked_request(stores, &asked.requested, &Default::default(), &pipeline).await?;
    // Every catalogue input must be the caller's (another's is not found).
    submit::input_file_names(
        stores,
        &asked.files,
        policy::scope(caller).owner_filter(),
        |i| asked.file_fields[i].clone(),
        |field, id| Error::invalid(&field, format!("file {id} not found")),
    )
    .await?;
    let name = submit::run_name(task.name.as_deref().unwrap_or_default(), &pipeline)?;
    let run = stores
        .runs
        .insert(RunInsert {
            id: Uuid::now_v7(),
            name,
            config: serde_json::json!({}),
            input_file_ids: asked.files,
            priority: asked.priority,
            request_id: None,
            requested: checked.requested,
            max_attempts: asked.max_attempts,
            pipeline,
            owner: Some(caller.principal),
            plan: plan::of_task(&task),
            tes: Some(serde_json::to_value(&task).map_err(Error::internal)?),
            node_selector: checked.node_selector,
        })
        .await?;
    Ok(run.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_a_pipeline_and_maybe_its_version() {
        assert_eq!(image_name("ubuntu:20.04"), ("ubuntu", Some("20.04")));
        assert_eq!(image_name("alpine"), ("alpine", None));
        assert!(version_key("1.10.0") > version_key("1.9.2"));
    }
}
