//! Property tests of TES task JSON, what any workflow engine (or attacker) may POST: whatever
//! the JSON, a task is refused naming a field or accepted; an accepted task's plan keeps each
//! executor, input and output in order, and round-trips through its stored form; whatever a
//! container writes to its step log is read within bounds.

use proptest::prelude::*;
use serde_json::{Value, json};
use tes::v1::types::requests::Task;

use super::{plan, validate};
use crate::domain::{Error, Plan};

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "(/[a-z]{1,6}){1,3}",
        1 => Just("relative/x".to_owned()),
        1 => Just("/a/../../etc/shadow".to_owned()),
        1 => Just("/.pirus/exit_status".to_owned()),
        1 => Just("/".to_owned()),
        2 => Just("/data/*.txt".to_owned()),
        1 => ".{0,12}",
    ]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => Just("pirus://files/".to_owned()),
        8 => Just("pirus://files/0195f6c2-4bd4-7c8e-9a41-7f3c2b1a0d11".to_owned()),
        1 => Just("pirus://files/nope".to_owned()),
        8 => "file://(/[a-z]{1,6}){1,3}",
        4 => Just("s3://bucket/key".to_owned()),
        1 => ".{0,16}",
    ]
}

/// Tasks shaped as TES says, with hostile values among the ordinary ones.
fn task() -> impl Strategy<Value = Value> {
    let executor = (
        prop_oneof![8 => Just("alpine".to_owned()), 1 => ".{0,8}"],
        proptest::collection::vec("[ -~]{0,16}", 1..4),
        proptest::option::of(path()),
        proptest::option::of(path()),
        proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,5}", "[ -~]{0,8}", 0..3),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(image, command, workdir, stdout, env, ignore)| {
            json!({"image": image, "command": command, "workdir": workdir, "stdout": stdout,
                   "env": env, "ignore_error": ignore})
        });
    let input = (
        path(),
        proptest::option::of(url()),
        proptest::option::of("[ -~]{0,32}"),
        any::<bool>(),
    )
        .prop_map(|(path, url, content, dir)| {
            json!({"path": path, "url": url, "content": content,
                   "type": if dir { "DIRECTORY" } else { "FILE" }})
        });
    let output = (path(), url(), proptest::option::of(path()), any::<bool>()).prop_map(
        |(path, url, prefix, dir)| {
            json!({"path": path, "url": url, "path_prefix": prefix,
                   "type": if dir { "DIRECTORY" } else { "FILE" }})
        },
    );
    (
        proptest::collection::vec(executor, 1..4),
        proptest::collection::vec(input, 0..4),
        proptest::collection::vec(output, 0..4),
        proptest::collection::vec(path(), 0..3),
        proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,8}", 0..3),
        proptest::option::of((1.0f64..64.0, 0.1f64..1e3)),
    )
        .prop_map(|(executors, inputs, outputs, volumes, tags, resources)| {
            let mut task = json!({"executors": executors, "inputs": inputs,
                                  "outputs": outputs, "volumes": volumes, "tags": tags});
            if let Some((cpu, ram)) = resources {
                task["resources"] = json!({"cpu_cores": cpu as i64, "ram_gb": ram});
            }
            task
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_task_is_refused_by_field_or_planned_whole(value in task()) {
        let Ok(task) = serde_json::from_value::<Task>(value) else {
            // Not a TES task at all: the edge answers 400 before validation.
            return Ok(());
        };
        match validate::validate(&task) {
            Err(Error::InvalidArgument { field, .. }) => prop_assert!(!field.is_empty()),
            Err(e) => prop_assert!(false, "not a field error: {}", e),
            Ok(_) => {
                let planned = plan::of_task(&task);
                prop_assert_eq!(planned.steps.len(), task.executors.len());
                let staging = planned.staging.clone().expect("a task's plan stages");
                prop_assert_eq!(staging.inputs.len(), task.inputs.as_ref().map_or(0, Vec::len));
                prop_assert_eq!(staging.outputs.len(), task.outputs.as_ref().map_or(0, Vec::len));
                let stored = serde_json::to_value(&planned).expect("serialisable");
                prop_assert_eq!(serde_json::from_value::<Plan>(stored).ok(), Some(planned));
                let stored = serde_json::to_value(&task).expect("serialisable");
                prop_assert_eq!(plan::of_stored(&stored), Some(plan::of_task(&task)));
            }
        }
    }

    #[test]
    fn any_json_is_a_task_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(task) = serde_json::from_slice::<Task>(&bytes) {
            let _ = validate::validate(&task).map(|_| plan::of_task(&task));
        }
    }
}
