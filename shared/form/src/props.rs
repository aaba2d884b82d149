//! Property tests of run configurations against forms: whatever a client sends, validation
//! answers the configuration or a problem naming `config_json` or one of its fields, never
//! panics; and a configuration it answered validates to itself (defaults are applied once).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Enums, Invalid, set_pair, validate};

/// Forms of the shapes pipelines use: typed and bounded fields, defaults, enums (dynamic
/// ones too), required fields, a nested object.
fn forms() -> Vec<Value> {
    vec![
        json!({"type": "object", "additionalProperties": false, "properties": {}}),
        json!({
            "type": "object",
            "properties": {
                "threads": {"type": "integer", "minimum": 1, "maximum": 64, "default": 4},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
                "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
                "input": {"type": "string", "x-pirus-enum": "input_files"},
                "genome": {"type": "string", "x-pirus-enum": "databases"},
                "flags": {"type": "array", "items": {"type": "string", "maxLength": 8}},
                "nested": {"type": "object", "properties": {"on": {"type": "boolean", "default": true}}}
            },
            "required": ["mode"],
            "additionalProperties": false
        }),
    ]
}

fn config() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-100i64..100).prop_map(Value::from),
        (-10.0f64..10.0).prop_map(|f| json!(f)),
        prop_oneof![
            Just("fast"),
            Just("exact"),
            Just("reads.txt"),
            Just("hg38"),
            Just("x")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let key = prop_oneof![
        Just("threads"),
        Just("ratio"),
        Just("mode"),
        Just("input"),
        Just("genome"),
        Just("flags"),
        Just("nested"),
        Just("on"),
        Just("other"),
    ]
    .prop_map(str::to_owned);
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn enums<'a>(inputs: &'a [String], databases: &'a [String]) -> Enums<'a> {
    Enums {
        input_files: Some(inputs),
        databases: Some(databases),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn configurations_validate_to_themselves_or_name_their_field(value in config()) {
        let (inputs, databases) = (vec!["reads.txt".to_owned()], vec!["hg38".to_owned()]);
        for form in forms() {
            match validate(&value.to_string(), &form, enums(&inputs, &databases)) {
                Ok(valid) => {
                    let again = validate(&valid.to_string(), &form, enums(&inputs, &databases));
                    prop_assert_eq!(again, Ok(valid));
                }
                Err(Invalid::Config(problem)) => {
                    prop_assert!(problem.field.starts_with("config_json"), "{}", problem);
                }
                Err(Invalid::Form(why)) => prop_assert!(false, "a valid form refused: {}", why),
            }
        }
    }

    #[test]
    fn any_text_is_a_configuration_or_a_named_problem(text in ".{0,256}") {
        for form in forms() {
            match validate(&text, &form, Enums::default()) {
                Ok(value) => prop_assert!(value.is_object()),
                Err(Invalid::Config(problem)) => prop_assert!(problem.field.starts_with("config_json")),
                Err(Invalid::Form(why)) => prop_assert!(false, "a valid form refused: {}", why),
            }
        }
    }

    #[test]
    fn any_key_value_pair_is_typed_or_refused_by_name(pair in ".{0,64}") {
        for form in forms() {
            let mut config = serde_json::Map::new();
            if let Err(problem) = set_pair(&mut config, &form, &pair) {
                prop_assert!(!problem.field.is_empty());
                prop_assert!(config.is_empty());
            }
            prop_assert!(config.len() <= 1);
        }
    }
}
