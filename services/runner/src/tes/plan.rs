//! A TES task as the domain's [`Plan`]: its executors are the steps, its inputs, volumes and
//! outputs the staging. Made once when a task is created and stored with its run; also made
//! from the stored task of a run queued before plans were stored ([`of_stored`], which the
//! runner hands the executor as its converter of such runs).

use tes::v1::types::{
    requests::Task,
    task::{Input as TesInput, IoType, Output as TesOutput},
};

use super::{Scheme, task::catalogue_ids};
use crate::domain::plan::{Destination, Input, Output, Plan, Source, Staging, Step};

/// The plan of a validated task.
pub(crate) fn of_task(task: &Task) -> Plan {
    let steps = task
        .executors
        .iter()
        .map(|e| Step {
            command: e.command.clone(),
            env: e.env.clone().unwrap_or_default(),
            workdir: e.workdir.clone(),
            stdin: e.stdin.clone(),
            stdout: e.stdout.clone(),
            stderr: e.stderr.clone(),
            ignore_error: e.ignore_error.unwrap_or(false),
        })
        .collect();
    let staging = Staging {
        inputs: task.inputs.iter().flatten().map(input).collect(),
        folders: task.volumes.clone().unwrap_or_default(),
        outputs: task.outputs.iter().flatten().map(output).collect(),
    };
    Plan {
        steps,
        staging: Some(staging),
    }
}

/// The plan of a task as it was stored with its run (`runs.tes`) before plans were.
pub(crate) fn of_stored(stored: &serde_json::Value) -> Option<Plan> {
    serde_json::from_value::<Task>(stored.clone())
        .ok()
        .map(|task| of_task(&task))
}

fn input(input: &TesInput) -> Input {
    let url = input.url.clone().unwrap_or_default();
    let source = match (&input.content, Scheme::of(&url)) {
        (Some(content), _) => Source::Content(content.clone()),
        (None, Scheme::Pirus) => Source::Catalogue(catalogue_ids(&url).unwrap_or_default()),
        (None, Scheme::File) => Source::Host(url["file://".len()..].to_owned()),
        (None, Scheme::Other) => Source::Unfetchable(url),
    };
    Input {
        path: input.path.clone(),
        directory: input.ty == IoType::Directory,
        source,
    }
}

fn output(output: &TesOutput) -> Output {
    let to = match Scheme::of(&output.url) {
        Scheme::Pirus => Destination::Catalogue,
        Scheme::File => Destination::Host(output.url["file://".len()..].to_owned()),
        Scheme::Other => Destination::Unwritable(output.url.clone()),
    };
    Output {
        path: output.path.clone(),
        path_prefix: output.path_prefix.clone(),
        directory: output.ty == IoType::Directory,
        to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_becomes_a_staged_plan_of_its_executors() {
        let id = uuid::Uuid::now_v7();
        let task: Task = serde_json::from_value(serde_json::json!({
            "executors": [
                {"image": "a", "command": ["cat"], "stdin": "/in/x", "env": {"A": "1"}},
                {"image": "a", "command": ["false"], "ignore_error": true}
            ],
            "inputs": [
                {"path": "/in/x", "content": "hi"},
                {"path": "/in/d", "url": format!("pirus://files/{id}"), "type": "DIRECTORY"},
                {"path": "/in/h", "url": "file:///srv/h"},
                {"path": "/in/s", "url": "s3://b/k"}
            ],
            "outputs": [
                {"path": "/out/*.txt", "path_prefix": "/out", "url": "pirus://files/"},
                {"path": "/out/o", "url": "file:///srv/o"},
                {"path": "/out/g", "url": "gs://b/k"}
            ],
            "volumes": ["/scratch"]
        }))
        .unwrap();
        let plan = of_task(&task);
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.steps[0].stdin.as_deref(), Some("/in/x"));
        assert_eq!(plan.steps[0].env["A"], "1");
        assert!(plan.steps[1].ignore_error && !plan.steps[0].ignore_error);
        let staging = plan.staging.unwrap();
        let sources: Vec<&Source> = staging.inputs.iter().map(|i| &i.source).collect();
        assert_eq!(
            sources,
            [
                &Source::Content("hi".into()),
                &Source::Catalogue(vec![id]),
                &Source::Host("/srv/h".into()),
                &Source::Unfetchable("s3://b/k".into()),
            ]
        );
        assert!(staging.inputs[1].directory);
        let to: Vec<&Destination> = staging.outputs.iter().map(|o| &o.to).collect();
        assert_eq!(
            to,
            [
                &Destination::Catalogue,
                &Destination::Host("/srv/o".into()),
                &Destination::Unwritable("gs://b/k".into()),
            ]
        );
        assert_eq!(staging.folders, ["/scratch"]);
        let stored = serde_json::to_value(&task).unwrap();
        assert_eq!(of_stored(&stored), Some(of_task(&task)));
    }
}
